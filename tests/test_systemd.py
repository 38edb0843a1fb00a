"""The kiosk unit: systemd's own verifier and security audit, and the promises it must keep
(notify + watchdog, restart back-off, memory cap = budget, hardening, no network)."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from campus_guide.config import load_config

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "campus-guide.service"
SETUP = ROOT / "jetson_setup.sh"
KIOSK = ROOT / "configs" / "kiosk.yaml"

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed")


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def one(key: str) -> str:
    values = directives().get(key)
    assert values and len(values) == 1, f"{key}= must be set once in {UNIT.name}, got {values}"
    return values[0]


@pytest.fixture
def unit_with_binary(tmp_path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (verify checks it)."""
    exe = tmp_path / "campus-guide"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    text = UNIT.read_text().replace("/opt/campus-guide/venv/bin/campus-guide", str(exe))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(unit_with_binary):
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_with_binary)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and UNIT.name not in r.stderr, r.stderr


@needs_systemd_analyze
def test_systemd_analyze_verify_catches_a_broken_unit(unit_with_binary):
    unit_with_binary.write_text(unit_with_binary.read_text().replace("Type=notify", "Type=notfy"))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_with_binary)],
                       capture_output=True, text=True, timeout=60)
    assert "notfy" in r.stderr                    # the check above would notice a typo


@needs_systemd_analyze
def test_security_exposure_is_low(unit_with_binary):
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        str(unit_with_binary)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout[-1000:] + r.stderr[-1000:]
    assert float(m.group(1)) <= 3.0, r.stdout


def test_readiness_watchdog_and_restart_policy():
    assert one("Type") == "notify" and one("NotifyAccess") == "main"
    assert one("ExecStart").endswith("/campus-guide run")
    assert 10 <= int(one("WatchdogSec")) <= 60
    assert one("Restart") == "on-failure" and int(one("RestartSec")) >= 5
    assert int(one("StartLimitBurst")) >= 3 and int(one("StartLimitIntervalSec")) >= 300
    assert int(one("TimeoutStartSec")) >= 120    # cold model loading is not a hang


def test_memory_cap_equals_the_configured_budget():
    budget = load_config(KIOSK).budget.total_gb
    assert one("MemoryMax") == f"{budget:g}G"
    assert one("MemorySwapMax") == "0"


def test_hardening_and_no_network():
    d = directives()
    assert one("User") == "campus-guide" and "audio" in one("SupplementaryGroups").split()
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateNetwork"):
        assert one(key) == "yes", key
    assert one("ProtectSystem") == "strict"
    assert one("IPAddressDeny") == "any"
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_NETLINK"}
    writable = one("ReadWritePaths").split()
    assert writable == [load_config(KIOSK).runtime.state_dir]   # only the status file's folder
    assert one("StandardOutput") == "journal" and one("StandardError") == "journal"
    assert "CapabilityBoundingSet" in d and one("CapabilityBoundingSet") == ""


def test_unit_config_and_setup_script_agree():
    env = dict(a.split("=", 1) for v in directives()["Environment"] for a in shlex.split(v))
    config_path = env["CAMPUS_GUIDE_CONFIG"]
    setup = SETUP.read_text()
    assert "ETC=/etc/campus-guide" in setup and config_path == "/etc/campus-guide/config.yaml"
    venv = re.search(r"^VENV=(\S+)", setup, re.M).group(1).replace("$PREFIX", "/opt/campus-guide")
    assert one("ExecStart").split()[0] == f"{venv}/bin/campus-guide"
    cfg = load_config(KIOSK)
    assert cfg.llm.model == "/var/lib/campus-guide/current/model.gguf" and cfg.llm.lora is None
    assert one("WorkingDirectory") == cfg.runtime.state_dir
    assert env["XDG_CACHE_HOME"] == f"/var/cache/{one('CacheDirectory')}"   # writable under strict
    assert "sudo systemctl stop campus-guide && campus-guide demo" in UNIT.read_text()
