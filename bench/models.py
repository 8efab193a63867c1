"""Random-weight checkpoints at the real SD1.5, SDXL and FLUX.1 architecture sizes, for timing on CUDA.

They reuse tools/make_test_checkpoints.py's recipe (structured random UNet with the eps carrier,
fan-in scaled CLIP) by importing its builders with the full-size UNet configs that ComfyUI's
detector knows as ``SD15`` and ``SDXL``; the real AutoencoderKL architecture replaces TAESD so that
encode/decode time like the real VAE. Nothing in make_test_checkpoints.py changes, so the small
test checkpoints stay byte-identical. Files go to ``.cache/bench_checkpoints`` (never committed)
and are rebuilt only when their recorded build id changes.

Random weights time like real ones: the cost of a UNet evaluation depends on shapes, not values.
The carrier keeps sampling bounded, so outputs stay finite, which the GPU smoke test checks.

FLUX.1 (``flux``): make_test_checkpoints.py's FLUX-layout recipe at FLUX.1-dev's size (hidden 3072,
24 heads, 19 double and 38 single blocks, guidance input: 11.9 B parameters, stored in bf16 as the
released weights, 24 GB), loaded by UNETLoader, with the full-size CLIP-L of the test models as its
only text encoder (CLIPLoader): the image tokens and every block are FLUX.1's, but the text arrives
as CLIP-L's 77 tokens of width 768 (``txt_in`` 768 wide) instead of T5-XXL's 256+ tokens of 4096, so
the joint sequence is 179 tokens shorter than FLUX.1-dev's (at 512 px: 1101 tokens against 1280).
The small profile uses the FLUX-layout test model the host loads (tests/pack_testing.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

import harness

CHECKPOINT_DIR = harness.REPO / ".cache" / "bench_checkpoints"
SMALL_CHECKPOINT_DIR = harness.REPO / ".cache" / "checkpoints"

SD15_FULL_UNET = {
    "model_channels": 320, "context_dim": 768, "use_linear_in_transformer": False, "num_heads": 8,
    "in_channels": 4, "out_channels": 4, "adm_in_channels": None,
    "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
}
SDXL_FULL_UNET = {
    "model_channels": 320, "context_dim": 2048, "use_linear_in_transformer": True, "num_head_channels": 64,
    "in_channels": 4, "out_channels": 4, "adm_in_channels": 2816, "num_classes": "sequential",
    "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False, "use_temporal_resblock": False,
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
}
VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}

# FLUX.1-dev's layout; out_gain as the 3072-wide test model's
FLUX1_FULL = {"hidden_size": 3072, "depth": 19, "depth_single_blocks": 38, "guidance_embed": True, "out_gain": 4.5}
FLUX_TEXT_ENCODER_FULL = "bench_clip_l.safetensors"
# the trainer's one-off encodes only (its per-step figure cancels them): the FLUX test VAE, a 16-channel TAESD
FLUX_VAE_FULL = "bench_flux_taesd.safetensors"
EXTRA_FILES = {"flux_text_encoder": FLUX_TEXT_ENCODER_FULL, "flux_vae": FLUX_VAE_FULL}

# model -> (file name, family, full resolution); the small FLUX file depends on the host (small_flux_file)
FULL = {
    "sd15": ("bench_sd15_full.safetensors", "SD15", 512),
    "sdxl": ("bench_sdxl_full.safetensors", "SDXL", 1024),
    "flux": ("bench_flux1_full.safetensors", "FLUX", 512),  # the shipped FLUX workflows scale images to 512
}
SMALL = {
    "sd15": ("test_sd15.safetensors", "SD15", 64),
    "sdxl": ("test_sdxl.safetensors", "SDXL", 64),
    "flux": (None, "FLUX", 64),
}


def _mk():
    import make_test_checkpoints  # tools/ is on sys.path (harness)

    return make_test_checkpoints


def build_id() -> str:
    mk = _mk()
    own = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return f"bench-full-1+{mk.BUILD_ID}+{own}"


def random_vae(prefix: str = "first_stage_model.") -> dict:
    """Real SD AutoencoderKL shapes, fan-in scaled random weights (norm weights 1, biases 0)."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    mk = _mk()
    shapes = mk.meta_state_dict(lambda: AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=4))
    out = {}
    for key, shape in shapes.items():
        name = prefix + key
        if len(shape) <= 1:
            out[name] = torch.ones(shape) if ("norm" in key and key.endswith(".weight")) else torch.zeros(shape)
        else:
            out[name] = mk.fan_in_init(name, shape, 1.0)
    return out


