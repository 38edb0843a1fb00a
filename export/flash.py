"""Put a model bundle on one or more boards over OpenSSH, safely.

Board layout (ROOT = /var/lib/campus-guide):
    ROOT/staging/<bundle>/      uploads land here (resumable: a broken transfer continues)
    ROOT/bundles/<bundle>/      {model.gguf, manifest.json[, asr/]}; the last N are kept
    ROOT/current -> bundles/<bundle>   what the kiosk loads (llm.model: ROOT/current/model.gguf)
    ROOT/history                activated bundles, oldest first (what --rollback goes back along)

Per host: upload to staging -> sha256 on the board -> the board's own memory budget check and a
smoke test (load the staged model with the board's device package and answer one question; a
spoken one when the bundle carries its own Whisper, so both models are tried) ->
atomic switch of `current` (ln -s + mv -T) -> restart the kiosk -> wait for its health check.
Any failure leaves or puts the board back on its previous model. Only the system `ssh` client is
used (no scp/rsync needed on either side), so whatever ~/.ssh/config says applies.
"""
from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from export import ExportError
from campus_guide.bundle import MANIFEST_FILE, BundleFile, Manifest, verify_bundle

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
# Written on the board with the board's own config loader: its config, with llm.model -> MODEL.
_SMOKE_CONFIG = ("import sys; from campus_guide.config import load_config, dump_config; "
                 "c = load_config(sys.argv[1]); c.llm.model = sys.argv[2]; "
                 "open(sys.argv[3], 'w', encoding='utf-8').write(dump_config(c))")


@dataclass
class FlashOptions:
    """Where things are on the board and how to drive it. Commands are templates: {venv},
    {config}, {smoke_config}, {model}, {bundle}, {root} and {question} are filled in (quoted)."""
    root: str = "/var/lib/campus-guide"
    venv: str = "/opt/campus-guide/venv"
    config: str = "/etc/campus-guide/config.yaml"
    port: int | None = None
    identity: str | None = None
    ssh_options: list[str] = field(default_factory=list)     # extra `-o Key=Value`
    keep: int = 3
    question: str = "Where is the library?"
    budget_cmd: str = "{venv}/bin/campus-guide --config {smoke_config} budget"
    smoke_cmd: str = "{venv}/bin/campus-guide --config {smoke_config} ask --text {question} --json"
    # A bundle with its own Whisper: the board's bundled spoken question, through that Whisper.
    asr_smoke_cmd: str = "{venv}/bin/campus-guide --config {smoke_config} ask --json"
    # The kiosk is stopped for the budget check and the smoke test: on an 8 GB board the running
    # kiosk and a second copy of the pipeline do not fit together (two 2B models: ~6.5 GiB).
    stop_cmd: str = "sudo systemctl stop campus-guide"
    restart_cmd: str = "sudo systemctl restart campus-guide"
    health_cmd: str = "{venv}/bin/campus-guide --config {config} status --json"
    health_timeout_s: float = 120.0
    health_interval_s: float = 2.0
    command_timeout_s: float = 900.0


@dataclass
class HostResult:
    host: str
    ok: bool
    action: str                     # flashed / already current / rolled back / failed ...
    step: str = ""                  # the step that failed
    message: str = ""
    previous: str = ""
    current: str = ""
    resumed_from: int = 0           # bytes already on the board when the upload started
    seconds: float = 0.0


class StepFailed(Exception):
    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step, self.message = step, message


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


def _finish(proc: subprocess.Popen) -> None:
    """Let ssh deliver what it has, then make sure it is gone."""
    try:
        proc.stdin.close()
        proc.wait(timeout=30)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()


def _loaded_sha256(status) -> str:
    """The sha256 of the model the kiosk says it loaded (`campus-guide status --json`), if any."""
    for node in (status, status.get("status") if isinstance(status, dict) else None):
        model = node.get("model") if isinstance(node, dict) else None
        if isinstance(model, dict) and isinstance(model.get("sha256"), str):
            return model["sha256"]
    return ""


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


@dataclass
class Probe:
    current: str                    # bundle name `current` points at ("" = none)
    final_sha256: dict[str, str]    # of bundles/<name>/<file>, for the files already there
    staged_size: dict[str, int]     # bytes of staging/<name>/<file> from an earlier attempt
    history: list[str]
    bundles: list[str]


