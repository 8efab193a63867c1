"""The random-weight test checkpoints (tools/make_test_checkpoints.py) are detected by ComfyUI's own
loader as the intended model families, and are *sensitive*: prompts, seeds and small weight patches
visibly change the decoded 8-bit image, for eps and v-prediction alike, the VAE round-trips an image
recognisably, and sampling stays finite and in range. A near-noise random model fails these tests,
so they guard every other test that compares images.

Everything runs in-process through ComfyUI's APIs and node classes, inside torch.inference_mode()
as ComfyUI runs nodes; each checkpoint is loaded once (module-scoped fixture).
"""
from __future__ import annotations

import json
import time

import pytest
import torch

from pack_testing import checkpoint_path

pytestmark = pytest.mark.integration

SIZE = 64            # pixels; the latent is 8x8
STEPS = 6
CFG = 4.0
SAMPLER, SCHEDULER = "euler", "normal"
PROMPT_A = "a photo of a red car"
PROMPT_B = "a watercolor painting of a mountain lake"
SEED_A, SEED_B = 1, 2
PATCH_REL_STD = 0.05  # weight patch: Gaussian noise of 5% of each transformer weight's own std

# Thresholds on decoded uint8 images. Measured with the recipe of make_test_checkpoints.py
# (mean |diff| levels / fraction of differing pixels), sd15 and sdxl:
#   prompt     eps 30.3/1.00, 49.2/1.00   v 11.9/0.99, 25.3/1.00
#   seed       eps 54.5/1.00, 58.2/1.00   v 18.9/1.00, 16.4/1.00
#   5% patch   eps  7.9/0.98, 12.4/0.97   v  4.1/0.70,  6.2/0.94
# A near-noise model (every random weight x 0.001) fails prompt and patch on both.
DIFF_LEVEL = 4        # a pixel "differs" when some channel moves by more than this many levels
MIN_MEAN_ABS = 5.0    # mean absolute difference, gray levels (prompt, seed, VAE)
MIN_FRAC = 0.3        # fraction of differing pixels
PATCH_MIN_MEAN_ABS = 2.0
PATCH_MIN_FRAC = 0.25


def _describe(ckpt: str):
    return {"test_sd15.safetensors": "sd15", "test_sdxl.safetensors": "sdxl"}[ckpt]


class Loaded:
    """One loaded checkpoint plus memoised encodes and samples."""

    def __init__(self, host, name: str):
        import comfy.sd
        import folder_paths

        self.host = host
        self.name = name
        self.kind = _describe(name)
        self.path = checkpoint_path(name)
        t0 = time.perf_counter()
        self.model, self.clip, self.vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(self.path), output_vae=True, output_clip=True,
            embedding_directory=folder_paths.get_folder_paths("embeddings"))
        self.load_s = time.perf_counter() - t0
        self._cond = {}
        self._samples = {}
        self._vpred = None

    def cond(self, text: str):
        if text not in self._cond:
            with torch.inference_mode():
                self._cond[text] = self.host.CLIPTextEncode().encode(self.clip, text)[0]
        return self._cond[text]

    @property
    def vpred(self):
        if self._vpred is None:
            from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

            with torch.inference_mode():
                self._vpred = ModelSamplingDiscrete().patch(self.model, "v_prediction", False)[0]
        return self._vpred

    def sample(self, model, prompt: str, seed: int):
        """KSampler -> VAEDecode; returns (model-space latent, uint8 HxWx3 image)."""
        with torch.inference_mode():
            latent = self.host.EmptyLatentImage().generate(SIZE, SIZE, 1)[0]
            out = self.host.KSampler().sample(model, seed, STEPS, CFG, SAMPLER, SCHEDULER,
                                              self.cond(prompt), self.cond(""), latent, denoise=1.0)[0]
            raw = out["samples"]
            image = self.host.VAEDecode().decode(self.vae, out)[0]
        assert torch.isfinite(raw).all(), "sampled latent has NaN/inf"
        assert torch.isfinite(image).all(), "decoded image has NaN/inf"
        z = self.model.model.latent_format.process_in(raw.float())
        return z, to_uint8(image)

    def memo(self, key: str, model, prompt: str, seed: int):
        if key not in self._samples:
            self._samples[key] = self.sample(model, prompt, seed)
        return self._samples[key]

    def base(self):
        return self.memo("base", self.model, PROMPT_A, SEED_A)

    def vbase(self):
        return self.memo("vbase", self.vpred, PROMPT_A, SEED_A)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image[0].clamp(0, 1) * 255).round().to(torch.uint8)


