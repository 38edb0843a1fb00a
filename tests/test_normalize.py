"""Text normalisation for speech: golden strings in both languages, the Korean numeral systems,
and every Korean answer the sample campus can give read without a digit left."""
from __future__ import annotations

import re

import pytest

from campus_guide.config import SAMPLE_KB
from campus_guide.knowledge.answers import entry_answer, route_answer
from campus_guide.knowledge.routes import find_route
from campus_guide.knowledge.schema import KBError, load_kb
from device.normalize import native, normalize_for_speech, sino


@pytest.mark.parametrize("n,spoken", [
    (0, "영"), (1, "일"), (10, "십"), (11, "십일"), (20, "이십"), (100, "백"), (101, "백일"),
    (110, "백십"), (440, "사백사십"), (1000, "천"), (1500, "천오백"), (2400, "이천사백"),
    (9999, "구천구백구십구"), (10000, "만"), (12345, "만 이천삼백사십오"), (20000, "이만"),
    (100000000, "일억"),
])
def test_sino_korean_numerals(n, spoken):
    assert sino(n) == spoken


@pytest.mark.parametrize("n,spoken", [
    (1, "한"), (2, "두"), (3, "세"), (4, "네"), (5, "다섯"), (9, "아홉"), (10, "열"), (11, "열한"),
    (12, "열두"), (20, "스무"), (21, "스물한"), (24, "스물네"), (30, "서른"), (99, "아흔아홉"),
    (100, "백"), (0, "영"),                              # outside 1..99: Sino-Korean
])
def test_native_korean_numerals(n, spoken):
    assert native(n) == spoken


def test_native_korean_numerals_alone():
    assert [native(n, counter=False) for n in (1, 2, 3, 4, 20, 22)] == \
        ["하나", "둘", "셋", "넷", "스물", "스물둘"]


@pytest.mark.parametrize("text,spoken", [
    # native Korean: clock hours, hours, counts
    ("3시", "세 시"), ("9시", "아홉 시"), ("12시", "열두 시"), ("2개", "두 개"), ("3명", "세 명"),
    ("24시간", "스물네 시간"), ("1시간 20분", "한 시간 이십 분"), ("3번째 건물", "세 번째 건물"),
    ("1번째", "첫 번째"), ("3정거장", "세 정거장"), ("스무 살", "스무 살"), ("20살", "스무 살"),
    # Sino-Korean: numbers that name things, and measures
    ("10번", "십 번"), ("10번 건물", "십 번 건물"), ("5분", "오 분"), ("440m", "사백사십 미터"),
    ("3층", "삼 층"), ("1층으로", "일 층으로"), ("2번 출구", "이 번 출구"),
    ("1.5km", "일 점 오 킬로미터"), ("350 m", "삼백오십 미터"), ("2400m", "이천사백 미터"),
    ("1,200m", "천이백 미터"), ("지하철 2호선", "지하철 이 호선"), ("7번 버스", "칠 번 버스"),
    ("301호", "삼백일 호"), ("30초", "삼십 초"), ("2024년", "이천이십사 년"), ("50%", "오십 퍼센트"),
    ("6월 10일", "유 월 십 일"), ("1200석", "천이백 석"), ("2인실", "이 인실"), ("5 min", "오 분"),
    ("제1공학관", "제일공학관"), ("33", "삼십삼"), ("3분의 1", "삼 분의 일"), ("007", "영 영 칠"),
    # ranges: the counter is said on both ends
    ("3~5분", "삼 분에서 오 분"), ("2~3개", "두 개에서 세 개"), ("10–20", "십에서 이십"),
    ("3–5 km", "삼 킬로미터에서 오 킬로미터"),
    # clock times
    ("09:00–18:00", "오전 아홉 시부터 오후 여섯 시까지"),
    ("09:00-18:00", "오전 아홉 시부터 오후 여섯 시까지"),
    ("09:00~18:00", "오전 아홉 시부터 오후 여섯 시까지"),
    ("09:00 ~ 18:00", "오전 아홉 시부터 오후 여섯 시까지"),
    ("08:30", "오전 여덟 시 삼십 분"), ("8:05", "오전 여덟 시 오 분"), ("12:00", "낮 열두 시"),
    ("12:30", "낮 열두 시 삼십 분"), ("13:00", "오후 한 시"), ("17:30", "오후 다섯 시 삼십 분"),
    ("23:00", "오후 열한 시"), ("00:00", "자정"), ("24:00", "자정"), ("00:30", "밤 열두 시 삼십 분"),
    ("07:00–24:00", "오전 일곱 시부터 자정까지"), ("오후 3:00", "오후 세 시"),
    ("오전 9:00–오후 6:00", "오전 아홉 시부터 오후 여섯 시까지"),
    # weekdays in hours
    ("화–토 10:00–17:00 (일·월 휴관)",
     "화요일부터 토요일까지 오전 열 시부터 오후 다섯 시까지 (일요일과 월요일 휴관)"),
    ("평일 09:00–21:00, 토 09:00–13:00",
     "평일 오전 아홉 시부터 오후 아홉 시까지, 토요일 오전 아홉 시부터 오후 한 시까지"),
    ("월·수·금", "월요일, 수요일과 금요일"), ("평일", "평일"), ("일요일", "일요일"),
    # Latin codes and acronyms, letters as Koreans name them
    ("B12", "비 십이"), ("B12 건물로 가세요.", "비 십이 건물로 가세요."), ("E3-2", "이 삼 이"),
    ("B12와 C3 사이", "비 십이와 씨 삼 사이"), ("B1층", "지하 일 층"), ("IT관", "아이티관"),
    ("ATM", "에이티엠"),
    # phone numbers digit by digit, 0 as 공
    ("02-123-4567", "공이 일이삼 사오육칠"), ("1588-1234", "일오팔팔 일이삼사"),
    # sentences
    ("평일 09:00~18:30, 약 350m", "평일 오전 아홉 시부터 오후 여섯 시 삼십 분까지, 약 삼백오십 미터"),
    ("중앙도서관은 10번 건물로, 시계탑 맞은편에 있습니다. 운영 시간은 평일 08:00–23:00입니다.",
     "중앙도서관은 십 번 건물로, 시계탑 맞은편에 있습니다. 운영 시간은 평일 오전 여덟 시부터 "
     "오후 열한 시까지입니다."),
    ("정문에서 도서관까지 약 440m, 걸어서 6분 정도입니다.",
     "정문에서 도서관까지 약 사백사십 미터, 걸어서 육 분 정도입니다."),
    ("정문 → 분수광장 → **도서관**", "정문, 그다음 분수광장, 그다음 도서관"),
    ("7번 버스를 타고 다섯 정거장(약 12분) 가세요.", "칠 번 버스를 타고 다섯 정거장(약 십이 분) 가세요."),
    ("거주자 24시간 (방문 09:00–22:00)", "거주자 스물네 시간 (방문 오전 아홉 시부터 오후 열 시까지)"),
    ("시계탑 맞은편에 있어요.", "시계탑 맞은편에 있어요."),
])
def test_korean_is_normalised_for_speech(text, spoken):
    assert normalize_for_speech(text, "ko") == spoken


