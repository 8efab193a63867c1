#!/usr/bin/env bash
# What the GPU checks (bench/gpu_dynamic_vram.py) need on a device machine that reaches no package
# index, whose image has Python 3.12 with torch/torchvision/torchaudio 2.11 and the common packages
# (device README, KINDS.md), carried in .gpu/ (git-ignored, under the 64 MiB a run may carry):
#
#   bash bench/gpu_carry.sh            here: .gpu/ComfyUI (the v0.33.0 tree from ../shared/hosts, or
#                                      $GPU_HOST_TREE, without its tests, blueprints, API nodes and the
#                                      tokenizer files of model families the check does not load) and
#                                      .gpu/wheels (Python 3.12 wheels of what ComfyUI needs beyond
#                                      the image; comfy-kitchen as its Python files only, without its
#                                      fp8/fp4/int8 CUDA and HIP kernels, which an fp16 SD1.5 UNet
#                                      never calls and which would not fit)
#   bash bench/gpu_carry.sh --install  there: installs the wheels into .gpu/site
#
# Then, there: PYTHONPATH=.gpu/site COMFYUI_PATH=.gpu/ComfyUI python3 bench/gpu_dynamic_vram.py
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=.gpu
if [ "${1:-}" = "--install" ]; then
  python3 -m pip install -q --no-index --no-deps --target "$GPU/site" "$GPU"/wheels/*.whl
  cp -r "$GPU/kitchen/." "$GPU/site/"
  PYTHONPATH="$GPU/site" python3 -c "import comfy_aimdo, comfy_kitchen, av, sqlalchemy, pydantic_settings, torchsde"
  exit 0
fi
PY=${PYTHON:-python3}
TREE=${GPU_HOST_TREE:-../shared/hosts/comfyui-0.33.0.tar.gz}
rm -rf "$GPU" && mkdir -p "$GPU/wheels" "$GPU/kitchen" "$GPU/unpack"
if [ -d "$TREE" ]; then cp -r "$TREE" "$GPU/ComfyUI"; else
  tar -xzf "$TREE" -C "$GPU/unpack"; mv "$(dirname "$(find "$GPU/unpack" -maxdepth 2 -name main.py | head -n 1)")" "$GPU/ComfyUI"
fi
rm -rf "$GPU/unpack" "$GPU/ComfyUI"/{tests,tests-unit,blueprints,comfy_api_nodes,.github}
find "$GPU/ComfyUI/comfy/text_encoders" -mindepth 1 -maxdepth 1 -type d -name '*tokenizer*' -exec rm -rf {} +
# Python 3.12 manylinux wheels, without dependencies (the list is ComfyUI's requirements less what the image has)
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$GPU/wheels" \
  comfy-aimdo==0.4.13 blake3 simpleeval torchsde trampoline av alembic Mako SQLAlchemy \
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types typing-inspection pydantic-settings python-dotenv 2>&1 | grep -v "is ignored" || true
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 -d "$GPU/unpack" comfy-kitchen==0.2.31 2>&1 | grep -v "is ignored" || true
"$PY" - "$GPU" <<'PYEOF'
import sys, zipfile, glob, os
gpu = sys.argv[1]
wheel = glob.glob(os.path.join(gpu, "unpack", "comfy_kitchen-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if not name.endswith("_C.abi3.so"):
            z.extract(name, os.path.join(gpu, "kitchen"))
PYEOF
rm -rf "$GPU/unpack"
du -sh "$GPU" "$GPU"/*
