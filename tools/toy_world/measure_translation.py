#!/usr/bin/env python3
"""Zero-shot translation (EditDirection + CutLossGuidance) on the toy world, against baselines.

    COMFYUI_PATH=.host/comfyui-0.33.0/ComfyUI .host/comfyui-0.33.0/venv/bin/python \
        tools/toy_world/measure_translation.py [--edits 16] [--attribute shape,colour] [--json out.json]
        [--grid docs/x.png]

Each edit is a drawn scene and a one-word change of its caption ("a red plain circle ..." ->
"a red plain square ..."). The scene is inverted (DDIMInvert, Euler inversion of the flow ODE, the
source caption), then sampled from the inverted noise by:

* ``reconstruction``: the source caption (SamplerCustom + Inversion Replay Sampler, add_noise off,
  as DDIMInvert's description says): what inversion alone gives back;
* ``target caption``: the same with the target caption, the baseline the issue names;
* ``pix2pix-zero``: EditDirection (caption form) + CutLossGuidance with ``lambda_cut`` 0 (stock euler,
  as the ``image_translation_flux`` workflow);
* ``pix2pix-zeroCon``: the same with ``lambda_cut`` 3 (PatchNCE on image-token features).

The baselines must not sample the inverted latent with a stock sampler and add_noise off: on a flow
model its noise scaling ``sigma * noise + (1 - sigma) * latent`` turns the latent at sigma 1 into
zeros, so that would be generation from a zero latent, not the inversion (CutLoss Guidance's
step-by-step guider starts from the latent itself, as the pack's samplers do).

The detector reads the five attributes of every result: ``changed`` is the share whose edited
attribute reads the target value, ``kept`` the share of the other four reading the source's, ``both``
the share with the edit made and all four others kept. ``object error`` and ``background error``
(:func:`detect.edit_errors`) compare the result with the ideal edit, the source drawn with the new
word at the same size and place.
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
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402

from toy_world import detect, harness, scenes  # noqa: E402

STEPS, CFG = 20, 3.0
ATTRIBUTES, VALUES = scenes.ATTRIBUTES, scenes.VALUES
GUIDANCE = {"lambda_xa": 1.0, "step_size": 0.1, "guidance_start_step": 0, "guidance_end_step": 1000,
            "num_patches": 64, "tau": 0.07, "offload_to_cpu": False}
# The toy's text encoder is the random test CLIP-L: a mean over template sentences ("a photo of a
# {word}", ...) carries no meaning the toy DiT reads, so the direction is the two captions' difference
# (EditDirection's own sentences: one each) unless --templates
CAPTION_SENTENCES = True
METHODS = ("reconstruction", "target caption", "pix2pix-zero", "pix2pix-zeroCon")
SCORES = ("changed", "kept", "both", "object error", "background error")


def edits(count: int, attributes: tuple[str, ...], seed: int = 11) -> list[tuple[scenes.Scene, scenes.Scene, int]]:
    """``count`` (source, target, scene seed) per attribute: the target changes that one word."""
    rng = np.random.default_rng(seed)
    every = scenes.all_scenes()
    out = []
    for attribute in attributes:
        for _ in range(count):
            source = every[rng.integers(len(every))]
            others = [v for v in VALUES[attribute] if v != getattr(source, attribute)]
            out.append((source, source.replace(**{attribute: others[rng.integers(len(others))]}),
                        int(rng.integers(1000))))
    return out


def prompt(source: scenes.Scene, target: scenes.Scene, scene_seed: int, method: str,
           guidance: dict | None = None) -> dict:
    """The API graph of one result, captured as ``image``; ``guidance``: CutLossGuidance inputs to change."""
    p = harness.loaders()
    p.update({
        "i": {"class_type": "ToyScene", "inputs": {"caption": source.caption, "seed": scene_seed}},
        "v": {"class_type": "VAEEncode", "inputs": {"pixels": ["i", 0], "vae": ["l3", 0]}},
        "sp": {"class_type": "CLIPTextEncode", "inputs": {"text": source.caption, "clip": ["l2", 1]}},
        "tp": {"class_type": "CLIPTextEncode", "inputs": {"text": target.caption, "clip": ["l2", 1]}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["l2", 1]}},
        "inv": {"class_type": "DDIMInvert", "inputs": {
            "model": ["l1", 0], "positive": ["sp", 0], "negative": ["n", 0], "latent": ["v", 0], "mode": "ddim",
            "steps": STEPS, "cfg": 1.0, "scheduler": "simple", "skip_steps": 0, "seed": 0,
            "noise_regularization": False, "lambda_ac": 20.0, "lambda_kl": 20.0, "regularization_steps": 5,
            "auto_correlation_rolls": 5}},
    })
    if method in ("reconstruction", "target caption"):
        # DDIMInvert's documented way back (Inversion Replay Sampler, add_noise off): a stock sampler
        # would start a flow model from (1 - sigma) * latent, which at sigma 1 erases the inversion
        positive = ["sp" if method == "reconstruction" else "tp", 0]
        p["rs"] = {"class_type": "InversionReplaySampler", "inputs": {"inversion": ["inv", 1],
                                                                       "exact_final_step": False}}
        p["s"] = {"class_type": "SamplerCustom", "inputs": {
            "model": ["l1", 0], "add_noise": False, "noise_seed": 0, "cfg": CFG, "positive": positive,
            "negative": ["n", 0], "sampler": ["rs", 0], "sigmas": ["inv", 2], "latent_image": ["inv", 0]}}
    else:
        differing = [a for a in ATTRIBUTES if getattr(source, a) != getattr(target, a)]
        (attribute,) = differing
        p["dir"] = {"class_type": "EditDirection", "inputs": {
            "clip": ["l2", 1], "source": getattr(source, attribute), "target": getattr(target, attribute),
            "caption": source.caption, "target_caption": target.caption, "multiplier": 1.0,
            "source_sentences": source.caption if CAPTION_SENTENCES else "",
            "target_sentences": target.caption if CAPTION_SENTENCES else ""}}
        p["g"] = {"class_type": "CutLossGuidance", "inputs": {
            "model": ["l1", 0], "positive": ["sp", 0], "negative": ["n", 0], "direction": ["dir", 0], "cfg": CFG,
            "lambda_cut": 0.0 if method == "pix2pix-zero" else 3.0, **GUIDANCE, **(guidance or {})}}
        p["noise"] = {"class_type": "DisableNoise", "inputs": {}}
        p["sampler"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        p["s"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["g", 0], "sampler": ["sampler", 0], "sigmas": ["inv", 2],
            "latent_image": ["inv", 0]}}
    p["d"] = {"class_type": "VAEDecode", "inputs": {"samples": ["s", 0], "vae": ["l3", 0]}}
    p["c"] = {"class_type": "Capture", "inputs": {"key": "image", "value": ["d", 0]}}
    return p


def measure(graph, edit_list, methods=METHODS):
    scores = {m: [] for m in methods}
    images = {m: [] for m in methods}
    for source, target, seed in edit_list:
        for method in methods:
            image = graph.run(prompt(source, target, seed, method))["image"][0].float().cpu().numpy()
            scores[method].append(detect.edit_scores(image, source, target, seed))
            images[method].append(image)
    return harness.mean_table(scores, SCORES), images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=16, help="edits per attribute")
    parser.add_argument("--attribute", default="shape,colour")
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=20, help="inversion and sampling steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--templates", action="store_true", help="EditDirection's caption-form sentence templates")
    parser.add_argument("--guidance", type=json.loads, default={}, help="CutLossGuidance inputs to change (JSON)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"a subset of {','.join(METHODS)}")
    parser.add_argument("--json", type=Path, help="merge the tables and settings into this JSON file")
    parser.add_argument("--section", default="", help='where in --json, a "/"-separated key path (default: the top)')
    parser.add_argument("--grid", type=Path, help="the first 2 edits of each attribute")
    args = parser.parse_args()
    methods = tuple(args.methods.split(","))
    if not set(methods) <= set(METHODS):
        parser.error(f"--methods: {args.methods!r} is not a subset of {','.join(METHODS)}")

    import pack_testing
    import torch

    torch.set_num_threads(args.threads)
    graph = pack_testing.make_graph_runner()
    import nodes

    harness.register(nodes)
    GUIDANCE.update(args.guidance)
    global CAPTION_SENTENCES, CFG, STEPS
    CFG, STEPS = args.cfg, args.steps
    CAPTION_SENTENCES = not args.templates
    record = {}
    grid_rows = []
    for attribute in args.attribute.split(","):
        edit_list = edits(args.edits, (attribute,))
        start = time.time()
        table, images = measure(graph, edit_list, methods)
        print(f"{attribute}: {len(edit_list)} edits, {STEPS} steps, cfg {CFG}, {time.time() - start:.0f} s")
        for method, row in table.items():
            print(f"  {method:18s} " + " ".join(f"{k} {v:.2f}" for k, v in row.items()))
        record[f"{attribute} edits"] = {"edits": len(edit_list), **table}
        for index in range(min(2, len(edit_list))):
            source, _target, seed = edit_list[index]
            cells = [scenes.draw(source, seed)] + [(images[m][index] * 255).clip(0, 255).astype(np.uint8)
                                                   for m in methods]
            grid_rows.append(np.concatenate(cells, axis=1))
    if args.json:
        record["settings"] = {"steps": STEPS, "cfg": CFG, "inversion": "ddim (Euler, cfg 1)",
                              "caption form": CAPTION_SENTENCES, **GUIDANCE, "ran on": harness.run_facts()}
        harness.merge_json(args.json, args.section, record)
    if args.grid:
        harness.write_image(args.grid, grid_rows)


if __name__ == "__main__":
    main()
