"""A test-only ComfyUI node pack for bench/gpu_dynamic_vram.py (never shipped to users).

``ExemplarGradientProbe(model, clip, tag, size)`` computes, inside a real ComfyUI server, the first
loss and the gradient of both of the pack's gradient paths with the pack's own host functions: the
trainer's token consistency loss in the Difference tokens (DeltaInterpolationTrainer) and a guidance
loss through every cross-attention map in the latent (CutLossGuidance); the functions are those of
tests/integration/test_gradient_helper.py, which checks them against plain autograd on the CPU.
It writes ``<output>/gradient_probe_<tag>.safetensors`` (the gradients, with the losses, the
model's memory mode and the pack's gradient strategy in the metadata).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class ExemplarGradientProbe:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "tag": ("STRING", {"default": "probe"}),
                             "size": ("INT", {"default": 64, "min": 2, "max": 256})}}

    RETURN_TYPES = ()
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def probe(self, model, clip, tag, size):
        import folder_paths
        import safetensors.torch

        for folder in (REPO / "tests", REPO / "tests" / "integration"):
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
        import test_gradient_helper as helpers
        from exemplar_edit.nodes import host

        data = helpers.inputs(size, host.compute_device())
        trainer_loss, trainer_grad = helpers.trainer_loss_and_grad(model, clip, data)
        guidance_loss, guidance_grad = helpers.guidance_loss_and_grad(model, data)
        metadata = {"tag": tag, "trainer_loss": trainer_loss, "guidance_loss": guidance_loss,
                    "model_is_dynamic": bool(getattr(model, "is_dynamic", lambda: False)()),
                    "strategy": host.gradient_strategy(model), "device": str(host.compute_device())}
        path = os.path.join(folder_paths.get_output_directory(), f"gradient_probe_{tag}.safetensors")
        safetensors.torch.save_file({"trainer": trainer_grad.detach().float().cpu().contiguous(),
                                     "guidance": guidance_grad.detach().float().cpu().contiguous()}, path,
                                    metadata={"probe": json.dumps(metadata)})
        return {}


NODE_CLASS_MAPPINGS = {"ExemplarGradientProbe": ExemplarGradientProbe}
