"""The one speech-recognition scorer: edit distance, character error rate (Korean) and word error
rate (English), with the text normalisation both sides go through first.

Pure Python, no audio and no models, so the device benchmark (`campus-guide bench asr`) and the
training toolchain score transcripts the same way. A corpus figure is the total number of edits
over the total reference length (not a mean of per-clip rates, which short clips would dominate).

Normalisation, the same for hypothesis and reference:
- CER: lower-cased, NFC, every punctuation mark, symbol and space removed ("그런데 집이 어디예요?"
  -> "그런데집이어디예요"): Korean spacing is inconsistent even in read scripts, so spaces are
  not counted.
- WER: lower-cased, NFC, the common contractions spelled out as Whisper's own English normaliser
  does ("where's" -> "where is", "can't" -> "can not": Whisper writes "Where's" for a spoken
  "Where is" and no visitor hears a difference), other apostrophes inside words dropped, every
  other punctuation mark or symbol a word break; words are what remains between spaces.
Numbers are not spelled out: "2" heard as "to" is an error, and so is "23:00" against
"eleven p.m.".
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Hashable, Sequence

_APOSTROPHES = re.compile(r"(?<=\w)['\u2019](?=\w)")
# Whisper's EnglishTextNormalizer (openai/whisper, normalizers/english.py), the contractions only.
_CONTRACTIONS = tuple((re.compile(p), r) for p, r in (
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\blet's\b", "let us"),
    (r"n't\b", " not"), (r"'re\b", " are"), (r"'s\b", " is"), (r"'d\b", " would"),
    (r"'ll\b", " will"), (r"'ve\b", " have"), (r"'m\b", " am"),
))
_NOT_WORD = re.compile(r"[\W_]+")   # \w covers Hangul, Latin and digits


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text or "").lower()


def normalize_chars(text: str) -> str:
    """The characters CER counts: lower-case, no punctuation, symbols or spaces."""
    return _NOT_WORD.sub("", _fold(text))


def normalize_words(text: str) -> list[str]:
    """The words WER counts: lower-case, contractions spelled out, other apostrophes joined,
    other punctuation a word break."""
    text = _fold(text).replace("\u2019", "'")
    for pattern, repl in _CONTRACTIONS:
        text = pattern.sub(repl, text)
    return _NOT_WORD.sub(" ", _APOSTROPHES.sub("", text)).split()


def edit_distance(hyp: Sequence[Hashable], ref: Sequence[Hashable]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions, each costing 1)."""
    if len(hyp) < len(ref):
        hyp, ref = ref, hyp            # the shorter one is the row: O(min) memory
    row = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        prev, row[0] = row[0], i
        for j, r in enumerate(ref, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (h != r))
    return row[-1]


@dataclass(frozen=True)
class Score:
    """Edits against the reference length; `rate` is their ratio (edits when the reference is
    empty: saying something over nothing is all error)."""
    edits: int
    length: int

    @property
    def rate(self) -> float:
        return self.edits / self.length if self.length else float(self.edits)

    def __add__(self, other: "Score") -> "Score":
        return Score(self.edits + other.edits, self.length + other.length)


def char_score(hyp: str, ref: str) -> Score:
    h, r = normalize_chars(hyp), normalize_chars(ref)
    return Score(edit_distance(h, r), len(r))


def word_score(hyp: str, ref: str) -> Score:
    h, r = normalize_words(hyp), normalize_words(ref)
    return Score(edit_distance(h, r), len(r))


def cer(hyp: str, ref: str) -> float:
    """Character error rate of one hypothesis against its reference (can exceed 1)."""
    return char_score(hyp, ref).rate


def wer(hyp: str, ref: str) -> float:
    """Word error rate of one hypothesis against its reference (can exceed 1)."""
    return word_score(hyp, ref).rate


def corpus_rate(scores: Sequence[Score]) -> float | None:
    """Total edits over total reference length; None for no clips."""
    if not scores:
        return None
    total = Score(0, 0)
    for s in scores:
        total = total + s
    return total.rate
