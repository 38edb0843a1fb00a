"""Token stream -> sentences, so TTS can start on the first sentence while the rest is generated.

A period ends a sentence only when what follows shows it does: whitespace or the end of the
stream ("Building 12." / "3.5 km" / "B.12" / "Dr. Kim"), or anything after a Hangul syllable
("있어요.다음"). A sentence is therefore held until one more character arrives; that costs one
token, never a wrong cut. Run-on sentences are cut at a comma or space near `max_chars`.
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator

from campus_guide.korean import SYLLABLE

ENDS = ".!?。！？"
CLOSERS = "\"'”’)]」』"
CLAUSE_MARKS = ",，、;:"
# Words whose trailing period is part of the word, not the end of the sentence.
ABBREVIATIONS = {"dr", "st", "mr", "mrs", "ms", "prof", "no", "vs", "approx", "e.g", "i.e", "bldg"}
_WORD_BEFORE = re.compile(r"([A-Za-z.]+)$")


def _sentence_end(buf: str, final: bool) -> int | None:
    """Index just past the first complete sentence in `buf`, or None if none is complete yet."""
    i = 0
    while i < len(buf):
        c = buf[i]
        if c == "\n":
            return i + 1
        if c not in ENDS:
            i += 1
            continue
        j = i
        while j < len(buf) and buf[j] in ENDS:       # "?!", "..."
            j += 1
        while j < len(buf) and buf[j] in CLOSERS:    # 'He said "left."'
            j += 1
        if j == len(buf):
            return j if final else None              # the next piece decides
        nxt = buf[j]
        if nxt.isspace():
            word = _WORD_BEFORE.search(buf[:i])
            if c == "." and j == i + 1 and word and word.group(1).lower() in ABBREVIATIONS:
                i = j
                continue
            return j
        if c == "." and j == i + 1:
            # "3.5", "B.12", "e.g": a period inside a token; Korean endings are the exception.
            if i > 0 and SYLLABLE.match(buf[i - 1]) and not nxt.isdigit():
                return j
            i = j
            continue
        return j                                     # "?", "!", "。" need no space after them
    return None


def _run_on_cut(buf: str, max_chars: int) -> int:
    """Where to cut an over-long sentence: after the last clause mark, else the last space."""
    head = buf[:max_chars]
    for marks in (CLAUSE_MARKS, " "):
        k = max(head.rfind(m) for m in marks)
        if k > max_chars // 3:
            return k + 1
    return max_chars


def _take(buf: str, max_chars: int, final: bool, first_chars: int | None) -> int | None:
    end = _sentence_end(buf, final)
    if (end is None or end > max_chars) and len(buf) > max_chars:
        return _run_on_cut(buf, max_chars)
    if first_chars and (end is None or end > first_chars) and len(buf) > first_chars:
        k = max(buf.rfind(m, 0, first_chars) for m in CLAUSE_MARKS)
        if k > first_chars // 3:
            return k + 1
    return len(buf) if end is None and final else end


def split_sentences(pieces: Iterable[str], max_chars: int = 160,
                    first_chars: int | None = None) -> Iterator[str]:
    """Yield each sentence as soon as it is complete, stripped; flush the rest at the end.

    `first_chars`: a long first sentence is cut at a clause mark (comma, semicolon, colon)
    before this length, so the first audio needs less decoding and less synthesis.
    """
    buf = ""
    for piece in pieces:
        buf += piece
        while (end := _take(buf, max_chars, False, first_chars)) is not None:
            sentence, buf = buf[:end].strip(), buf[end:]
            if sentence:
                first_chars = None
                yield sentence
    while buf.strip():
        end = _take(buf, max_chars, True, first_chars)
        sentence, buf = buf[:end].strip(), buf[end:]
        if sentence:
            first_chars = None
            yield sentence