def image_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a.float() - b.float()).abs()
    return d.mean().item(), (d.amax(dim=-1) > DIFF_LEVEL).float().mean().item()


def assert_differs(a, b, what: str, min_mean=MIN_MEAN_ABS, min_frac=MIN_FRAC):
    mean, frac = image_diff(a, b)
    assert mean >= min_mean and frac >= min_frac, (
        f"{what}: decoded images barely differ (mean |diff| {mean:.2f} levels, "
        f"{frac:.0%} pixels differ by > {DIFF_LEVEL}); need >= {min_mean} and >= {min_frac:.0%}")
    return mean, frac


def assert_healthy(img: torch.Tensor, what: str, min_std: float = 10.0):
    """Not constant, not saturated, mid-range."""
    x = img.float()
    saturated = ((img == 0) | (img == 255)).float().mean().item()
    assert x.std().item() >= min_std, f"{what}: image nearly constant (std {x.std().item():.1f} levels)"
    assert saturated <= 0.10, f"{what}: {saturated:.0%} of the channel values are saturated"
    assert 60 <= x.mean().item() <= 195, f"{what}: mean level {x.mean().item():.0f} is not mid-range"


def patched_clone(model, rel_std: float = PATCH_REL_STD, seed: int = 0):
    """A clone carrying a small random weight patch on every transformer matrix through ComfyUI's
    patch mechanism (add_patches: weight += diff). ComfyUI writes the patched weights into the
    shared module while the clone is loaded and restores its backups when it unloads; the tests
    themselves never write weights."""
    clone = model.clone()
    g = torch.Generator().manual_seed(seed)
    patches = {}
    for key, w in sorted(clone.model_state_dict().items()):
        if "transformer_blocks" in key and w.ndim == 2:
            patches[key] = ((torch.randn(w.shape, generator=g) * (w.float().std() * rel_std)).to(w.dtype),)
    assert len(patches) >= 10
    added = clone.add_patches(patches, 1.0)
    assert len(added) == len(patches)
    return clone, sorted(patches)


@pytest.fixture(scope="module", params=["test_sd15.safetensors", "test_sdxl.safetensors"], ids=["sd15", "sdxl"])
def ckpt(request, host) -> Loaded:
    import comfy.model_management

    loaded = Loaded(host, request.param)
    yield loaded
    comfy.model_management.unload_all_models()  # let the next checkpoint / test module have the RAM
    comfy.model_management.soft_empty_cache()


# ---------------------------------------------------------------------------------------------


def test_detected_by_comfy_loader(ckpt: Loaded):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models as sm
    import comfy.taesd.taesd
    from safetensors import safe_open

    model_config = ckpt.model.model.model_config
    clip_model = ckpt.clip.cond_stage_model
    vae = ckpt.vae.first_stage_model
    if ckpt.kind == "sd15":
        assert type(model_config) is sm.SD15
        assert type(ckpt.model.model) is comfy.model_base.BaseModel
        assert type(clip_model) is comfy.sd1_clip.SD1ClipModel
        assert isinstance(ckpt.model.model.latent_format, comfy.latent_formats.SD15)
        assert model_config.unet_config["context_dim"] == 768
        assert model_config.unet_config["use_linear_in_transformer"] is False
    else:
        assert isinstance(model_config, sm.SDXL), type(model_config)
        assert type(ckpt.model.model) is comfy.model_base.SDXL
        assert type(clip_model) is comfy.sdxl_clip.SDXLClipModel
        assert isinstance(ckpt.model.model.latent_format, comfy.latent_formats.SDXL)
        assert model_config.unet_config["context_dim"] == 2048
        assert model_config.unet_config["adm_in_channels"] == 2816
    assert model_config.unet_config["model_channels"] == 320
    assert ckpt.model.model.model_type == comfy.model_base.ModelType.EPS
    assert type(vae) is comfy.taesd.taesd.TAESD
    scale = ckpt.model.model.latent_format.scale_factor
    assert float(vae.vae_scale.detach()) == pytest.approx(scale, rel=1e-3)
    with safe_open(str(ckpt.path), framework="pt") as f:
        meta = json.loads(f.metadata()["ee_test_model"])
    assert meta["build"] and meta["kind"] == ckpt.kind, meta


