"""Written answer -> what a voice should read.

English: building codes letter by letter ("B12" -> "B 12"), 24-hour times and ranges as spoken
("09:00–18:00" -> "9 a.m. to 6 p.m."), units spelt out ("440 m" -> "440 metres"), arrows and
markup removed.

Korean: the same, and every number written out in Hangul in the numeral system its counter
word takes, so espeak-ng (or any Korean voice) never has to guess how to read "3":

  native Korean (한 두 세 … 열두 … 스무 …)  clock hours and counts: 3시 -> 세 시, 2개 -> 두 개,
                                           24시간 -> 스물네 시간, 3번째 -> 세 번째
  Sino-Korean (일 이 삼 … 십 백 천 만)      numbers of buildings, rooms, floors, exits, lines;
                                           minutes, seconds, metres, years, money; phone
                                           numbers digit by digit; any number without a counter

Clock times: 00:00 and 24:00 are 자정; 12:xx is 낮 열두 시 (chosen over 오후 열두 시); 00:xx is
밤 열두 시; otherwise 오전 / 오후 with the 12-hour native hour and Sino minutes
("08:30" -> "오전 여덟 시 삼십 분"). A time range reads "A부터 B까지", a counted range
"A 분에서 B 분". Numbers in the wrong system are what a Korean listener notices first, so the
counter table below is the one place to extend.
"""
from __future__ import annotations

import re

from campus_guide.korean import SYLLABLE, wa

NATIVE, SINO, ORDINAL = "native", "sino", "ordinal"

# Counter word -> numeral system of the number before it. Ambiguous counters (장: sheets or
# chapter, 대: vehicles or "the 2nd") are left out; a number without a counter reads Sino-Korean.
COUNTERS = {
    # native Korean: clock hours, durations in hours, counted things and people
    "시": NATIVE, "시간": NATIVE, "개": NATIVE, "명": NATIVE, "사람": NATIVE, "살": NATIVE,
    "마리": NATIVE, "잔": NATIVE, "권": NATIVE, "곳": NATIVE, "군데": NATIVE, "가지": NATIVE,
    "정거장": NATIVE, "달": NATIVE, "번째": ORDINAL,
    # Sino-Korean: numbers that name something, and measures
    "번": SINO, "번지": SINO, "호": SINO, "호선": SINO, "호실": SINO, "호관": SINO, "층": SINO,
    "동": SINO, "출구": SINO, "분": SINO, "초": SINO, "년": SINO, "월": SINO, "일": SINO,
    "주": SINO, "개월": SINO, "학년": SINO, "학기": SINO, "회": SINO, "차": SINO, "인분": SINO,
    "원": SINO, "석": SINO, "인": SINO, "인실": SINO, "도": SINO, "퍼센트": SINO,
    "미터": SINO, "킬로미터": SINO, "센티미터": SINO,
}

# Latin letters as Korean speakers name them, for building codes like "B12" in Korean answers.
KO_LETTERS = dict(zip(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "에이 비 씨 디 이 에프 지 에이치 아이 제이 케이 엘 엠 엔 오 피 큐 알 에스 티 유 브이 더블유 엑스 와이 제트".split(),
))

_SINO_DIGITS = "영일이삼사오육칠팔구"
_SINO_PLACES = ("", "십", "백", "천")
_SINO_GROUPS = ("", "만", "억", "조", "경")
_NATIVE_ONES = ("", "하나", "둘", "셋", "넷", "다섯", "여섯", "일곱", "여덟", "아홉")
_NATIVE_BEFORE_COUNTER = ("", "한", "두", "세", "네", "다섯", "여섯", "일곱", "여덟", "아홉")
_NATIVE_TENS = ("", "열", "스물", "서른", "마흔", "쉰", "예순", "일흔", "여든", "아흔")
_MONTHS = {6: "유", 10: "시"}          # 유월, 시월: the two months whose numeral changes


