#!/usr/bin/env python3
"""Build the deterministic random-weight test checkpoints (never committed).

    python tools/make_test_checkpoints.py [--out .cache/checkpoints] [--force]

Writes two fp16 safetensors checkpoints that ComfyUI's own loader
(`comfy.sd.load_checkpoint_guess_config`, i.e. `CheckpointLoaderSimple`) detects:

* ``test_sd15.safetensors``: model class ``SD15`` (model_channels 320, context_dim 768, conv
  proj_in) with two levels and one res/transformer block per level, a full random CLIP-L and a
  TAESD VAE (``vae_scale`` 0.18215).
* ``test_sdxl.safetensors``: model class ``KOALA_700M`` (an SDXL-family config: model class
  ``model_base.SDXL``, dual CLIP-L + CLIP-G) with ``channel_mult`` [1, 1, 1], one res block per level
  and input transformer depths [0, 2, 5] (what detection requires), a TAESD-XL VAE (0.13025).

and, for the FLUX-class (rectified-flow DiT) tests, files for the stock UNETLoader / VAELoader /
CLIPLoader, written to ``--flux-out`` (default ``.cache/flux/<kind>/``):

* ``diffusion_models/test_flux_wide.safetensors``: a FLUX.1-dev layout (``guidance_in``) of hidden size
  3072 (24 heads of 128) with one double and one single block, text width 768 (CLIP-L) and pooled
  width 768: the smallest FLUX model ComfyUI 0.3.75 detects (it fixes 24 heads), ~0.5 B parameters.
* ``diffusion_models/test_flux.safetensors``: the same layout at hidden size 256 (2 heads), two double
  and two single blocks (~8 M parameters); ComfyUI from 0.33 detects it (heads = hidden / 128).
* ``diffusion_models/test_flux_schnell.safetensors``: hidden 256, one double and three single blocks,
  no ``guidance_in`` (FLUX.1-schnell layout: ModelSamplingDiscreteFlow, no distilled guidance).
* ``vae/test_flux_vae.safetensors``: a 16-channel TAESD (FLUX's latent format: vae_scale 0.3611,
  vae_shift 0.1159) with the RGB carrier of the SD ones.
* ``text_encoders/test_clip_l.safetensors``: the CLIP-L of ``test_sd15`` on its own (CLIPLoader, type
  stable_diffusion), the text encoder of the FLUX test models.

The SD checkpoints are the smallest configs detection allows: SD15 fixes model_channels/context_dim only, SDXL
classes also fix the per-input-block transformer depths, and KOALA_700M ([0, 2, 5], 7 blocks, 3 res
blocks) is smaller than Segmind_Vega ([0, 0, 1, 1, 2, 2], 6 blocks but 6 res blocks); channel_mult
[1, 1, 1] keeps every block at 320 channels. The free output/middle depths keep one transformer
block per res block (as SDXL has none at level 0) so attention patches see input, middle and output
blocks. The text encoders are fixed-size (CLIP-G alone is ~694M parameters).

Every tensor is drawn from its own generator seeded by (SEED, tensor name), so the files are
byte-identical on every run with the same torch (and any thread count). A file is skipped when it
exists and its recorded build (safetensors metadata ``ee_test_model``, JSON) matches BUILD_ID:
BUILD_VERSION (bump it when the recipe changes) plus a hash of this file, so an edit that forgets
the bump still rebuilds. Files are written to a temporary name and renamed into place.

Why the weights are not plain random: a random network's prediction is uncorrelated with the noise
it is given, so sampling ends on a latent about sigma_max (~14.6) times too large, the VAE saturates
and no test can see the prompt, the seed or a weight change. So each model is "structured random":

* UNet: a *carrier* path predicts eps ~= model input (the optimal denoiser for unit-variance
  latents, which keeps sampling bounded for eps and v-prediction alike): the first conv copies the
  input latent into channels 0-7 as +x / -x next to a constant pair +K / -K (channels 8-9, one
  GroupNorm group of 10 channels whose mean is 0 and whose std the constants pin down), the last
  output block's skip connection routes those channels past everything, and the final
  GroupNorm -> SiLU -> conv reads them back exactly with SiLU(y) - SiLU(-y) = y. The rest of
  the UNet is fan-in scaled random (GroupNorm/LayerNorm weights 1, the usually zero-initialised
  output convs random) and adds a context- and input-dependent residual of std ~0.25 to the
  prediction (cfg 4 makes it ~1), so prompts, seeds and weight patches all change the image.
  Sampled latents end near unit std in model space (eps; ~0.4 with v-prediction).
* CLIP: fan-in scaled random with unit-scale token embeddings and residual branches scaled by
  1/sqrt(2 * layers), so the hidden states stay O(1) (SDXL reads the un-normalised penultimate
  layer) and tokens mix through attention.
* TAESD: an RGB carrier (3 channels kept non-negative through the ReLUs, 2x2 box-pooled by the
  stride-2 convs, nearest-upsampled by the decoder) makes encode -> decode an 8x8-block
  low-pass of the image; the encoder maps colours to latents through a fixed orthonormal 4x3
  matrix with gain GAMMA, so natural images give raw latents of std ~1/scale_factor, and the
  decoder maps unit-std latents to mid-range colours (std ~1/GAMMA around 0.5). Random channels add
  a little texture and fill the 4th latent direction.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import zlib
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BUILD_VERSION = "ee-test-models-1"
BUILD_ID = f"{BUILD_VERSION}+{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]}"
SEED = 20240601

# Recipe constants (bump BUILD_VERSION when changing any of them).
# INIT_SCALE multiplies every random (non-carrier) weight: 1.0 is the calibrated recipe; a tiny
# value (0.001) gives the classic "near-noise" random model that the sensitivity tests must reject.
INIT_SCALE = 1.0
UNET_RESIDUAL_GAIN = 0.7      # residual branches (ResBlock out conv, transformer proj_out)
UNET_OUT_GAIN = 0.3           # random part of the final conv (the eps residual)
UNET_CROSS_K_GAIN = 2.0       # sharper cross-attention (prompt tokens win over padding)
UNET_CARRIER_K = 8.0          # constant pair in the carrier GroupNorm group
CLIP_TOKEN_STD = 1.0
CLIP_POS_STD = 0.3
TAESD_GAMMA = 4.0             # latent (model space) = GAMMA * M (rgb - 0.5)
TAESD_ENC_TEXTURE = 0.5       # random feature into the latent null direction
TAESD_DEC_TEXTURE = 0.03      # random texture in decoded colours
FLUX_TXT_GAIN = 2.0           # txt_in: text tokens at twice the image tokens' scale, so prompts matter
FLUX_MOD_GAIN = 0.5           # modulation linears: shifts, scales and gates of moderate size
FLUX_OUT_GAIN = 8.0           # random part of the final linear: a residual velocity of about unit std
FLUX_QK_SCALE = 2.0           # QK-norm scales: sharper joint attention, so single words matter
FLUX_CARRIER_GAIN = 2.0       # carrier velocity v = gain * x: damps the starting noise by ~exp(-gain)
FLUX_CARRIER_K_PER_DIM = 2.0  # carrier constants +-K with K^2 = this * hidden: LayerNorm's std ~constant
FLUX_VAE_SCALE, FLUX_VAE_SHIFT = 0.3611, 0.1159  # comfy.latent_formats.Flux

SD15_UNET = {
    "model_channels": 320, "context_dim": 768, "use_linear_in_transformer": False,
    "in_channels": 4, "out_channels": 4, "adm_in_channels": None,
    "num_res_blocks": [1, 1], "channel_mult": [1, 1],
    "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
    "use_temporal_attention": False, "use_temporal_resblock": False,
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
}
SDXL_UNET = {
    "model_channels": 320, "context_dim": 2048, "use_linear_in_transformer": True,
    "in_channels": 4, "out_channels": 4, "adm_in_channels": 2816, "num_classes": "sequential",
    "num_res_blocks": [1, 1, 1], "channel_mult": [1, 1, 1],
    # KOALA_700M matches on transformer_depth [0, 2, 5]; output and middle depths are free
    "transformer_depth": [0, 2, 5], "transformer_depth_output": [0, 0, 1, 1, 1, 1], "transformer_depth_middle": 1,
    "use_temporal_attention": False, "use_temporal_resblock": False,
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
}

# out_gain: the final linear's random part, calibrated to a sampled model-space latent std of ~1.5
FLUX_WIDE = {"hidden_size": 3072, "depth": 1, "depth_single_blocks": 1, "guidance_embed": True, "out_gain": 4.5}
FLUX_NARROW = {"hidden_size": 256, "depth": 2, "depth_single_blocks": 2, "guidance_embed": True}
FLUX_SCHNELL = {"hidden_size": 256, "depth": 1, "depth_single_blocks": 3, "guidance_embed": False}

CARRIER = 10  # channels 0-3: +x, 4-7: -x, 8: +K, 9: -K (one GroupNorm group of 320/32 channels)


# --------------------------------------------------------------------------------------------
# host import


def import_host() -> None:
    """Import ComfyUI (COMFYUI_PATH or .host/ComfyUI) in CPU mode, as the tests do."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import comfy_host

    try:
        comfy_host.import_host()
    except comfy_host.HostNotFound as e:
        sys.exit(str(e))


