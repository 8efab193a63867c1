#!/usr/bin/env python3
"""Train the toy world's VAE and FLUX-layout DiT from fixed seeds (CPU, one thread), or check them.

    COMFYUI_PATH=.host/comfyui-0.33.0/ComfyUI .host/comfyui-0.33.0/venv/bin/python tools/toy_world/train.py
    ... tools/toy_world/train.py --check          # sha256 of the committed weights vs CHECKSUMS

Both models are built from ComfyUI's own classes (``comfy.taesd.taesd.TAESD``,
``comfy.ldm.flux.model.Flux``), trained outside inference mode with ordinary parameters, and saved
under the key names the stock loaders detect:

* ``toy_flux_vae.safetensors`` (VAELoader): a TAESD with 16 latent channels (ComfyUI reads the
  count from ``taesd_decoder.1.weight``), ``vae_scale`` 0.3611 and ``vae_shift`` 0.1159, FLUX's
  latent scale and shift, so the model-space latent ``(z - 0.1159) * 0.3611`` that a FLUX model
  sees is exactly the TAESD encoder's output, trained to about unit std per channel.
* ``toy_flux_dit.safetensors`` (UNETLoader, ComfyUI >= 0.33 only): FLUX layout without
  ``guidance_in`` (detected as FluxSchnell: flow model, shift 1.0), BFL key names (``*_norm.scale``),
  hidden 128 = 1 head of 128, text width 768 (``txt_in``), pooled width 768 (``vector_in``).
  Conditioned on the project's random test CLIP-L (the CLIP of ``test_sd15.safetensors``) as
  CLIPTextEncode gives it: cond (1, 77, 768) and pooled_output (768). Trained with the rectified
  flow loss in ComfyUI's convention (``x_s = (1 - s) x0 + s eps``, target ``v = eps - x0``) and
  10% empty captions, so true CFG with an empty negative prompt works.

Stages (each prints its progress): draw the scenes, train the VAE, encode the DiT's scenes and the
captions, train the DiT, save both files (fp16) and ``CHECKSUMS``. The committed run took 55 min
wall-clock on a shared 2-core CPU (about 22 min of one unloaded core); ``--quick`` is a 2-minute
smoke run of every stage.

Reproduction: every random draw comes from a seeded generator and the run uses a fixed number of
threads (``--threads``, default 1), so the same torch build on the same CPU gives byte-identical
files. Another torch version, thread count or CPU instruction set (oneDNN picks kernels per ISA;
both models train under bf16 autocast) changes the rounding and hence the bytes, not the quality:
``--check`` then fails while the tests on the committed files still pass.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tools"))

VAE_FILE = "toy_flux_vae.safetensors"
DIT_FILE = "toy_flux_dit.safetensors"
CHECKSUMS = "CHECKSUMS"

# FLUX's latent format (comfy/latent_formats.py: Flux)
FLUX_SCALE = 0.3611
FLUX_SHIFT = 0.1159

SEED = 20251204

VAE_CONFIG = dict(
    images=2048,          # scenes drawn for the VAE
    crop=64,              # training crops (pixels, 8-aligned), the nets are convolutional
    batch=8,
    steps=1000,
    lr=5e-4,
    latent_noise=0.1,     # decoder sees the latent plus this much Gaussian noise (robust to DiT error)
    moment_weight=0.1,    # per-channel (mean^2 + (std - 1)^2) on the latent: unit-std model space
    full_steps=150,       # last steps on whole 128 px images (batch 2) to match full-image latents
)
DIT_CONFIG = dict(
    hidden_size=128,      # 1 head of 128 (ComfyUI >= 0.33: heads = hidden // 128)
    depth=2,              # double-stream blocks
    depth_single_blocks=3,
    images=2048,          # scenes encoded once for the DiT (fp32 VAEEncode: ~0.1 s each)
    batch=32,
    steps=2000,
    lr=1e-3,
    warmup=100,
    weight_decay=0.01,
    caption_dropout=0.1,  # empty caption: trains the unconditional branch for CFG
    logit_mean=0.0,       # s ~ sigmoid(N(mean, std)) (SD3's logit-normal), mixed with uniform
    logit_std=1.0,
    uniform_fraction=0.1,
    ema=0.999,
)
FLUX_FIXED = dict(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=768, mlp_ratio=4.0,
                  axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False,
                  txt_ids_dims=[])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- VAE ------------------------------------------------------------------------------------

CARRIER = 12  # channels that carry the 4x4 sub-block colours of each 8x8 cell in the initial encoder


def subblock_colours(images_uint8):
    """(N, 12, S/8, S/8): the mean RGB of the four 4x4 sub-blocks of each 8x8 cell, in [0, 1]
    (channel 3 k + c: sub-block k = (dy, dx) in row-major order, colour c)."""
    import torch

    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
    pooled = torch.nn.functional.avg_pool2d(x, 4)  # (N, 3, S/4, S/4)
    n, _, h, w = pooled.shape
    blocks = pooled.reshape(n, 3, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4)  # n, dy, dx, c, i, j
    return blocks.reshape(n, CARRIER, h // 2, w // 2)


def build_vae(images_uint8):
    """ComfyUI's TAESD (16 latent channels) with FLUX's scale/shift, initialised as a working
    autoencoder so that training only has to add detail (a "carrier" init):

    * encoder: RGB rides in channels 0-2 (non-negative, so the ReLUs pass it; the residual branches
      leave it alone), the first two stride-2 convs box-average it 2x2, the third routes the four
      4x4 sub-blocks of each 8x8 cell into channels 0-11, and the last conv whitens those 12 numbers
      (statistics of ``images_uint8``) into the 16 latent channels;
    * decoder: the first conv inverts that map to the cell's mean colour in channels 0-2, which
      the upsampling convs copy and the last conv reads out: an 8x8 block-mean image;
    * every other weight is fan-in scaled random (the residual branches' last convs small).
    """
    import torch
    import comfy.taesd.taesd

    vae = comfy.taesd.taesd.TAESD(latent_channels=16)
    generator = torch.Generator().manual_seed(SEED)
    for name, module in vae.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            gain = math.sqrt(2.0) * (0.2 if name.endswith("conv.4") else 1.0)
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * gain / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.zero_()
    enc, dec = vae.taesd_encoder, vae.taesd_decoder
    blocks = comfy.taesd.taesd.Block
    carrier = subblock_colours(images_uint8)
    mean = carrier.mean(dim=(0, 2, 3)).double()
    flat = (carrier.permute(0, 2, 3, 1).reshape(-1, CARRIER).double() - mean)
    eigenvalues, vectors = torch.linalg.eigh(flat.T @ flat / flat.shape[0])
    rotation, _ = torch.linalg.qr(torch.randn(16, CARRIER, generator=generator).double())
    # whitening, with a floor on the eigenvalues so rare directions are not blown up
    whiten = rotation @ torch.diag((eigenvalues + 0.01 * eigenvalues.max()).rsqrt()) @ vectors.T  # (16, 12)
    whiten *= math.sqrt(16 / (whiten @ (flat.T @ flat / flat.shape[0]) @ whiten.T).trace())  # unit std
    mean_of_cell = torch.zeros(3, CARRIER, dtype=torch.float64)
    for k in range(4):
        mean_of_cell[:, 3 * k:3 * k + 3] = torch.eye(3, dtype=torch.float64) / 4
    with torch.no_grad():
        enc[0].weight[:3] = 0
        enc[0].bias[:3] = 0
        for c in range(3):
            enc[0].weight[c, c, 1, 1] = 1.0
        for index, module in enumerate(enc):
            if isinstance(module, blocks):
                rows = CARRIER if index > 10 else 3
                module.conv[4].weight[:rows] = 0
                module.conv[4].bias[:rows] = 0
        for index in (2, 6):
            enc[index].weight[:CARRIER] = 0
            for c in range(3):
                enc[index].weight[c, c, 1:, 1:] = 0.25
        enc[10].weight[:CARRIER] = 0
        for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            for c in range(3):
                enc[10].weight[3 * k + c, c, 1 + dy, 1 + dx] = 1.0
        enc[14].weight.zero_()
        enc[14].weight[:, :CARRIER, 1, 1] = whiten.float()
        enc[14].bias.copy_((-whiten @ mean).float())

        unwhiten = torch.linalg.pinv(whiten)  # (12, 16)
        dec[1].weight[:3] = 0
        dec[1].weight[:3, :, 1, 1] = (mean_of_cell @ unwhiten).float()
        dec[1].bias[:3] = (mean_of_cell @ mean).float()
        for module in dec:
            if isinstance(module, blocks):
                module.conv[4].weight[:3] = 0
                module.conv[4].bias[:3] = 0
        for index in (7, 12, 17):
            dec[index].weight[:3] = 0
            for c in range(3):
                dec[index].weight[c, c, 1, 1] = 1.0
        dec[19].weight.zero_()
        dec[19].bias.zero_()
        for c in range(3):
            dec[19].weight[c, c, 1, 1] = 1.0
        vae.vae_scale.fill_(FLUX_SCALE)
        vae.vae_shift.fill_(FLUX_SHIFT)
    vae.vae_scale.requires_grad_(False)
    vae.vae_shift.requires_grad_(False)
    return vae


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def vae_losses(vae, images, generator, latent_noise: float):
    """(reconstruction MSE, moment penalty, latent) for a batch of images in [0, 1], NCHW."""
    import torch

    latent = vae.taesd_encoder(images)
    noisy = latent + latent_noise * torch.randn(latent.shape, generator=generator)
    decoded = vae.taesd_decoder(noisy)
    reconstruction = torch.nn.functional.mse_loss(decoded.float(), images)
    flat = latent.float().transpose(0, 1).reshape(latent.shape[1], -1)
    moments = (flat.mean(dim=1) ** 2 + (flat.std(dim=1) - 1.0) ** 2).mean()
    return reconstruction, moments, latent


def train_vae(images_uint8, config: dict) -> "torch.nn.Module":
    import torch

    vae = build_vae(images_uint8)
    params = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config["lr"])
    generator = torch.Generator().manual_seed(SEED + 1)
    images = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
    n, _, size, _ = images.shape
    crop = config["crop"]
    steps, full_steps = config["steps"], config["full_steps"]
    t0 = time.perf_counter()
    history = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, config["lr"], 50)
        index = torch.randint(n, (config["batch"],), generator=generator)
        if step < steps - full_steps:
            offsets = torch.randint((size - crop) // 8 + 1, (config["batch"], 2), generator=generator) * 8
            batch = torch.stack([images[i, :, y:y + crop, x:x + crop] for i, (y, x) in zip(index, offsets.tolist())])
        else:
            batch = images[index[:2]]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reconstruction, moments, _ = vae_losses(vae, batch, generator, config["latent_noise"])
        loss = reconstruction + config["moment_weight"] * moments
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history.append((float(reconstruction.detach()), float(moments.detach())))
        if step % 100 == 0 or step == steps - 1:
            recent = history[-100:]
            rec = sum(h[0] for h in recent) / len(recent)
            mom = sum(h[1] for h in recent) / len(recent)
            elapsed = time.perf_counter() - t0
            log(f"vae step {step + 1}/{steps}: mse {rec:.5f} (psnr {-10 * math.log10(rec):.1f} dB), "
                f"moments {mom:.4f}, {elapsed:.0f} s")
    vae.history = history
    return vae


def vae_state_dict(vae) -> dict:
    """The keys VAELoader detects as a TAESD (``taesd_encoder.*``, ``taesd_decoder.*``, scale, shift):
    weights fp16, the two scalars fp32 (exactly FLUX's 0.3611 / 0.1159 as float32)."""
    import torch

    return {k: v.detach().to(torch.float32 if v.ndim == 0 else torch.float16).contiguous()
            for k, v in vae.state_dict().items()}


# --- text: the captions through the project's test CLIP-L, as CLIPTextEncode gives them ---------

def load_test_clip():
    """The random CLIP-L of test_sd15.safetensors (tools/make_test_checkpoints.py), as
    CheckpointLoaderSimple's CLIP output."""
    import comfy.sd

    path = REPO / ".cache" / "checkpoints" / "test_sd15.safetensors"
    if not path.is_file():
        raise SystemExit(f"{path} missing: run `make setup` (tools/make_test_checkpoints.py) first")
    _, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True,
                                                           output_model=False)
    return clip


def encode_captions(clip, captions: list[str]):
    """(cond (N, 77, 768), pooled (N, 768)) of each caption, by ComfyUI's CLIPTextEncode node."""
    import torch
    import nodes

    conds, pooled = [], []
    with torch.inference_mode():
        for text in captions:
            ((cond, extra),) = nodes.CLIPTextEncode().encode(clip, text)[0]
            conds.append(cond[0].clone())
            pooled.append(extra["pooled_output"][0].clone())
    return torch.stack(conds).float(), torch.stack(pooled).float()


# --- DiT ------------------------------------------------------------------------------------

def flux_kwargs(config: dict) -> dict:
    return dict(FLUX_FIXED, hidden_size=config["hidden_size"], num_heads=config["hidden_size"] // 128,
                depth=config["depth"], depth_single_blocks=config["depth_single_blocks"])


def build_dit(config: dict):
    """ComfyUI's Flux (FluxSchnell layout) with DiT-style initialisation: Xavier linears, zero
    modulations and output layer (every block starts as the identity), unit RMSNorm scales."""
    import torch
    import comfy.ldm.flux.model
    import comfy.ops

    model = comfy.ldm.flux.model.Flux(operations=comfy.ops.disable_weight_init, **flux_kwargs(config))
    generator = torch.Generator().manual_seed(SEED + 2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            zero = ("_mod." in name or ".modulation." in name or "adaLN_modulation" in name
                    or name.startswith("final_layer.linear"))
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif param.ndim == 1 or zero:
                param.zero_()
            elif name.startswith(("time_in", "vector_in")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            else:
                bound = math.sqrt(6.0 / (param.shape[0] + param.shape[1]))
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)
    return model


def flow_targets(x0, generator, config: dict):
    """(s, x_s, v) of the rectified flow in ComfyUI's convention: x_s = (1 - s) x0 + s eps, v = eps - x0;
    s ~ logit-normal, a fraction uniform."""
    import torch

    n = x0.shape[0]
    s = torch.sigmoid(config["logit_mean"] + config["logit_std"] * torch.randn(n, generator=generator))
    uniform = torch.rand(n, generator=generator)
    s = torch.where(torch.rand(n, generator=generator) < config["uniform_fraction"], uniform, s)
    eps = torch.randn(x0.shape, generator=generator)
    sb = s.view(-1, 1, 1, 1)
    return s, (1 - sb) * x0 + sb * eps, eps - x0


def train_dit(latents, caption_index, conds, pooled, empty_index: int, config: dict):
    """Trains the DiT on model-space ``latents`` (N, 16, 16, 16) with captions ``caption_index`` into
    ``conds``/``pooled`` (row ``empty_index`` is the empty caption). Returns the EMA model."""
    import copy

    import torch
    import comfy.model_management

    comfy.model_management.in_training = True  # plain-torch RoPE (differentiable)
    model = build_dit(config)
    ema = copy.deepcopy(model).requires_grad_(False)
    params = list(model.parameters())
    decay, no_decay = [p for p in params if p.ndim == 2], [p for p in params if p.ndim != 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config["lr"], betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(SEED + 3)
    n = latents.shape[0]
    steps = config["steps"]
    history = []
    t0 = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, config["lr"], config["warmup"])
        index = torch.randint(n, (config["batch"],), generator=generator)
        captions = caption_index[index].clone()
        captions[torch.rand(len(index), generator=generator) < config["caption_dropout"]] = empty_index
        s, xs, v = flow_targets(latents[index], generator, config)
        # FLUX blocks add residuals in place onto tensors LayerNorm saved for backward
        with torch.autograd.graph.allow_mutation_on_saved_tensors(), torch.autocast("cpu", dtype=torch.bfloat16):
            prediction = model(xs, s, conds[captions], pooled[captions])
            loss = torch.nn.functional.mse_loss(prediction.float(), v)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), params):
                p_ema.lerp_(p, 1.0 - min(config["ema"], (step + 1) / (step + 10)))
        history.append(float(loss.detach()))
        if step % 100 == 0 or step == steps - 1:
            recent = history[-100:]
            elapsed = time.perf_counter() - t0
            log(f"dit step {step + 1}/{steps}: loss {sum(recent) / len(recent):.4f}, {elapsed:.0f} s "
                f"({elapsed / (step + 1):.2f} s/step)")
    comfy.model_management.in_training = False
    ema.history = history
    return ema


