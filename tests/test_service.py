"""sd_notify against a real AF_UNIX datagram socket, run_service's life cycle, status.json and
`campus-guide status`. Only the sound card is faked (there is none here)."""
from __future__ import annotations

import json
from dataclasses import asdict
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from campus_guide.cli import main
from campus_guide.bundle import SCHEMA_VERSION, Manifest
from campus_guide.errors import UserError
from campus_guide.config import Config
from device.service import Notifier, Seams, ServiceError, Status, StatusWriter, model_info, run_service

CHUNK = 512


class NotifySocket:
    """What systemd does: bind a datagram socket, hand its address over in $NOTIFY_SOCKET."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def receive(self, until, timeout: float = 60.0) -> None:
        """Collect messages until until(messages) is true (or the time is up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(self.texts):
            try:
                text = self.sock.recv(4096).decode()
                self.messages.append((time.monotonic(), text))
            except socket.timeout:
                pass

    @property
    def texts(self) -> list[str]:
        return [m for _, m in self.messages]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path, monkeypatch):
    sock = NotifySocket(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")   # 0.1 s: pings every 0.05 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def test_notifier_without_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.watchdog_interval is None
    n.ready("x")
    n.watchdog()
    n.stopping()


def test_notifier_speaks_to_an_abstract_socket():
    address = f"@campus-guide-test-{os.getpid()}"
    sock = NotifySocket(address)
    try:
        n = Notifier({"NOTIFY_SOCKET": address})
        n.ready("listening")
        sock.receive(lambda t: t, timeout=5)
        assert sock.texts == ["READY=1\nSTATUS=listening"]
    finally:
        sock.close()


def test_watchdog_pings_at_half_the_period_and_only_for_its_own_pid(tmp_path):
    sock = NotifySocket(str(tmp_path / "n"))
    now = [0.0]
    env = {"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "30000000"}
    n = Notifier(env, clock=lambda: now[0])
    assert n.watchdog_interval == 15.0
    for t in (0.0, 0.032, 5.0, 14.9, 15.0, 20.0, 30.1):   # audio ticks
        now[0] = t
        n.watchdog()
    sock.receive(lambda t: len(t) >= 3, timeout=5)
    assert sock.texts == ["WATCHDOG=1"] * 3                  # at 0, 15.0 and 30.1
    other = Notifier(dict(env, WATCHDOG_PID=str(os.getpid() + 1)))
    assert other.watchdog_interval is None                   # systemd watches another process
    sock.close()


def test_status_writer_is_atomic_and_records_turns_and_errors(tmp_path):
    from device.pipeline import Timings, TurnResult

    w = StatusWriter(tmp_path / "state", Status(model={"path": "m.gguf", "sha256": "ab"}))
    w.turn(TurnResult("where is the library", "en", answer="North.", kind="llm",
                      timings=Timings(asr_s=0.5, first_audio_s=1.25, total_s=2.0)))
    w.error("kiosk: turn failed: RuntimeError: boom")
    data = json.loads((tmp_path / "state" / "status.json").read_text())
    assert data["turns"] == 1 and data["pid"] == os.getpid()
    assert data["last_turn"]["timings"] == {"asr_s": 0.5, "first_audio_s": 1.25, "total_s": 2.0}
    assert data["last_turn"]["kind"] == "llm"
    assert "where is the library" not in json.dumps(data)     # a visitor's words stay out
    assert "boom" in data["last_error"]["message"]
    assert data["rss_mb"] > 10 and data["peak_rss_mb"] >= data["rss_mb"]
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["status.json"]  # no temp left


def test_model_info_reads_a_flashed_bundle_manifest(tmp_path):
    bundle = tmp_path / "bundles" / "gemma-Q4_K_M-1234abcd"
    bundle.mkdir(parents=True)
    (bundle / "model.gguf").write_bytes(b"GGUF")
    m = Manifest(SCHEMA_VERSION, bundle.name, "model.gguf", "f" * 64, 4, "Q4_K_M", "gemma3", "test",
                 None, "gemma", ["<end_of_turn>", "<eos>"], [1, 106], 2048, 2048, 4, None,
                 "2026-01-01T00:00:00+00:00")
    (bundle / "manifest.json").write_text(json.dumps(asdict(m)))
    (tmp_path / "current").symlink_to("bundles/" + bundle.name)
    cfg = Config(models_dir=str(tmp_path / "models"))
    cfg.llm.model = str(tmp_path / "current" / "model.gguf")
    info = model_info(cfg)
    assert info["sha256"] == "f" * 64
    assert info["manifest"]["name"] == bundle.name
    assert info["resolved"] == str(bundle / "model.gguf")


# --- run_service: the real budget check on the real model files; fake pipeline and sound card


class FakePipeline:
    loaded_at: float | None = None

    def __init__(self, cfg):
        time.sleep(0.2)                      # "loading models"
        FakePipeline.loaded_at = time.monotonic()
        self.closed = False

    def close(self):
        self.closed = True


def fake_mic():
    while True:                              # a microphone never ends by itself
        time.sleep(0.01)
        yield np.zeros(CHUNK, np.float32)


def fake_listen(pipeline, mic, speaker, on_turn, on_tick, stop):
    """The kiosk loop's contract: on_tick per chunk, on_turn per answered question."""
    from device.pipeline import Timings, TurnResult

    for i, _ in enumerate(mic):
        on_tick()
        if stop.is_set():
            return
        if i == 20:
            on_turn(TurnResult("q", "en", answer="a", kind="llm", timings=Timings(total_s=1.5)))
        if i == 25:
            logging.getLogger("device.kiosk").error("kiosk: turn failed")


def sigterm_when(sock: NotifySocket, until) -> threading.Thread:
    """Like `systemctl stop`: SIGTERM once the kiosk has said enough (or after 60 s anyway)."""
    def watch():
        sock.receive(until)
        os.kill(os.getpid(), signal.SIGTERM)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def kiosk_cfg(models_dir: Path, tmp_path: Path) -> Config:
    cfg = Config(models_dir=str(models_dir))
    cfg.runtime.state_dir = str(tmp_path / "state")
    return cfg


@pytest.mark.models
def test_run_service_ready_after_load_watchdog_while_listening_stopping_on_sigterm(
        models_dir, tmp_path, notify):
    cfg = kiosk_cfg(models_dir, tmp_path)
    pipelines = []
    seams = Seams(pipeline=lambda c: pipelines.append(FakePipeline(c)) or pipelines[-1],
                  audio=lambda c, p: (fake_mic(), None), listen=fake_listen)
    status_file = tmp_path / "state" / "status.json"
    watcher = sigterm_when(notify, lambda t: t.count("WATCHDOG=1") >= 6 and status_file.is_file()
                           and json.loads(status_file.read_text())["last_error"] is not None)
    started = time.monotonic()
    assert run_service(cfg, seams) == 0
    watcher.join(5)
    notify.receive(lambda t: any(m.startswith("STOPPING=1") for m in t), timeout=5)
    elapsed = time.monotonic() - started

    texts = notify.texts
    assert texts[0] == "STATUS=loading models"
    ready = next(i for i, m in enumerate(texts) if m.startswith("READY=1"))
    ready_at = notify.messages[ready][0]
    assert ready_at >= FakePipeline.loaded_at               # READY only once the models are in
    assert "WATCHDOG=1" not in texts[:ready]                 # no watchdog before the loop runs
    assert texts.count("WATCHDOG=1") <= elapsed / 0.05 + 2   # rate-limited, not per 10-ms tick
    assert "STATUS=listening; 1 turns served" in texts
    assert texts[-1].startswith("STOPPING=1")
    assert pipelines[0].closed

    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["state"] == "stopped" and status["turns"] == 1
    assert status["last_turn"]["timings"] == {"total_s": 1.5}
    assert "turn failed" in status["last_error"]["message"]
    assert status["model"]["sha256"] and len(status["model"]["sha256"]) == 64


@pytest.mark.models
def test_run_service_fails_when_the_microphone_stops(models_dir, tmp_path, notify):
    cfg = kiosk_cfg(models_dir, tmp_path)
    ended = iter([np.zeros(CHUNK, np.float32)] * 3)          # unplugged after 3 chunks
    seams = Seams(pipeline=FakePipeline, audio=lambda c, p: (ended, None), listen=fake_listen)
    with pytest.raises(ServiceError, match="microphone"):
        run_service(cfg, seams)
    notify.receive(lambda t: any(m.startswith("STOPPING=1") for m in t), timeout=5)
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["state"] == "failed" and "microphone" in status["last_error"]["message"]


@pytest.mark.models
def test_run_service_refuses_over_budget_before_loading(models_dir, tmp_path, notify):
    cfg = kiosk_cfg(models_dir, tmp_path)
    cfg.budget.total_gb = 0.25
    seams = Seams(pipeline=lambda c: pytest.fail("loaded models over budget"),
                  audio=lambda c, p: (fake_mic(), None), listen=fake_listen)
    with pytest.raises(UserError, match="OVER BUDGET") as e:
        run_service(cfg, seams)
    assert "LLM KV cache" in str(e.value)                    # the table is in the error
    notify.receive(lambda t: False, timeout=0.3)
    assert not any(m.startswith("READY=1") for m in notify.texts)
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["state"] == "failed" and "OVER BUDGET" in status["last_error"]["message"]


class FakeSpeaker:
    """The sound card's seam: takes the audio and says when it is playing."""

    def __init__(self):
        self.playing, self.samples = False, 0

    def play_stream(self, chunks):
        self.playing = True
        try:
            self.samples += sum(len(c) for c in chunks)
        finally:
            self.playing = False

    def stop(self):
        pass

    def resume(self):
        pass


@pytest.mark.models
def test_run_service_serves_a_spoken_question_through_the_real_kiosk_loop(
        pipeline, question_en, tmp_path, notify):
    """The real pipeline and kiosk.listen; the microphone plays a recorded question, then
    silence. READY, a turn, watchdog pings during the turn, STOPPING after SIGTERM."""
    cfg = pipeline.cfg
    cfg.runtime.state_dir = str(tmp_path / "state")
    speaker = FakeSpeaker()

    def mic():
        audio = np.concatenate([np.zeros(8000, np.float32), question_en, np.zeros(16000, np.float32)])
        for i in range(0, len(audio) - CHUNK, CHUNK):
            yield audio[i:i + CHUNK]
        while True:
            time.sleep(0.005)
            yield np.zeros(CHUNK, np.float32)

    seams = Seams(pipeline=lambda c: pipeline, audio=lambda c, p: (mic(), speaker))
    pipeline_close, pipeline.close = pipeline.close, lambda: None   # the fixture closes it
    try:
        sigterm_when(notify, lambda t: "STATUS=listening; 1 turns served" in t)
        assert run_service(cfg, seams) == 0
    finally:
        pipeline.close = pipeline_close
    notify.receive(lambda t: any(m.startswith("STOPPING=1") for m in t), timeout=5)
    texts = notify.texts
    turn = texts.index("STATUS=listening; 1 turns served")
    assert "WATCHDOG=1" in texts[texts.index("READY=1\nSTATUS=listening; 0 turns served"):turn]
    assert speaker.samples > 0
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["turns"] == 1 and status["state"] == "stopped"
    assert status["last_turn"]["timings"]["total_s"] > 0


# --- campus-guide status


def write_config(tmp_path: Path, state: Path) -> Path:
    cfg = tmp_path / "kiosk.yaml"
    cfg.write_text(f"runtime:\n  state_dir: {state}\n")
    return cfg


@pytest.fixture
def no_systemd(monkeypatch):
    """Whether the machine running the tests boots with systemd must not change the answers."""
    import device.appliance_cli as cli

    monkeypatch.setattr(cli, "_systemd_state", lambda: None)
    return monkeypatch


def test_status_command_reports_the_kiosk(tmp_path, capsys, no_systemd):
    state = tmp_path / "state"
    w = StatusWriter(state, Status(model={"path": "/b/model.gguf", "sha256": "c0ffee" * 10}))
    w.update(state="ready", turns=3, last_turn={"at": "2026-01-01T00:00:00+00:00", "kind": "llm",
                                               "language": "ko", "timings": {"total_s": 2.5}})
    cfg = write_config(tmp_path, state)

    assert main(["--config", str(cfg), "status"]) == 0   # this process is the "kiosk"
    out = capsys.readouterr().out
    assert "READY" in out and "c0ffee" in out and "turns:      3" in out and "total_s 2.50s" in out
    assert "last error: none" in out

    assert main(["--config", str(cfg), "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ready"] is True and data["status"]["turns"] == 3

    import device.appliance_cli as cli

    no_systemd.setattr(cli, "_systemd_state", lambda: "activating")   # restarted, still loading
    assert main(["--config", str(cfg), "status"]) == 3
    assert "STARTING (loading models) (systemd: activating)" in capsys.readouterr().out
    no_systemd.setattr(cli, "_systemd_state", lambda: None)

    w.update(state="failed", last_error={"at": "now", "type": "fatal", "message": "CUDA OOM"})
    assert main(["--config", str(cfg), "status"]) == 3
    assert "CUDA OOM" in capsys.readouterr().out


def test_status_command_when_the_kiosk_never_ran_or_died(tmp_path, capsys, no_systemd):
    state = tmp_path / "state"
    cfg = write_config(tmp_path, state)
    assert main(["--config", str(cfg), "status"]) == 3
    assert "has not run" in capsys.readouterr().out
    StatusWriter(state, Status(state="ready", pid=2**22 + 12345))   # a pid that is not running
    assert main(["--config", str(cfg), "status", "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["ready"] is False