# --------------------------------------------------------------------------------------------
# deterministic random tensors


def _gen(name: str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(SEED * 1_000_003 + zlib.crc32(name.encode()))
    return g


def randn(name: str, shape, std: float) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=torch.float32).normal_(0.0, std, generator=_gen(name))


def fan_in(shape) -> int:
    return int(math.prod(shape[1:]))


def fan_in_init(name: str, shape, gain: float) -> torch.Tensor:
    return randn(name, shape, INIT_SCALE * gain / math.sqrt(fan_in(shape)))


def meta_state_dict(factory) -> dict:
    with torch.device("meta"):
        module = factory()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------
# UNet


def _unet_gain(key: str) -> float:
    if key.startswith("time_embed.0") or key.startswith("label_emb.0.0"):
        return 1.4
    if key.startswith("time_embed.2") or key.startswith("label_emb.0.2"):
        return 1.6
    if ".in_layers.2." in key:
        return 1.6
    if ".out_layers.3." in key or ".proj_out." in key:
        return UNET_RESIDUAL_GAIN
    if ".attn2.to_k." in key:
        return UNET_CROSS_K_GAIN
    if ".ff.net.2." in key:
        return 1.4
    return 1.0


def build_unet(shapes: dict, prefix: str) -> dict:
    """`shapes`: diffusion-model keys (without prefix) -> shape. Returns prefixed fp32 tensors."""
    out = {}
    for key, shape in shapes.items():
        name = prefix + key
        if len(shape) == 1:
            norm_names = ("norm", "in_layers.0", "out_layers.0", "out.0")
            is_norm = any(s in key for s in norm_names) and key.endswith(".weight")
            out[name] = torch.ones(shape) if is_norm else torch.zeros(shape)
        else:
            out[name] = fan_in_init(name, shape, _unet_gain(key))

    last = max(int(k.split(".")[1]) for k in shapes if k.startswith("output_blocks."))
    P = prefix
    C, K = CARRIER, UNET_CARRIER_K
    # first conv: channels 0-3 = +x, 4-7 = -x, 8 = +K, 9 = -K
    w, b = out[P + "input_blocks.0.0.weight"], out[P + "input_blocks.0.0.bias"]
    w[:C] = 0
    b[:C] = 0
    for c in range(4):
        w[c, c, 1, 1] = 1.0
        w[c + 4, c, 1, 1] = -1.0
    b[8], b[9] = K, -K
    # last output block: route the carrier from the hs[0] skip past the block's residual branches
    ch_in = shapes[f"output_blocks.{last}.0.skip_connection.weight"][1]
    skip_w = out[P + f"output_blocks.{last}.0.skip_connection.weight"]
    skip_w[:C] = 0
    for c in range(C):
        skip_w[c, ch_in - 320 + c] = 1.0
    out[P + f"output_blocks.{last}.0.skip_connection.bias"][:C] = 0
    out[P + f"output_blocks.{last}.0.out_layers.3.weight"][:C] = 0
    out[P + f"output_blocks.{last}.0.out_layers.3.bias"][:C] = 0
    for suffix in ("weight", "bias"):
        key = P + f"output_blocks.{last}.1.proj_out.{suffix}"
        if key in out:
            out[key][:C] = 0
    # output GroupNorm: the carrier group has mean 0 and variance (8 E[x^2] + 2 K^2) / 10;
    # scale it back so the carrier reads ~x for unit-variance inputs
    out[P + "out.0.weight"][:8] = math.sqrt((8 + 2 * K * K) / 10)
    # final conv: SiLU(y) - SiLU(-y) = y on the carrier, random residual from channels 10+
    w = out[P + "out.2.weight"]
    w[:] = fan_in_init(P + "out.2.weight", w.shape, UNET_OUT_GAIN / 0.6)
    w[:, :C] = 0
    for c in range(4):
        w[c, c, 1, 1] = 1.0
        w[c, c + 4, 1, 1] = -1.0
    return out


