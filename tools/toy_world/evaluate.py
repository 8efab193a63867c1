#!/usr/bin/env python3
"""Measure the toy world through ComfyUI's stock node functions, and draw the README grid.

    COMFYUI_PATH=.host/comfyui-0.33.0/ComfyUI .host/comfyui-0.33.0/venv/bin/python tools/toy_world/evaluate.py \
        [--json tools/toy_world/measurements.json] [--grid docs/toy_world_grid.png]

Everything goes through the functions the stock nodes run: ``UNETLoader.load_unet``,
``CheckpointLoaderSimple.load_checkpoint`` (the test CLIP), ``VAELoader.load_vae``,
``CLIPTextEncode.encode``, ``VAEEncode.encode``, ``KSampler.sample`` (empty-caption negative) and
``VAEDecode.decode``; the empty latent is EmptySD3LatentImage's (zeros, 16 channels). Each image is
read by the rule-based detector (:mod:`detect`). Measured:

* txt2img: per-attribute detector agreement, every caption x 2 seeds at the recommended settings,
  and a smaller sweep over cfg and steps;
* reconstruction: a drawn scene, VAE-encoded, noised to s = denoise and denoised with its own
  caption (KSampler's denoise), read back;
* one-word edits: the same with one word of the caption changed: how often the edited attribute
  reads the new value ("changed") and the other four read as before ("kept");
* the VAE alone: VAEEncode -> VAEDecode of drawn scenes (PSNR, detector agreement, latent statistics
  in FLUX's model space).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tools"))

import numpy as np  # noqa: E402

from toy_world import detect, harness, scenes  # noqa: E402


class Toy:
    """The toy models loaded by the stock loader nodes, with memoised caption encodings."""

    def __init__(self):
        import comfy_host

        comfy_host.import_host()
        import folder_paths
        import nodes

        self.nodes = nodes
        folder_paths.add_model_folder_path("checkpoints", str(REPO / ".cache" / "checkpoints"))
        harness.register(nodes)
        self.model = nodes.UNETLoader().load_unet(harness.DIT_FILE, "default")[0]
        self.clip = nodes.CheckpointLoaderSimple().load_checkpoint(harness.TEST_CLIP_CHECKPOINT)[1]
        self.vae = nodes.VAELoader().load_vae(harness.VAE_FILE)[0]
        self._conds: dict[str, list] = {}

    def cond(self, text: str):
        if text not in self._conds:
            self._conds[text] = self.nodes.CLIPTextEncode().encode(self.clip, text)[0]
        return self._conds[text]

    def _sample(self, latent, caption: str, seed: int, denoise: float, **settings) -> np.ndarray:
        import torch

        settings = {**harness.SAMPLING, **settings}
        with torch.inference_mode():
            out = self.nodes.KSampler().sample(self.model, seed, settings["steps"], settings["cfg"],
                                               settings["sampler_name"], settings["scheduler"], self.cond(caption),
                                               self.cond(""), latent, denoise=denoise)[0]
            images = self.nodes.VAEDecode().decode(self.vae, out)[0]
        return (images.clamp(0, 1).numpy() * 255).round().astype(np.uint8)

    def txt2img(self, caption: str, seed: int, batch_size: int = 1, **settings) -> np.ndarray:
        import torch

        latent = {"samples": torch.zeros([batch_size, 16, scenes.SIZE // 8, scenes.SIZE // 8])}
        return self._sample(latent, caption, seed, 1.0, **settings)

    def img2img(self, image_uint8: np.ndarray, caption: str, seed: int, denoise: float, **settings) -> np.ndarray:
        import torch

        pixels = torch.from_numpy(image_uint8.astype(np.float32) / 255.0).unsqueeze(0)
        with torch.inference_mode():
            latent = self.nodes.VAEEncode().encode(self.vae, pixels)[0]
        return self._sample(latent, caption, seed, denoise, **settings)[0]


def _rounded(d: dict) -> dict:
    return {k: round(v, 3) for k, v in d.items()}


def measure_txt2img(toy: Toy, combos, seeds: int, **settings) -> dict:
    readings, truth = [], []
    for index, scene in enumerate(combos):
        for image in toy.txt2img(scene.caption, seed=1000 + index, batch_size=seeds, **settings):
            readings.append(detect.detect(image))
            truth.append(scene)
    return _rounded(detect.agreement(readings, truth)) | {"images": len(readings)}


def measure_edits(toy: Toy, combos, denoise: float, rng) -> dict:
    """Reconstruction with the own caption, and one-word edits per attribute, from ``denoise``."""
    readings, truth = [], []
    edits = {name: {"changed": 0, "kept": 0, "kept_total": 0, "count": 0} for name in scenes.ATTRIBUTES}
    values = {"colour": list(scenes.COLOURS), "pattern": list(scenes.PATTERNS), "shape": list(scenes.SHAPES),
              "position": list(scenes.POSITIONS), "background": list(scenes.BACKGROUNDS)}
    for index, scene in enumerate(combos):
        image = scenes.draw(scene, seed=index)
        readings.append(detect.detect(toy.img2img(image, scene.caption, seed=index, denoise=denoise)))
        truth.append(scene)
        attribute = scenes.ATTRIBUTES[index % len(scenes.ATTRIBUTES)]
        value = rng.choice([v for v in values[attribute] if v != getattr(scene, attribute)])
        target = scene.replace(**{attribute: value})
        reading = detect.detect(toy.img2img(image, target.caption, seed=index, denoise=denoise))
        stats = edits[attribute]
        stats["count"] += 1
        stats["changed"] += getattr(reading, attribute) == value
        for name in scenes.ATTRIBUTES:
            if name != attribute:
                stats["kept_total"] += 1
                stats["kept"] += getattr(reading, name) == getattr(scene, name)
    per_attribute = {name: {"changed": round(s["changed"] / s["count"], 3),
                            "kept": round(s["kept"] / s["kept_total"], 3), "count": s["count"]}
                     for name, s in edits.items()}
    total = sum(s["count"] for s in edits.values())
    return {
        "reconstruction": _rounded(detect.agreement(readings, truth)) | {"images": len(readings)},
        "edits": per_attribute,
        "edits_changed": round(sum(s["changed"] for s in edits.values()) / total, 3),
        "edits_kept": round(sum(s["kept"] for s in edits.values()) / sum(s["kept_total"] for s in edits.values()), 3),
    }


def measure_vae(toy: Toy) -> dict:
    """VAEEncode -> VAEDecode of drawn scenes: PSNR and the detector's agreement."""
    import torch

    images, drawn = scenes.draw_dataset(108, seed=4242)
    with torch.inference_mode():
        pixels = torch.from_numpy(images.astype(np.float32) / 255.0)
        latent = toy.nodes.VAEEncode().encode(toy.vae, pixels)[0]
        decoded = toy.nodes.VAEDecode().decode(toy.vae, latent)[0].clamp(0, 1)
        model_space = toy.model.model.latent_format.process_in(latent["samples"])
    out = (decoded.numpy() * 255).round().astype(np.uint8)
    mse = float(((decoded - pixels) ** 2).mean())
    return (_rounded(detect.agreement([detect.detect(o) for o in out], drawn))
            | {"psnr_db": round(float(-10 * np.log10(mse)), 2), "latent_mean": round(float(model_space.mean()), 3),
               "latent_std": round(float(model_space.std()), 3), "images": len(drawn)})