def test_weights_finite_fp16_on_disk_fp32_loaded(ckpt: Loaded):
    from safetensors import safe_open

    with safe_open(str(ckpt.path), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            if t.is_floating_point():
                assert t.dtype == torch.float16, key
                assert torch.isfinite(t).all(), f"{key} has NaN/inf on disk"
    # On CPU ComfyUI runs the UNet and the VAE in fp32; the text encoder keeps fp16 storage and
    # casts to fp32 per layer (manual_cast), so only its values are checked. ComfyUI cannot load a
    # CLIP-L text_projection from a checkpoint (its key mapping drops it; real SD1.5/SDXL files are
    # the same): it stays uninitialised memory, unused by the UNet, so it is skipped.
    for what, sd, fp32 in [("unet", ckpt.model.model_state_dict(), True),
                           ("vae", ckpt.vae.first_stage_model.state_dict(), True),
                           ("clip", ckpt.clip.cond_stage_model.state_dict(), False)]:
        for key, t in sd.items():
            if key.endswith("clip_l.transformer.text_projection.weight"):
                continue
            if t.is_floating_point():
                if fp32:
                    assert t.dtype == torch.float32, f"{what} {key} loaded as {t.dtype} on CPU"
                assert torch.isfinite(t).all(), f"{what} {key} has NaN/inf after loading"


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_prediction_unit_scale_and_finite(ckpt: Loaded, prediction: str):
    """(e) The raw UNet output has unit-ish scale at every step (for v-prediction it follows the
    input, whose scale is the latent's at the low-noise end) and sampling stays in range; a
    DIFFUSION_MODEL wrapper on a clone observes it without changing the result."""
    import comfy.patcher_extension

    model = ckpt.model if prediction == "eps" else ckpt.vpred
    probe = model.clone()
    seen = []

    def wrapper(executor, x, *args, **kwargs):
        out = executor(x, *args, **kwargs)
        seen.append((x.float().std().item(), out.float().std().item(), bool(torch.isfinite(out).all())))
        return out

    probe.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "ee_test_probe", wrapper)
    z, img = ckpt.sample(probe, PROMPT_A, SEED_A)
    assert len(seen) >= STEPS, seen
    for x_std, out_std, finite in seen:
        assert finite
        assert 0.2 <= x_std <= 3.0, seen
        assert 0.25 <= out_std <= 2.0, f"UNet output std {out_std:.3f} not unit-ish: {seen}"
        assert 0.6 <= out_std / x_std <= 1.8, f"UNet output/input scale {out_std / x_std:.2f}: {seen}"
    assert 0.7 <= seen[0][1] <= 1.5, f"UNet output std at sigma_max {seen[0][1]:.3f} (should be ~1)"
    assert 0.2 <= z.std().item() <= 3.0, f"final model-space latent std {z.std().item():.3f}"
    assert abs(z.mean().item()) <= 1.0
    ref = ckpt.base() if prediction == "eps" else ckpt.vbase()
    assert torch.equal(img, ref[1]), "a wrapper that only observes changed the image"


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_images_healthy(ckpt: Loaded, prediction: str):
    _, img = ckpt.base() if prediction == "eps" else ckpt.vbase()
    assert_healthy(img, f"{ckpt.kind} {prediction} sample")


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_prompt_changes_image(ckpt: Loaded, prediction: str):
    """(a) / (f)"""
    if prediction == "eps":
        _, a = ckpt.base()
        _, b = ckpt.memo("prompt_b", ckpt.model, PROMPT_B, SEED_A)
    else:
        _, a = ckpt.vbase()
        _, b = ckpt.memo("vprompt_b", ckpt.vpred, PROMPT_B, SEED_A)
    assert_differs(a, b, f"{ckpt.kind} {prediction}: prompt A vs B")


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_seed_changes_image(ckpt: Loaded, prediction: str):
    """(b) / (f)"""
    if prediction == "eps":
        _, a = ckpt.base()
        _, b = ckpt.memo("seed_b", ckpt.model, PROMPT_A, SEED_B)
    else:
        _, a = ckpt.vbase()
        _, b = ckpt.memo("vseed_b", ckpt.vpred, PROMPT_A, SEED_B)
    assert_differs(a, b, f"{ckpt.kind} {prediction}: seed {SEED_A} vs {SEED_B}")


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_small_weight_patch_changes_image_without_mutating(ckpt: Loaded, prediction: str):
    """(c) / (f): a 5% noise patch on the transformer weights, applied to a clone through
    add_patches, changes the image; the loaded model is not mutated (same weights, same image)."""
    source = ckpt.model if prediction == "eps" else ckpt.vpred
    _, before = ckpt.base() if prediction == "eps" else ckpt.vbase()
    clone, keys = patched_clone(source)
    weights = source.model_state_dict()
    saved = {k: weights[k].detach().clone() for k in keys}

    _, patched = ckpt.sample(clone, PROMPT_A, SEED_A)
    assert_differs(before, patched, f"{ckpt.kind} {prediction}: {PATCH_REL_STD:.0%} weight patch",
                   min_mean=PATCH_MIN_MEAN_ABS, min_frac=PATCH_MIN_FRAC)

    _, again = ckpt.sample(source, PROMPT_A, SEED_A)
    assert torch.equal(before, again), "sampling the original model after the patched one changed its image"
    weights = source.model_state_dict()
    for k in keys:
        assert torch.equal(weights[k], saved[k]), f"{k} was left patched in the shared model"


