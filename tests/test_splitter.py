"""Sentence splitting for streamed TTS: where a sentence ends, and how soon it is known."""
import threading
import time

from device.splitter import split_sentences


def split(text, max_chars=160, piece=None, first_chars=None):
    pieces = [text] if piece is None else [text[i:i + piece] for i in range(0, len(text), piece)]
    return list(split_sentences(pieces, max_chars, first_chars))


def test_english_sentences_and_non_ends():
    text = "The library is building 12. It is 3.5 km from B.12, says Dr. Kim! Is St. Mary open? Yes."
    assert split(text) == ["The library is building 12.", "It is 3.5 km from B.12, says Dr. Kim!",
                           "Is St. Mary open?", "Yes."]


def test_korean_endings_even_without_a_space():
    text = "도서관은 10번 건물이에요.중앙잔디광장 북쪽에 있습니다. 걸어서 3.5분 걸려요!정말요?"
    assert split(text) == ["도서관은 10번 건물이에요.", "중앙잔디광장 북쪽에 있습니다.",
                           "걸어서 3.5분 걸려요!", "정말요?"]


def test_same_result_token_by_token():
    text = "It is 3.5 km away. Dr. Kim works at B.12.\n도서관은 10번 건물이에요. 끝"
    assert split(text, piece=1) == split(text) == [
        "It is 3.5 km away.", "Dr. Kim works at B.12.", "도서관은 10번 건물이에요.", "끝"]


def test_newlines_quotes_and_ellipsis():
    assert split('- First line\n- Second line\nHe said "turn left." Then... go!') == [
        "- First line", "- Second line", 'He said "turn left."', "Then...", "go!"]


def test_run_on_is_cut_at_a_comma_then_a_space():
    text = ("walk past the fountain, then the library, then the long row of trees along the lawn "
            "and keep going until you see the red brick tower on your left and the gate behind it")
    parts = split(text, max_chars=45)
    assert all(len(p) <= 45 for p in parts)
    assert parts[0] == "walk past the fountain, then the library,"
    assert " ".join(parts) == text
    hangul = "가" * 100
    assert split(hangul, max_chars=30) == ["가" * 30] * 3 + ["가" * 10]


def test_empty_and_whitespace():
    assert split("") == [] and split("  \n \n") == []


def test_yields_each_sentence_before_the_stream_ends():
    """A slow generator: the first sentence must come out while the rest is still pending."""
    release = threading.Event()

    def slow():
        yield "First sentence."
        yield " Second"
        release.wait(5)
        yield " sentence."

    got = []
    it = split_sentences(slow(), 160)
    got.append(next(it))              # must not block on `release`
    assert got == ["First sentence."]
    release.set()
    assert list(it) == ["Second sentence."]


def test_slow_pieces_do_not_cut_sentences():
    def trickle():
        for ch in "Go north. Then turn left.":
            time.sleep(0.001)
            yield ch

    assert list(split_sentences(trickle(), 160)) == ["Go north.", "Then turn left."]


def test_a_long_first_sentence_is_cut_early_at_a_clause_mark():
    text = ("Central Library: building 10, north of the Central Lawn, facing the Clock Tower; "
            "open weekdays 08:00-23:00. It has a cafe, copiers and reading rooms.")
    assert split(text, first_chars=60, piece=3) == [
        "Central Library: building 10, north of the Central Lawn,",
        "facing the Clock Tower; open weekdays 08:00-23:00.",
        "It has a cafe, copiers and reading rooms."]
    assert split("Short one, really. Then, another.", first_chars=60) == [
        "Short one, really.", "Then, another."]
    assert split("no clause marks at all in this first sentence here.", first_chars=20) == [
        "no clause marks at all in this first sentence here."]