# --------------------------------------------------------------------------------------------
# CLIP


def _clip_tensor(name: str, shape, layers: int) -> torch.Tensor:
    res = 1.0 / math.sqrt(2 * layers)
    if name.endswith("token_embedding.weight"):
        t = randn(name, shape, INIT_SCALE * CLIP_TOKEN_STD)
    elif name.endswith("position_embedding.weight"):
        t = randn(name, shape, INIT_SCALE * CLIP_POS_STD)
    elif len(shape) == 1:
        is_norm = "layer_norm" in name and name.endswith(".weight")
        t = torch.ones(shape) if is_norm else torch.zeros(shape)
    elif name.endswith("logit_scale"):
        t = torch.tensor(4.6055)
    else:
        gain = 1.0
        if ".out_proj." in name:
            gain = res
        elif ".fc2." in name:
            gain = 1.5 * res
        elif ".k_proj." in name:
            gain = 1.5
        t = fan_in_init(name, shape, gain)
    return t.to(torch.float16)  # no carrier edits in CLIP: halve the peak memory now


def build_clip_text(shapes: dict, layers: int) -> dict:
    """Keys of a comfy CLIPTextModel (any prefix) -> fp16 tensors. Each tensor has its own
    generator, so drawing them on several threads (torch releases the GIL) stays deterministic."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        futures = {name: pool.submit(_clip_tensor, name, shape, layers) for name, shape in shapes.items()}
        return {name: f.result() for name, f in futures.items()}


# --------------------------------------------------------------------------------------------
# TAESD


def _color_matrix(channels: int = 4) -> torch.Tensor:
    """Orthonormal channels x channels (Sylvester Hadamard / sqrt(channels); 4 or 16): columns 0-2 map
    RGB to latents, column 3 is the null direction."""
    h = torch.ones(1, 1)
    while h.shape[0] < channels:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    if channels == 4:  # the SD test VAEs' historical column order
        h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32)
    return h / math.sqrt(channels)


def build_taesd(shapes: dict, vae_scale: float, vae_shift: float = 0.0, gamma: float = TAESD_GAMMA) -> dict:
    """Keys of comfy.taesd.taesd.TAESD -> fp32 tensors (without the first_stage_model. prefix)."""
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 0:
            continue
        if len(shape) == 1:
            out[name] = torch.zeros(shape)
        else:
            gain = math.sqrt(2.0)
            if name.endswith("conv.4.weight"):  # third conv of a Block (residual branch)
                gain = 0.5
            out[name] = fan_in_init(name, shape, gain)
    out["vae_scale"] = torch.tensor(vae_scale)
    out["vae_shift"] = torch.tensor(vae_shift)
    last_encoder_conv = max(int(k.split(".")[1]) for k in shapes if k.startswith("taesd_encoder."))
    q = _color_matrix(shapes[f"taesd_encoder.{last_encoder_conv}.weight"][0])
    M, null = q[:, :3], q[:, 3]
    G = gamma
    enc_blocks = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("taesd_encoder.")})
    dec_blocks = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("taesd_decoder.")})

    def carrier_modules(prefix, indices, first, final):
        for i in indices:
            base = f"{prefix}.{i}"
            if i in (first, final):
                continue
            if f"{base}.conv.4.weight" in out:  # Block: keep the carrier out of the residual branch
                out[f"{base}.conv.4.weight"][:3] = 0
                out[f"{base}.conv.4.bias"][:3] = 0
            elif f"{base}.weight" in out:  # plain conv between blocks (bias-free)
                w = out[f"{base}.weight"]
                w[:3] = 0
                stride2 = prefix.endswith("encoder")
                for c in range(3):
                    if stride2:  # 2x2 box average over the taps (2i, 2i+1)
                        w[c, c, 1:, 1:] = 0.25
                    else:  # after nearest upsampling: copy
                        w[c, c, 1, 1] = 1.0

    # encoder: conv(3, 64) first, conv(64, latent_channels) last
    e_first, e_last = enc_blocks[0], enc_blocks[-1]
    w, b = out[f"taesd_encoder.{e_first}.weight"], out[f"taesd_encoder.{e_first}.bias"]
    w[:3] = 0
    b[:3] = 0
    for c in range(3):
        w[c, c, 1, 1] = 1.0  # the image in [0, 1] is already non-negative
    carrier_modules("taesd_encoder", enc_blocks, e_first, e_last)
    w, b = out[f"taesd_encoder.{e_last}.weight"], out[f"taesd_encoder.{e_last}.bias"]
    feat = w[0, 3:].clone()  # one random feature, fan-in scaled, into the null direction
    w.zero_()
    w[:, 3:] = null[:, None, None, None] * feat[None] * TAESD_ENC_TEXTURE
    w[:, :3, 1, 1] = G * M
    b[:] = -G * M.sum(dim=1) * 0.5
    # encoder output is model-space; TAESD.encode divides by vae_scale and adds vae_shift (raw latents)

    # decoder: Clamp, conv(latent_channels, 64), ReLU, ..., conv(64, 3)
    d_first = [i for i in dec_blocks if f"taesd_decoder.{i}.weight" in out][0]
    d_last = dec_blocks[-1]
    w, b = out[f"taesd_decoder.{d_first}.weight"], out[f"taesd_decoder.{d_first}.bias"]
    w[:3] = 0
    w[:3, :, 1, 1] = M.t() / G
    b[:3] = 0.5
    carrier_modules("taesd_decoder", dec_blocks, d_first, d_last)
    w, b = out[f"taesd_decoder.{d_last}.weight"], out[f"taesd_decoder.{d_last}.bias"]
    w[:] = fan_in_init(f"taesd_decoder.{d_last}.weight", w.shape, TAESD_DEC_TEXTURE)
    w[:, :3] = 0
    for c in range(3):
        w[c, c, 1, 1] = 1.0
    b.zero_()
    return out


# --------------------------------------------------------------------------------------------
# FLUX-layout DiT (random, for the rectified-flow tests)


def _flux_params(config: dict):
    """FluxParams of a FLUX.1 layout with ``config``'s hidden size, depths and guidance input, text and
    pooled width 768 (CLIP-L), as ComfyUI's detection derives them from the weights."""
    import inspect

    import comfy.ldm.flux.model as flux

    hidden = config["hidden_size"]
    values = dict(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=768, hidden_size=hidden,
                  mlp_ratio=4.0, num_heads=hidden // 128, depth=config["depth"],
                  depth_single_blocks=config["depth_single_blocks"], axes_dim=[16, 56, 56], theta=10000,
                  patch_size=2, qkv_bias=True, guidance_embed=config["guidance_embed"], txt_ids_dims=[])
    fields = inspect.signature(flux.FluxParams).parameters
    return flux.FluxParams(**{k: v for k, v in values.items() if k in fields})


