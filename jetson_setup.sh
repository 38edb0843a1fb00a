#!/usr/bin/env bash
# Set up a fresh Jetson Orin Nano (JetPack 6 = L4T R36) as a campus-guide kiosk.
#
# Idempotent: every step checks first and only does what is missing, so running it again after
# an update (git pull) is the way to upgrade. `--dry-run` prints every action and changes nothing
# (it runs anywhere, which is how CI tests it). See docs/appliance.md.
set -euo pipefail

# CTranslate2 (faster-whisper's engine) at the version the project's dependencies resolve to
# (`pip show ctranslate2` in a venv with .[device]; faster-whisper 1.2.1 asks for >=4.0,<5). PyPI's
# aarch64 wheel of it is CPU-only, so asr_gpu builds this tag with CUDA for the Orin (sm_87) and
# installs it in place of that wheel. Keep it equal to what pip resolves, or the next
# `pip install` of the project replaces the build with the CPU wheel (asr_gpu warns if so).
CT2_VERSION=4.8.5

PREFIX=/opt/campus-guide
VENV=$PREFIX/venv
DATA=/var/lib/campus-guide
ETC=/etc/campus-guide
SERVICE_USER=campus-guide
UNIT=campus-guide.service
UNIT_NAME=${UNIT%.service}
TEGRA_RELEASE=${TEGRA_RELEASE:-/etc/nv_tegra_release}
NVPMODEL_CONF=${NVPMODEL_CONF:-/etc/nvpmodel.conf}
APT_PACKAGES=(libportaudio2 espeak-ng python3-venv python3-dev python3-pip cmake build-essential sox git)
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}     # JetPack's CUDA toolkit (nvidia-jetpack)
CT2_SRC=$PREFIX/src/CTranslate2-$CT2_VERSION  # its source, with submodules
CT2_ROOT=$PREFIX/ctranslate2-$CT2_VERSION     # the C++ library built for CUDA (include/, lib/)
CT2_WHEELS=$PREFIX/wheels                     # its Python wheel, built against that library
ASR_WARNING=""                                # set when ASR stays on the CPU (repeated at the end)

DRY_RUN=0
POWER_MODE=ask   # yes | no | ask (asked only on a terminal)
DESKTOP_OFF=ask
START=1

usage() {
    cat <<EOF
Usage: sudo ./jetson_setup.sh [options]

Installs the campus-guide kiosk on a Jetson Orin Nano with JetPack 6 (L4T R36):
apt packages, the '$SERVICE_USER' user, a venv in $VENV with llama-cpp-python built for CUDA
(sm_87) and CTranslate2 $CT2_VERSION built for CUDA (sm_87; if that fails, ASR stays on the CPU),
the project with its device runtime and embedded models, the model folders in $DATA
(bundles/<bundle>/model.gguf and the 'current' link), $ETC/config.yaml, and the systemd unit.

Options:
  --dry-run          print every action without doing any of it (runs on any machine)
  --power-mode       set the power mode to MAXN Super (else 25 W)   --no-power-mode: leave it
  --no-desktop       boot to the console (frees ~0.8 GB for the models)  --keep-desktop: leave it
  --no-start         install and enable the service but do not (re)start it now
  -h, --help         this text
Without a power-mode or desktop flag the script asks, when run on a terminal; otherwise it
leaves that setting alone.
EOF
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --power-mode) POWER_MODE=yes ;;
        --no-power-mode) POWER_MODE=no ;;
        --no-desktop) DESKTOP_OFF=yes ;;
        --keep-desktop) DESKTOP_OFF=no ;;
        --no-start) START=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "jetson_setup.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
# Tests point a dry run's read-only checks at a stand-in venv; a real run always uses $PREFIX/venv.
if [[ $DRY_RUN == 1 && -n ${CAMPUS_GUIDE_VENV:-} ]]; then VENV=$CAMPUS_GUIDE_VENV; fi

say() { printf '==> %s\n' "$*"; }
skip() { printf '    ok: %s\n' "$*"; }
die() { printf 'jetson_setup.sh: error: %s\n' "$*" >&2; exit 1; }