PARTS = ("vae", "txt2img", "sweep", "edits")


def measure(toy: Toy, parts=PARTS, results: dict | None = None) -> dict:
    """The measurements of ``parts`` (updating ``results``, from an earlier run, if given)."""
    combos = scenes.all_scenes()
    rng = np.random.default_rng(0)
    results = dict(results or {}, settings=harness.SAMPLING)
    t0 = time.perf_counter()
    if "vae" in parts:
        results["vae_roundtrip"] = measure_vae(toy)
        print("vae", results["vae_roundtrip"], flush=True)
    if "txt2img" in parts:
        results["txt2img"] = measure_txt2img(toy, combos, seeds=2)
        print("txt2img", results["txt2img"], f"{time.perf_counter() - t0:.0f} s", flush=True)
    subset = [combos[i] for i in rng.choice(len(combos), 48, replace=False)]
    if "sweep" in parts:
        sweep = {}
        for cfg in (1.0, 2.0, 3.0, 5.0):
            sweep[f"cfg {cfg}"] = measure_txt2img(toy, subset, seeds=2, cfg=cfg)
            print(f"cfg {cfg}", sweep[f"cfg {cfg}"], flush=True)
        for steps in (8, 40):
            sweep[f"steps {steps}"] = measure_txt2img(toy, subset, seeds=2, steps=steps)
            print(f"steps {steps}", sweep[f"steps {steps}"], flush=True)
        results["txt2img_sweep"] = sweep
    edit_set = [combos[i] for i in rng.choice(len(combos), 120, replace=False)]
    if "edits" in parts:
        for denoise in (0.6, 0.8):
            results[f"denoise {denoise}"] = measure_edits(toy, edit_set, denoise, np.random.default_rng(1))
            print(f"denoise {denoise}", json.dumps(results[f"denoise {denoise}"]), flush=True)
    results.pop("seconds", None)
    return results


