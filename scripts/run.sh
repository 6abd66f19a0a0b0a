#!/usr/bin/env bash
# One entry point for a fresh machine: sets up what is missing, then runs what you asked for.
#   bash scripts/run.sh demo   [args]  -> the main job on the simulated arm (no robot, camera or downloads)
#   bash scripts/run.sh test   [args]  -> the whole test suite (what CI runs)
#   bash scripts/run.sh setup          -> only install
# Everything is installed from this repository's own files into .venv (override with SO101_VENV).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SO101_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

setup_system() {
    # MuJoCo renders headless through OSMesa on machines without a GPU/display.
    if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "[setup] installing libosmesa6 (headless MuJoCo rendering)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6 >/dev/null
        else
            echo "[setup] WARNING: libOSMesa not found; install libosmesa6 (Debian/Ubuntu) for headless rendering" >&2
        fi
    fi
}

setup_python() {
    local stamp="$VENV/.so101-installed"
    local want
    want=$(cat pyproject.toml | sha256sum | cut -c1-16)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "[setup] creating $VENV with $($PY --version)"
        "$PY" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
    echo "[setup] installing so101-deploy and its pinned dependencies (torch 2.14.1 is a large download the first time)"
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    echo "$want" > "$stamp"
}

setup() {
    setup_system
    setup_python
}

activate() {
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    export MUJOCO_GL=${MUJOCO_GL:-osmesa}
    export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-osmesa}
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
}

cmd=${1:-}
shift || true
case "$cmd" in
    setup) setup ;;
    demo)
        setup; activate
        exec so101-deploy demo "$@" ;;
    test)
        setup; activate
        # pytest exits 5 when no test was collected: that is a failure here, not a pass
        exec python -m pytest "$@" ;;
    *)
        echo "usage: bash scripts/run.sh {demo|test|setup} [args...]" >&2
        exit 2 ;;
esac