def _flux_key(name: str) -> str:
    """BFL's key names (what both hosts load): QK-norm and RMSNorm parameters are ``.scale``."""
    return name[: -len(".weight")] + ".scale" if name.endswith("_norm.weight") else name


def _flux_gain(key: str) -> float:
    if ".lin." in key or "adaLN_modulation" in key or key.startswith("modulation"):
        return FLUX_MOD_GAIN
    if key.startswith("txt_in."):
        return FLUX_TXT_GAIN
    return 1.0


def flux_state_dict(config: dict) -> dict:
    """Structured random FLUX weights: fan-in scaled linears, unit norms, zero biases, moderate
    modulations, and a *carrier* path like the SD UNets' that makes the velocity v ~= gain * x + r.

    A random velocity alone leaves the starting noise in the sample (x0 = x1 - integral of v), so
    the seed would swamp the prompt. The carrier copies each token's 64 patch values into hidden
    dims 0-63 (+x) and 64-127 (-x) next to a constant pair +K / -K (dims 128, 129) in ``img_in``; no
    block writes to those dims (their rows of every residual output are zero); the final LayerNorm,
    whose variance the constants pin down, and the final linear read them back: v = gain * x (the
    velocity of data shrunk towards 0, damping the noise by ~exp(-gain) over a sampling run) plus a
    random residual r from the other dims that depends on text, position and time. The text tokens
    enter at twice the image tokens' scale and the joint attention is sharp (QK-norm scale 2), so
    prompts change the image."""
    import comfy.ldm.flux.model as flux
    import comfy.ops

    params = _flux_params(config)
    shapes = meta_state_dict(lambda: flux.Flux(operations=comfy.ops.disable_weight_init, **vars(params)))
    out = {}
    for name, shape in sorted(shapes.items()):
        key = _flux_key(name)
        if len(shape) == 1:
            scale = FLUX_QK_SCALE if key.endswith(("query_norm.scale", "key_norm.scale")) else 1.0
            out[key] = torch.full(shape, scale) if key.endswith(".scale") else torch.zeros(shape)
        else:
            gain = config.get("out_gain", FLUX_OUT_GAIN) if key.startswith("final_layer.linear.") else _flux_gain(key)
            out[key] = fan_in_init("flux." + key, shape, gain)
    hidden, patch = params.hidden_size, 64
    carrier = slice(0, 2 * patch + 2)
    K = math.sqrt(FLUX_CARRIER_K_PER_DIM * hidden)
    w, b = out["img_in.weight"], out["img_in.bias"]
    w[carrier] = 0
    w[:patch] = torch.eye(patch)
    w[patch:2 * patch] = -torch.eye(patch)
    b[2 * patch], b[2 * patch + 1] = K, -K
    residual_outputs = [k for k in out if k.startswith("double_blocks.") and
                        (".img_attn.proj." in k or ".img_mlp.2." in k)]
    residual_outputs += [k for k in out if k.startswith("single_blocks.") and ".linear2." in k]
    for key in residual_outputs:
        out[key][carrier] = 0
    # final layer: no modulation of the carrier dims (shift rows 0.., scale rows hidden..)
    mod_w, mod_b = out["final_layer.adaLN_modulation.1.weight"], out["final_layer.adaLN_modulation.1.bias"]
    for offset in (0, hidden):
        mod_w[offset:offset + carrier.stop] = 0
        mod_b[offset:offset + carrier.stop] = 0
    # LayerNorm std over the hidden dims ~ sqrt((2 K^2 + 2 |x|^2 + |r|^2) / hidden) ~ sqrt(2 K^2 / hidden)
    ln_std = math.sqrt(2 * K * K / hidden + 1.0)
    w = out["final_layer.linear.weight"]
    w[:, carrier] = 0
    w[:, :patch] += torch.eye(patch) * (FLUX_CARRIER_GAIN * ln_std / 2)
    w[:, patch:2 * patch] -= torch.eye(patch) * (FLUX_CARRIER_GAIN * ln_std / 2)
    return out


