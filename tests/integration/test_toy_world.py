"""The toy world's trained FLUX-layout DiT and VAE (tools/toy_world) through ComfyUI's stock nodes
(UNETLoader, the test CLIP from CheckpointLoaderSimple, VAELoader, CLIPTextEncode,
EmptySD3LatentImage, VAEEncode, KSampler, VAEDecode), judged by the rule-based detector:

* the stock loaders detect the files as a FLUX (schnell layout) flow model and a 16-channel TAESD;
* captions control what is drawn (per-attribute detector agreement over captions x seeds);
* a drawn scene noised to s = 0.6 and denoised with its own caption keeps its attributes
  (what inversion-based editing needs);
* the same with one word of the caption changed changes that attribute and keeps the others
  (what translation builds on).

The DiT is 128 wide (1 head): ComfyUI 0.33 derives heads = hidden / 128, while 0.3.75's FLUX
detection fixes 24 heads (hidden 3072 only), so on such a host these tests skip, saying so.
The thresholds sit below the numbers measured on the committed weights (README, "A small trained
world"); a model that ignores its caption, or a broken loader, fails them.
"""
from __future__ import annotations

import pytest
import torch

from toy_world import detect, harness, scenes

pytestmark = pytest.mark.integration

CAPTIONS = [scenes.Scene(*attrs) for attrs in (
    ("red", "plain", "circle", "left", "gray"),
    ("blue", "striped", "square", "right", "white"),
    ("yellow", "dotted", "triangle", "left", "dark"),
    ("green", "striped", "circle", "right", "dark"),
    ("red", "dotted", "square", "left", "white"),
    ("blue", "plain", "triangle", "right", "gray"),
    ("green", "plain", "square", "left", "white"),
    ("yellow", "striped", "circle", "right", "gray"),
)]
SEEDS_PER_CAPTION = 4   # one KSampler batch: four noises per caption

# one-word edits from s = 0.6: (source scene, attribute, new value)
EDITS = [
    (CAPTIONS[0], "colour", "blue"), (CAPTIONS[1], "colour", "yellow"),
    (CAPTIONS[0], "shape", "square"), (CAPTIONS[2], "shape", "circle"),
    (CAPTIONS[0], "pattern", "striped"), (CAPTIONS[3], "pattern", "plain"),
    (CAPTIONS[4], "background", "gray"), (CAPTIONS[5], "background", "dark"),
    (CAPTIONS[6], "position", "right"), (CAPTIONS[7], "position", "left"),
]
EDIT_DENOISE = 0.6

# floors (measured values in the README; see the module docstring)
# measured here (ComfyUI 0.33.0, torch 2.10 CPU): txt2img 1.0 / 1.0 / 0.84 / 1.0 / 1.0, all 0.84;
# reconstruction 1.0 for every attribute; edits changed 9/10, kept 38/40
MIN_TXT2IMG = {"colour": 0.9, "pattern": 0.85, "shape": 0.65, "position": 0.9, "background": 0.9, "all": 0.6}
MIN_RECONSTRUCTION = {"colour": 0.85, "pattern": 0.85, "shape": 0.85, "position": 0.85, "background": 0.85,
                      "all": 0.75}
MIN_EDIT_CHANGED = 0.7   # edits whose attribute reads the new value
MIN_EDIT_KEPT = 0.85     # other attributes of edited images that read as before


def _narrow_flux_loads() -> tuple[bool, str]:
    """Whether this host's FLUX detection takes the head count from the width (ComfyUI >= 0.33)."""
    import comfy.model_detection
    import comfy.utils

    sd = comfy.utils.load_torch_file(str(harness.HERE / harness.DIT_FILE))
    config = comfy.model_detection.detect_unet_config(sd, "")
    hidden = sd["img_in.weight"].shape[0]
    if config is None or config.get("num_heads") != hidden // 128:
        heads = None if config is None else config.get("num_heads")
        return False, (f"this ComfyUI's FLUX detection gives {heads} heads for the {hidden}-wide toy DiT "
                       "(0.3.75 fixes 24 heads, hidden 3072 only); the toy world needs ComfyUI >= 0.33")
    return True, ""


@pytest.fixture(scope="module")
def toy(graph):
    import nodes

    ok, reason = _narrow_flux_loads()
    if not ok:
        pytest.skip(reason)
    harness.register(nodes)
    # the models are tiny: one thread is fastest, and on a shared CPU two threads of a 2 M-parameter
    # model spend most of their time waiting for each other (measured 10x slower under load)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield graph
    torch.set_num_threads(threads)


def _images(run: dict, key: str = "images") -> list:
    batch = run[key]
    return [batch[i:i + 1] for i in range(batch.shape[0])]


