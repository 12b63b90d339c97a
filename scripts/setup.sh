#!/usr/bin/env bash
# Set up rlrs from nothing: a virtual environment with the pinned packages, the
# package itself (editable), and the default corpus (Jane Austen's novels,
# decoded from Debian's r-cran-janeaustenr package).
#   scripts/setup.sh          what the demo needs
#   scripts/setup.sh --dev    also the test tools (pytest, headless Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
# torch first and pinned: with no torch installed, an unpinned requirement
# would pull a multi-GB CUDA build. On a GPU cluster, install the CUDA build
# of the same version first; this line then leaves it alone.
python -m pip install -q --disable-pip-version-check torch==2.13.0
if [ "$dev" = 1 ]; then
  python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
else
  python -m pip install -q --disable-pip-version-check -r requirements.txt
fi
python -m pip install -q --disable-pip-version-check --no-deps -e .

python -m rlrs corpus fetch  # the venv's rlrs (activated above), never another on PATH

if [ "$dev" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing headless Chromium for the report's browser test"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium not found and cannot be installed here; the browser test will be skipped" >&2
  fi
fi
echo "setup: done ($(python -c 'import torch; print("torch", torch.__version__)'))"