def natural_image(size: int = SIZE) -> torch.Tensor:
    """A smooth 'natural-ish' test image: sky gradient, a sun, a field, a house; [1, H, W, 3] in [0, 1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([0.35 + 0.3 * y, 0.55 + 0.25 * y, 0.95 - 0.2 * y], dim=-1)
    sun = ((x - 0.75) ** 2 + (y - 0.22) ** 2) < 0.012
    img[sun] = torch.tensor([1.0, 0.85, 0.3])
    field = y > 0.62 + 0.06 * torch.sin(x * 6.0)
    img[field] = torch.stack([0.2 + 0.15 * x, 0.55 - 0.2 * y, 0.15 + 0 * x], dim=-1)[field]
    house = (x > 0.15) & (x < 0.45) & (y > 0.45) & (y < 0.8)
    img[house] = torch.tensor([0.75, 0.25, 0.2])
    g = torch.Generator().manual_seed(0)
    img = img + 0.02 * torch.randn(img.shape, generator=g)
    return img.clamp(0, 1)[None]


def test_vae_roundtrip_recognisable(ckpt: Loaded):
    """(d) VAEEncode -> VAEDecode keeps the image (an 8x8-block low-pass of it); latents have the
    variance the latent format expects; another image gives another reconstruction."""
    image = natural_image()
    with torch.inference_mode():
        latent = ckpt.host.VAEEncode().encode(ckpt.vae, image)[0]
        decoded = ckpt.host.VAEDecode().decode(ckpt.vae, latent)[0]
        other = ckpt.host.VAEDecode().decode(
            ckpt.vae, ckpt.host.VAEEncode().encode(ckpt.vae, image.flip(1).flip(2))[0])[0]
    raw = latent["samples"]
    assert raw.shape == (1, 4, SIZE // 8, SIZE // 8)
    scale = ckpt.model.model.latent_format.scale_factor
    raw_std = raw.std().item()
    assert 0.6 <= raw_std * scale <= 1.6, f"raw latent std {raw_std:.2f}, expected ~{1 / scale:.2f}"
    pool = lambda t: torch.nn.functional.avg_pool2d(t[None].float().movedim(-1, 1), 8).flatten()  # noqa: E731
    orig_u8 = to_uint8(image)
    rec_u8 = to_uint8(decoded)
    a, b = pool(orig_u8), pool(rec_u8)
    block_mae = (a - b).abs().mean().item()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert block_mae <= 14.0, f"8x8-block mean abs error {block_mae:.1f} levels"
    assert corr >= 0.9, f"8x8-block correlation {corr:.3f}"
    assert_healthy(rec_u8, f"{ckpt.kind} VAE reconstruction")
    assert_differs(rec_u8, to_uint8(other), f"{ckpt.kind} VAE: different images")
