"""The one Gemma chat format, imported by both training and the device.

Nothing else in the project writes a chat template: a prompt that differs by one newline between
training and inference is a model that answers worse on the kiosk than in evaluation.

Gemma has no system role, so the instruction and the grounding facts go into the *current* user
turn (the facts belong to the question they were retrieved for); earlier turns are plain
user/model pairs. The rendered text carries no `<bos>`: the tokenizer adds exactly one
(llama.cpp `tokenize(add_bos=True)`, HF `add_special_tokens=True`). A literal `<bos>` in the text
would double it, which Gemma punishes with noticeably worse output.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .korean import HANGUL

BOS = "<bos>"
EOS = "<eos>"
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
BOS_ID, EOS_ID = 2, 1  # the same in every Gemma generation

# Generation stops at either; both are also written as eos in generation_config.json on merge.
STOP_STRINGS: tuple[str, ...] = (END_OF_TURN, EOS)
CHAT_FORMAT = "gemma"

LANGUAGES = ("ko", "en")

INSTRUCTION = {
    "en": "You are the campus guide. Answer in English in one to three short sentences, "
          "using only the facts below. If they do not answer the question, say you do not know.",
    "ko": "당신은 캠퍼스 안내원입니다. 아래 사실만 사용해 한국어로 한두 문장으로 짧게 답하세요. "
          "사실에 답이 없으면 모른다고 말하세요.",
}

# Fixed answers, shared so training teaches exactly what the device says without the model.
UNKNOWN = {
    "en": "Sorry, I don't know that. I can help with campus buildings, places nearby and directions.",
    "ko": "죄송하지만 그건 잘 모르겠어요. 캠퍼스 건물, 주변 장소, 길 안내를 도와드릴 수 있어요.",
}
REDIRECT = {
    "en": "I'm the campus guide, so I can only help with buildings, places nearby and directions.",
    "ko": "저는 캠퍼스 안내원이라 건물, 주변 장소, 길 안내만 도와드릴 수 있어요.",
}

_LATIN = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class Turn:
    """One finished exchange kept as conversation memory."""
    question: str
    answer: str


def stop_token_ids(token_id: Callable[[str], int | None]) -> list[int]:
    """The ids of STOP_STRINGS in a loaded vocabulary, `<eos>` first. They are never hard-coded:
    `<end_of_turn>` is 107 in Gemma 1/2 but 106 in Gemma-3, where 107 is a newline — a constant
    would stop the deployed model at its first line break."""
    return [i for i in (token_id(s) for s in reversed(STOP_STRINGS)) if i is not None]


def language_of(text: str, default: str = "en") -> str:
    """'ko' when Hangul outweighs Latin letters, else 'en' (building codes like 'B12' stay Latin)."""
    ko, en = len(HANGUL.findall(text)), len(_LATIN.findall(text))
    if ko == 0 and en == 0:
        return default
    return "ko" if ko >= en / 3 else "en"


def _user(text: str) -> str:
    return f"{START_OF_TURN}user\n{text}{END_OF_TURN}\n"


def _model(text: str) -> str:
    return f"{START_OF_TURN}model\n{text}{END_OF_TURN}\n"


def render_prompt(
    question: str,
    facts: Sequence[str] = (),
    history: Iterable[Turn] = (),
    lang: str | None = None,
) -> str:
    """The text the model continues: past turns, then instruction + facts + question, then the
    opening of the model turn. `facts=()` renders the memorised (ungrounded) variant."""
    lang = lang or language_of(question)
    if lang not in INSTRUCTION:
        raise ValueError(f"unsupported language {lang!r}; expected one of {LANGUAGES}")
    past = "".join(_user(t.question) + _model(t.answer) for t in history)
    body = INSTRUCTION[lang]
    if facts:
        body += "\n\nFacts:\n" + "\n".join(f"- {f}" for f in facts)
    body += f"\n\nQuestion: {question.strip()}"
    return past + _user(body) + f"{START_OF_TURN}model\n"


def render_plain(question: str) -> str:
    """A bare user turn, no instruction and no facts: the model as it is outside the campus
    (what `train eval --retention` asks it general questions with)."""
    return _user(question.strip()) + f"{START_OF_TURN}model\n"


def render_target(answer: str) -> str:
    """The training label for a prompt: the answer and the end-of-turn token, which must be
    learned or the fine-tune never stops."""
    return f"{answer.strip()}{END_OF_TURN}"


def clean_answer(text: str) -> str:
    """Strip stop markers and whitespace from generated text."""
    for s in STOP_STRINGS + (START_OF_TURN,):
        text = text.split(s, 1)[0]
    return text.strip()
