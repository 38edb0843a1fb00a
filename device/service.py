"""How systemd and `campus-guide status` see the kiosk: sd_notify and the status file.

systemd learns that the kiosk is ready (all models loaded) and still alive (the audio loop is
turning) through the sd_notify datagram protocol; a person learns the rest (model in use, turns
served, last error, memory) from `state_dir/status.json`, which the kiosk rewrites atomically so a
reader never sees half a file. Neither needs a network port or libsystemd.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable

from campus_guide.bundle import MANIFEST_FILE, read_manifest
from campus_guide.errors import UserError
from campus_guide.config import Config
from device.audio import AudioError
from device.budget import peak_rss_mb, rss_mb
from device.models import MANIFEST as MODELS_MANIFEST
from device.models import read_manifest as read_models_manifest

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
MIC_POLL_S = 2.0        # how often a kiosk without a microphone looks for one again


class Notifier:
    """sd_notify over $NOTIFY_SOCKET (a path, or '@name' for an abstract socket).

    Without the variable (a shell, a test, the demo) every call is a no-op, so the kiosk code
    never asks whether it runs under systemd.
    """

    def __init__(self, env: dict[str, str] | None = None, clock: Callable[[], float] = time.monotonic):
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self._addr = "\0" + path[1:] if path.startswith("@") else path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if path else None
        usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        mine = env.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        # Ping at twice the rate systemd demands: one late tick must not kill a healthy kiosk.
        self.watchdog_interval = usec / 2e6 if usec and mine else None
        self._clock = clock
        self._last_ping: float | None = None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(assignments).encode(), self._addr)
        except OSError as e:  # systemd gone (shutdown): nothing useful left to tell it
            log.debug("sd_notify %s failed: %s", assignments, e)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        """Called once per audio chunk; sends WATCHDOG=1 at most every half watchdog period."""
        if self.watchdog_interval is None:
            return
        now = self._clock()
        if self._last_ping is None or now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def model_info(cfg: Config) -> dict[str, Any]:
    """The LLM in use: its path, the bundle's manifest beside it (a flashed board; the LLM
    loader has checked the file against it), else the sha256 `models fetch` recorded in
    models.json. The weights are never hashed here."""
    path = cfg.models_path(cfg.llm.model)
    real = path.resolve()
    info: dict[str, Any] = {"path": str(path), "resolved": str(real), "sha256": None}
    sums = Path(cfg.models_dir) / MODELS_MANIFEST
    try:
        if (real.parent / MANIFEST_FILE).is_file():
            manifest = read_manifest(real.parent)
            info["manifest"] = asdict(manifest)
            if manifest.model_file == real.name:
                info["sha256"] = manifest.sha256
        elif sums.is_file():
            files = read_models_manifest(cfg.models_dir).get("files", {})
            info["sha256"] = files.get(os.path.relpath(real, Path(cfg.models_dir).resolve()), {}).get("sha256")
    except (OSError, UserError) as e:
        info["manifest_error"] = str(e)
        return info
    asr = cfg.asr_path()
    own = info.get("manifest", {}).get("asr")
    info["asr"] = {"path": str(asr), "from_bundle": own is not None,
                   "sha256": next((f["sha256"] for f in own["files"] if f["path"].endswith("/model.bin")), None)
                   if own else None}
    return info


@dataclass
class Status:
    """The content of status.json (its shape is what `campus-guide status` reads)."""

    state: str = "starting"         # starting | waiting (no microphone yet) | ready | stopped | failed
    since: str = field(default_factory=_now)
    pid: int = field(default_factory=os.getpid)
    config: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    turns: int = 0
    last_turn: dict[str, Any] | None = None
    rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    last_error: dict[str, str] | None = None
    waiting_for: str | None = None  # state "waiting": what is missing and how to fix it
    updated: str = field(default_factory=_now)


class StatusWriter:
    """Keeps state_dir/status.json current; each write is a rename, so readers see whole files.

    Turns finish in the kiosk's worker thread and errors are logged from any thread: one lock.
    """

    def __init__(self, state_dir: str | os.PathLike, status: Status):
        self.path = Path(state_dir) / STATUS_FILE
        self.status = status
        self._lock = threading.Lock()
        self._failing = False       # the last write failed (said once in the log, not per turn)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{self.path.parent}: cannot create the state folder ({e}); "
                            "set runtime.state_dir to a writable folder") from None
        self.update()

    def update(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self.status, key, value)
            self.status.rss_mb = round(rss_mb(), 1)
            self.status.peak_rss_mb = round(max(peak_rss_mb(), self.status.rss_mb), 1)
            self.status.updated = _now()
            tmp = self.path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(asdict(self.status), indent=2, ensure_ascii=False) + "\n",
                               encoding="utf-8")
                os.replace(tmp, self.path)
            except OSError as e:
                # A full disk or a read-only state folder must cost no answer; say it once.
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                if not self._failing:
                    self._failing = True
                    log.warning("status: cannot write %s: %s (check runtime.state_dir and free disk "
                                "space, `df -h %s`); answering goes on, `campus-guide status` shows "
                                "stale figures until it can write again", self.path, e, self.path.parent)
                return
            if self._failing:
                self._failing = False
                log.info("status: %s is written again", self.path)

    def turn(self, result: Any) -> None:
        """Record a TurnResult: when, what kind of answer, how long each stage took (never what
        the visitor said: that stays in the pipeline's own turn log)."""
        timings = getattr(result, "timings", None) or {}
        if is_dataclass(timings):
            timings = asdict(timings)
        self.update(turns=self.status.turns + 1, last_turn={
            "at": _now(),
            "kind": getattr(result, "kind", None),
            "language": getattr(result, "language", None),
            "timings": {k: round(float(v), 3) for k, v in timings.items() if v is not None},
        })

    def error(self, message: str, kind: str = "error", **changes: Any) -> None:
        self.update(last_error={"at": _now(), "type": kind, "message": message[-2000:]}, **changes)


class _ErrorsToStatus(logging.Handler):
    """Errors the kiosk logs and survives (a failed turn) still reach status.json."""

    def __init__(self, writer: StatusWriter):
        super().__init__(logging.ERROR)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        self.writer.error(message, kind=record.name)


def read_status(state_dir: str | os.PathLike) -> dict[str, Any] | None:
    """status.json as a dict, or None if the kiosk never ran with this state_dir."""
    path = Path(state_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); delete it, the kiosk rewrites it") from None


class MicrophoneMissing(AudioError):
    """No microphone (yet): the kiosk waits for one instead of exiting."""


def _open_audio(cfg: Config, pipeline: Any) -> tuple[Any, Any]:
    """(Microphone, Speaker); MicrophoneMissing while no microphone is plugged in. A speaker
    that is missing, or a device that refuses to open, stays an error (a restart)."""
    from device.audio import Microphone, Speaker

    missing = Microphone.find(cfg.audio)
    if missing:
        raise MicrophoneMissing(missing)
    return Microphone(cfg.audio), Speaker(cfg.audio, sample_rate=pipeline.tts.sample_rate)


@dataclass
class Seams:
    """What run_service builds; replaced in tests because there is no sound card (or Jetson) here."""

    pipeline: Callable[[Config], Any] | None = None              # device.pipeline.Pipeline
    audio: Callable[[Config, Any], tuple[Any, Any]] = _open_audio  # (Microphone, Speaker)
    listen: Callable[..., Any] | None = None                     # device.kiosk.listen
    notifier: Callable[[], Notifier] = Notifier                  # sd_notify ($NOTIFY_SOCKET)

    def resolved(self) -> "Seams":
        if self.pipeline is None:
            from device.pipeline import Pipeline
            self.pipeline = Pipeline
        if self.listen is None:
            from device.kiosk import listen
            self.listen = listen
        return self


class ServiceError(RuntimeError):
    """The kiosk cannot (or can no longer) serve; systemd restarts it (Restart=on-failure)."""


def _wait_for_audio(cfg: Config, pipeline: Any, seams: Seams, notifier: Notifier,
                    writer: StatusWriter, stop: threading.Event, poll_s: float):
    """seams.audio(); while it says there is no microphone: READY=1 (the models are loaded, the
    kiosk is up) with STATUS=waiting for a microphone, state "waiting" in status.json, the
    watchdog fed, and another look every `poll_s`. Returns ((mic, speaker), waited), or
    (None, waited) when stopped while waiting."""
    waited, since = False, time.monotonic()
    while not stop.is_set():
        try:
            audio = seams.audio(cfg, pipeline)
        except MicrophoneMissing as e:
            if not waited:
                waited = True
                log.warning("waiting for a microphone, looking again every %g s: %s", poll_s, e)
                writer.update(state="waiting", waiting_for=str(e))
                notifier.ready("waiting for a microphone")
            deadline = time.monotonic() + poll_s
            step = min(0.5, notifier.watchdog_interval or 0.5)
            while not stop.is_set():
                notifier.watchdog()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                stop.wait(min(step, left))
            continue
        if waited:
            log.info("microphone found after %.0f s of waiting", time.monotonic() - since)
        return audio, waited
    return None, waited


def run_service(cfg: Config, seams: Seams | None = None, stop: threading.Event | None = None,
                mic_poll_s: float = MIC_POLL_S) -> int:
    """The kiosk under systemd: budget check, load every model, READY=1, then listen until
    SIGTERM. With no microphone plugged in it waits for one (polling every `mic_poll_s`, the
    watchdog fed, `status` saying so). The watchdog is fed from the audio loop's tick, so a hung
    loop gets restarted. Whatever stops it ends up in status.json for `campus-guide status`."""
    from device.budget import plan_for_config

    seams = (seams or Seams()).resolved()
    stop = stop or threading.Event()
    notifier = seams.notifier()
    writer = StatusWriter(cfg.runtime.state_dir, Status(config=cfg.source, model=model_info(cfg)))
    errors = _ErrorsToStatus(writer)
    logging.getLogger().addHandler(errors)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}

    def on_turn(result: Any) -> None:
        writer.turn(result)
        notifier.status(f"listening; {writer.status.turns} turns served")

    try:
        plan = plan_for_config(cfg)
        if plan.over:
            raise UserError(f"the models need more memory than the budget allows; refusing to "
                            f"start.\n{plan.table()}\nUse a smaller model or n_ctx, or raise "
                            f"budget.total_gb (and MemoryMax= in the unit) if the board has the room.")
        with ExitStack() as resources:
            notifier.status("loading models")
            log.info("loading models (plan %.2f of a %.2f GiB budget)", plan.total_gb, plan.budget_gb)
            pipeline = seams.pipeline(cfg)
            resources.callback(getattr(pipeline, "close", lambda: None))
            audio, waited = _wait_for_audio(cfg, pipeline, seams, notifier, writer, stop, mic_poll_s)
            if audio is not None:
                mic, speaker = audio
                for part in (mic, speaker):
                    resources.callback(getattr(part, "close", lambda: None))
                writer.update(state="ready", waiting_for=None)
                (notifier.status if waited else notifier.ready)("listening; 0 turns served")
                log.info("ready: listening")
                seams.listen(pipeline, mic, speaker, on_turn=on_turn, on_tick=notifier.watchdog, stop=stop)
                if not stop.is_set():
                    raise ServiceError("the microphone stopped delivering audio (unplugged?); "
                                       "systemd restarts the kiosk, which then waits for it")
        writer.update(state="stopped")
        log.info("stopped after %d turns", writer.status.turns)
        return 0
    except BaseException as e:
        writer.error(f"{type(e).__name__}: {e}", kind="fatal", state="failed")
        raise
    finally:
        notifier.stopping()
        notifier.close()
        logging.getLogger().removeHandler(errors)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