def sino(n: int) -> str:
    """Sino-Korean reading of 0 <= n < 10^20: 10 -> 십, 440 -> 사백사십, 12345 -> 만 이천삼백사십오
    (no 일 before 십/백/천, nor before 만; a space after each 만/억/조 group)."""
    if n < 0:
        return "마이너스 " + sino(-n)
    if n == 0:
        return "영"
    if n >= 10 ** 20:
        return digits(str(n))
    groups = []
    for g in range(len(_SINO_GROUPS)):
        n, part = divmod(n, 10000)
        if part:
            words = "".join(("" if d == 1 and p else _SINO_DIGITS[d]) + _SINO_PLACES[p]
                            for p in (3, 2, 1, 0) if (d := part // 10 ** p % 10))
            groups.append(("" if part == 1 and g == 1 else words) + _SINO_GROUPS[g])
        if not n:
            break
    return " ".join(reversed(groups))


def native(n: int, counter: bool = True) -> str:
    """Native Korean reading of 1..99 (before a counter: 한 두 세 네 스무), else Sino-Korean."""
    if not 0 < n < 100:
        return sino(n)
    tens, ones = divmod(n, 10)
    if counter and n == 20:
        return "스무"
    return _NATIVE_TENS[tens] + (_NATIVE_BEFORE_COUNTER if counter else _NATIVE_ONES)[ones]


def digits(s: str, zero: str = "영") -> str:
    """Digit by digit, as phone numbers and codes are read: "0212" -> "공이일이" with zero="공"."""
    return "".join(zero if c == "0" else _SINO_DIGITS[int(c)] for c in s if c.isdigit())


def ko_number(written: str, counter: str = "") -> str:
    """A written number ("3", "1,200", "1.5", "007") in the system `counter` takes."""
    whole, _, frac = written.replace(",", "").partition(".")
    if frac:
        return f"{sino(int(whole))} 점 {' '.join(_SINO_DIGITS[int(c)] for c in frac)}"
    if len(whole) > 1 and whole.startswith("0"):
        return " ".join(_SINO_DIGITS[int(c)] for c in whole)
    n, system = int(whole), COUNTERS.get(counter, SINO)
    if system == ORDINAL:
        return "첫" if n == 1 else native(n)
    if system == NATIVE:
        return native(n)
    if counter == "월" and n in _MONTHS:
        return _MONTHS[n]
    return sino(n)


def ko_time(h: int, m: int, part: str | None = None) -> str:
    """"08:30" -> "오전 여덟 시 삼십 분"; 12:00 -> "낮 열두 시"; 00:00 / 24:00 -> "자정".
    `part` is a 오전/오후/… the writer already put before the time."""
    h %= 24
    if h == 0 and not m and not part:
        return "자정"
    if part is None:
        part = "밤" if h == 0 else "오전" if h < 12 else "낮" if h == 12 else "오후"
    return f"{part} {native(h % 12 or 12)} 시" + (f" {sino(m)} 분" if m else "")


_SYL = SYLLABLE.pattern
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_TIME = r"(?<![\d:])([01]?\d|2[0-4]):([0-5]\d)(?![\d:])"
_PART = r"(?:(오전|오후|낮|밤|새벽|아침|저녁)\s*)?"
_TIME_RANGE = re.compile(_PART + _TIME + r"\s*[–~-]\s*" + _PART + _TIME)
_TIME_ONE = re.compile(_PART + _TIME)
_EN_TIME = re.compile(_TIME)
_EN_TIME_RANGE = re.compile(_TIME + r"\s*-\s*" + _TIME)
_RANGE = re.compile(r"(\d[\d:]*)\s*[–~]\s*(\d[\d:]*)")
_COUNTER_WORDS = "|".join(sorted(COUNTERS, key=len, reverse=True))
_KO_RANGE = re.compile(rf"({_NUM})\s*[–~]\s*({_NUM})\s*({_COUNTER_WORDS})?")
_KO_COUNTED = re.compile(rf"({_NUM})\s*({_COUNTER_WORDS})")
_KO_NUMBER = re.compile(_NUM)
_PHONE = re.compile(r"(?<![\w-])(0\d{1,2}-\d{3,4}-\d{4}|1[5-9]\d\d-\d{4})(?![\w-])")
_BASEMENT = re.compile(r"(?<![A-Za-z0-9])B(\d+)\s*층")
_CODE = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{1,3})-?(\d+)(?:-(\d+))?(?!\d)")
_ACRONYM = re.compile(r"(?<![A-Za-z])[A-Z]{1,4}(?![A-Za-z])")
_UNIT = re.compile(r"(\d)\s*(km|mins?|m|h|%)(?![A-Za-z])")
_UNITS = {
    "en": {"km": "kilometres", "m": "metres", "min": "minutes", "mins": "minutes", "h": "hours",
           "%": "percent"},
    "ko": {"km": "킬로미터", "m": "미터", "min": "분", "mins": "분", "h": "시간", "%": "퍼센트"},
}
_ONE_UNIT = re.compile(r"(?<![\d.,])(1 (?:kilometre|metre|minute|hour))s\b")
_DAYS = "월화수목금토일"
_DAY_RANGE = re.compile(rf"(?<!{_SYL})([{_DAYS}])\s*[–~-]\s*([{_DAYS}])(?!{_SYL})")
_DAY_LIST = re.compile(rf"(?<!{_SYL})[{_DAYS}](?:·[{_DAYS}])+(?!{_SYL})")
_DAY_BEFORE_TIME = re.compile(rf"(?<!{_SYL})([{_DAYS}])(?=\s+\d{{1,2}}:\d\d)")
_MARKUP = re.compile(r"[*_#`|<>\[\]{}]+")
_ARROW = re.compile(r"\s*(?:→|->|=>)\s*")
_THEN = {"en": ", then ", "ko": ", 그다음 "}


def normalize_for_speech(text: str, lang: str) -> str:
    """What a voice should read for a written answer in `lang` ("ko"; anything else is English)."""
    lang = "ko" if lang == "ko" else "en"
    text = _MARKUP.sub(" ", text)
    text = _ARROW.sub(_THEN[lang], text)
    text = _korean(text) if lang == "ko" else _english(text)
    return re.sub(r"\s+", " ", text).strip()


def _english(text: str) -> str:
    text = _EN_TIME_RANGE.sub(r"\1:\2 to \3:\4", text)
    text = _RANGE.sub(r"\1 to \2", text)
    text = _EN_TIME.sub(lambda m: _en_time(int(m.group(1)), int(m.group(2))), text)
    text = _UNIT.sub(lambda m: f"{m.group(1)} {_UNITS['en'][m.group(2)]}", text)
    text = _ONE_UNIT.sub(r"\1", text)                                   # "1 minutes" -> "1 minute"
    return _CODE.sub(lambda m: " ".join([" ".join(m.group(1).upper()), m.group(2)]
                                        + ([m.group(3)] if m.group(3) else [])), text)


def _en_time(h: int, mm: int) -> str:
    """24-hour clock times as people say them: "08:30" -> "8 30 a.m.", 12:00 -> "noon"."""
    if h in (0, 24) and not mm:
        return "midnight"
    if h == 12 and not mm:
        return "noon"
    h12 = h % 12 or 12
    return f"{h12}" + (f" {mm:02d}" if mm else "") + (" a.m." if h < 12 or h == 24 else " p.m.")


def _day(abbrev: str) -> str:
    return abbrev + "요일"                                                 # 화 -> 화요일


def _and(words: list[str]) -> str:
    """["월요일", "수요일", "금요일"] -> "월요일, 수요일과 금요일"."""
    return ", ".join(words[:-2] + [f"{wa(words[-2])} {words[-1]}"])


def _korean(text: str) -> str:
    text = _DAY_RANGE.sub(lambda m: f"{_day(m.group(1))}부터 {_day(m.group(2))}까지", text)
    text = _DAY_LIST.sub(lambda m: _and([_day(d) for d in m.group(0).split("·")]), text)
    text = _DAY_BEFORE_TIME.sub(lambda m: _day(m.group(1)), text)

    def time_range(m: re.Match) -> str:
        p1, h1, m1, p2, h2, m2 = m.groups()
        return f"{ko_time(int(h1), int(m1), p1)}부터 {ko_time(int(h2), int(m2), p2)}까지"

    text = _TIME_RANGE.sub(time_range, text)
    text = _TIME_ONE.sub(lambda m: ko_time(int(m.group(2)), int(m.group(3)), m.group(1)), text)
    text = _PHONE.sub(lambda m: " ".join(digits(g, "공") for g in m.group(1).split("-")), text)
    text = _BASEMENT.sub(r"지하 \1층", text)

    def code(m: re.Match) -> str:
        letters = " ".join(KO_LETTERS[c] for c in m.group(1).upper())
        numbers = [ko_number(n) for n in m.groups()[1:] if n]
        return " ".join([letters, *numbers])

    text = _CODE.sub(code, text)
    text = _UNIT.sub(lambda m: f"{m.group(1)} {_UNITS['ko'][m.group(2)]}", text)

    def counted_range(m: re.Match) -> str:
        a, b, c = m.group(1), m.group(2), m.group(3) or ""
        if not c:
            return f"{ko_number(a)}에서 {ko_number(b)}"
        return f"{ko_number(a, c)} {c}에서 {ko_number(b, c)} {c}"

    text = _ACRONYM.sub(lambda m: "".join(KO_LETTERS[c] for c in m.group(0)), text)  # IT관 -> 아이티관
    text = _KO_RANGE.sub(counted_range, text)
    text = _KO_COUNTED.sub(lambda m: f"{ko_number(m.group(1), m.group(2))} {m.group(2)}", text)
    return _KO_NUMBER.sub(lambda m: ko_number(m.group(0)), text)
