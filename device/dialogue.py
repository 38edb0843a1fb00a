"""One visitor's conversation: memory, retrieval, the grounded prompt, and the grounding guard.

The small model may invent. Each sentence it writes is checked *before* it is handed on to TTS:
a building number or a building/place name that the retrieved facts do not contain, or a
sentence in the wrong language, ends the model's answer and the deterministic grounded answer
(`compose_answer`) is spoken instead. Once the model has finished, an answer that left out the
key fact (the asked building's number, or the route's minutes) gets the grounded answer after
it. Nothing invented is ever spoken; the log line `guard: fallback (...)` says why.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from campus_guide.config import Config
from campus_guide.knowledge import compose_answer
from campus_guide.prompt import (INSTRUCTION, REDIRECT, UNKNOWN, Turn, clean_answer, language_of,
                                 render_prompt)

from .llm import GenStats
from .splitter import split_sentences

log = logging.getLogger(__name__)

_LETTER = re.compile(r"[A-Za-z\uac00-\ud7a3]")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|[♪♫]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# A long first sentence is spoken from its first clause, so the first audio comes sooner.
FIRST_CHARS = 60

# Invented places the knowledge base has never heard of look like these.
_EN_PLACE = re.compile(
    r"\b((?:[A-Z][\w'-]*\s+)+(?:Hall|Building|Center|Centre|Library|Tower|Gym|Gymnasium|"
    r"Dormitory|Cafeteria|Stadium|Museum|Auditorium|Gate))\b")
_KO_PLACE = re.compile(r"[\uac00-\ud7a3]+?(?:관|센터|홀|기숙사|식당)")
_SCAFFOLD = re.compile(r"\b(?:Question|Facts)\s*:")
_CAMPUS_WORDS = re.compile(
    r"where|how (?:do|can) i get|building|hall|library|campus|room|gate|office|way to|directions|"
    r"어디|건물|관|도서관|캠퍼스|가는|길|위치|센터|강의실|정문", re.IGNORECASE)


def _echoes_prompt(sentence: str) -> bool:
    """A base model that runs on past its answer repeats the instruction or starts the next
    question; either way its answer is over."""
    return bool(_SCAFFOLD.search(sentence)) or (
        len(sentence) >= 8 and any(sentence in i for i in INSTRUCTION.values()))


def _numbers(text: str) -> set[str]:
    """Numbers as values ("09:00" and "9:00" share 9 and 0)."""
    return {n.lstrip("0") or "0" for n in _NUMBER.findall(text)}


@dataclass
class DialogueResult:
    """What was said for one question; complete once the reply has been iterated."""
    question: str
    lang: str
    answer: str = ""
    sources: list[str] = field(default_factory=list)
    kind: str = "none"              # llm | fallback | unknown | redirect | none
    guard: str | None = None        # why the model's answer was replaced
    first_token_t: float | None = None  # perf_counter when the first answer text existed
    llm: GenStats | None = None


class Reply:
    """Sentences to speak, each yielded as soon as it has passed the guard."""

    def __init__(self, sentences: Iterator[str], result: DialogueResult):
        self._sentences, self.result = sentences, result

    def __iter__(self) -> Iterator[str]:
        return self._sentences


def is_garbage(text: str) -> bool:
    """Empty, symbols or digits only, or a bracketed annotation like "[music]" (the ASR already
    drops Whisper's stock phrases for noise)."""
    return len(_LETTER.findall(_ANNOTATION.sub(" ", text))) < 2


class Guard:
    """Checks model sentences against the facts retrieved for this question."""

    def __init__(self, kb, retrieval, lang: str):
        self.lang = lang
        ids = [h.id for h in retrieval.results]
        allowed = list(retrieval.facts())
        for i in ids:
            allowed += [kb.name(i, "ko"), kb.name(i, "en"), *getattr(kb.get(i), "aliases", ())]
        self.allowed = " ".join(allowed).lower()
        self.numbers = _numbers(self.allowed)
        # Longest first, so "공학관" claims its letters before the alias "학관" can.
        self.names = sorted({n for n in kb.names() if len(n) >= 2}, key=len, reverse=True)
        self.required = self._required(kb, retrieval)

    def _mentions(self, sentence: str) -> Iterator[str]:
        """Knowledge-base names in the sentence; a name inside a longer one does not count."""
        low, taken = sentence.lower(), []
        for name in self.names:
            n = name.lower()
            pattern = re.escape(n) if _HANGUL.search(n) else rf"(?<![a-z0-9]){re.escape(n)}(?![a-z0-9])"
            for m in re.finditer(pattern, low):
                if not any(a < m.end() and m.start() < b for a, b in taken):
                    taken.append(m.span())
                    yield name

    @staticmethod
    def _required(kb, retrieval) -> str | None:
        """The one number a correct answer must contain: route minutes, else building number."""
        if retrieval.route is not None:
            found = _numbers(str(retrieval.route.minutes))
        elif retrieval.results:
            found = _numbers(str(getattr(kb.get(retrieval.results[0].id), "number", None) or ""))
        else:
            found = set()
        return next(iter(found), None)

    def check(self, sentence: str) -> str | None:
        """None if the sentence may be spoken, else the reason it may not."""
        if _LETTER.search(sentence) and language_of(sentence, self.lang) != self.lang:
            return f"wrong language in {sentence!r}"
        for n in _numbers(sentence):
            if n not in self.numbers:
                return f"number {n} not in the facts"
        for name in self._mentions(sentence):
            if name.lower() not in self.allowed:
                return f"{name!r} not in the facts"
        for m in list(_EN_PLACE.finditer(sentence)) + list(_KO_PLACE.finditer(sentence)):
            place = re.sub(r"^(?:The|A|An)\s+", "", m.group(0).strip()).lower()
            if place not in self.allowed:
                return f"{m.group(0)!r} not in the facts"
        return None

    def complete(self, answer: str) -> str | None:
        if self.required and self.required not in _numbers(answer):
            return f"key fact {self.required} missing"
        return None


class Dialogue:
    """Memory of the last turns plus the grounded answer stream for each new question."""

    def __init__(self, cfg: Config, kb, retriever, llm, clock: Callable[[], float] = time.monotonic):
        self.cfg, self.kb, self.retriever, self.llm, self.clock = cfg, kb, retriever, llm, clock
        self.history: list[Turn] = []
        self._last = clock()

    def _memory(self) -> list[Turn]:
        now = self.clock()
        if now - self._last > self.cfg.dialogue.session_timeout_s and self.history:
            log.info("dialogue: %.0f s idle, memory cleared for the next visitor", now - self._last)
            self.history.clear()
        self._last = now
        return self.history[-self.cfg.dialogue.memory_turns:] if self.cfg.dialogue.memory_turns else []

    def _remember(self, question: str, answer: str) -> None:
        self._last = self.clock()
        if answer and self.cfg.dialogue.memory_turns:
            self.history = (self.history + [Turn(question, answer)])[-self.cfg.dialogue.memory_turns:]

    def ask(self, question: str, lang: str | None = None) -> Reply:
        """The reply to one question. `lang` (Whisper's language, or --lang) counts only when
        the text itself does not tell: Whisper sometimes labels a Korean transcript "en"."""
        question = question.strip()
        lang = language_of(question, lang if lang in ("ko", "en") else "en")
        result = DialogueResult(question=question, lang=lang)
        if is_garbage(question):            # noise must not keep the last visitor's memory alive
            log.info("dialogue: ignoring %r (empty or noise)", question)
            return Reply(iter(()), result)
        history = self._memory()
        d = self.cfg.dialogue
        r = self.retriever.retrieve(question, k=d.retrieval_k)
        r.lang = lang
        if not r.known(d.min_score):
            campus = _CAMPUS_WORDS.search(question)
            result.kind = "unknown" if campus else "redirect"
            return Reply(self._fixed((UNKNOWN if campus else REDIRECT)[lang], result), result)
        facts = r.facts()
        result.sources = [h.id for h in r.results if self.kb.fact(h.id, lang) in facts]
        return Reply(self._grounded(question, r, history, result), result)

    def _split(self, pieces, first: bool = True) -> Iterator[str]:
        return split_sentences(pieces, self.cfg.dialogue.max_sentence_chars,
                               FIRST_CHARS if first else None)

    def _fixed(self, text: str, result: DialogueResult) -> Iterator[str]:
        result.first_token_t = time.perf_counter()
        result.answer = text
        yield from self._split([text])
        self._remember(result.question, text)

    def _grounded(self, question, r, history, result: DialogueResult) -> Iterator[str]:
        prompt = render_prompt(question, r.facts(), history, result.lang)
        while history and not self.llm.fits(prompt):   # oldest turns go first
            history = history[1:]
            prompt = render_prompt(question, r.facts(), history, result.lang)
        guard = Guard(self.kb, r, result.lang)
        spoken: list[str] = []

        def pieces() -> Iterator[str]:
            for p in self.llm.stream(prompt):
                if result.first_token_t is None:
                    result.first_token_t = time.perf_counter()
                yield p

        stream = pieces()
        try:
            for sentence in self._split(stream):
                sentence = clean_answer(sentence).lstrip("-*• ")   # a list marker is not spoken
                if not sentence:
                    continue
                if sentence in spoken or _echoes_prompt(sentence):
                    break                   # looping or echoing the prompt: the answer is over
                result.guard = guard.check(sentence)
                if result.guard:
                    break
                spoken.append(sentence)
                result.answer = " ".join(spoken)
                yield sentence
        except Exception as e:          # a failing model must not cost the visitor the answer
            log.exception("dialogue: the model failed; answering from the knowledge base")
            result.guard = f"llm error: {e}"
        finally:
            stream.close()
        result.llm = self.llm.last
        if not result.guard:
            result.guard = guard.complete(" ".join(spoken)) if spoken else "empty answer"
        if result.first_token_t is None:
            result.first_token_t = time.perf_counter()
        if not result.guard:
            result.kind = "llm"
            self._remember(question, result.answer)
            return
        log.info("guard: fallback (%s)", result.guard)
        result.kind = "fallback"
        for s in self._split([compose_answer(r)], first=not spoken):
            spoken.append(s)
            result.answer = " ".join(spoken)
            yield s
        self._remember(question, result.answer)
