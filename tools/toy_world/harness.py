"""Running the toy world through ComfyUI's stock nodes: model folders, a scene-drawing test node, and
API-format graphs for text-to-image and image-to-image (SDEdit-style partial denoising).

    from toy_world import harness
    harness.register(nodes)                     # after ComfyUI's nodes are imported
    prompt = harness.txt2img_prompt("a red striped circle on the left, gray background", seed=1)

The recommended sampling settings are :data:`SAMPLING` (README, "A small trained world").
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from . import scenes

HERE = Path(__file__).resolve().parent
DIT_FILE = "toy_flux_dit.safetensors"
VAE_FILE = "toy_flux_vae.safetensors"
TEST_CLIP_CHECKPOINT = "test_sd15.safetensors"  # its CLIP-L conditions the toy DiT

SAMPLING = {"sampler_name": "euler", "scheduler": "simple", "steps": 20, "cfg": 3.0}


def register(nodes_module) -> None:
    """Adds this folder to ComfyUI's ``diffusion_models`` and ``vae`` paths and the ``ToyScene`` and
    ``ToyMask`` nodes."""
    import folder_paths

    for kind in ("diffusion_models", "vae"):
        if str(HERE) not in folder_paths.get_folder_paths(kind):
            folder_paths.add_model_folder_path(kind, str(HERE))
    nodes_module.NODE_CLASS_MAPPINGS["ToyScene"] = ToyScene
    nodes_module.NODE_CLASS_MAPPINGS["ToyMask"] = ToyMask


class ToyScene:
    """Test-only node: the toy-world scene of a caption (its jitter from ``seed``) as an IMAGE."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"caption": ("STRING", {"default": scenes.Scene("red", "plain", "circle", "left",
                                                                            "gray").caption}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "draw"
    CATEGORY = "testing"

    def draw(self, caption: str, seed: int):
        import torch

        image = scenes.draw(scenes.parse_caption(caption), seed)
        return (torch.from_numpy(image.astype(np.float32) / 255.0).unsqueeze(0),)


class ToyMask:
    """Test-only node: the ground-truth object mask of ``ToyScene``'s scene (1 inside the shape)."""

    @classmethod
    def INPUT_TYPES(cls):
        return ToyScene.INPUT_TYPES()

    RETURN_TYPES = ("MASK",)
    FUNCTION = "mask"
    CATEGORY = "testing"

    def mask(self, caption: str, seed: int):
        import torch

        return (torch.from_numpy(scenes.object_mask(scenes.parse_caption(caption), seed)).unsqueeze(0),)


def loaders(prefix: str = "l") -> dict:
    """UNETLoader (the DiT), CheckpointLoaderSimple (for its CLIP) and VAELoader, ids ``{prefix}1..3``."""
    return {
        f"{prefix}1": {"class_type": "UNETLoader", "inputs": {"unet_name": DIT_FILE, "weight_dtype": "default"}},
        f"{prefix}2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TEST_CLIP_CHECKPOINT}},
        f"{prefix}3": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_FILE}},
    }


def txt2img_prompt(caption: str, seed: int, batch_size: int = 1, key: str = "images", **sampling) -> dict:
    """Caption -> KSampler (empty-caption negative) -> VAEDecode -> Capture(key)."""
    settings = {**SAMPLING, **sampling}
    prompt = loaders()
    prompt.update({
        "p": {"class_type": "CLIPTextEncode", "inputs": {"text": caption, "clip": ["l2", 1]}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["l2", 1]}},
        "e": {"class_type": "EmptySD3LatentImage", "inputs": {"width": scenes.SIZE, "height": scenes.SIZE,
                                                             "batch_size": batch_size}},
        "k": {"class_type": "KSampler", "inputs": {"model": ["l1", 0], "seed": seed, "positive": ["p", 0],
                                                   "negative": ["n", 0], "latent_image": ["e", 0], "denoise": 1.0,
                                                   **settings}},
        "d": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["l3", 0]}},
        "c": {"class_type": "Capture", "inputs": {"key": key, "value": ["d", 0]}},
    })
    return prompt


def img2img_prompt(source_caption: str, scene_seed: int, caption: str, seed: int, denoise: float,
                   key: str = "images", **sampling) -> dict:
    """The drawn scene of ``source_caption`` -> VAEEncode -> KSampler(denoise) with ``caption`` ->
    VAEDecode -> Capture(key). KSampler's ``denoise`` d noises the latent to s ~= d (shift 1.0,
    simple scheduler) and denoises from there: d = 0.6 keeps the layout, as translation will."""
    settings = {**SAMPLING, **sampling}
    prompt = loaders()
    prompt.update({
        "i": {"class_type": "ToyScene", "inputs": {"caption": source_caption, "seed": scene_seed}},
        "v": {"class_type": "VAEEncode", "inputs": {"pixels": ["i", 0], "vae": ["l3", 0]}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"text": caption, "clip": ["l2", 1]}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["l2", 1]}},
        "k": {"class_type": "KSampler", "inputs": {"model": ["l1", 0], "seed": seed, "positive": ["p", 0],
                                                   "negative": ["n", 0], "latent_image": ["v", 0],
                                                   "denoise": denoise, **settings}},
        "d": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["l3", 0]}},
        "c": {"class_type": "Capture", "inputs": {"key": key, "value": ["d", 0]}},
    })
    return prompt


# --- what the measurement scripts share ------------------------------------------------------


def mean_table(scores: dict[str, list[dict[str, float]]], keys) -> dict[str, dict[str, float]]:
    """Per method, the mean of each of ``keys`` over its results, rounded to 3 places."""
    return {method: {k: round(float(np.mean([r[k] for r in rows])), 3) for k in keys} for method, rows in scores.items()}


def write_json(path: Path, record: dict) -> None:
    """``record`` as indented JSON, through the tools' one atomic writer."""
    from workflow_ui import write_atomic

    write_atomic(Path(path), json.dumps(record, indent=1) + "\n")


def merge_json(path: Path, section: str | None, entries: dict) -> None:
    """Puts ``entries`` into the JSON record at ``path``, under ``section`` (a "/"-separated key path;
    the top level when empty), keeping everything else the file holds, and writes it with
    :func:`write_json`. A measurement script's runs with different settings so land in one file."""
    path = Path(path)
    record = json.loads(path.read_text()) if path.is_file() else {}
    place = record
    for key in section.split("/") if section else ():
        place = place.setdefault(key, {})
    place.update(entries)
    write_json(path, record)


def run_facts() -> dict[str, str]:
    """Where a measurement ran: ComfyUI's version, torch's, the CPU and the date, recorded beside the
    numbers (float results differ a little between CPUs)."""
    import datetime
    import platform

    import torch

    try:
        import comfyui_version

        comfy = comfyui_version.__version__
    except ImportError:  # hosts before the version file
        comfy = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"comfyui": comfy, "torch": torch.__version__, "cpu": cpu, "threads": str(torch.get_num_threads()),
            "date": datetime.date.today().isoformat()}


def write_image(path: Path, rows: list[np.ndarray]) -> None:
    """Rows of ``(H, W, 3)`` uint8 pictures stacked top to bottom, in the format ``path``'s suffix names,
    through the tools' one atomic writer."""
    from PIL import Image
    from workflow_ui import write_atomic

    path = Path(path)
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).save(buffer, format=Image.registered_extensions()[path.suffix.lower()])
    write_atomic(path, buffer.getvalue())
