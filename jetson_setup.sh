#!/usr/bin/env bash
# Set up a fresh Jetson Orin Nano (JetPack 6 = L4T R36) as a campus-guide kiosk.
#
# Idempotent: every step checks first and only does what is missing, so running it again after
# an update (git pull) is the way to upgrade. `--dry-run` prints every action and changes nothing
# (it runs anywhere, which is how CI tests it). See docs/appliance.md.
set -euo pipefail

PREFIX=/opt/campus-guide
VENV=$PREFIX/venv
DATA=/var/lib/campus-guide
ETC=/etc/campus-guide
SERVICE_USER=campus-guide
UNIT=campus-guide.service
UNIT_NAME=${UNIT%.service}
TEGRA_RELEASE=${TEGRA_RELEASE:-/etc/nv_tegra_release}
NVPMODEL_CONF=${NVPMODEL_CONF:-/etc/nvpmodel.conf}
APT_PACKAGES=(libportaudio2 espeak-ng python3-venv python3-dev python3-pip cmake build-essential sox)
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

DRY_RUN=0
POWER_MODE=ask   # yes | no | ask (asked only on a terminal)
DESKTOP_OFF=ask
START=1

usage() {
    cat <<EOF
Usage: sudo ./jetson_setup.sh [options]

Installs the campus-guide kiosk on a Jetson Orin Nano with JetPack 6 (L4T R36):
apt packages, the '$SERVICE_USER' user, a venv in $VENV with llama-cpp-python built for CUDA
(sm_87), the project with its device runtime and embedded models, the model folders in $DATA
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
        if [[ $DRY_RUN == 0 && ! -x /usr/local/cuda/bin/nvcc ]]; then
            die "no CUDA compiler at /usr/local/cuda/bin/nvcc; install JetPack's CUDA toolkit (sudo apt-get install nvidia-jetpack) and run this again"
        fi
        run env CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=87" \
            CUDACXX=/usr/local/cuda/bin/nvcc CMAKE_BUILD_PARALLEL_LEVEL=4 \
            "$VENV/bin/pip" install --no-cache-dir --force-reinstall --no-deps "$pin"
        run "$VENV/bin/pip" install "$pin"   # its pure-Python dependencies
    fi

    # The kiosk runtime (faster-whisper, piper, onnxruntime, ...) and the embedded models.
    run "$VENV/bin/pip" install "${SRC}[device,models]"
    if [[ -L /usr/local/bin/campus-guide ]] && [[ $(readlink /usr/local/bin/campus-guide) == "$VENV/bin/campus-guide" ]]; then
        skip "/usr/local/bin/campus-guide"
    else
        run ln -sfn "$VENV/bin/campus-guide" /usr/local/bin/campus-guide
    fi
    run install -D -m 0644 "$SRC/docs/appliance.md" "$PREFIX/docs/appliance.md"
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

[[ $DRY_RUN == 1 ]] && say "Dry run: printing every action, changing nothing"
check_board
apt_packages
service_user
folders
python_env
models
config
power_mode
desktop
service
say "Done. Check with: campus-guide status; journalctl -u campus-guide -f"