# Every change goes through run (a command) or put (a file): in --dry-run they only print.
run() {
    printf '    + %s\n' "$*"
    if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

# put MODE OWNER:GROUP PATH [CHECK...] < content: written atomically, after `CHECK PATH.tmp`
# passes; unchanged files are left alone.
put() {
    local mode=$1 owner=$2 path=$3 content
    local -a check=("${@:4}")
    content=$(cat)
    if [[ -f $path ]] && [[ $(cat "$path") == "$content" ]]; then
        skip "$path is up to date"
        return
    fi
    printf '    + write %s (%s %s):\n' "$path" "$mode" "$owner"
    local line
    while IFS= read -r line; do printf '    |   %s\n' "$line"; done <<<"$content"
    if [[ $DRY_RUN == 0 ]]; then
        printf '%s\n' "$content" >"$path.tmp"
        chmod "$mode" "$path.tmp"
        chown "$owner" "$path.tmp"
        if [[ ${#check[@]} -gt 0 ]] && ! "${check[@]}" "$path.tmp"; then
            rm -f "$path.tmp"
            die "$path would be invalid (${check[*]} failed); nothing was changed"
        fi
        mv -f "$path.tmp" "$path"
    fi
}

# ask QUESTION -> 0 for yes; only called when the answer was not given by a flag
ask() {
    local reply
    [[ -t 0 ]] || return 1
    read -r -p "    $1 [y/N] " reply
    [[ $reply == [yY]* ]]
}

check_board() {
    say "Checking the board"
    local release=""
    [[ -r $TEGRA_RELEASE ]] && release=$(head -n 1 "$TEGRA_RELEASE")
    if [[ $release =~ ^#\ R([0-9]+)\ \(release\),\ REVISION:\ ([0-9.]+) ]]; then
        local major=${BASH_REMATCH[1]} revision=${BASH_REMATCH[2]}
        if [[ $major != 36 ]]; then
            die "L4T R$major.$revision found; this kiosk needs JetPack 6 (L4T R36). Reflash the board with JetPack 6 (SDK Manager or the SD card image)."
        fi
        skip "L4T R$major.$revision (JetPack 6)"
    elif [[ $DRY_RUN == 1 ]]; then
        skip "not a Jetson ($TEGRA_RELEASE missing or unreadable); continuing only because of --dry-run"
    else
        die "this is not a Jetson with JetPack 6 ($TEGRA_RELEASE is missing or unreadable). Run it on the Orin Nano, or add --dry-run to see what it would do."
    fi
    if [[ $DRY_RUN == 0 && $EUID -ne 0 ]]; then
        die "run it as root: sudo $0"
    fi
}

apt_packages() {
    say "Debian packages"
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        skip "${APT_PACKAGES[*]}"
        return
    fi
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

service_user() {
    say "Service user '$SERVICE_USER' (groups audio, video: sound card and GPU)"
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        skip "user $SERVICE_USER exists"
    else
        run useradd --system --user-group --home-dir "$DATA" --no-create-home \
            --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
    local groups
    groups=$(id -nG "$SERVICE_USER" 2>/dev/null || true)
    if [[ " $groups " == *" audio "* && " $groups " == *" video "* ]]; then
        skip "$SERVICE_USER is in audio and video"
    else
        run usermod -a -G audio,video "$SERVICE_USER"
    fi
    # The operator who ran sudo may upload bundles (campus-guide flash) and read the status.
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then
        if id -nG "$SUDO_USER" | tr ' ' '\n' | grep -qx "$SERVICE_USER"; then
            skip "$SUDO_USER is in group $SERVICE_USER"
        else
            run usermod -a -G "$SERVICE_USER" "$SUDO_USER"
        fi
    fi
}

folders() {
    say "Folders"
    # Models and bundles: written by the operator (group), read-only to the kiosk (the unit's
    # ProtectSystem=strict); state: written by the kiosk, read by `campus-guide status`.
    run install -d -m 0755 -o root -g root "$PREFIX" "$ETC"
    run install -d -m 2775 -o root -g "$SERVICE_USER" "$DATA" "$DATA/models" "$DATA/bundles"
    run install -d -m 0755 -o "$SERVICE_USER" -g "$SERVICE_USER" "$DATA/state"
}

python_env() {
    say "Python venv in $VENV"
    if [[ -x $VENV/bin/python ]]; then
        skip "venv exists"
    else
        run python3 -m venv "$VENV"
        run "$VENV/bin/pip" install --upgrade pip wheel
    fi

    # llama-cpp-python has no aarch64 CUDA wheel: build it for the Orin's GPU (sm_87), with the
    # version pinned in pyproject.toml, before the project install finds the pin satisfied.
    local pin
    pin=$(grep -o 'llama-cpp-python==[0-9.]*' "$SRC/pyproject.toml" | head -n 1)
    [[ -n $pin ]] || die "no llama-cpp-python pin in $SRC/pyproject.toml"
    if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" - "${pin#*==}" <<'PY' 2>/dev/null; then
import sys, llama_cpp
sys.exit(0 if llama_cpp.__version__ == sys.argv[1] and llama_cpp.llama_supports_gpu_offload() else 1)
PY
        skip "$pin with CUDA"
    else
        if [[ $DRY_RUN == 0 && ! -x $CUDA_HOME/bin/nvcc ]]; then
            die "no CUDA compiler at $CUDA_HOME/bin/nvcc; install JetPack's CUDA toolkit (sudo apt-get install nvidia-jetpack) and run this again"
        fi
        run env CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=87" \
            CUDACXX="$CUDA_HOME/bin/nvcc" CMAKE_BUILD_PARALLEL_LEVEL=4 \
            "$VENV/bin/pip" install --no-cache-dir --force-reinstall --no-deps "$pin"
        run "$VENV/bin/pip" install "$pin"   # its pure-Python dependencies
    fi

    # The kiosk runtime (faster-whisper, piper, onnxruntime, ...) and the embedded models.
    run "$VENV/bin/pip" install "${SRC}[device,models]"
    # Smart Turn v3.2's ONNX (end of turn) ships in pipecat-ai; the kiosk runs the file only.
    run "$VENV/bin/pip" install --no-deps pipecat-ai==1.14.0
    if [[ -L /usr/local/bin/campus-guide ]] && [[ $(readlink /usr/local/bin/campus-guide) == "$VENV/bin/campus-guide" ]]; then
        skip "/usr/local/bin/campus-guide"
    else
        run ln -sfn "$VENV/bin/campus-guide" /usr/local/bin/campus-guide
    fi
    run install -D -m 0644 "$SRC/docs/appliance.md" "$PREFIX/docs/appliance.md"
}

# The venv's ctranslate2 as "VERSION CUDA_DEVICES" (e.g. "4.8.5 1"); fails when it has none.
CT2_CHECK='import ctranslate2; print(ctranslate2.__version__, ctranslate2.get_cuda_device_count())'
ct2_state() {
    [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c "$CT2_CHECK" 2>/dev/null
}

# asr_on_cpu REASON: pip's CPU-only ctranslate2 stays, the setup goes on; the warning says what
# to check, and that the config needs asr.device: cpu until ctranslate2 sees the GPU.
asr_on_cpu() {
    ASR_WARNING="ASR stays on the CPU: $1"
    {
        printf '    WARNING: %s.\n' "$ASR_WARNING"
        printf '    WARNING: pip'"'"'s CPU-only ctranslate2 is kept; Whisper runs on the CPU (slower answers).\n'
        printf '    WARNING: check: JetPack'"'"'s CUDA toolkit and cuDNN (%s/bin/nvcc, cudnn.h; sudo apt-get install nvidia-jetpack),\n' "$CUDA_HOME"
        printf '    WARNING:   that the GPU is visible (%s -c '"'"'import ctranslate2; print(ctranslate2.get_cuda_device_count())'"'"' prints 1),\n' "$VENV/bin/python"
        printf '    WARNING:   and free memory while it builds (--no-desktop); then run this script again.\n'
        printf '    WARNING: meanwhile set asr.device: cpu and asr.compute_type: int8 in %s.\n' "$ETC/config.yaml"
    } >&2
}

# cuDNN's headers where CMake looks (cudnn.h, or the cudnn_v9.h it may link to); lenient on
# purpose: CMake has the last word, and its failure also ends in asr_on_cpu.
cudnn_found() {
    local d
    for d in "$CUDA_HOME/include" /usr/include /usr/include/aarch64-linux-gnu /usr/local/include; do
        compgen -G "$d/cudnn*.h" >/dev/null && return 0
    done
    return 1
}

# The source at tag v$CT2_VERSION, the C++ library for the Orin's GPU, its Python wheel: each
# step skipped when its result exists. Returns non-zero on the first failure (no die: the caller
# keeps the CPU wheel), so every step ends in `|| return 1` (set -e does not apply in a condition).
ct2_build() {
    if [[ -d $CT2_SRC/.git ]]; then
        skip "source in $CT2_SRC"
    else
        run rm -rf "$CT2_SRC.part" || return 1
        run install -d -m 0755 "$PREFIX/src" || return 1
        run git clone --quiet --depth 1 --branch "v$CT2_VERSION" --recurse-submodules \
            --shallow-submodules https://github.com/OpenNMT/CTranslate2.git "$CT2_SRC.part" || return 1
        run mv "$CT2_SRC.part" "$CT2_SRC" || return 1
    fi
    if [[ -e $CT2_ROOT/lib/libctranslate2.so ]]; then
        skip "library in $CT2_ROOT"
    else
        # aarch64 has no MKL: the compiler's OpenMP, Ruy for the CPU (int8 and float32) beside CUDA;
        # cuDNN for Whisper's convolutions; kernels for the Orin's GPU only (compute capability 8.7).
        run cmake -S "$CT2_SRC" -B "$CT2_SRC/build" -DCMAKE_BUILD_TYPE=Release \
            -DCMAKE_INSTALL_PREFIX="$CT2_ROOT" -DCMAKE_INSTALL_LIBDIR=lib \
            -DCMAKE_INSTALL_RPATH="$CUDA_HOME/lib64" -DBUILD_CLI=OFF \
            -DWITH_MKL=OFF -DOPENMP_RUNTIME=COMP -DWITH_RUY=ON \
            -DWITH_CUDA=ON -DWITH_CUDNN=ON -DCUDA_ARCH_LIST=8.7 \
            -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" || return 1
        run cmake --build "$CT2_SRC/build" --parallel 4 || return 1
        run cmake --install "$CT2_SRC/build" || return 1
    fi
    if compgen -G "$CT2_WHEELS/ctranslate2-$CT2_VERSION-*.whl" >/dev/null; then
        skip "wheel in $CT2_WHEELS"
    else
        # setup.py finds the library through CTRANSLATE2_ROOT; the rpath finds it at run time
        # (the kiosk's unit sets no LD_LIBRARY_PATH).
        run install -d -m 0755 "$CT2_WHEELS" || return 1
        run env CTRANSLATE2_ROOT="$CT2_ROOT" LDFLAGS="-Wl,-rpath,$CT2_ROOT/lib" CMAKE_BUILD_PARALLEL_LEVEL=4 \
            "$VENV/bin/pip" wheel --no-deps --no-cache-dir --wheel-dir "$CT2_WHEELS" "$CT2_SRC/python" || return 1
    fi
}

ct2_cpu_wheel() {
    run "$VENV/bin/pip" install --force-reinstall --no-deps --only-binary ctranslate2 "ctranslate2==$CT2_VERSION"
}

asr_gpu() {
    say "CTranslate2 $CT2_VERSION with CUDA (sm_87) for ASR"
    local state version="" devices=""
    state=$(ct2_state) || state=""
    read -r version devices <<<"$state"
    [[ $devices =~ ^[0-9]+$ ]] || devices=0
    if ((devices >= 1)); then
        skip "ctranslate2 $version sees $devices CUDA device(s): ASR on the GPU"
        [[ $version == "$CT2_VERSION" ]] || skip "(not CT2_VERSION $CT2_VERSION, but it has CUDA: left as it is)"
        return
    fi
    if [[ -n $version && $version != "$CT2_VERSION" ]]; then
        asr_on_cpu "the project's dependencies installed ctranslate2 $version, but CT2_VERSION at the top of $0 is $CT2_VERSION (make them equal)"
        return
    fi
    printf '    check: %s -c "%s" -> %s (version, CUDA devices; >= 1 device skips this step)\n' \
        "$VENV/bin/python" "$CT2_CHECK" "${state:-no ctranslate2 yet}"

    local why=""
    [[ -x $CUDA_HOME/bin/nvcc ]] || why="no CUDA compiler at $CUDA_HOME/bin/nvcc"
    [[ -n $why ]] || cudnn_found || why="no cuDNN headers (cudnn.h under $CUDA_HOME/include or /usr/include)"
    if [[ -n $why ]]; then
        asr_on_cpu "$why"
        [[ $DRY_RUN == 1 ]] || return 0
        skip "showing the build anyway, because of --dry-run"
    fi

    if ! ct2_build; then
        asr_on_cpu "the CTranslate2 build failed (its output is above)"
        return
    fi
    if ! run "$VENV/bin/pip" install --force-reinstall --no-deps --no-index --find-links "$CT2_WHEELS" \
        "ctranslate2==$CT2_VERSION"; then
        ct2_cpu_wheel || true
        asr_on_cpu "the CUDA build of ctranslate2 would not install"
        return
    fi
    if [[ $DRY_RUN == 1 ]]; then
        printf '    + %s -c "%s"   (no CUDA device: back to pip'"'"'s CPU wheel, then the warning)\n' \
            "$VENV/bin/python" "$CT2_CHECK"
        printf '    + (only then) %s\n' "$VENV/bin/pip install --force-reinstall --no-deps --only-binary ctranslate2 ctranslate2==$CT2_VERSION"
        return
    fi
    state=$(ct2_state) || state=""
    version="" devices=""
    read -r version devices <<<"$state"
    [[ $devices =~ ^[0-9]+$ ]] || devices=0
    if [[ $version == "$CT2_VERSION" ]] && ((devices >= 1)); then
        skip "ctranslate2 $version sees $devices CUDA device(s): ASR on the GPU"
    else
        ct2_cpu_wheel || true
        asr_on_cpu "the CUDA build sees no GPU (get_cuda_device_count() gave ${devices}; '${state:-import failed}')"
    fi
}

models() {
    say "Models in $DATA"
    # fetch skips files whose sha256 already matches models.json, so this is cheap the 2nd time.
    run env CAMPUS_GUIDE_MODELS="$DATA/models" "$VENV/bin/campus-guide" models fetch
    run chgrp -R "$SERVICE_USER" "$DATA/models"

    # The layout `campus-guide flash` deploys into: bundles/<bundle>/{model.gguf,manifest.json}
    # and current -> bundles/<bundle>. Until the first flash, 'packaged' points at the embedded
    # base model. A board that already has a current link keeps it.
    if [[ -L $DATA/current ]]; then
        skip "current -> $(readlink "$DATA/current")"
    else
        run install -d -m 2775 -o root -g "$SERVICE_USER" "$DATA/bundles/packaged"
        run ln -sfn ../../models/gemma3-270m-q4_k_m.gguf "$DATA/bundles/packaged/model.gguf"
        run ln -sfn bundles/packaged "$DATA/current"
    fi
}

config() {
    say "Config $ETC/config.yaml"
    if [[ -f $ETC/config.yaml ]]; then
        skip "kept (an operator may have edited it; the example is $SRC/configs/kiosk.yaml)"
    else
        put 0644 root:root "$ETC/config.yaml" <"$SRC/configs/kiosk.yaml"
    fi
    # The operator's shell (campus-guide status / demo over SSH) uses the kiosk's config too.
    put 0644 root:root /etc/profile.d/campus-guide.sh <<<"export CAMPUS_GUIDE_CONFIG=$ETC/config.yaml"
    # Refuse to enable a kiosk whose models do not fit: the same check `campus-guide run` makes.
    run env CAMPUS_GUIDE_CONFIG="$ETC/config.yaml" "$VENV/bin/campus-guide" budget
}

service() {
    say "systemd unit"
    put 0644 root:root "/etc/systemd/system/$UNIT" <"$SRC/systemd/$UNIT"
    # Operators (group campus-guide) stop, start and restart the kiosk without a password: the
    # SSH demo, and `campus-guide flash`, which restarts it non-interactively. Nothing else.
    put 0440 root:root /etc/sudoers.d/campus-guide visudo -cqf <<EOF
%$SERVICE_USER ALL=(root) NOPASSWD: /usr/bin/systemctl start $UNIT_NAME, /usr/bin/systemctl stop $UNIT_NAME, /usr/bin/systemctl restart $UNIT_NAME
EOF
    run systemctl daemon-reload
    if systemctl is-enabled --quiet "$UNIT" 2>/dev/null; then
        skip "$UNIT enabled"
    else
        run systemctl enable "$UNIT"
    fi
    if [[ $START == 1 ]]; then
        run systemctl restart "$UNIT"
    fi
}

power_mode() {
    say "Power mode (MAXN Super, else 25 W)"
    if [[ $POWER_MODE == ask ]]; then
        if ask "Set the power mode to MAXN Super / 25 W (faster answers, more heat)?"; then
            POWER_MODE=yes
        else
            skip "left as it is (pass --power-mode to set it)"
            return
        fi
    fi
    [[ $POWER_MODE == yes ]] || { skip "left as it is (--no-power-mode)"; return; }
    local id=""
    if [[ -r $NVPMODEL_CONF ]]; then
        # lines like: < POWER_MODEL ID=2 NAME=MAXN_SUPER >
        id=$(sed -n 's/.*POWER_MODEL ID=\([0-9]*\) NAME=MAXN_SUPER.*/\1/p' "$NVPMODEL_CONF" | head -n 1)
        [[ -n $id ]] || id=$(sed -n 's/.*POWER_MODEL ID=\([0-9]*\) NAME=25W.*/\1/p' "$NVPMODEL_CONF" | head -n 1)
    fi
    if [[ -z $id ]]; then
        if [[ $DRY_RUN == 1 ]]; then
            run nvpmodel -m "<id of MAXN_SUPER or 25W in $NVPMODEL_CONF>"
            return
        fi
        die "no MAXN_SUPER or 25W mode in $NVPMODEL_CONF (JetPack 6.2 adds them); set one with 'sudo nvpmodel -m ID' or rerun with --no-power-mode"
    fi
    if [[ $(nvpmodel -q 2>/dev/null | sed -n 's/^NV Power Mode: *//p') =~ ^(MAXN_SUPER|25W)$ ]]; then
        skip "$(nvpmodel -q | head -n 1)"
    else
        # nvpmodel may offer to reboot; answer no: the new mode applies now or at the next boot.
        printf '    + nvpmodel -m %s\n' "$id"
        if [[ $DRY_RUN == 0 ]]; then echo NO | nvpmodel -m "$id"; fi
    fi
}

desktop() {
    say "Desktop (boot to the console to free memory for the models)"
    if [[ $DESKTOP_OFF == ask ]]; then
        if ask "Turn the desktop off (boot to multi-user.target)?"; then
            DESKTOP_OFF=yes
        else
            skip "left as it is (pass --no-desktop to turn it off)"
            return
        fi
    fi
    [[ $DESKTOP_OFF == yes ]] || { skip "left as it is (--keep-desktop)"; return; }
    if [[ $(systemctl get-default 2>/dev/null) == multi-user.target ]]; then
        skip "default target is multi-user.target"
    else
        run systemctl set-default multi-user.target
        say "The desktop stays until the next reboot (sudo reboot)."
    fi
}

# Sourced (tests/test_jetson_setup.py runs single steps with stand-in tools), it only defines.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

[[ $DRY_RUN == 1 ]] && say "Dry run: printing every action, changing nothing"
check_board
apt_packages
service_user
folders
python_env
asr_gpu
models
config
power_mode
desktop
service
say "Done. Check with: campus-guide status; journalctl -u campus-guide -f"
if [[ -n $ASR_WARNING ]]; then printf '    WARNING: %s (see above).\n' "$ASR_WARNING" >&2; fi