def full_state_dict(model: str) -> dict:
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models as sm

    mk = _mk()
    if model == "flux":
        return mk.flux_state_dict(FLUX1_FULL)
    if model == "flux_text_encoder":
        return mk.clip_l_state_dict()
    if model == "flux_vae":
        return mk.flux_vae_state_dict()
    if model == "sd15":
        cfg = sm.SD15(dict(SD15_FULL_UNET))
        clip_shapes = mk.meta_state_dict(lambda: comfy.sd1_clip.SD1ClipModel())
        clip = mk.build_clip_text(clip_shapes, 12)
    elif model == "sdxl":
        cfg = sm.SDXL(dict(SDXL_FULL_UNET))
        clip_shapes = mk.meta_state_dict(lambda: comfy.sdxl_clip.SDXLClipModel())
        clip = {}
        clip.update(mk.build_clip_text({k: v for k, v in clip_shapes.items() if k.startswith("clip_l.")}, 12))
        clip.update(mk.build_clip_text({k: v for k, v in clip_shapes.items() if k.startswith("clip_g.")}, 32))
    else:
        raise ValueError(model)
    unet_shapes = mk.meta_state_dict(lambda: cfg.get_model({}).diffusion_model)
    sd = {k: v.half() for k, v in mk.build_unet(unet_shapes, "model.diffusion_model.").items()}
    sd.update(cfg.process_clip_state_dict_for_saving(clip))
    sd.update({k: v.half() for k, v in random_vae().items()})
    return sd


def _recorded(path: Path) -> str | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["ee_bench_model"])["build"]
    except Exception:
        return None


def ensure_full_checkpoint(model: str, folder: Path = CHECKPOINT_DIR, log=print) -> Path:
    """Builds (once) the full-size random checkpoint of ``model`` ("sd15" / "sdxl" / "flux"), or one of
    FLUX's ``EXTRA_FILES`` ("flux_text_encoder": the CLIP-L its graphs load with CLIPLoader; "flux_vae")."""
    from safetensors.torch import save_file

    name = EXTRA_FILES.get(model) or FULL[model][0]
    path = folder / name
    bid = build_id()
    if path.exists() and _recorded(path) == bid:
        return path
    t0 = time.perf_counter()
    tensors = full_state_dict(model)
    dtype = torch.bfloat16 if model == "flux" else torch.float16  # FLUX.1 is released in bf16
    for key in list(tensors):  # converted one at a time: FLUX.1's fp32 weights alone take 48 GB
        value = tensors[key]
        tensors[key] = (value.to(dtype) if value.is_floating_point() else value).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={"ee_bench_model": json.dumps({"build": bid, "model": model})})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    params = sum(v.numel() for v in tensors.values())
    log(f"[bench] built {name}: {params / 1e6:.0f}M params in {time.perf_counter() - t0:.0f} s")
    return path


def small_flux_file() -> str:
    """The FLUX-layout test model this host loads (tests/pack_testing.py): the narrow one on ComfyUI
    0.33+, the 3072-wide one on hosts that fix 24 heads (0.3.75)."""
    import pack_testing

    for path in (pack_testing.FLUX_FILES / "diffusion_models" / pack_testing.FLUX_NARROW,
                 pack_testing.FLUX_FILES / "text_encoders" / pack_testing.FLUX_CLIP):
        if not path.exists():
            raise SystemExit(f"error: FLUX test model {path} missing: run `make setup`")
    name = pack_testing.flux_model_for_host()
    if not (pack_testing.FLUX_FILES / "diffusion_models" / name).exists():
        raise SystemExit(f"error: FLUX test model {name} missing in {pack_testing.FLUX_FILES}: run `make setup`")
    return name


def checkpoints(device: str, models: list[str], full: bool, log=print) -> dict[str, dict]:
    """``{model: {"ckpt": file name, "family": ..., "size": px, "folder": Path, "text_encoder": file
    name or None, "vae": file name or None}}``; FLUX's ``ckpt`` is a diffusion model, ``text_encoder``
    its CLIP-L and ``vae`` its VAE."""
    import pack_testing

    table = FULL if full else SMALL
    out = {}
    for model in models:
        if model not in table:
            raise SystemExit(f"error: unknown model {model!r}; known: {', '.join(table)}")
        name, family, size = table[model]
        folder = CHECKPOINT_DIR if full else SMALL_CHECKPOINT_DIR
        text_encoder = vae = None
        if full:
            ensure_full_checkpoint(model, folder, log)
            if model == "flux":
                text_encoder = ensure_full_checkpoint("flux_text_encoder", folder, log).name
                vae = ensure_full_checkpoint("flux_vae", folder, log).name
        elif model == "flux":  # the pack's own test folders are registered by pack_testing's runner
            name, folder = small_flux_file(), pack_testing.FLUX_FILES
            text_encoder, vae = pack_testing.FLUX_CLIP, pack_testing.FLUX_VAE
        elif not (folder / name).exists():
            raise SystemExit(f"error: test checkpoint {folder / name} missing: run `make setup`")
        out[model] = {"ckpt": name, "family": family, "size": size, "folder": folder, "full": full,
                      "text_encoder": text_encoder, "vae": vae}
    return out