def flux_vae_state_dict() -> dict:
    import comfy.taesd.taesd

    shapes = meta_state_dict(lambda: comfy.taesd.taesd.TAESD(latent_channels=16))
    # gamma 8: the 16-channel colour matrix has entries of 1/4, so latents keep about unit std
    return build_taesd(shapes, FLUX_VAE_SCALE, FLUX_VAE_SHIFT, gamma=2 * TAESD_GAMMA)


def clip_l_state_dict() -> dict:
    """The CLIP-L of test_sd15 as a text-encoder file (the keys CLIPLoader reads for SD1.x)."""
    import comfy.sd1_clip
    import comfy.supported_models as sm

    clip_shapes = meta_state_dict(lambda: comfy.sd1_clip.SD1ClipModel())
    clip = build_clip_text(clip_shapes, 12)
    saved = sm.SD15(SD15_UNET).process_clip_state_dict_for_saving(clip)
    prefix = "cond_stage_model.transformer."
    return {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------------------------
# checkpoints


def sd15_state_dict() -> dict:
    import comfy.sd1_clip
    import comfy.supported_models as sm
    import comfy.taesd.taesd

    cfg = sm.SD15(SD15_UNET)
    unet_shapes = meta_state_dict(lambda: cfg.get_model({}).diffusion_model)
    sd = build_unet(unet_shapes, "model.diffusion_model.")
    clip_shapes = meta_state_dict(lambda: comfy.sd1_clip.SD1ClipModel())
    clip = build_clip_text(clip_shapes, 12)
    sd.update(cfg.process_clip_state_dict_for_saving(clip))
    vae = build_taesd(meta_state_dict(lambda: comfy.taesd.taesd.TAESD(latent_channels=4)), 0.18215)
    sd.update({"first_stage_model." + k: v for k, v in vae.items()})
    return sd


def sdxl_state_dict() -> dict:
    import comfy.sdxl_clip
    import comfy.supported_models as sm
    import comfy.taesd.taesd

    cfg = sm.KOALA_700M(SDXL_UNET)
    unet_shapes = meta_state_dict(lambda: cfg.get_model({}).diffusion_model)
    sd = build_unet(unet_shapes, "model.diffusion_model.")
    clip_shapes = meta_state_dict(lambda: comfy.sdxl_clip.SDXLClipModel())
    clip = {}
    clip.update(build_clip_text({k: v for k, v in clip_shapes.items() if k.startswith("clip_l.")}, 12))
    clip.update(build_clip_text({k: v for k, v in clip_shapes.items() if k.startswith("clip_g.")}, 32))
    sd.update(cfg.process_clip_state_dict_for_saving(clip))
    vae = build_taesd(meta_state_dict(lambda: comfy.taesd.taesd.TAESD(latent_channels=4)), 0.13025)
    sd.update({"first_stage_model." + k: v for k, v in vae.items()})
    return sd


CHECKPOINTS = {
    "test_sd15.safetensors": ("sd15", sd15_state_dict),
    "test_sdxl.safetensors": ("sdxl", sdxl_state_dict),
}
FLUX_FILES = {  # relative to --flux-out
    "diffusion_models/test_flux_wide.safetensors": ("flux_wide", lambda: flux_state_dict(FLUX_WIDE)),
    "diffusion_models/test_flux.safetensors": ("flux", lambda: flux_state_dict(FLUX_NARROW)),
    "diffusion_models/test_flux_schnell.safetensors": ("flux_schnell", lambda: flux_state_dict(FLUX_SCHNELL)),
    "vae/test_flux_vae.safetensors": ("flux_vae", flux_vae_state_dict),
    "text_encoders/test_clip_l.safetensors": ("clip_l", clip_l_state_dict),
}


def recorded_version(path: Path) -> str | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["ee_test_model"])["build"]
    except Exception:
        return None


