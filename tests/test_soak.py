"""The soak (device/soak.py): the real kiosk (run_service around kiosk.listen) on real models,
fed by a simulated microphone, with every fault injected; sd_notify's watchdog over a real
AF_UNIX datagram socket during an injected hang; and `run` waiting for a microphone, through
device.audio's one sound-card seam (`_sounddevice`)."""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from campus_guide.config import Config
from device import audio
from device.soak import FAULTS, run_soak

CHUNK = 512


@pytest.fixture(scope="module")
def soak_pipeline(models_dir, tmp_path_factory):
    """Its own pipeline on the fast models (as conftest's `pipeline`), one thread per stage: on
    two cores shared with other jobs, llama.cpp's prompt pass on two threads took 3.5 s instead
    of 1 s. Its own state folder too: the soak blocks it and fills its turn log."""
    from device.pipeline import Pipeline

    c = Config(models_dir=str(models_dir))
    c.asr.model = "whisper-tiny.en"
    c.asr.cpu_threads = c.tts.threads = 1
    c.llm.n_threads = c.llm.n_threads_batch = 1
    c.llm.max_tokens = 48
    c.runtime.state_dir = str(tmp_path_factory.mktemp("soak-state"))
    p = Pipeline(c)
    yield p
    p.close()


class NotifySocket:
    """What systemd does for $NOTIFY_SOCKET: a bound datagram socket, read on its own thread."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                pass

    def pings(self) -> list[float]:
        return [t for t, m in self.messages if m == "WATCHDOG=1"]

    def texts(self) -> list[str]:
        return [m for _, m in self.messages]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path, monkeypatch):
    sock = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")      # 1 s: a ping every 0.5 s while fed
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


@pytest.mark.models
@pytest.mark.slow
def test_short_soak_with_every_fault(soak_pipeline, tmp_path, capsys):
    """40 clips, every fault kind: nothing lost, an answer after every fault, the watchdog
    missed only during the injected hang, memory flat."""
    out = tmp_path / "soak.json"
    started = time.monotonic()
    r = run_soak(soak_pipeline.cfg, 40, out, faults=True, seed=3, pipeline=soak_pipeline,
                 hung_turn_s=15.0, watchdog_s=3.0, progress=False)
    elapsed = time.monotonic() - started
    assert json.loads(out.read_text())["turns"] == 40

    assert r["lost"] == 0, [i for i in r["items"] if i["turn"] in r["lost_turns"]]
    for kind, f in r["faults"].items():
        assert f["injected"] >= 1, kind
        assert f["recovered"] == f["injected"], (kind, f)
    assert set(r["faults"]) == set(FAULTS)
    # The hang starved the watchdog (as systemd would see it), and nothing else did.
    assert r["watchdog_missed"] >= 1 and r["watchdog_missed_outside_hangs"] == 0, r["watchdog_misses"]
    assert all(r["faults"]["llm_hangs"]["watchdog_starved"])
    # Each fault the kiosk itself can see is logged, once, not as a flood.
    for kind in ("asr_raises", "llm_raises", "llm_hangs", "tts_raises", "speaker_raises",
                 "speaker_gone", "mic_ends", "state_unwritable"):
        assert all(1 <= n <= 3 for n in r["faults"][kind]["logged"]), (kind, r["faults"][kind])
    assert "check the speaker" in r["faults"]["speaker_gone"]["log"]
    assert "runtime.state_dir" in r["faults"]["state_unwritable"]["log"]
    assert "HUNG_TURN_S" in r["faults"]["llm_hangs"]["log"]
    assert r["restarts"] == r["faults"]["mic_ends"]["injected"]      # the exit, then the wait
    # Every clip was taken; the special ones are in the mix.
    kinds = {i["kind"] for i in r["items"]}
    assert {"silence", "noise", "cough", "monologue", "question"} <= kinds
    assert any(i["clip"].startswith("ko:") for i in r["items"])
    assert r["answered_questions"] >= r["questions"] - sum(f["injected"] for f in r["faults"].values())
    # Memory does not explode: the bounds catch a runaway (a leak per turn, an arena kept at the
    # size of its largest input); the 1,000-turn soak measures the plateau (docs/appliance.md,
    # "Memory over a long run").
    rows = {k: r[k] for k in ("rss_start_mb", "rss_end_mb", "rss_max_mb", "rss_growth_mb_per_turn")}
    assert r["rss_max_mb"] < r["rss_start_mb"] + 250, rows
    assert r["rss_growth_mb_per_turn"] < 3.0, rows
    assert r["latency_p50_s"] is not None and r["latency_p95_s"] >= r["latency_p50_s"]
    # The state folder is back, with the status of a kiosk that stopped and a rotated turn log.
    state = Path(soak_pipeline.cfg.runtime.state_dir)
    assert json.loads((state / "status.json").read_text())["state"] == "stopped"
    assert (state / "turns.jsonl.1").is_file()
    print(f"short soak: {elapsed:.0f} s")


@pytest.mark.models
def test_watchdog_pings_stop_during_a_hang_and_resume(soak_pipeline, tmp_path, notify):
    """Through the real Notifier and a real datagram socket: WATCHDOG=1 every half period while
    the loop turns, none while the LLM hangs past the hung-turn limit, and again after. (Seed
    24: "Hello!", a place question, which hangs, "Thank you.": short turns, so a short limit.)"""
    r = run_soak(soak_pipeline.cfg, 3, None, faults=["llm_hangs"], seed=24, pipeline=soak_pipeline,
                 hung_turn_s=4.0, watchdog_s=2.0, progress=False)
    assert [i["kind"] for i in r["items"]] == ["question"] * 3 and r["items"][1]["faults"] == ["llm_hangs"], r["items"]
    assert r["faults"]["llm_hangs"]["injected"] == 1
    (start, end), = r["faults"]["llm_hangs"]["windows_s"]
    start, end = r["t0_monotonic"] + start, r["t0_monotonic"] + end
    time.sleep(0.2)
    pings = notify.pings()
    gaps = [(b - a, a, b) for a, b in zip(pings, pings[1:])]
    gap, a, b = max(gaps)
    assert gap >= 2.0, gaps                       # starved for longer than the watchdog allows
    assert start <= a and b <= end + 1.0          # ... during the hang
    assert any(t < start for t in pings) and sum(t > b for t in pings) >= 2   # fed before and after
    assert all(g < 1.5 for g, x, y in gaps if y <= start or x >= end)         # and regularly otherwise
    texts = notify.texts()
    assert "READY=1\nSTATUS=listening; 0 turns served" in texts and texts[-1].startswith("STOPPING=1")
    assert r["lost"] == 0 and r["faults"]["llm_hangs"]["recovered"] == 1


# --- `run` without a microphone: waits, says so, feeds the watchdog, listens when one appears


class LateMicrophoneCard:
    """device.audio's sound-card seam: no input device for the first `missing` looks, then one
    that delivers quiet blocks; a speaker that takes what it is given."""

    PortAudioError = RuntimeError

    def __init__(self, missing: int):
        self.missing, self.looks, self.rescans = missing, 0, 0

    def _terminate(self):
        self.rescans += 1

    def _initialize(self):
        pass

    def query_devices(self, device=None, kind=None):
        if kind == "input":
            self.looks += 1
            if self.looks <= self.missing:
                raise ValueError("No input device matching None")
        return {"name": f"fake {kind}"}

    def InputStream(self, samplerate, blocksize, channels, dtype, device, callback):
        class Stream:
            active = False

            def start(self):
                self.active = True
                threading.Thread(target=self._run, daemon=True).start()

            def _run(self):
                while self.active:
                    callback(np.zeros((blocksize, 1), np.float32), blocksize, None, None)
                    time.sleep(blocksize / samplerate)

            def stop(self):
                self.active = False

            close = stop

        return Stream()

    def OutputStream(self, samplerate, channels, dtype, device):
        return SimpleNamespace(start=lambda: None, stop=lambda: None, close=lambda: None,
                               write=lambda data: None)


class FakePipeline:
    def __init__(self, cfg):
        self.tts = SimpleNamespace(sample_rate=22050)

    def close(self):
        pass


@pytest.mark.models
def test_run_waits_for_a_microphone_and_listens_when_it_appears(models_dir, tmp_path, notify, monkeypatch):
    from device.audio import Microphone, Speaker
    from device.service import Seams, run_service

    card = LateMicrophoneCard(missing=4)
    monkeypatch.setattr(audio, "_sounddevice", lambda: card)
    cfg = Config(models_dir=str(models_dir))
    cfg.runtime.state_dir = str(tmp_path / "state")
    status_file = tmp_path / "state" / "status.json"
    seen: dict = {}

    def listen(pipeline, mic, speaker, on_turn, on_tick, stop):
        seen["mic"], seen["speaker"] = mic, speaker
        seen["state"] = json.loads(status_file.read_text())["state"]
        for i, _ in enumerate(mic):          # the real Microphone, on the card that came late
            on_tick()
            if i == 20:
                stop.set()
                return

    def watch_status():
        while "waiting" not in seen:
            if status_file.is_file():
                try:
                    data = json.loads(status_file.read_text())
                except ValueError:
                    continue
                if data["state"] == "waiting":
                    seen["waiting"] = data
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_status, daemon=True)
    watcher.start()
    assert run_service(cfg, Seams(pipeline=FakePipeline, listen=listen), mic_poll_s=0.5) == 0
    watcher.join(2)
    time.sleep(0.2)

    assert isinstance(seen["mic"], Microphone) and isinstance(seen["speaker"], Speaker)
    assert card.looks == 6 and card.rescans == 5    # 4 looks without, 1 with, the open; re-listed each look
    assert "no microphone found" in seen["waiting"]["waiting_for"]
    assert seen["state"] == "ready"
    texts = notify.texts()
    ready = texts.index("READY=1\nSTATUS=waiting for a microphone")
    listening = texts.index("STATUS=listening; 0 turns served")
    assert texts[ready + 1:listening].count("WATCHDOG=1") >= 3   # fed all the while (~2 s)
    assert texts[-1].startswith("STOPPING=1")
    final = json.loads(status_file.read_text())
    assert final["state"] == "stopped" and final["waiting_for"] is None


@pytest.mark.models
def test_run_stopped_while_waiting_for_a_microphone(models_dir, tmp_path, notify, monkeypatch):
    from device.service import Seams, run_service

    monkeypatch.setattr(audio, "_sounddevice", lambda: LateMicrophoneCard(missing=10**6))
    cfg = Config(models_dir=str(models_dir))
    cfg.runtime.state_dir = str(tmp_path / "state")
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()          # systemctl stop
    assert run_service(cfg, Seams(pipeline=FakePipeline), stop=stop, mic_poll_s=0.5) == 0
    assert "READY=1\nSTATUS=waiting for a microphone" in notify.texts()
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["state"] == "stopped"


def test_status_says_waiting_for_a_microphone(tmp_path, capsys, monkeypatch):
    import device.appliance_cli as cli
    from campus_guide.cli import main
    from device.service import Status, StatusWriter

    monkeypatch.setattr(cli, "_systemd_state", lambda: None)
    state = tmp_path / "state"
    StatusWriter(state, Status(state="waiting", waiting_for="no microphone found (...)"))
    config = tmp_path / "kiosk.yaml"
    config.write_text(f"runtime:\n  state_dir: {state}\n")
    assert main(["--config", str(config), "status"]) == 3
    out = capsys.readouterr().out
    assert "WAITING for a microphone" in out and "waiting:    no microphone found" in out


def test_microphone_overflow_is_logged_once_with_what_to_do(monkeypatch, caplog):
    from campus_guide.config import AudioConfig
    from device.audio import Microphone

    monkeypatch.setattr(audio, "_sounddevice", lambda: LateMicrophoneCard(missing=0))
    mic = Microphone(AudioConfig())
    try:
        block = np.zeros((CHUNK, 1), np.float32)
        with caplog.at_level(logging.WARNING, logger="device.audio"):
            for _ in range(5):
                mic._callback(block, CHUNK, None, SimpleNamespace(input_overflow=True))
    finally:
        mic.close()
    warnings = [r for r in caplog.records if "overflow" in r.getMessage()]
    assert len(warnings) == 1 and "CPU load" in warnings[0].getMessage() and mic.overflows == 5


def test_unknown_fault_kind_is_refused():
    from campus_guide.errors import UserError

    with pytest.raises(UserError, match="unknown fault kind"):
        run_soak(Config(), 3, None, faults=["cosmic_ray"])