class Board:
    """One host reached with the system ssh client; every call is one short command."""

    def __init__(self, host: str, opts: FlashOptions):
        self.host, self.opts = host, opts
        r = opts.root.rstrip("/")
        self.root, self.bundles, self.staging = r, f"{r}/bundles", f"{r}/staging"
        # One SSH connection for all the short commands (a handshake costs ~0.5 s each).
        self._mux = tempfile.mkdtemp(prefix="cg-flash-")

    def close(self) -> None:
        subprocess.run(self.argv("-O", "exit"), capture_output=True, timeout=30)
        shutil.rmtree(self._mux, ignore_errors=True)

    def argv(self, *command: str) -> list[str]:
        a = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
             "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
             "-o", "ControlMaster=auto", "-o", f"ControlPath={self._mux}/%C", "-o", "ControlPersist=120"]
        if self.opts.port:
            a += ["-p", str(self.opts.port)]
        if self.opts.identity:
            a += ["-i", self.opts.identity]
        for o in self.opts.ssh_options:
            a += ["-o", o]
        if command[:1] == ("-O",):                      # a control command to the mux master
            return a + [*command, self.host]
        return a + [self.host, *command]

    def run(self, step: str, command: str, data: bytes | None = None, check: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        log.debug("%s: %s", self.host, command)
        try:
            r = subprocess.run(self.argv(command), input=data, capture_output=True,
                               timeout=timeout or self.opts.command_timeout_s)
        except subprocess.TimeoutExpired:
            raise StepFailed(step, f"`{command}` did not finish in {timeout or self.opts.command_timeout_s:.0f} s") from None
        r.stdout, r.stderr = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
        if r.returncode == 255:
            raise StepFailed(step, f"ssh to {self.host} failed: {_tail(r.stderr, 2)} "
                                   f"(check --host, --port, --identity and that sshd runs on the board)")
        if check and r.returncode != 0:
            raise StepFailed(step, f"`{command}` exited {r.returncode}: {_tail(r.stderr + r.stdout)}")
        return r

    def fill(self, template: str, **values: str) -> str:
        v = dict(venv=self.opts.venv, config=self.opts.config, root=self.root, question=self.opts.question)
        v.update(values)
        # One pass, known names only: not str.format (commands hold literal JSON braces), and a
        # value that contains "{root}" is never expanded again.
        return re.sub(r"\{(\w+)\}", lambda m: shlex.quote(str(v[m[1]])) if m[1] in v else m[0], template)

    def probe(self, name: str = "", files: list[str] = ()) -> Probe:
        """The board's state in one round trip (each SSH command costs a shell start)."""
        q = shlex.quote
        final = " ".join(q(f"{self.bundles}/{name}/{f}") for f in files)
        staged = " ".join(q(f"{self.staging}/{name}/{f}") for f in files)
        cmd = (f"mkdir -p {q(self.bundles)} {q(self.staging)} || exit 3; readlink {q(self.root + '/current')}; "
               f"echo --; " + (f"sha256sum {final} 2>/dev/null; echo --; stat -c '%s %n' {staged} 2>/dev/null; "
                               if files else "echo --; ") +
               f"echo --; cat {q(self.root + '/history')} 2>/dev/null; echo --; ls -1 {q(self.bundles)}")
        parts = self.run("connect", cmd).stdout.split("--\n")
        if len(parts) != 5:
            raise StepFailed("connect", f"unexpected answer from the board: {_tail('--'.join(parts), 3)}")
        cur, hist, present = parts[0].split(), parts[3].split(), parts[4].split()

        def by_file(text: str, folder: str, sep: str | None) -> dict[str, str]:
            rows = (line.split(sep, 1) for line in text.splitlines() if line.strip())
            return {path.strip().removeprefix(f"{folder}/{name}/"): value for value, path in rows}

        sums = by_file(parts[1], self.bundles, None)
        sizes = by_file(parts[2], self.staging, " ")
        return Probe(cur[0].rsplit("/", 1)[-1] if cur else "", sums,
                     {k: int(v) for k, v in sizes.items()}, hist, present)

    def set_history(self, names: list[str], remove: list[str] = ()) -> None:
        """Rewrite ROOT/history (atomically) and delete the bundles in `remove`."""
        h = shlex.quote(self.root + "/history")
        rm = "".join(f" && rm -rf {shlex.quote(self.bundles + '/' + n)}" for n in remove)
        self.run("history", f"cat > {h}.tmp && mv {h}.tmp {h}{rm}", data="".join(f"{n}\n" for n in names).encode())

    def switch_cmd(self, name: str) -> str:
        """Point `current` at bundles/NAME atomically: a reader sees the old or the new, never none."""
        cur, tmp = shlex.quote(self.root + "/current"), shlex.quote(f"{self.root}/current.tmp")
        return f"ln -sfn {shlex.quote('bundles/' + name)} {tmp} && mv -T {tmp} {cur}"

    def healthy(self, sha256: str = "") -> tuple[bool, str]:
        """Poll the health command until it reports healthy (and, where it reports the loaded
        model's sha256, that it is `sha256`) or the time is up."""
        deadline = time.monotonic() + self.opts.health_timeout_s
        last = ""
        while True:
            r = self.run("health", self.fill(self.opts.health_cmd), check=False)
            if r.returncode == 0:
                try:
                    d = json.loads(r.stdout)
                    loaded = _loaded_sha256(d)
                    if sha256 and loaded and loaded != sha256:
                        last = f"still runs model {loaded[:12]}..., not {sha256[:12]}..."
                    elif isinstance(d, dict) and all(d.get(k, True) is not False for k in ("ok", "healthy", "ready")):
                        return True, ""
                    else:
                        last = f"reports {_tail(r.stdout, 2)}"
                except ValueError:
                    last = f"printed no JSON: {_tail(r.stdout, 2)}"
            else:
                last = f"exited {r.returncode}: {_tail(r.stderr + r.stdout, 2)}"
            if time.monotonic() >= deadline:
                return False, last
            time.sleep(self.opts.health_interval_s)


class Flasher:
    """Flash one bundle to one board, rolling back on any failure."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, host: str, opts: FlashOptions, position: int = 0):
        self.dir, self.m, self.opts = bundle_dir, manifest, opts
        self.board = Board(host, opts)
        self.position = position
        self.bar = None

    def _step(self, name: str) -> None:
        self.bar.set_description(f"{self.board.host}: {name}")

    def run(self) -> HostResult:
        from tqdm import tqdm

        t0 = time.monotonic()
        res = HostResult(self.board.host, ok=False, action="failed")
        self.bar = tqdm(total=sum(f.size for f in self.m.files()), unit="B", unit_scale=True, position=self.position,
                        desc=self.board.host, leave=True)
        try:
            self._flash(res)
            res.ok = True
        except StepFailed as e:
            res.step, res.message = e.step, e.message
        except Exception as e:                  # one board's surprise must not hide the others' results
            log.exception("%s: unexpected error", self.board.host)
            res.step, res.message = "unexpected", f"{type(e).__name__}: {e}"
        finally:
            self.bar.close()
            self.board.close()
            res.seconds = time.monotonic() - t0
        return res

    def _flash(self, res: HostResult) -> None:
        b, m, q = self.board, self.m, shlex.quote
        self._step("connect")
        files = m.files()
        probe = b.probe(m.name, [f.path for f in files])
        res.previous = res.current = probe.current
        final, staged = f"{b.bundles}/{m.name}", f"{b.staging}/{m.name}"
        if all(probe.final_sha256.get(f.path) == f.sha256 for f in files):   # there already: no upload
            self.bar.update(sum(f.size for f in files))
            if probe.current == m.name:
                res.action = "already current"
                return
            where = final
        else:
            res.resumed_from = sum(self._upload(staged, f, probe.staged_size.get(f.path, 0)) for f in files)
            where = staged
        self._verify(where)
        self._step("stop kiosk")
        if b.run("stop kiosk", b.fill(self.opts.stop_cmd), check=False).returncode != 0:
            log.warning("%s: could not stop the kiosk; the smoke test shares its memory", b.host)
        try:
            self._check(where)
        except BaseException:
            if where == staged:                 # a model that cannot run is not worth resuming
                b.run("cleanup", f"rm -rf {q(staged)}", check=False)
            b.run("restart", b.fill(self.opts.restart_cmd), check=False)   # previous model again
            raise
        try:
            self._step("switch")
            move = f"rm -rf {q(final)} && mv {q(staged)} {q(final)} && " if where == staged else ""
            b.run("switch", f"{move}touch {q(final)} && {b.switch_cmd(m.name)}")
            res.current = m.name
            self._step("restart")
            b.run("restart", b.fill(self.opts.restart_cmd))
            self._step("health")
            ok, why = b.healthy(m.sha256)
            if not ok:
                raise StepFailed("health", f"the kiosk is not healthy after {self.opts.health_timeout_s:.0f} s: {why}")
        except BaseException as e:             # whatever went wrong (even Ctrl-C): previous model back
            res.current = self._roll_back(res.previous, failed=m.name)
            res.action = "rolled back" if res.current else "failed, no previous model"
            if not isinstance(e, StepFailed):
                raise
            raise StepFailed(e.step, e.message + f"; board back on {res.current or 'no model'}") from None
        self._step("prune")
        # The model the board ran before its first flash (jetson_setup's `packaged`) is history too.
        history = probe.history if not probe.current or probe.current in probe.history \
            else [probe.current] + probe.history
        self._prune(history + [m.name], set(probe.bundles) | {m.name})
        res.action = "flashed"
        self._step("done")

    def _upload(self, staged: str, entry: BundleFile, have: int) -> int:
        """Append what the board lacks of one file to staging/ (a broken transfer resumes where
        it stopped). Returns the byte offset the upload resumed from."""
        b, m, q = self.board, self.m, shlex.quote
        self._step(f"upload {entry.path}" if entry.path != m.model_file else "upload")
        target = f"{staged}/{entry.path}"
        if have > entry.size:
            have = 0
        trunc = "" if have else f": > {q(target)} && "
        self.bar.update(have)
        if have < entry.size:
            folder = target.rsplit("/", 1)[0]
            proc = subprocess.Popen(b.argv(f"mkdir -p {q(folder)} && {trunc}cat >> {q(target)}"),
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            sent = 0
            try:
                with open(self.dir / entry.path, "rb") as f:
                    f.seek(have)
                    for chunk in _chunks(f):
                        proc.stdin.write(chunk)
                        sent += len(chunk)
                        self.bar.update(len(chunk))
                proc.stdin.close()
                err = proc.stderr.read().decode("utf-8", "replace")
                rc = proc.wait(timeout=self.opts.command_timeout_s)
            except (OSError, ValueError, subprocess.TimeoutExpired) as e:
                _finish(proc)                   # keep what arrived: the next flash resumes there
                raise StepFailed("upload", f"transfer of {entry.path} interrupted after {have + sent} of "
                                           f"{entry.size} bytes ({e}); the board still runs its previous "
                                           f"model; flash again to resume") from None
            if rc != 0:
                raise StepFailed("upload", f"transfer of {entry.path} failed (ssh exit {rc}: {_tail(err, 2)}) "
                                           f"after about {have + sent} of {entry.size} bytes; flash again to resume")
        return have

    def _verify(self, where: str) -> None:
        """Put the manifest beside the model and checksum every file on the board."""
        self._step("verify")
        q = shlex.quote
        files = self.m.files()
        r = self.board.run("verify", f"cat > {q(where + '/' + MANIFEST_FILE)} && cd {q(where)} && "
                                     f"(sha256sum {' '.join(q(f.path) for f in files)} 2>/dev/null || true)",
                           data=(self.dir / MANIFEST_FILE).read_bytes())
        got = {path: sha for sha, path in (line.split(None, 1) for line in r.stdout.splitlines() if line.strip())}
        bad = [f for f in files if got.get(f.path) != f.sha256]
        if bad:
            self.board.run("verify", f"rm -rf {q(where)}", check=False)
            f = bad[0]
            raise StepFailed("verify", f"sha256 of {f.path} on the board is {got.get(f.path, '')[:12] or 'missing'}, "
                                       f"expected {f.sha256[:12]} (corrupted upload, removed); flash again")

    def _check(self, where: str) -> None:
        """The board's own budget check and one answered question, with the staged model."""
        b = self.board
        model, smoke_config = f"{where}/{self.m.model_file}", f"{where}/smoke-config.yaml"
        self._step("budget")
        make_config = (f"{shlex.quote(self.opts.venv + '/bin/python')} -c {shlex.quote(_SMOKE_CONFIG)} "
                       + " ".join(map(shlex.quote, (self.opts.config, model, smoke_config))))
        fill = dict(model=model, bundle=where, smoke_config=smoke_config)
        r = b.run("budget", f"{make_config} && {b.fill(self.opts.budget_cmd, **fill)}", check=False)
        if r.returncode != 0:
            raise StepFailed("budget", f"the board's budget check refuses this model: {_tail(r.stdout + r.stderr)}")
        self._step("smoke test")
        spoken = self.m.asr is not None       # both models: the spoken question through the bundle's Whisper
        r = b.run("smoke test", b.fill(self.opts.asr_smoke_cmd if spoken else self.opts.smoke_cmd, **fill),
                  check=False)
        try:
            out = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {}
        except (ValueError, IndexError):
            out = {}
        answer = out.get("answer") if isinstance(out, dict) else None
        if not answer:
            what = "the bundled spoken question" if spoken else repr(self.opts.question)
            raise StepFailed("smoke test", f"the staged models did not answer {what} "
                                           f"(exit {r.returncode}): {_tail(r.stderr + r.stdout)}")

    def _roll_back(self, previous: str, failed: str) -> str:
        """Back to `previous` (or no model), drop the failed bundle, restart. Returns what is current."""
        b = self.board
        self._step("rollback")
        back = b.switch_cmd(previous) if previous else f"rm -f {shlex.quote(b.root + '/current')}"
        # A re-flash of the current name replaced that very bundle: nothing older to go back to.
        drop = f" && rm -rf {shlex.quote(b.bundles + '/' + failed)}" if failed != previous else ""
        b.run("rollback", back + drop, check=False)
        b.run("rollback", b.fill(self.opts.restart_cmd), check=False)
        if previous and not b.healthy()[0]:
            log.warning("%s: back on %s but the kiosk is still not healthy", b.host, previous)
        return previous

    def _prune(self, history: list[str], present: set[str]) -> None:
        """Record the activation; keep the last N activated bundles (the current one always)."""
        keep: list[str] = []
        for name in reversed(history):
            if name not in keep and len(keep) < self.opts.keep:
                keep.append(name)
        self.board.set_history([n for n in history if n in keep], remove=sorted(present - set(keep)))


def rollback_host(host: str, opts: FlashOptions) -> HostResult:
    """By hand: back to the bundle activated before the current one, restart, health check."""
    t0 = time.monotonic()
    b = Board(host, opts)
    res = HostResult(host, ok=False, action="failed")
    try:
        probe = b.probe()
        res.previous = cur = probe.current
        hist = list(probe.history)
        while hist and hist[-1] == cur:
            hist.pop()
        while hist and hist[-1] not in probe.bundles:
            hist.pop()
        if not hist:
            raise StepFailed("rollback", f"no earlier bundle on the board to go back to (current: {cur or 'none'})")
        target = hist[-1]
        b.run("rollback", b.switch_cmd(target))
        b.set_history(hist)
        res.current = target
        b.run("restart", b.fill(opts.restart_cmd))
        ok, why = b.healthy()
        if not ok:
            raise StepFailed("health", f"back on {target} but the kiosk is not healthy: {why}")
        res.ok, res.action = True, "rolled back"
    except StepFailed as e:
        res.step, res.message = e.step, e.message
    finally:
        b.close()
    res.seconds = time.monotonic() - t0
    return res


def _parallel(hosts: list[str], work) -> list[HostResult]:
    if len(set(hosts)) != len(hosts):
        raise ExportError("a --host is given twice; each board once")
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        return list(pool.map(work, hosts, range(len(hosts))))


def flash(bundle_dir: str | Path, hosts: list[str], opts: FlashOptions) -> list[HostResult]:
    """Flash the bundle to every host in parallel; one result per host."""
    if not hosts:
        raise ExportError("give at least one --host user@board")
    if opts.keep < 1:
        raise ExportError(f"--keep {opts.keep}: keep at least 1 bundle (the current one)")
    bundle_dir = Path(bundle_dir)
    m = verify_bundle(bundle_dir, progress="checking bundle")   # never upload a broken bundle
    return _parallel(hosts, lambda h, i: Flasher(bundle_dir, m, h, opts, i).run())


def rollback(hosts: list[str], opts: FlashOptions) -> list[HostResult]:
    if not hosts:
        raise ExportError("give at least one --host user@board")
    return _parallel(hosts, lambda h, i: rollback_host(h, opts))


def table(results: list[HostResult]) -> str:
    rows = [["host", "result", "step", "before", "now", "time", "message"]]
    for r in results:
        rows.append([r.host, r.action, r.step or "-", r.previous or "-", r.current or "-",
                     f"{r.seconds:.1f}s", r.message])
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([c.ljust(w[i]) for i, c in enumerate(r[:-1])] + [r[-1]]).rstrip() for r in rows)