def test_stock_loaders_detect_the_toy_models(toy):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_sampling

    prompt = harness.loaders()
    prompt["c1"] = {"class_type": "Capture", "inputs": {"key": "model", "value": ["l1", 0]}}
    prompt["c2"] = {"class_type": "Capture", "inputs": {"key": "vae", "value": ["l3", 0]}}
    run = toy.run(prompt)
    model, vae = run["model"], run["vae"]
    base = model.model
    assert isinstance(base, comfy.model_base.Flux)
    assert base.model_type == comfy.model_base.ModelType.FLOW
    assert isinstance(base.latent_format, comfy.latent_formats.Flux)
    sampling = model.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow) and sampling.shift == 1.0
    config = base.model_config.unet_config
    assert (config["hidden_size"], config["num_heads"], config["context_in_dim"], config["vec_in_dim"]) == \
        (128, 1, 768, 768)
    assert config["guidance_embed"] is False
    # every tensor of the file lands in ComfyUI's Flux module, none missing (BFL ``*_norm.scale`` names)
    import comfy.utils

    file_sd = comfy.utils.load_torch_file(str(harness.HERE / harness.DIT_FILE))
    renamed = {(k[:-len(".scale")] + ".weight" if k.endswith("_norm.scale") else k): v for k, v in file_sd.items()}
    loaded = base.diffusion_model.state_dict()
    assert {k: tuple(v.shape) for k, v in loaded.items()} == {k: tuple(v.shape) for k, v in renamed.items()}
    assert all(torch.equal(loaded[k].float(), v.float()) for k, v in renamed.items())
    assert vae.latent_channels == 16 and vae.downscale_ratio == 8
    assert float(vae.first_stage_model.vae_scale.detach()) == pytest.approx(0.3611)
    assert float(vae.first_stage_model.vae_shift.detach()) == pytest.approx(0.1159)


def test_captions_control_what_is_drawn(toy):
    readings, truth = [], []
    for index, scene in enumerate(CAPTIONS):
        run = toy.run(harness.txt2img_prompt(scene.caption, seed=100 + index, batch_size=SEEDS_PER_CAPTION))
        readings += [detect.detect(image) for image in _images(run)]
        truth += [scene] * SEEDS_PER_CAPTION
    agreement = detect.agreement(readings, truth)
    print("txt2img agreement", agreement)
    for name, floor in MIN_TXT2IMG.items():
        assert agreement[name] >= floor, (name, agreement)


def test_reconstruction_from_s06_keeps_the_attributes(toy):
    readings, truth = [], []
    for index, scene in enumerate(CAPTIONS):
        run = toy.run(harness.img2img_prompt(scene.caption, index, scene.caption, seed=200 + index,
                                             denoise=EDIT_DENOISE))
        readings.append(detect.detect(run["images"]))
        truth.append(scene)
    agreement = detect.agreement(readings, truth)
    print("reconstruction agreement", agreement)
    for name, floor in MIN_RECONSTRUCTION.items():
        assert agreement[name] >= floor, (name, agreement)


def test_one_word_edit_from_s06_changes_that_attribute(toy):
    changed, kept = [], []
    for index, (source, attribute, value) in enumerate(EDITS):
        target = source.replace(**{attribute: value})
        run = toy.run(harness.img2img_prompt(source.caption, index, target.caption, seed=300 + index,
                                             denoise=EDIT_DENOISE))
        reading = detect.detect(run["images"])
        changed.append(getattr(reading, attribute) == value)
        kept += [getattr(reading, name) == getattr(source, name) for name in scenes.ATTRIBUTES if name != attribute]
    print(f"one-word edits: changed {sum(changed)}/{len(changed)}, kept {sum(kept)}/{len(kept)}")
    assert sum(changed) / len(changed) >= MIN_EDIT_CHANGED, changed
    assert sum(kept) / len(kept) >= MIN_EDIT_KEPT, kept


def test_the_caption_matters_more_than_the_seed(toy):
    """Same seed, captions differing in colour: the images differ where the object is."""
    a, b = CAPTIONS[0], CAPTIONS[0].replace(colour="green")
    run_a = toy.run(harness.txt2img_prompt(a.caption, seed=5, key="a"))
    run_b = toy.run(harness.txt2img_prompt(b.caption, seed=5, key="b"))
    assert detect.detect(run_a["a"]).colour == "red" and detect.detect(run_b["b"]).colour == "green"



# appearance transfer (tools/toy_world/measure_appearance.py; README "Appearance transfer on FLUX-class
# models"): measured on 32 pairs with the drawn masks, mean of the five wanted attributes 0.90 for the
# transfer against 0.60 (reconstruction) and 0.63 (reference caption), all five right 0.59 against 0.00
APPEARANCE_PAIRS = 8
MIN_TRANSFER_MARGIN = 0.12  # the transfer's mean over the baselines' best
MIN_TRANSFER_ALL5 = 0.25


