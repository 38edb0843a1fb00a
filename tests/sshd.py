"""A real OpenSSH server on 127.0.0.1 and a fake "board" behind it, for flashing tests.

The server is the system sshd with generated host and client keys, on a free port, listening on
127.0.0.1 only. The board is a temp folder: ROOT (bundles, current) and a stand-in for the board's
venv whose `campus-guide` does what the real device commands are asked here: `budget` (model size
against budget.total_gb), `ask --json` (refuses a file that is not GGUF or fails verify_bundle, as
the device's loader does) and `status --json` (unhealthy while the running model is listed in
ROOT/unhealthy). The restart command records what `current` points at, as a kiosk restart loads it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"

_BOARD_CLI = r'''
import argparse, json, os, sys
from pathlib import Path
from campus_guide.config import load_config

p = argparse.ArgumentParser()
p.add_argument("--config")
s = p.add_subparsers(dest="cmd")
s.add_parser("budget")
a = s.add_parser("ask"); a.add_argument("--text"); a.add_argument("--json", action="store_true")
st = s.add_parser("status"); st.add_argument("--json", action="store_true")
args = p.parse_args()
cfg = load_config(args.config)
root = Path(os.environ.get("BOARD_ROOT", "__ROOT__"))
model = Path(cfg.llm.model)
if args.cmd == "budget":
    need = model.stat().st_size
    if need > cfg.budget.total_gb * 1e9:
        sys.exit(f"over budget: {need} B > {cfg.budget.total_gb} GB")
    print(f"ok: {need} B")
elif args.cmd == "ask":
    if model.read_bytes()[:4] != b"GGUF":
        sys.exit(f"llama.cpp could not load {model}: not a GGUF file")
    from export.bundle import verify_bundle
    verify_bundle(model.parent)
    print(json.dumps({"answer": "The library is building 5.", "model": str(model)}))
elif args.cmd == "status":                       # shaped like device/appliance_cli.py's
    import hashlib
    running = (root / "running").read_text().strip() if (root / "running").is_file() else ""
    bad = (root / "unhealthy").read_text().split() if (root / "unhealthy").is_file() else []
    f = root / "bundles" / running / "model.gguf"
    sha = hashlib.sha256(f.read_bytes()).hexdigest() if running and f.is_file() else None
    ready = bool(running) and running not in bad
    print(json.dumps({"ready": ready, "status": {"model": {"path": str(f), "sha256": sha}}}))
    sys.exit(0 if ready else 3)
'''


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

    def current(self) -> str:
        link = self.root / "current"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else ""

    def running(self) -> str:
        f = self.root / "running"
        return f.read_text().strip() if f.is_file() else ""


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def start_sshd(tmp: Path) -> tuple[subprocess.Popen, Board]:
    """Start sshd on a free 127.0.0.1 port and build the board; the caller terminates the process."""
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
    (venv / "bin" / "python").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    (venv / "bin" / "campus-guide").write_text(f"#!{sys.executable}\n" + _BOARD_CLI.replace("__ROOT__", str(root)))
    for f in (venv / "bin").iterdir():
        f.chmod(0o755)
    config = tmp / "board-config.yaml"
    config.write_text(f"llm:\n  model: {root}/current/model.gguf\nbudget:\n  total_gb: 6.5\n")
    restart = tmp / "restart.sh"
    restart.write_text(f"#!/bin/sh\nreadlink {root}/current | sed 's#.*/##' > {root}/running\n")
    restart.chmod(0o755)
    stop = tmp / "stop.sh"                      # the stand-in kiosk: `running` names its model
    stop.write_text(f"#!/bin/sh\necho stopped > {root}/running\n")
    stop.chmod(0o755)
    board = Board(
        host="root@127.0.0.1", port=port, identity=str(keys / "client"),
        ssh_options=[f"UserKnownHostsFile={known}", "StrictHostKeyChecking=yes", "IdentitiesOnly=yes"],
        root=root, venv=venv, config=config, restart_cmd=str(restart), stop_cmd=str(stop),
    )
    return proc, board
