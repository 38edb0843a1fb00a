"""What a recogniser and a hurried visitor do to a question, for the two places that need it:
the retrieval evaluation (`kb eval`) and the training dataset's noisy questions. Seeded by the
caller's `random.Random`, so every generated set is reproducible."""
from __future__ import annotations

import random

from ..korean import join_syllable, split_syllable

# Vowels and final consonants Whisper tends to confuse in Korean (관 -> 간, 원 -> 웡 ...).
_VOWEL_SLIP = {0: 4, 1: 5, 4: 8, 5: 1, 6: 4, 8: 13, 9: 0, 13: 18, 14: 4, 18: 13, 20: 19, 11: 5, 10: 1}
_FINAL_SLIP = {4: 21, 21: 4, 1: 0, 8: 0, 16: 4, 17: 16}
# Whole-word slips a recogniser makes (contractions, case, dropped words and punctuation).
_ASR_EN = [("Where is", "where's"), ("What's", "whats"), ("the ", ""), ("How do I", "how do i"),
           ("building", "bilding"), ("?", ""), (".", "")]
_ASR_KO = [(" ", ""), ("?", ""), ("관", "간"), ("요", "여"), ("건물", "건무")]


def misspell(text: str, rng: random.Random) -> str:
    """One slip: a Korean vowel or final consonant heard wrong, or an English letter dropped,
    doubled or swapped with its neighbour. Returns `text` unchanged when there is nothing to vary."""
    hangul = [i for i, ch in enumerate(text) if split_syllable(ch) is not None]
    if hangul:
        i = rng.choice(hangul)
        cho, jung, jong = split_syllable(text[i])
        if jong in _FINAL_SLIP and rng.random() < 0.5:
            jong = _FINAL_SLIP[jong]
        elif jung in _VOWEL_SLIP:
            jung = _VOWEL_SLIP[jung]
        else:
            jong = _FINAL_SLIP.get(jong, jong)
        return text[:i] + join_syllable(cho, jung, jong) + text[i + 1:]
    letters = [i for i, ch in enumerate(text) if ch.isalpha() and 0 < i < len(text) - 1
               and text[i - 1].isalpha()]
    if not letters:
        return text
    i = rng.choice(letters)
    op = rng.randrange(3)
    if op == 0:
        return text[:i] + text[i + 1:]
    if op == 1:
        return text[:i] + text[i] + text[i:]
    return text[:i - 1] + text[i] + text[i - 1] + text[i + 1:]


def add_noise(question: str, lang: str, rng: random.Random) -> tuple[str, str]:
    """('asr' | 'typo', noisy question): half the time what a recogniser writes (a contraction,
    a dropped word, no punctuation), else one `misspell` slip."""
    if rng.random() < 0.5:
        subs = [(a, b) for a, b in (_ASR_KO if lang == "ko" else _ASR_EN) if a in question]
        if subs:
            a, b = rng.choice(subs)
            q = question.replace(a, b, 1)
            return "asr", (q.lower() if lang == "en" else q).strip()
    return "typo", misspell(question, rng)


# Sounds a recogniser confuses: English spellings of near-identical sounds, Korean initial
# consonants that differ only in aspiration or tension (ㄱ/ㅋ/ㄲ, ㄷ/ㅌ, ㅂ/ㅍ, ㅈ/ㅊ, ㅅ/ㅆ).
_EN_SOUNDS = [("ph", "f"), ("f", "ph"), ("ck", "k"), ("c", "k"), ("k", "c"), ("s", "z"), ("z", "s"),
              ("oo", "u"), ("ee", "ea"), ("ea", "ee"), ("b", "p"), ("p", "b"), ("d", "t"), ("t", "d"),
              ("g", "k"), ("m", "n"), ("n", "m"), ("l", "r"), ("r", "l"), ("v", "b"), ("th", "d"),
              ("er", "a"), ("ing", "in"), ("tion", "shun"), ("ou", "ow"), ("i", "e"), ("e", "i")]
_ONSETS = "bcdfghjklmnprstvw"
_KO_ONSET = {0: 15, 15: 0, 1: 0, 3: 16, 16: 3, 7: 17, 17: 7, 12: 14, 14: 12, 9: 10, 10: 9}
CONFUSIONS = ("sound", "rhyme", "drop", "jamo")


def confuse(name: str, kind: str, rng: random.Random) -> str:
    """An ASR-like confusion of a place name, of one kind:
    sound  a sound spelt as its neighbour ("Law Scool", "수영짱" ㅈ->ㅉ)
    rhyme  an English word with another first consonant ("Guest Mouse"), a Korean initial
           consonant changed ("학생회관" -> "학생쾨관")
    drop   a syllable dropped ("Swimming Pol", "실내수장")
    jamo   one Korean vowel or final consonant heard wrong, or one English letter slip
    Returns `name` unchanged when the kind does not apply."""
    hangul = [i for i, ch in enumerate(name) if split_syllable(ch) is not None]
    if kind == "jamo":
        return misspell(name, rng)
    if hangul:
        if kind == "drop" and len(hangul) >= 3:
            i = rng.choice(hangul[1:])
            return name[:i] + name[i + 1:]
        if kind in ("sound", "rhyme"):
            choices = [i for i in hangul if split_syllable(name[i])[0] in _KO_ONSET]
            if choices:
                i = rng.choice(choices)
                cho, jung, jong = split_syllable(name[i])
                return name[:i] + join_syllable(_KO_ONSET[cho], jung, jong) + name[i + 1:]
        return name
    words = name.split()
    idx = [i for i, w in enumerate(words) if len(w) >= 3 and w.isalpha()]
    if not idx:
        return name
    i = rng.choice(idx)
    w = words[i]
    if kind == "sound":
        subs = [(a, b) for a, b in _EN_SOUNDS if a in w.lower()[1:]]
        if not subs:
            return name
        a, b = rng.choice(subs)
        low = w.lower()
        k = low.index(a, 1)
        w = w[:k] + b + w[k + len(a):]
    elif kind == "rhyme":
        if w[0].lower() not in _ONSETS:
            return name
        c = rng.choice([x for x in _ONSETS if x != w[0].lower()])
        w = (c.upper() if w[0].isupper() else c) + w[1:]
    elif kind == "drop":
        vowels = [k for k in range(1, len(w) - 1) if w[k].lower() in "aeiou"]
        if not vowels:
            return name
        k = rng.choice(vowels)
        w = w[:k] + w[k + 1:]
    words[i] = w
    return " ".join(words)
