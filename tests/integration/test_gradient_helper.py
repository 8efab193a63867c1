"""The shared way to run ComfyUI's UNet with gradients (nodes/host.py): on a model loaded the way
ComfyUI loads it (inference tensors), a differentiable clone gives the same gradients as the same
checkpoint loaded as ordinary PyTorch modules, and the per-forward weight copies are not kept for
the backward pass, nor differentiated."""
from __future__ import annotations

import pytest
import torch

import pack_testing
from pack_testing import checkpoint_path

pytestmark = pytest.mark.integration

pack_testing.import_host()
from exemplar_edit.nodes import host  # noqa: E402


def _load(inference: bool):
    import comfy.sd

    path = str(checkpoint_path("test_sd15.safetensors"))
    if inference:
        with torch.inference_mode():
            return comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]
    return comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]


def test_differentiable_clone_gradients_match_plain_autograd_without_keeping_weight_copies(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    cond = torch.randn(1, 77, 768, generator=g)
    sigma = torch.tensor([3.0, 3.0])

    # reference: the checkpoint as ordinary modules, autograd straight through apply_model
    plain = _load(inference=False)
    x_ref = x0.clone().requires_grad_(True)
    out_ref = plain.model.apply_model(x_ref, sigma, c_crossattn=cond.expand(2, -1, -1))
    out_ref.pow(2).mean().backward()

    # the pack's way, on a model whose weights are inference tensors (as every node receives them)
    loaded = _load(inference=True)
    assert next(loaded.model.diffusion_model.parameters()).is_inference()
    references = []
    original_pack = host._SAVED_WEIGHTS.pack

    def counting_pack(tensor):
        packed = original_pack(tensor)
        if isinstance(packed, host._WeightReference):
            references.append(packed)
        return packed

    monkeypatch.setattr(host._SAVED_WEIGHTS, "pack", counting_pack)
    with torch.inference_mode():
        with host.gradient_mode():
            unet = host.differentiable_model(loaded)
            with host.model_session(unet, tuple(x0.shape)):
                x = x0.clone().requires_grad_(True)
                prepared = host.prepare_conditioning(unet, [[cond.clone(), {}]], x)
                out = host.denoise_with(unet, x, sigma, prepared)  # D(x), as apply_model returns it
                out.pow(2).mean().backward()
    assert torch.allclose(out.detach(), out_ref.detach(), atol=1e-5, rtol=1e-4)
    assert torch.allclose(x.grad, x_ref.grad.detach(), atol=1e-6, rtol=1e-4)
    weighted_layers = sum(1 for m in loaded.model.diffusion_model.modules()
                          if getattr(m, "weight", None) is not None and hasattr(m, "weight_function"))
    # every layer whose backward needs its weight got a reference instead of a kept copy
    assert len(references) >= weighted_layers // 2
    # only the input was differentiated: no weight gradients computed, none left on the shared model
    assert all(p.grad is None for p in loaded.model.diffusion_model.parameters())
