"""A real OpenSSH server on 127.0.0.1 and a board behind it, for flashing tests.

The server is the system sshd with generated host and client keys, on a free port, listening on
127.0.0.1 only. The board is a temp folder: ROOT (bundles, current, state) and a venv whose
`campus-guide` is the real console script, so `budget`, `ask --json` and `status --json` are the
real commands on the real embedded models (the bundles carry a tiny real GGUF). What cannot run
here is the kiosk service itself (no systemd, no microphone): the restart command starts a
stand-in kiosk process that writes status.json with the real `device.service.StatusWriter` and
the real `model_info` of the model `current` points at, then waits for SIGTERM, as the service
would. It reports itself failed while its model is listed in ROOT/unhealthy.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"

_KIOSK = r'''
import os, signal, sys, time
from pathlib import Path
from campus_guide.config import load_config
from device.service import Status, StatusWriter, model_info

cfg, root = load_config(sys.argv[1]), Path(sys.argv[2])
name = os.readlink(root / "current").rsplit("/", 1)[-1]
bad = (root / "unhealthy").read_text().split() if (root / "unhealthy").is_file() else []
writer = StatusWriter(cfg.runtime.state_dir, Status(config=cfg.source, model=model_info(cfg)))
(root / "running").write_text(name + "\n")
writer.update(state="failed" if name in bad else "ready")
(root / "kiosk-up").touch()

def stop(*_):
    writer.update(state="stopped")
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(1)
'''
_CLI = "import sys\nfrom campus_guide.cli import main\nsys.exit(main())\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Board:
    """What a flashing test needs to reach and inspect the fake board."""
    host: str
    port: int
    identity: str
    ssh_options: list[str]
    root: Path
    venv: Path
    config: Path
    restart_cmd: str
    stop_cmd: str

    def close(self) -> None:
        """End the stand-in kiosk, if one runs."""
        pid = self.root.parent / "kiosk.pid"
        if pid.is_file():
            try:
                os.kill(int(pid.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass

    def current(self) -> str:
        link = self.root / "current"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else ""

    def running(self) -> str:
        f = self.root / "running"
        return f.read_text().strip() if f.is_file() else ""


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def start_sshd(tmp: Path, models_dir: Path) -> tuple[subprocess.Popen, Board]:
    """Start sshd on a free 127.0.0.1 port and build the board, on the real models in
    `models_dir`; the caller terminates the process and closes the board."""
    tmp = Path(tmp)
    keys = tmp / "keys"
    keys.mkdir(parents=True)
    _keygen(keys / "host")
    _keygen(keys / "client")
    shutil.copy(keys / "client.pub", keys / "authorized_keys")
    port = free_port()
    cfg = tmp / "sshd_config"
    cfg.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {keys / 'host'}
PidFile {tmp / 'sshd.pid'}
AuthorizedKeysFile {keys / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
LogLevel ERROR
""")
    Path("/run/sshd").mkdir(exist_ok=True)          # sshd's privilege separation directory
    known = tmp / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {(keys / 'host.pub').read_text()}")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"sshd did not start: {proc.stderr.read().decode()}")
            time.sleep(0.05)

    root, venv = tmp / "board", tmp / "board-venv"
    (venv / "bin").mkdir(parents=True)
    root.mkdir()
    py = sys.executable
    (venv / "bin" / "python").write_text(f"#!/bin/sh\nexec {py} \"$@\"\n")
    (venv / "bin" / "campus-guide").write_text(f"#!{py}\n" + _CLI)
    kiosk = tmp / "kiosk.py"
    kiosk.write_text(_KIOSK)
    config = tmp / "board-config.yaml"
    config.write_text(f"models_dir: {models_dir}\n"
                      f"llm:\n  model: {root}/current/model.gguf\n  lora: null\n  n_threads: 1\n"
                      f"  max_tokens: 16\nasr:\n  model: whisper-tiny.en\n"
                      f"runtime:\n  state_dir: {root}/state\nbudget:\n  total_gb: 6.5\n")
    pid, up = tmp / "kiosk.pid", root / "kiosk-up"
    restart = tmp / "restart.sh"      # stop the old stand-in kiosk, start one on `current`
    restart.write_text(f"""#!/bin/sh
[ -f {pid} ] && kill $(cat {pid}) 2>/dev/null
rm -f {up}
setsid {py} {kiosk} {config} {root} </dev/null >>{tmp}/kiosk.log 2>&1 &
echo $! > {pid}
i=0; while [ ! -f {up} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
""")
    stop = tmp / "stop.sh"            # `running` says "stopped" while no kiosk runs
    stop.write_text(f"""#!/bin/sh
[ -f {pid} ] && kill $(cat {pid}) 2>/dev/null && while kill -0 $(cat {pid}) 2>/dev/null; do sleep 0.05; done
rm -f {pid}
echo stopped > {root}/running
""")
    for f in (*(venv / "bin").iterdir(), restart, stop):
        f.chmod(0o755)
    board = Board(
        host="root@127.0.0.1", port=port, identity=str(keys / "client"),
        ssh_options=[f"UserKnownHostsFile={known}", "StrictHostKeyChecking=yes", "IdentitiesOnly=yes"],
        root=root, venv=venv, config=config, restart_cmd=str(restart), stop_cmd=str(stop),
    )
    return proc, board
