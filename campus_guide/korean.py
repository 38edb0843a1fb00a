"""Korean text helpers, in one place: what counts as Hangul, syllable <-> jamo, and the particle
that follows a word (은/는, 이/가, 을/를, 과/와, 으로/로), which depends on whether the word's last
sound is a consonant (batchim). Answers, training questions, the guard, retrieval and speech
normalisation all use these, so a rule fixed here is fixed everywhere."""
from __future__ import annotations

import re

SYLLABLE = re.compile(r"[\uac00-\ud7a3]")                                 # 가..힣
HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")           # syllables + jamo
LETTER = re.compile(r"[A-Za-z\uac00-\ud7a3]")                             # a Latin letter or a syllable

_BASE, _COUNT = 0xAC00, 11172
CHO = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
JUNG = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
JONG = " ㄱㄲㄳㄴㄵㄶㄷㄹㄺㄻㄼㄽㄾㄿㅀㅁㅂㅄㅅㅆㅇㅈㅊㅋㅌㅍㅎ"
RIEUL_JONG = 8

# Sino-Korean digit readings that end in a consonant (영 일 삼 육 칠 팔), for particle choice.
_DIGIT_BATCHIM = set("013678")


def has_hangul(text: str) -> bool:
    return SYLLABLE.search(text) is not None


def split_syllable(ch: str) -> tuple[int, int, int] | None:
    """(initial, vowel, final) indexes of a Hangul syllable, or None for anything else."""
    code = ord(ch) - _BASE
    if not 0 <= code < _COUNT:
        return None
    return code // 588, (code % 588) // 28, code % 28


def join_syllable(cho: int, jung: int, jong: int = 0) -> str:
    return chr(_BASE + cho * 588 + jung * 28 + jong)


def jamo(text: str) -> str:
    """Syllables as compatibility jamo, so an edit distance counts '관'->'간' as one slip."""
    out = []
    for ch in text:
        parts = split_syllable(ch)
        out.append(ch if parts is None else CHO[parts[0]] + JUNG[parts[1]] + JONG[parts[2]].strip())
    return "".join(out)


def has_batchim(word: str) -> bool:
    """Whether the last sound of `word` is a consonant (picks 은/는, 이/가, 으로/로)."""
    for ch in reversed(word.strip()):
        parts = split_syllable(ch)
        if parts is not None:
            return parts[2] != 0
        if ch.isdigit():
            return ch in _DIGIT_BATCHIM
        if ch.isalpha():
            return ch.lower() in "lmnr"
    return False


def josa(word: str, with_batchim: str, without: str) -> str:
    """`word` followed by the particle form that fits its last sound."""
    return word + (with_batchim if has_batchim(word) else without)


def topic(word: str) -> str:
    return josa(word, "은", "는")


def subject(word: str) -> str:
    return josa(word, "이", "가")


def obj(word: str) -> str:
    return josa(word, "을", "를")


def wa(word: str) -> str:
    """'A와' / 'A과' (and)."""
    return josa(word, "과", "와")


def ro(word: str) -> str:
    """The particle 으로/로 for `word` (로 after a vowel or ㄹ)."""
    last = word.strip()[-1:]
    parts = split_syllable(last) if last else None
    rieul = parts is not None and parts[2] == RIEUL_JONG
    return "으로" if has_batchim(word) and not rieul else "로"