def dit_state_dict(model) -> dict:
    """BFL key names as FLUX checkpoints have them (QK norms as ``*_norm.scale``), fp16."""
    import torch

    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("_norm.weight"):
            key = key[: -len(".weight")] + ".scale"
        out[key] = value.detach().to(torch.float16).contiguous()
    return out


# --- the whole run ---------------------------------------------------------------------------

def save_safetensors(state_dict: dict, path: Path, metadata: dict) -> None:
    """Written to a temporary name, then renamed into place."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(state_dict, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    os.replace(tmp, path)


def encode_images(vae_path: Path, images_uint8, batch: int = 64):
    """Model-space latents of images, as VAELoader + VAEEncode + FLUX's process_in give them."""
    import torch
    import comfy.latent_formats
    import comfy.sd
    import comfy.utils

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vae_path)))
    latent_format = comfy.latent_formats.Flux()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images_uint8), batch):
            pixels = torch.from_numpy(images_uint8[start:start + batch]).float() / 255.0
            out.append(latent_format.process_in(vae.encode(pixels)).float().clone())
    return torch.cat(out)


def check(folder: Path) -> int:
    lines = (folder / CHECKSUMS).read_text().split("\n")
    expected = dict(reversed(line.split()) for line in lines if line.strip())
    failed = 0
    for name, digest in expected.items():
        actual = sha256(folder / name) if (folder / name).is_file() else "missing"
        ok = actual == digest
        failed += not ok
        print(f"{'ok      ' if ok else 'MISMATCH'} {name} {actual}")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where the weights and CHECKSUMS go")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the bytes depend on it)")
    parser.add_argument("--check", action="store_true", help="only verify the files against CHECKSUMS")
    parser.add_argument("--reuse-vae", action="store_true", help="keep the VAE file in --out, train the DiT")
    parser.add_argument("--vae-steps", type=int, default=VAE_CONFIG["steps"])
    parser.add_argument("--dit-steps", type=int, default=DIT_CONFIG["steps"])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64 scenes and 5 steps per model (to check the script and its determinism)")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.out)

    import comfy_host

    comfy_host.import_host()
    import numpy as np
    import torch

    from toy_world import scenes

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    vae_config = dict(VAE_CONFIG, steps=args.vae_steps)
    dit_config = dict(DIT_CONFIG, steps=args.dit_steps)
    if args.quick:
        vae_config.update(images=64, steps=5, full_steps=2)
        dit_config.update(images=64, steps=5)
    report = {"torch": torch.__version__, "threads": args.threads, "vae_config": vae_config,
              "dit_config": dit_config, "flux": flux_kwargs(dit_config)}
    start = time.perf_counter()

    vae_path = args.out / VAE_FILE
    if not args.reuse_vae:
        log(f"drawing {vae_config['images']} scenes for the VAE")
        images, _ = scenes.draw_dataset(vae_config["images"], seed=SEED)
        t0 = time.perf_counter()
        vae = train_vae(images, vae_config)
        report["vae_seconds"] = round(time.perf_counter() - t0, 1)
        report["vae_curve"] = [[i + 1, round(sum(h[0] for h in vae.history[max(0, i - 99):i + 1])
                                        / len(vae.history[max(0, i - 99):i + 1]), 6)]
                               for i in range(99, len(vae.history), 100)]
        save_safetensors(vae_state_dict(vae), vae_path, {"toy_world": {"model": "toy FLUX VAE (TAESD, 16 ch)",
                                                                      "config": vae_config, "seed": SEED}})
        log(f"saved {vae_path} ({vae_path.stat().st_size / 1e6:.2f} MB)")

    log(f"drawing and encoding {dit_config['images']} scenes for the DiT")
    images, drawn = scenes.draw_dataset(dit_config["images"], seed=SEED + 10)
    latents = encode_images(vae_path, images)
    report["latent_mean"] = round(float(latents.mean()), 4)
    report["latent_std"] = round(float(latents.std()), 4)
    log(f"latents {tuple(latents.shape)}: mean {report['latent_mean']}, std {report['latent_std']}")

    combos = scenes.all_scenes()
    captions = [s.caption for s in combos] + [""]
    clip = load_test_clip()
    conds, pooled = encode_captions(clip, captions)
    del clip
    index_of = {s: i for i, s in enumerate(combos)}
    caption_index = torch.tensor([index_of[s] for s in drawn])
    log(f"encoded {len(captions)} captions: cond {tuple(conds.shape)}, pooled {tuple(pooled.shape)}")

    t0 = time.perf_counter()
    dit = train_dit(latents, caption_index, conds, pooled, len(captions) - 1, dit_config)
    report["dit_seconds"] = round(time.perf_counter() - t0, 1)
    report["dit_curve"] = [[i + 1, round(float(np.mean(dit.history[max(0, i - 99):i + 1])), 5)]
                           for i in range(99, len(dit.history), 100)]
    report["dit_parameters"] = sum(p.numel() for p in dit.parameters())
    dit_path = args.out / DIT_FILE
    save_safetensors(dit_state_dict(dit), dit_path, {"toy_world": {"model": "toy FLUX-layout DiT",
                                                                  "flux": flux_kwargs(dit_config),
                                                                  "config": dit_config, "seed": SEED}})
    log(f"saved {dit_path} ({dit_path.stat().st_size / 1e6:.2f} MB)")

    (args.out / CHECKSUMS).write_text("".join(f"{sha256(args.out / name)}  {name}\n" for name in (DIT_FILE, VAE_FILE)))
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    report["cpu_seconds"] = round(time.process_time(), 1)  # busy time of this process (the machine is shared)
    (args.out / "train_log.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"done in {report['total_seconds'] / 60:.1f} min; {CHECKSUMS} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
