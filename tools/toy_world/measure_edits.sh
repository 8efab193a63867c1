#!/usr/bin/env bash
# Every number in tools/toy_world/measured_edits.json (README, "FLUX-class models (DiTs)") and the
# grids docs/toy_translation_grid.png and docs/toy_analogy_grid.png, from the measurement scripts on
# ComfyUI v0.33 (the environment `make test-hosts` makes for that host; COMFYUI_PATH and PYTHON choose
# another). About an hour on a 2-core CPU. measured_edits.json is replaced only when every run has
# finished (a failed or interrupted run leaves it as it was).
set -euo pipefail
cd "$(dirname "$0")/../.."
HOST=${COMFYUI_PATH:-$PWD/.host/comfyui-0.33.0/ComfyUI}
PY=${PYTHON:-$PWD/.host/comfyui-0.33.0/venv/bin/python}
[ -f "$HOST/main.py" ] || { echo "no ComfyUI at $HOST: run tools/test_hosts.sh --setup-only, or set COMFYUI_PATH and PYTHON" >&2; exit 2; }
OUT=tools/toy_world/measured_edits.json
PARTIAL=$(mktemp tools/toy_world/.measured_edits.XXXXXX.json)
rm -f "$PARTIAL"
trap 'rm -f "$PARTIAL"' EXIT

translation() { COMFYUI_PATH=$HOST "$PY" tools/toy_world/measure_translation.py --edits 16 --json "$PARTIAL" "$@"; }
analogy() { COMFYUI_PATH=$HOST "$PY" tools/toy_world/measure_analogy.py --analogies 16 --json "$PARTIAL" "$@"; }

translation --section translation --grid docs/toy_translation_grid.png
for step in 0.3 1.0 3.0; do
  translation --methods pix2pix-zero,pix2pix-zeroCon --guidance "{\"step_size\": $step}" \
    --section "translation sweeps/step_size $step"
done
translation --cfg 6 --guidance '{"step_size": 1.0}' --section "translation sweeps/cfg 6, step_size 1.0"
translation --steps 5 --guidance '{"step_size": 1.0}' --section "translation sweeps/5 steps, step_size 1.0"
analogy --attribute colour,pattern --section analogy --grid docs/toy_analogy_grid.png
analogy --attribute colour --b-differs shape --section analogy

PYTHONPATH=tools "$PY" - "$PARTIAL" <<'PYEOF'
import sys
from toy_world import harness
harness.merge_json(sys.argv[1], "", {"about": (
    "Written by tools/toy_world/measure_edits.sh (each section's settings say where it ran); README "
    "'FLUX-class models (DiTs)'. Scores: changed/kept/both from the detector; object/background error "
    "= mean |RGB| error (0-255) against the ideal edit (detect.edit_errors).")})
PYEOF
mv "$PARTIAL" "$OUT"
echo "wrote $OUT"