@pytest.mark.parametrize("text,spoken", [
    ("Go to B12, then E3-2.", "Go to B 12, then E 3 2."),
    ("Open 08:00–23:00, about 350 m or 5 min.",
     "Open 8 a.m. to 11 p.m., about 350 metres or 5 minutes."),
    ("Gate → Lawn → **Library**", "Gate, then Lawn, then Library"),
    ("Daily 07:00–24:00, lunch at 12:00.", "Daily 7 a.m. to midnight, lunch at noon."),
    ("weekdays 09:00–18:00", "weekdays 9 a.m. to 6 p.m."),
    ("weekdays 09:00-18:00", "weekdays 9 a.m. to 6 p.m."),
    ("weekdays 09:00~18:00", "weekdays 9 a.m. to 6 p.m."),
    ("08:30", "8 30 a.m."), ("17:30", "5 30 p.m."), ("00:00", "midnight"), ("00:30", "12 30 a.m."),
    ("440 m", "440 metres"), ("440m", "440 metres"), ("1.5km", "1.5 kilometres"),
    ("about 1 min", "about 1 minute"), ("1 minutes", "1 minute"), ("11 min", "11 minutes"),
    ("0.1 km", "0.1 kilometres"), ("2 h", "2 hours"), ("50%", "50 percent"),
    ("B12", "B 12"), ("b12", "B 12"), ("building 10", "building 10"),
    ("Central Library is building 10, north of the Central Lawn.",
     "Central Library is building 10, north of the Central Lawn."),
    ("It is about 440 m, 6 minutes on foot.", "It is about 440 metres, 6 minutes on foot."),
])
def test_english_is_normalised_for_speech(text, spoken):
    assert normalize_for_speech(text, "en") == spoken


def test_other_languages_are_read_as_english():
    assert normalize_for_speech("09:00–18:00, 440 m", "fr") == "9 a.m. to 6 p.m., 440 metres"


def test_nothing_but_markup_is_empty():
    assert normalize_for_speech(" ... ** ", "en") == "..."
    assert normalize_for_speech("**", "ko") == ""


def test_every_sample_campus_answer_reads_without_a_digit():
    kb = load_kb(SAMPLE_KB)
    for e in kb.entries():
        written = entry_answer(kb, e.id, "ko")
        spoken = normalize_for_speech(written, "ko")
        assert not re.search(r"[0-9]", spoken), (written, spoken)
        assert not re.search(r"[A-Za-z]", spoken), (written, spoken)   # no code, unit or acronym left
        assert "–" not in spoken and "~" not in spoken, spoken
        english = normalize_for_speech(entry_answer(kb, e.id, "en"), "en")
        assert not re.search(r"\d:\d\d|\b1 (?:minute|metre)s\b|\d ?m\b", english), english


def test_the_sample_campus_answers_read_right():
    kb = load_kb(SAMPLE_KB)
    said = {e.id: normalize_for_speech(entry_answer(kb, e.id, "ko"), "ko") for e in kb.entries()}
    assert said["admin"] == ("본관은 일 번 건물로, 분수광장 서쪽, 국기 게양대 옆에 있습니다. "
                             "운영 시간은 평일 오전 아홉 시부터 오후 여섯 시까지입니다.")
    assert "이 번 건물" in said["student_union"] and "오전 일곱 시부터 오후 열 시까지" in said["student_union"]
    assert "오후 열한 시까지" in said["library"] and "십 번 건물" in said["library"]


def test_every_route_from_the_main_gate_reads_without_a_digit():
    kb = load_kb(SAMPLE_KB)
    checked = 0
    for e in kb.entries():
        try:
            route = find_route(kb, "main_gate", e.id)
        except KBError:
            continue                                       # off campus without a walking route
        spoken = normalize_for_speech(route_answer(kb, route, "ko"), "ko")
        assert not re.search(r"[0-9A-Za-z]", spoken), spoken
        assert "미터" in spoken or not route.steps, spoken
        checked += 1
    assert checked > 40
