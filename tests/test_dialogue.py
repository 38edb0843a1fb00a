"""Dialogue: memory and its timeout, off-topic and garbage input, and the grounding guard.

The guard tests need a model that invents on cue, which no real model does reliably; a scripted
stand-in with the LLM's three members (stream, fits, last) plays that part. Everything else is
real: the sample campus, the retriever with its embeddings, compose_answer, the 270M GGUF.
"""
import pytest

from campus_guide.config import Config
from campus_guide.prompt import REDIRECT, UNKNOWN
from device.dialogue import Dialogue, is_garbage
from device.llm import GenStats


class ScriptedLLM:
    """Streams a fixed answer in small pieces and records the prompts it was given."""

    def __init__(self, *answers):
        self.answers, self.prompts, self.last = list(answers), [], GenStats()

    def fits(self, prompt):
        return True

    def stream(self, prompt):
        self.prompts.append(prompt)
        text = self.answers.pop(0) if self.answers else "Central Library is building 10."
        self.last = GenStats(tokens=len(text) // 3)
        for i in range(0, len(text), 3):
            yield text[i:i + 3]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(kb, retriever, llm, **dialogue):
    cfg = Config()
    for k, v in dialogue.items():
        setattr(cfg.dialogue, k, v)
    clock = Clock()
    return Dialogue(cfg, kb, retriever, llm, clock=clock), clock


def say(d, question, lang=None):
    reply = d.ask(question, lang)
    return list(reply), reply.result


@pytest.mark.parametrize("text", ["", "   ", "[music]", "(laughs) ...", "♪ ♪", "?!", "42", "ㅋ"])
def test_empty_or_garbage_transcript_gets_no_answer(kb, retriever, text):
    llm = ScriptedLLM()
    d, _ = make(kb, retriever, llm)
    sentences, r = say(d, text)
    assert sentences == [] and r.kind == "none" and r.answer == "" and not llm.prompts
    assert is_garbage(text)


@pytest.mark.parametrize("question,lang,kind", [
    ("What's the weather like today?", "en", "redirect"),
    ("오늘 날씨 어때?", "ko", "redirect"),
    ("Where is the planetarium?", "en", "unknown"),
    ("플라네타리움 어디야?", "ko", "unknown"),
])
def test_off_topic_is_redirected_without_the_model(kb, retriever, question, lang, kind):
    llm = ScriptedLLM()
    d, _ = make(kb, retriever, llm)
    sentences, r = say(d, question)
    fixed = (REDIRECT if kind == "redirect" else UNKNOWN)[lang]
    assert r.kind == kind and r.lang == lang and " ".join(sentences) == fixed == r.answer
    assert not llm.prompts and r.sources == []


def test_grounded_answer_passes_unchanged(kb, retriever):
    answer = "The Central Library is building 10. It is north of the Central Lawn."
    d, _ = make(kb, retriever, ScriptedLLM(answer))
    sentences, r = say(d, "Where is the library?")
    assert sentences == ["The Central Library is building 10.", "It is north of the Central Lawn."]
    assert r.kind == "llm" and r.guard is None and r.sources == ["library"] and r.answer == answer


@pytest.mark.parametrize("invented,why", [
    ("The library is building 10. It is right next to Smith Hall.", "Smith Hall"),
    ("The library is building 99, north of the lawn.", "99"),
    ("The library is building 10, beside the Swimming Pool.", "Swimming Pool"),
])
def test_guard_replaces_an_invented_building_before_it_is_spoken(kb, retriever, invented, why):
    d, _ = make(kb, retriever, ScriptedLLM(invented))
    sentences, r = say(d, "Where is the library?")
    spoken = " ".join(sentences)
    assert r.kind == "fallback" and why.lower() in r.guard.lower()
    assert why not in spoken and "10" in spoken and "Central Library" in spoken
    assert r.answer == spoken and r.sources == ["library"]


@pytest.mark.parametrize("tail", ["\n\nQuestion: Where is the gym?", " The library is building 10.",
                                  " You are the campus guide. Answer in English."])
def test_an_answer_that_runs_on_ends_where_it_repeats_or_echoes_the_prompt(kb, retriever, tail):
    d, _ = make(kb, retriever, ScriptedLLM("The library is building 10." + tail))
    sentences, r = say(d, "Where is the library?")
    assert sentences == ["The library is building 10."] and r.kind == "llm"


def test_an_echoed_korean_instruction_is_not_spoken(kb, retriever):
    d, _ = make(kb, retriever, ScriptedLLM("당신은 캠퍼스 안내원입니다. 아래 사실만 사용해 답하세요."))
    sentences, r = say(d, "도서관은 어디에 있나요?")
    assert r.kind == "fallback" and r.guard == "empty answer"
    assert "안내원" not in " ".join(sentences) and "10번" in " ".join(sentences)


def test_guard_wrong_language_and_missing_key_fact(kb, retriever):
    d, _ = make(kb, retriever, ScriptedLLM("The library is building 10."))
    sentences, r = say(d, "도서관은 어디에 있나요?")
    assert r.kind == "fallback" and "language" in r.guard
    assert all("library" not in s for s in sentences) and "10번" in " ".join(sentences)

    d, _ = make(kb, retriever, ScriptedLLM("It is north of the Central Lawn."))
    sentences, r = say(d, "Where is the library?")
    assert r.kind == "fallback" and "key fact 10" in r.guard
    assert sentences[0] == "It is north of the Central Lawn." and "10" in " ".join(sentences[1:])


def test_route_answer_must_give_the_minutes(kb, retriever):
    r0 = retriever.retrieve("How do I get to the library?")
    minutes = r0.route.minutes
    d, _ = make(kb, retriever, ScriptedLLM("Walk north along the main road."))
    sentences, r = say(d, "How do I get to the library?")
    assert r.kind == "fallback" and f"key fact {minutes}" in r.guard
    assert str(minutes) in " ".join(sentences)


def test_memory_keeps_the_last_turns_and_clears_after_the_timeout(kb, retriever):
    llm = ScriptedLLM()
    d, clock = make(kb, retriever, llm, memory_turns=2, session_timeout_s=60)
    questions = ("Where is the library?", "What is building 10?", "Where's the library again?",
                 "Is the library open now?")
    for q in questions:
        say(d, q)
        clock.t += 10
    assert [t.question for t in d.history] == list(questions[2:])
    last = llm.prompts[-1]   # asked with the two turns before it, not the first
    assert questions[1] in last and questions[2] in last and questions[0] not in last
    clock.t += 61                        # the visitor left; the next one starts afresh
    say(d, "Where is the library?")
    assert "What is building 10?" not in llm.prompts[-1]
    assert [t.question for t in d.history] == ["Where is the library?"]


def test_noise_does_not_keep_the_last_visitors_memory(kb, retriever):
    d, clock = make(kb, retriever, ScriptedLLM(), session_timeout_s=60)
    say(d, "Where is the library?")
    for _ in range(3):                   # a busy hallway: the VAD fires, Whisper hears nothing
        clock.t += 40
        say(d, "")
    say(d, "How do I get there?")
    assert [t.question for t in d.history] == ["How do I get there?"]


class FailingLLM(ScriptedLLM):
    def stream(self, prompt):
        yield "Central Library "
        raise RuntimeError("llama_decode returned -3")


def test_a_failing_model_still_gets_the_grounded_answer(kb, retriever):
    d, _ = make(kb, retriever, FailingLLM())
    sentences, r = say(d, "Where is the library?")
    assert r.kind == "fallback" and "llama_decode" in r.guard
    assert "10" in " ".join(sentences)


@pytest.mark.models
def test_real_model_answer_is_grounded_and_remembered(pipeline):
    """With the real 270M model: whatever it writes, what is spoken names building 10 and
    nothing the facts do not contain, and the turn goes into memory."""
    d = Dialogue(pipeline.cfg, pipeline.kb, pipeline.dialogue.retriever, pipeline.llm)
    sentences, r = say(d, "Where is the library?")
    spoken = " ".join(sentences)
    assert r.kind in ("llm", "fallback") and "10" in spoken and r.sources == ["library"]
    assert "Question:" not in spoken and d.history[-1].answer == r.answer == spoken
    sentences, r = say(d, "도서관은 어디에 있나요?")
    assert r.lang == "ko" and "10" in " ".join(sentences) and len(d.history) == 2


def test_transcript_script_beats_a_wrong_asr_language(kb, retriever):
    """Whisper may label a Korean transcript "en"; the visitor still gets Korean."""
    d, _ = make(kb, retriever, ScriptedLLM("중앙도서관은 10번 건물이에요."))
    sentences, r = say(d, "도서관은 어디에 있나요?", lang="en")
    assert r.lang == "ko" and r.kind == "llm" and sentences == ["중앙도서관은 10번 건물이에요."]
    _, r = say(d, "???", lang="ko")
    assert r.lang == "ko" and r.kind == "none"
