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
from typing import Callable, Iterable, Iterator

from campus_guide.config import Config
from campus_guide.intents import after_no, asks_about_a_place, points_back, split_social, yes_no
from campus_guide.knowledge import compose_answer
from campus_guide.knowledge.answers import WHICH_PLACE, clarify_question, social_reply
from campus_guide.knowledge.places import PlaceDetector
from campus_guide.knowledge.structure import destination_problem, number_problem, route_order_problem
from campus_guide.korean import LETTER
from campus_guide.prompt import (INSTRUCTION, REDIRECT, UNKNOWN, Turn, clean_answer, language_of,
                                 render_prompt)

from .llm import GenStats
from .splitter import split_sentences

log = logging.getLogger(__name__)

_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|[♪♫]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# A long first sentence is spoken from its first clause, so the first audio comes sooner.
FIRST_CHARS = 60

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
    kind: str = "none"              # llm | fallback | unknown | redirect | social | clarify | none
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
    return len(LETTER.findall(_ANNOTATION.sub(" ", text))) < 2


class Guard:
    """Checks model sentences against the facts retrieved for this question."""

    def __init__(self, kb, retrieval, lang: str, places: PlaceDetector):
        self.kb, self.lang, self.places, self.route = kb, lang, places, retrieval.route
        allowed = list(retrieval.facts())
        for h in retrieval.results:
            allowed += [kb.name(h.id, "ko"), kb.name(h.id, "en"), *getattr(kb.get(h.id), "aliases", ())]
        self.allowed = allowed
        self.text = " ".join(allowed).lower()
        self.numbers = _numbers(self.text)
        self.required = self._required(kb, retrieval)

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
        if LETTER.search(sentence) and language_of(sentence, self.lang) != self.lang:
            return f"wrong language in {sentence!r}"
        for n in _numbers(sentence):
            if n not in self.numbers:
                return f"number {n} not in the facts"
        for name in self.places.mentions(sentence):
            if name.lower() not in self.text:
                return f"{name!r} not in the facts"
        for place in self.places.invented(sentence, self.allowed):
            return f"{place!r} not in the facts"
        return number_problem(sentence, self.kb, self.places) or (
            route_order_problem(sentence, self.route, self.places) if self.route else None)

    def complete(self, answer: str) -> str | None:
        """Once the model has finished: the key number is there, and a route ends where it should."""
        if self.required and self.required not in _numbers(answer):
            return f"key fact {self.required} missing"
        return destination_problem(answer, self.route, self.places) if self.route else None


@dataclass
class _Pending:
    """A "Did you mean ...?" waiting for the visitor's yes or no."""
    place: str
    question: str


