"""The device pipeline end to end on real models (whisper tiny.en, Gemma-3 270M, piper, espeak),
real WAV audio, and the kiosk loop's half-duplex gate with a fake microphone and speaker (the one
thing this machine lacks)."""
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from campus_guide.prompt import language_of
from device.audio import CHUNK, read_wav, resample, write_wav
from device.kiosk import listen
from device.pipeline import Collector

pytestmark = pytest.mark.models


def assert_speech(audio, rate):
    """Valid, non-silent, unclipped speech of a plausible length."""
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.5 < len(audio) / rate < 60
    rms = float(np.sqrt(np.mean(audio ** 2)))
    assert 0.01 < rms < 0.5 and np.abs(audio).max() <= 1.0
    # Speech has pauses: some 50-ms frames are much quieter than the loud ones.
    frames = audio[: len(audio) // 1102 * 1102].reshape(-1, 1102)
    energy = np.sqrt((frames ** 2).mean(axis=1))
    assert energy.max() > 10 * np.percentile(energy, 10)


def test_bundled_wav_end_to_end(pipeline, question_en, tmp_path):
    r = pipeline.ask_audio(question_en)
    assert "library" in r.transcript.lower() and r.language == "en"
    assert "10" in r.answer or "Central Lawn" in r.answer
    assert r.sources == ["library"] and r.kind in ("llm", "fallback")
    assert_speech(r.audio, r.sample_rate)
    t = r.timings
    assert 0 < t.asr_s <= t.first_token_s <= t.first_sentence_s <= t.first_audio_s <= t.total_s
    assert r.rss_mb > 100
    # The spoken answer, written and heard back by Whisper, says what the text says.
    out = write_wav(tmp_path / "a.wav", r.audio, r.sample_rate)
    heard = pipeline.asr.transcribe(read_wav(out)).text.lower()
    assert "library" in heard and ("10" in heard or "ten" in heard)
    line = (Path(pipeline.cfg.runtime.state_dir) / "turns.jsonl").read_text().splitlines()[-1]
    logged = json.loads(line)
    assert logged["transcript"] == r.transcript and logged["timings"]["total_s"] > 0


def test_korean_text_question_gets_a_korean_spoken_answer(pipeline):
    r = pipeline.ask_text("도서관은 어디에 있나요?")
    assert r.language == "ko" and language_of(r.answer) == "ko" and "10" in r.answer
    assert r.timings.asr_s is None and r.sources == ["library"]
    assert_speech(r.audio, r.sample_rate)


def test_sequential_baseline_says_the_same(pipeline):
    pipeline.dialogue.history.clear()
    a = pipeline.ask_text("Where is the student union?")
    pipeline.dialogue.history.clear()
    b = pipeline.ask_text("Where is the student union?", sequential=True)
    assert a.answer == b.answer and b.mode == "sequential" and "2" in a.answer
    assert abs(len(a.audio) - len(b.audio)) < 0.25 * len(a.audio)


def test_slow_token_stream_neither_stops_playback_early_nor_hangs(pipeline, monkeypatch):
    """Tokens arrive with long gaps: the first sentence is already playing during the gap, and
    every sentence is still spoken to the end."""
    parts = ["Central Library is building 10.", " It is north of the Central Lawn."]
    done = {}

    def slow_stream(prompt):
        yield parts[0]
        for i in range(0, len(parts[1]), 4):    # then 0.3 s per token
            time.sleep(0.3)
            yield parts[1][i:i + 4]
        done["t"] = time.perf_counter()

    class Sink(Collector):
        def play_stream(self, chunks):
            for c in chunks:
                done.setdefault("first_audio", time.perf_counter())
                self.chunks.append(c)

    monkeypatch.setattr(pipeline.llm, "stream", slow_stream)
    pipeline.dialogue.history.clear()
    sink = Sink()
    r = pipeline.ask_text("Where is the library?", sink)
    assert r.kind == "llm" and r.answer == " ".join(p.strip() for p in parts)
    assert done["first_audio"] < done["t"]     # spoke while the model was still "thinking"
    whole = sum(len(c) for s in ("Central Library is building 10.", "It is north of the Central Lawn.")
                for c in pipeline.tts.synthesize(s, "en"))
    assert abs(len(sink.audio) - whole) < 0.1 * whole     # both sentences, to the end (piper varies a little)


def test_silence_and_noise_give_no_answer(pipeline):
    rng = np.random.default_rng(0)
    silence = np.zeros(16000 * 3, np.float32)
    noise = (rng.standard_normal(16000 * 3) * 0.05).astype(np.float32)
    for audio in (silence, noise):
        r = pipeline.ask_audio(audio)
        assert r.kind == "none" and r.answer == "" and (r.audio is None or not len(r.audio))


def test_clipped_question_is_still_understood(pipeline, question_en):
    clipped = np.clip(question_en * 20, -1, 1)
    assert (np.abs(clipped) >= 1).mean() > 0.05
    r = pipeline.ask_audio(clipped)
    assert "library" in r.transcript.lower() and r.answer


def _speech_only(audio):
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    loud = np.sqrt((frames ** 2).mean(axis=1)) > 0.01
    return frames[loud].reshape(-1)


def test_sixty_second_monologue_is_cut_cleanly(pipeline, question_en):
    speech = _speech_only(question_en)
    monologue = np.tile(speech, int(np.ceil(60 * 16000 / len(speech))))[: 60 * 16000]
    u = pipeline.utterance(monologue)
    assert u.cut and u.duration_s <= pipeline.cfg.vad.max_utterance_s + 0.1
    # (Transcribing 15 s of one repeated sentence sends Whisper into its temperature fallbacks,
    # ~20 s here; the cut is what this test is about.)
    assert abs(len(u.audio) - pipeline.cfg.vad.max_utterance_s * 16000) < 16000


class FakeMic:
    """The visitor's question, then silence until the kiosk speaks, then the kiosk's own voice
    leaking into the microphone while it plays, then silence. Ends after `tail` chunks."""

    def __init__(self, question, speaker, echo, tail=60):
        self.question, self.speaker, self.echo, self.tail = question, speaker, echo, tail
        self.chunks = 0

    def __iter__(self):
        def feed(audio):
            for i in range(0, len(audio) - CHUNK + 1, CHUNK):
                self.chunks += 1
                yield audio[i:i + CHUNK]

        yield from feed(self.question)
        quiet = np.zeros(CHUNK, np.float32)
        deadline = time.monotonic() + 120
        while not self.speaker.started.is_set() and time.monotonic() < deadline:
            self.chunks += 1
            yield quiet
            time.sleep(0.005)
        while self.speaker.playing:
            for c in feed(self.echo):      # the kiosk hears itself
                yield c
                time.sleep(0.002)
                if not self.speaker.playing:
                    break
        for _ in range(self.tail):
            self.chunks += 1
            yield quiet
            time.sleep(0.002)


class FakeSpeaker:
    """Takes the audio and 'plays' it for at least `seconds`; stop() ends playback early."""

    def __init__(self, seconds=1.5):
        self.seconds, self.received, self.stopped = seconds, [], 0
        self.started, self._stop, self.playing = threading.Event(), threading.Event(), False

    def play_stream(self, chunks):
        self.playing = True
        self.started.set()
        try:
            end = time.monotonic() + self.seconds
            for c in chunks:
                self.received.append(c)
            while time.monotonic() < end and not self._stop.is_set():
                time.sleep(0.01)
        finally:
            self.playing = False

    def stop(self):
        self.stopped += 1
        self._stop.set()

    def resume(self):
        self._stop.clear()


def _kiosk(pipeline, question, echo, speaker=None):
    speaker = speaker or FakeSpeaker()
    mic = FakeMic(question, speaker, echo)
    turns, ticks = [], []
    listen(pipeline, mic, speaker, on_turn=turns.append, on_tick=lambda: ticks.append(1))
    return turns, ticks, mic, speaker


def test_half_duplex_ignores_the_kiosk_own_voice(pipeline, question_en):
    pipeline.dialogue.history.clear()
    turns, ticks, mic, speaker = _kiosk(pipeline, question_en, echo=question_en)
    assert len(turns) == 1 and "library" in turns[0].transcript.lower()
    assert speaker.received and speaker.stopped == 0
    assert len(ticks) == mic.chunks                 # the watchdog was fed on every chunk


def test_a_hung_turn_starves_the_watchdog(pipeline, question_en, monkeypatch):
    """A turn stuck in playback (an unplugged speaker blocks its writes): the microphone still
    delivers, but the watchdog goes unfed, so systemd restarts the kiosk."""
    import device.kiosk

    monkeypatch.setattr(device.kiosk, "HUNG_TURN_S", 0.5)
    pipeline.dialogue.history.clear()
    turns, ticks, mic, _ = _kiosk(pipeline, question_en, echo=question_en,
                                  speaker=FakeSpeaker(seconds=3.0))
    assert len(turns) == 1
    assert len(ticks) < mic.chunks - 50             # chunks read while hung fed nothing


def test_barge_in_stops_playback_and_takes_the_new_question(pipeline, question_en, monkeypatch):
    monkeypatch.setattr(pipeline.cfg.audio, "barge_in", True)
    pipeline.dialogue.history.clear()
    turns, _, _, speaker = _kiosk(pipeline, question_en, echo=question_en)
    assert speaker.stopped >= 1 and len(turns) == 2


@pytest.mark.parametrize("pause_s", [0.5, 1.0])
def test_a_file_is_one_visitor_turn_pauses_included(pipeline, pause_s):
    """`ask --wav` of "Excuse me. [pause] Where is the library?" answers the question, not the
    opener (the VAD alone closes the first utterance after 0.45 s of silence)."""
    def say(text):
        audio = np.concatenate(list(pipeline.tts.synthesize(text, "en")))
        return resample(audio, pipeline.tts.sample_rate, 16000)

    gap = np.zeros(int(pause_s * 16000), np.float32)
    audio = np.concatenate([gap, say("Excuse me."), gap, say("Where is the library?"), gap])
    r = pipeline.ask_audio(audio)
    assert "excuse me" in r.transcript.lower() and "library" in r.transcript.lower()
    assert r.kind in ("llm", "fallback") and "library" in r.sources


def test_the_turn_log_is_bounded_and_words_can_stay_out(pipeline, tmp_path, monkeypatch):
    from device.pipeline import TURN_LOG, _TurnLog

    rt = pipeline.cfg.runtime
    monkeypatch.setattr(rt, "log_transcripts", False)
    monkeypatch.setattr(rt, "turn_log_max_mb", 2000 / 2**20)      # 2 kB: a few turns
    monkeypatch.setattr(pipeline, "state_dir", tmp_path)
    monkeypatch.setattr(pipeline, "_turns", _TurnLog(tmp_path / TURN_LOG, rt))
    for _ in range(12):
        pipeline.ask_text("hi")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [TURN_LOG, f"{TURN_LOG}.1", f"{TURN_LOG}.2"]     # turn_log_keep copies, no more
    assert all(p.stat().st_size <= 2000 + 1000 for p in tmp_path.iterdir())
    rows = [json.loads(x) for p in tmp_path.iterdir() for x in p.read_text().splitlines()]
    assert rows and all("transcript" not in r and "answer" not in r and r["kind"] == "social" for r in rows)


def test_an_unwritable_state_folder_costs_no_answer(pipeline, tmp_path, monkeypatch, caplog):
    from device.pipeline import TURN_LOG, _TurnLog

    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setattr(pipeline, "state_dir", blocked)
    monkeypatch.setattr(pipeline, "_turns", _TurnLog(blocked / TURN_LOG, pipeline.cfg.runtime))
    r = pipeline.ask_text("Where is the gym?")
    assert r.answer and "cannot write" in caplog.text and "runtime.state_dir" in caplog.text
    assert pipeline.ask_text("Where is the library?").answer
    assert caplog.text.count("cannot write") == 1            # once per outage, not per turn
    monkeypatch.setattr(pipeline, "state_dir", tmp_path / "state")
    monkeypatch.setattr(pipeline, "_turns", _TurnLog(tmp_path / "state" / TURN_LOG, pipeline.cfg.runtime))
    pipeline.ask_text("Where is the gym?")
    assert "written again" in caplog.text and (tmp_path / "state" / TURN_LOG).is_file()


def test_the_loaded_kiosk_listens_on_no_network_port(pipeline):
    """No network listener, ever: every socket this process holds, after loading every model
    and answering, is checked against the kernel's table of listening TCP/UDP sockets."""
    import os

    pipeline.ask_text("Where is the library?")
    mine = {os.readlink(f"/proc/self/fd/{fd}")[8:-1] for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}") and os.readlink(f"/proc/self/fd/{fd}").startswith("socket:[")}
    listening = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = f"/proc/self/net/{table}"
        if os.path.exists(path):
            for row in open(path).read().splitlines()[1:]:
                cols = row.split()
                if cols[3] in ("0A", "07"):        # TCP LISTEN; UDP unconnected (bound)
                    listening.add(cols[9])
    assert not mine & listening