def build(out_dir: Path, name: str, force: bool = False) -> str:
    from safetensors.torch import save_file

    kind, factory = CHECKPOINTS[name] if name in CHECKPOINTS else FLUX_FILES[name]
    path = out_dir / name
    if not force and path.exists() and recorded_version(path) == BUILD_ID:
        return f"{name}: up to date ({BUILD_ID}), skipped"
    t0 = time.perf_counter()
    import_host()
    sd = factory()
    tensors = {}
    for k, v in sd.items():
        if v.is_floating_point():
            v = v.to(torch.float16)
        v = v.contiguous()
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise RuntimeError(f"non-finite values in {k}")
        tensors[k] = v
    params = sum(v.numel() for v in tensors.values())
    # one metadata key: safetensors writes several keys in hash order, which would change the bytes
    meta = {"ee_test_model": json.dumps({"build": BUILD_ID, "kind": kind, "seed": SEED}, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dt = time.perf_counter() - t0
    size = path.stat().st_size / 2**20
    return f"{name}: built {params / 1e6:.0f}M params, {size:.0f} MiB in {dt:.1f} s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / ".cache" / "checkpoints"), help="output folder")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--flux-out", default=str(REPO / ".cache" / "flux"),
                    help="output folder of the FLUX-class test files (diffusion_models/, vae/, text_encoders/)")
    ap.add_argument("--only", choices=sorted(CHECKPOINTS) + sorted(FLUX_FILES), action="append",
                    help="build only this file")
    args = ap.parse_args(argv)
    out_dir, flux_dir = Path(args.out), Path(args.flux_out)
    t0 = time.perf_counter()
    for name in args.only or list(CHECKPOINTS) + list(FLUX_FILES):
        print(f"[make_test_checkpoints] {build(flux_dir if name in FLUX_FILES else out_dir, name, args.force)}",
              flush=True)
    print(f"[make_test_checkpoints] done in {time.perf_counter() - t0:.1f} s -> {out_dir}, {flux_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