class Dialogue:
    """One visitor's conversation: memory of the last turns and the places they were about, a
    pending clarification, and the grounded answer stream for each new question."""

    def __init__(self, cfg: Config, kb, retriever, llm, clock: Callable[[], float] = time.monotonic):
        self.cfg, self.kb, self.retriever, self.llm, self.clock = cfg, kb, retriever, llm, clock
        self.places = PlaceDetector(kb)
        self.history: list[Turn] = []
        self.topics: list[str] = []         # places of the last answers, newest first
        self.pending: _Pending | None = None
        self._last = clock()

    def reset(self) -> None:
        """Forget the conversation (a new visitor; benchmarks between runs)."""
        self.history.clear()
        self.topics.clear()
        self.pending = None

    def _memory(self) -> list[Turn]:
        now = self.clock()
        if now - self._last > self.cfg.dialogue.session_timeout_s and (self.history or self.topics):
            log.info("dialogue: %.0f s idle, memory cleared for the next visitor", now - self._last)
            self.reset()
        self._last = now
        return self.history[-self.cfg.dialogue.memory_turns:] if self.cfg.dialogue.memory_turns else []

    def _remember(self, question: str, answer: str, places: list[str] = ()) -> None:
        self._last = self.clock()
        if places:
            self.topics = list(dict.fromkeys([*places, *self.topics]))[:3]
        if answer and self.cfg.dialogue.memory_turns:
            self.history = (self.history + [Turn(question, answer)])[-self.cfg.dialogue.memory_turns:]

    def ask(self, question: str, lang: str | None = None) -> Reply:
        """The reply to one question. `lang` (Whisper's language, or --lang) counts only when
        the text itself does not tell: Whisper sometimes labels a Korean transcript "en"."""
        question = question.strip()
        lang = language_of(question, lang if lang in ("ko", "en") else "en")
        result = DialogueResult(question=question, lang=lang)
        answers_us = self.pending is not None and yes_no(question) is not None   # "네" is one syllable
        if is_garbage(question) and not answers_us:   # noise must not keep the last visitor's memory alive
            log.info("dialogue: ignoring %r (empty or noise)", question)
            return Reply(iter(()), result)
        history = self._memory()
        social = split_social(question)
        if social.kind and is_garbage(social.rest):       # "hi", "thanks!", "저기요"
            result.kind = "social"
            return Reply(self._fixed(social_reply(social.kind, lang), result), result)
        question = social.rest or question                # "Excuse me, where is ..." -> "where is ..."
        confirmed, pending, self.pending = None, self.pending, None
        if pending is not None:
            answer = yes_no(question)
            if answer == "yes":
                question, confirmed = pending.question, pending.place
            elif answer == "no":
                question = after_no(question)
                if is_garbage(question):
                    result.kind = "clarify"
                    return Reply(self._fixed(WHICH_PLACE[lang], result), result)
        result.question = question
        return self._answer(question, lang, history, result, confirmed)

    def _answer(self, question: str, lang: str, history: list[Turn], result: DialogueResult,
                confirmed: str | None) -> Reply:
        d = self.cfg.dialogue
        follow_up = points_back(question) or asks_about_a_place(question)
        context = tuple(self.topics) if follow_up else ()
        r = self.retriever.retrieve(question, k=d.retrieval_k, context=context, confirmed=confirmed)
        r.lang = lang
        maybe = None if confirmed else r.unsure(d.min_score)
        if maybe is not None:         # a misheard name: ask, never answer about another building
            self.pending = _Pending(maybe, question)
            result.kind = "clarify"
            return Reply(self._fixed(clarify_question(self.kb, maybe, lang), result), result)
        if not r.known(d.min_score):
            campus = _CAMPUS_WORDS.search(question)
            result.kind = "unknown" if campus else "redirect"
            return Reply(self._fixed((UNKNOWN if campus else REDIRECT)[lang], result), result)
        facts = r.facts()
        result.sources = [h.id for h in r.results if self.kb.fact(h.id, lang) in facts]
        if r.route is not None and r.route.destination not in result.sources:
            result.sources.insert(0, r.route.destination)
        return Reply(self._grounded(question, r, history, result), result)

    def split(self, pieces: Iterable[str], first: bool = True) -> Iterator[str]:
        """Text pieces -> sentences to speak; the first one is cut early at a clause mark."""
        return split_sentences(pieces, self.cfg.dialogue.max_sentence_chars,
                               FIRST_CHARS if first else None)

    def _fixed(self, text: str, result: DialogueResult) -> Iterator[str]:
        result.first_token_t = time.perf_counter()
        result.answer = text
        yield from self.split([text])
        self._remember(result.question, text)

    def _grounded(self, question, r, history, result: DialogueResult) -> Iterator[str]:
        """The model's sentences while they pass the guard; then, if the guard stopped it or the
        answer lacks its key fact, the grounded answer."""
        prompt = self._prompt(question, r.facts(), history, result.lang)
        guard = Guard(self.kb, r, result.lang, self.places)
        spoken: list[str] = []
        for sentence in self._model_sentences(prompt, guard, result):
            spoken.append(sentence)
            result.answer = " ".join(spoken)
            yield sentence
        if not result.guard:
            result.guard = guard.complete(result.answer) if spoken else "empty answer"
        if not result.guard:
            result.kind = "llm"
        else:
            log.info("guard: fallback (%s)", result.guard)
            result.kind = "fallback"
            for s in self.split([compose_answer(r)], first=not spoken):
                spoken.append(s)
                result.answer = " ".join(spoken)
                yield s
        self._remember(question, result.answer, result.sources)

    def _prompt(self, question: str, facts: list[str], history: list[Turn], lang: str) -> str:
        """The grounded prompt, dropping the oldest turns until it fits the context window."""
        prompt = render_prompt(question, facts, history, lang)
        while history and not self.llm.fits(prompt):
            history = history[1:]
            prompt = render_prompt(question, facts, history, lang)
        return prompt

    def _model_sentences(self, prompt: str, guard: Guard, result: DialogueResult) -> Iterator[str]:
        """Sentences the model writes, up to the first that fails the guard (reason in
        `result.guard`), repeats itself or echoes the prompt. A model that raises ends its
        answer the same way: the visitor still gets the grounded one."""
        def pieces() -> Iterator[str]:
            for p in self.llm.stream(prompt):
                if result.first_token_t is None:
                    result.first_token_t = time.perf_counter()
                yield p

        stream, seen = pieces(), set()
        try:
            for sentence in self.split(stream):
                sentence = clean_answer(sentence).lstrip("-*• ")   # a list marker is not spoken
                if not sentence:
                    continue
                if sentence in seen or _echoes_prompt(sentence):
                    break                   # looping or echoing the prompt: the answer is over
                result.guard = guard.check(sentence)
                if result.guard:
                    break
                seen.add(sentence)
                yield sentence
        except Exception as e:
            log.exception("dialogue: the model failed; answering from the knowledge base")
            result.guard = f"llm error: {e}"
        finally:
            stream.close()
            result.llm = self.llm.last
            if result.first_token_t is None:
                result.first_token_t = time.perf_counter()