def _label(draw, xy, lines, fill):
    for i, (text, colour) in enumerate(lines):
        draw.text((xy[0], xy[1] + 11 * i), text, fill=colour if colour else fill)


def draw_grid(toy: Toy, path: Path) -> None:
    """Captions x seeds (txt2img) and one-word edits from s = 0.6, each labelled with the detector's
    reading (green: as the caption says, red: not)."""
    from PIL import Image, ImageDraw

    rows = [scenes.Scene("red", "striped", "circle", "left", "gray"),
            scenes.Scene("blue", "dotted", "square", "right", "white"),
            scenes.Scene("yellow", "plain", "triangle", "left", "dark"),
            scenes.Scene("green", "striped", "square", "right", "gray")]
    seeds = 4
    edit_source = scenes.Scene("red", "plain", "circle", "left", "gray")
    edits = [("(drawn)", None), ("(own caption)", edit_source),
             ("colour", edit_source.replace(colour="blue")), ("pattern", edit_source.replace(pattern="striped")),
             ("shape", edit_source.replace(shape="square")), ("background", edit_source.replace(background="dark"))]
    cell, label_h, pad = scenes.SIZE, 36, 6
    columns = max(seeds, len(edits))
    header_h = 34
    width = columns * (cell + pad) + pad
    height = header_h + (len(rows) + 1) * (cell + label_h + 16) + 10
    canvas = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 4), "TOY MODEL (tools/toy_world): 2 M-parameter FLUX-layout DiT + TAESD VAE, trained on CPU "
                        "on drawn scenes.", fill=(160, 0, 0))
    draw.text((pad, 17), f"euler/simple, {harness.SAMPLING['steps']} steps, cfg {harness.SAMPLING['cfg']}; labels: "
                         "detector reading (green = as captioned)", fill=(60, 60, 60))

    def cell_label(reading, scene, y, x):
        words = [(getattr(reading, name) or "-", (0, 130, 0) if getattr(reading, name) == getattr(scene, name)
                  else (200, 0, 0)) for name in scenes.ATTRIBUTES]
        _label(draw, (x, y), [(" ".join(w for w, _ in words[:3]), None), (" ".join(w for w, _ in words[3:]), None)],
               (0, 0, 0))
        ok = all(c == (0, 130, 0) for _, c in words)
        draw.rectangle([x - 2, y - cell - 2, x + cell + 1, y - 1], outline=(0, 160, 0) if ok else (210, 0, 0))

    y = header_h
    for row, scene in enumerate(rows):
        draw.text((pad, y), f'"{scene.caption}"', fill=(0, 0, 0))
        y += 14
        for column, image in enumerate(toy.txt2img(scene.caption, seed=10 + row, batch_size=seeds)):
            x = pad + column * (cell + pad)
            canvas.paste(Image.fromarray(image), (x, y))
            cell_label(detect.detect(image), scene, y + cell + 2, x)
        y += cell + label_h + 2
    draw.text((pad, y), f'one-word edits from s = 0.6 of a drawn "{edit_source.caption}"', fill=(0, 0, 0))
    y += 14
    drawn = scenes.draw(edit_source, seed=3)
    for column, (name, target) in enumerate(edits):
        x = pad + column * (cell + pad)
        image = drawn if target is None else toy.img2img(drawn, target.caption, seed=3, denoise=0.6)
        canvas.paste(Image.fromarray(image), (x, y))
        shown = edit_source if target is None else target
        cell_label(detect.detect(image), shown, y + cell + 2, x)
        draw.text((x + 2, y + 2), name, fill=(255, 255, 255))
    canvas.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)  # a small PNG


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--grid", type=Path, help="draw the README grid (PNG) here")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"what to measure, comma-separated from {PARTS}; other parts of an existing --json stay")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    toy = Toy()
    if args.grid:
        draw_grid(toy, args.grid)
        print(f"wrote {args.grid}")
    if args.json:
        previous = json.loads(args.json.read_text()) if args.json.is_file() else None
        results = measure(toy, [p for p in args.parts.split(",") if p], previous)
        harness.write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