def test_appearance_transfer_keeps_the_target_and_takes_the_reference_appearance(toy):
    """SemanticFeatureRearrange (the shipped defaults: dit_all_blocks, key matching) with the drawn
    masks keeps the target's shape, position and background and takes the reference's colour and
    pattern, better than both baselines: the target's inversion replayed with its own caption (keeps the
    target, takes nothing) and with the reference's caption (takes the appearance, loses the target)."""
    from toy_world import measure_appearance as ma

    configs = [("reconstruction", {}), ("reference caption", {"reference_caption": True}),
               ("transfer", {"layers": "dit_all_blocks", "matching": None, "masks": "truth"})]
    table, _images = ma.measure(toy, configs, ma.pairs(APPEARANCE_PAIRS))
    transfer, baselines = table["transfer"], [table["reconstruction"], table["reference caption"]]
    assert transfer["mean"] >= max(b["mean"] for b in baselines) + MIN_TRANSFER_MARGIN, table
    assert transfer["all5"] >= max(b["all5"] for b in baselines) + MIN_TRANSFER_ALL5, table
    assert transfer["colour"] > table["reconstruction"]["colour"], table
    assert transfer["position"] > table["reference caption"]["position"], table


# translation and analogy (README "FLUX-class models (DiTs)"): what the toy world shows, asserted as
# measured. Translation: 16 colour edits, the edit made and the rest kept 0.88 with pix2pix-zero(Con)
# as with the target caption alone (the toy's inversion does not drift, so guidance has nothing to fix).
# Analogy (colour, 16 analogies, 400 trainer steps): B' takes A''s colour 0.62 (B reconstructed 0.00)
# and keeps B's other attributes 0.81 (B with A''s caption 0.44); on these three 1.00 and 0.75 (0.58).
TRANSLATION_EDITS = 4
ANALOGIES = 3
ANALOGY_TRAINER_STEPS = 400


def test_translation_on_flux_makes_colour_edits_and_keeps_the_rest(toy):
    """EditDirection + CutLossGuidance (pix2pix-zero and pix2pix-zeroCon) on the toy DiT: colour edits
    are made and the other four attributes kept as well as by sampling the inversion with the target
    caption, and the guidance (joint-attention maps, PatchNCE on image tokens) runs through the DiT's
    gradients without breaking the image."""
    from toy_world import measure_translation as mt

    table, _images = mt.measure(toy, mt.edits(TRANSLATION_EDITS, ("colour",)))
    for method in ("pix2pix-zero", "pix2pix-zeroCon"):
        assert table[method]["changed"] >= 0.75, table
        assert table[method]["kept"] >= table["target caption"]["kept"] - 0.05, table
    assert table["reconstruction"]["changed"] == 0, table


def test_translation_baseline_samples_the_inversion_as_the_guided_edit_does(toy):
    """The target-caption baseline of the translation table (Inversion Replay Sampler, add_noise off)
    and CutLoss Guidance with step_size 0 (no guidance; the caption-form direction makes the edited
    conditioning the target caption's) give the same image: both start from the inversion, so the
    table's differences are the guidance's. A stock sampler with add_noise off does not: on a flow model
    it starts from (1 - sigma) * latent, zeros at sigma 1 (the earlier baselines' mistake)."""
    import numpy as np
    from toy_world import measure_translation as mt

    source, target, seed = mt.edits(1, ("shape",))[0]
    baseline = toy.run(mt.prompt(source, target, seed, "target caption"))["image"][0].float().numpy()
    unguided = toy.run(mt.prompt(source, target, seed, "pix2pix-zero", {"step_size": 0.0}))["image"][0].float().numpy()
    assert np.abs(baseline - unguided).max() < 1e-4
    stock = mt.prompt(source, target, seed, "pix2pix-zero")
    stock["g"] = {"class_type": "CFGGuider", "inputs": {"model": ["l1", 0], "positive": ["tp", 0],
                                                        "negative": ["n", 0], "cfg": mt.CFG}}
    erased = toy.run(stock)["image"][0].float().numpy()
    assert np.abs(baseline - erased).max() > 0.1


def test_analogy_on_flux_carries_the_change_and_not_the_exemplar(toy):
    """DeltaInterpolationTrainer + TokenInjector on the toy DiT (A red circle : A' blue circle ::
    B : B'): B plus the difference takes A''s colour, which B reconstructed does not, and keeps B's
    other attributes better than B sampled with A''s caption, which takes A''s whole scene."""
    from toy_world import measure_analogy as ma

    ma.setup(toy)
    table, _images = ma.measure(toy, ma.analogies(ANALOGIES, "colour"), ANALOGY_TRAINER_STEPS)
    analogy = table["analogy"]
    assert analogy["changed"] >= table["B reconstructed"]["changed"] + 0.6, table
    assert analogy["kept"] >= table["A' caption"]["kept"] + 0.15, table
    # nearer the ideal B' (B drawn with A''s colour) on the object than either baseline (measured 48 vs
    # 67 and 59 on these three; 60 vs 74 and 70 on 16 with B's shape not A's)
    assert analogy["object error"] <= min(table[m]["object error"] for m in ("B reconstructed", "A' caption")) - 5, table
