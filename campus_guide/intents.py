"""What kind of turn a visitor's words are, before any retrieval: social words (a greeting,
thanks, goodbye, an opener like "excuse me" / "저기요"), a yes or no (the answer to the kiosk's
"Did you mean ...?"), and the words that point back at the conversation ("it", "there", "거기").
The dialogue uses these to reply in kind and to carry a place from one question to the next;
the training dataset uses the same patterns for its examples."""
from __future__ import annotations

import re
from dataclasses import dataclass

SOCIAL_KINDS = ("greeting", "thanks", "bye", "opener")

# Each pattern matches the whole phrase at the start of what was said (after punctuation).
_SOCIAL = {
    "greeting": r"hi|hello|hey(?: there)?|good (?:morning|afternoon|evening)|안녕하세요|안녕하십니까|안녕|반갑습니다|반가워요",
    "thanks": r"thanks(?: a lot| so much)?|thank you(?: (?:very|so) much)?|thx|cheers|감사합니다|감사해요|고맙습니다|고마워요|고마워",
    "bye": r"(?:good)?bye(?: bye)?|see you(?: later)?|have a (?:nice|good) day|안녕히 계세요|안녕히 가세요|잘 있어요|수고하세요",
    "opener": r"excuse me|sorry|pardon|um+|uh+|hmm+|er+|so|well|okay|ok|저기요|저기|실례합니다|실례지만|음+|어+|혹시",
}
_SOCIAL_RE = {k: re.compile(rf"^\s*(?:{v})(?=$|[\s,.!?~]|요)[\s,.!?~]*", re.IGNORECASE) for k, v in _SOCIAL.items()}
_YES = re.compile(r"^\s*(?:yes|yeah|yep|right|correct|exactly|that's right|that one|sure|네|예|맞아요|맞습니다|맞아|응|그래요|네 맞아요)(?:요)?[\s,.!?~]*(?:please|thanks|thank you)?[\s,.!?~]*$", re.IGNORECASE)
_NO = re.compile(r"^\s*(?:no|nope|not that|wrong|아니요|아니에요|아뇨|아니|아닙니다)(?=$|[\s,.!?~])[\s,.!?~]*", re.IGNORECASE)
# Words that point at a place the conversation already named.
_BACK = re.compile(
    r"\b(?:it|its|it's|(?<!is )(?<!are )there(?! is| are)|that|this one|that one|the same)\b|"
    r"거기|그곳|그 건물|그 곳|그건|그거|그 장소|그쪽|그럼|그러면|그리고|그\s*다음", re.IGNORECASE)


@dataclass(frozen=True)
class Social:
    """The social words a turn starts with, and what was said after them."""
    kind: str | None        # bye > thanks > greeting > opener, or None
    rest: str               # the question that follows ("" when the turn was only social)


def split_social(text: str) -> Social:
    """Peel greetings, thanks and openers off the front: "Excuse me, hi, where is the
    library?" -> Social("opener", "where is the library?")."""
    kinds, rest = set(), text.strip()
    while rest:
        for kind, pattern in _SOCIAL_RE.items():
            m = pattern.match(rest)
            if m and m.end() > 0:
                kinds.add(kind)
                rest = rest[m.end():].strip()
                break
        else:
            break
    # "okay, thanks, bye" is a goodbye: the weightiest kind speaks for the turn
    return Social(next((k for k in ("bye", "thanks", "greeting", "opener") if k in kinds), None), rest)


def yes_no(text: str) -> str | None:
    """'yes' / 'no' when the turn answers a yes-or-no question, else None. A "no" may go on
    ("no, the gym"): `split_no` gives what follows it."""
    if _YES.match(text):
        return "yes"
    if _NO.match(text):
        return "no"
    return None


def after_no(text: str) -> str:
    """'No, the gym.' -> 'the gym.'"""
    m = _NO.match(text)
    return text[m.end():].strip() if m else text


# What a question asks about a place, without naming it ("what number?", "몇 시까지 해요?").
_ASKS = re.compile(
    r"\b(?:what|which) (?:building )?number|number\b|how long|how far|how many minutes|"
    r"\b(?:when|what time)\b|hours|\bopen|\bclose|next to|\bnear|nearby|around|directions|"
    r"how (?:do|can) i get|where is it|where's that|"
    r"몇\s*번|번호|몇\s*시|언제|얼마나|몇\s*분|멀어|멀리|옆|근처|주변|가는|어떻게\s*가|어디", re.IGNORECASE)


def asks_about_a_place(text: str) -> bool:
    """Whether the turn asks something one can ask of a place (its number, hours, the way)."""
    return _ASKS.search(text) is not None


def points_back(text: str) -> bool:
    """Whether the turn refers to a place said before ("what number is it?", "거기 몇 시까지 해요?")."""
    return _BACK.search(text) is not None
