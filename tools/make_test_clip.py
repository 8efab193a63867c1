#!/usr/bin/env python3
"""Build a deterministic random-weight CLIP ViT-L/14 file for the
e2e run of workflows/api/image_analogy.json.

    python tools/make_test_clip.py [--out .cache/clip/test_clip_vit_l.safetensors]

One file in OpenAI/HF CLIPModel layout: ``vision_model.*`` + ``visual_projection.weight`` (what
ComfyUI's CLIPVisionLoader detects as ViT-L/14: it needs the full 24 x 1024 tower, ~304M params) and
``text_model.*`` + ``text_projection.weight`` (what CLIPLoader / the trainer's
alignment_text_encoder read; the text tower is the test SD1.5 checkpoint's CLIP-L, same tensors).
Link the same file into models/clip_vision/ and models/text_encoders/. ~430M params, ~0.85 GB fp16.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import zlib
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
SEED = 5_000_011


def _randn(name, shape, std):
    g = torch.Generator().manual_seed(SEED + zlib.crc32(name.encode()))
    return torch.empty(tuple(shape)).normal_(0.0, std, generator=g)


def build_text_tower() -> dict:
    """CLIP-L's text tower, identical to test_sd15's (same names -> same generators), plus a
    random ``text_projection``: an alignment text encoder for the image-analogy trainer."""
    import make_test_checkpoints as mk
    mk.import_host()
    import comfy.sd1_clip

    shapes = mk.meta_state_dict(lambda: comfy.sd1_clip.SD1ClipModel())
    shapes = {k: v for k, v in shapes.items() if ".text_projection." not in k and "logit_scale" not in k}
    clip = mk.build_clip_text(shapes, 12)
    prefix = "clip_l.transformer."
    out = {k[len(prefix):]: v for k, v in clip.items() if k.startswith(prefix)}
    out["text_projection.weight"] = _randn("text_projection.weight", (768, 768), 1 / math.sqrt(768)).half()
    return out


def build() -> dict:
    import make_test_checkpoints as mk
    mk.import_host()
    import comfy.clip_vision
    import comfy.ops
    import comfy.sd1_clip
    import json

    out = build_text_tower()
    # vision tower: ComfyUI's ViT-L/14 config, fan-in scaled random, LayerNorm weights 1
    cfg = json.load(open(Path(comfy.clip_vision.__file__).parent / "clip_vision_config_vitl.json"))
    with torch.device("meta"):
        model = comfy.clip_model.CLIPVisionModelProjection(cfg, torch.float16, "meta", comfy.ops.manual_cast)
    for name, t in model.state_dict().items():
        shape = tuple(t.shape)
        if len(shape) <= 1:
            norm = any(s in name for s in ("layer_norm", "layrnorm", "layernorm")) and name.endswith("weight")
            v = torch.ones(shape) if norm else (_randn(name, shape, 0.02) if name.endswith("class_embedding") else torch.zeros(shape))
        else:
            v = _randn(name, shape, 1 / math.sqrt(math.prod(shape[1:])))
        out[name] = v.half()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / ".cache" / "clip" / "test_clip_vit_l.safetensors"))
    args = ap.parse_args()
    from safetensors import safe_open
    from safetensors.torch import save_file
    path = Path(args.out)
    builder = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    if path.exists():
        with safe_open(str(path), "pt") as existing:
            if (existing.metadata() or {}).get("builder") == builder:
                return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in build().items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"builder": builder})
    os.replace(tmp, path)
    print(f"{path}: {sum(v.numel() for v in tensors.values()) / 1e6:.0f}M params")
    return 0


if __name__ == "__main__":
    sys.exit(main())
