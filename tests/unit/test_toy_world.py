"""The toy world's scenes and detector without ComfyUI (tools/toy_world): captions follow one grammar
(one attribute, one word), drawing is deterministic and pinned (the committed weights were trained
on exactly these pictures), and the rule-based detector reads every attribute of drawn scenes, also
blurred and down-sampled ones."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from toy_world import detect, scenes

# sha256 of scenes.draw_dataset(6, seed=0)'s images: a change to the world's drawing changes what
# the committed models were trained on (retrain with tools/toy_world/train.py and update this)
DRAWN_DIGEST = "bd9ec17eb2fcbbf33acfadee601dfdb9b786b150d19b9d3eabfada569f6a96e7"


def test_captions_one_word_per_attribute():
    combos = scenes.all_scenes()
    assert len(combos) == 4 * 3 * 3 * 2 * 3
    assert len({s.caption for s in combos}) == len(combos)
    base = scenes.Scene("red", "striped", "circle", "left", "gray")
    assert base.caption == "a red striped circle on the left, gray background"
    for scene in combos:
        assert scenes.parse_caption(scene.caption) == scene
        differing = [name for name in scenes.ATTRIBUTES if getattr(scene, name) != getattr(base, name)]
        changed_words = [a for a, b in zip(scene.caption.split(), base.caption.split()) if a != b]
        assert len(changed_words) == len(differing)


def test_bad_attributes_and_captions_are_refused():
    with pytest.raises(ValueError, match="colour 'purple'"):
        scenes.Scene("purple", "plain", "circle", "left", "gray")
    with pytest.raises(ValueError, match="not a toy-world caption"):
        scenes.parse_caption("a photo of a cat")


def test_drawing_is_deterministic_and_pinned():
    scene = scenes.Scene("blue", "dotted", "triangle", "right", "dark")
    a, b, c = scenes.draw(scene, 5), scenes.draw(scene, 5), scenes.draw(scene, 6)
    assert a.shape == (scenes.SIZE, scenes.SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    images, drawn = scenes.draw_dataset(6, seed=0)
    again, _ = scenes.draw_dataset(6, seed=0)
    assert np.array_equal(images, again) and len(set(drawn)) == 6
    assert hashlib.sha256(images.tobytes()).hexdigest() == DRAWN_DIGEST


@pytest.fixture(scope="module")
def all_scenes_drawn():
    """Every caption drawn once (seed = its index)."""
    combos = scenes.all_scenes()
    return [scenes.draw(s, seed) for seed, s in enumerate(combos)], combos


def test_detector_reads_every_drawn_scene(all_scenes_drawn):
    images, combos = all_scenes_drawn
    readings = [detect.detect(im) for im in images]
    agreement = detect.agreement(readings, combos)
    assert agreement["all"] == 1.0, agreement
    # a ComfyUI IMAGE tensor (1, H, W, 3) in 0..1 reads the same
    torch = pytest.importorskip("torch")
    tensor = torch.from_numpy(images[0]).float().div(255).unsqueeze(0)
    assert detect.detect(tensor) == readings[0]


@pytest.mark.parametrize("degrade, floor", [
    (lambda im: im.filter(ImageFilter.GaussianBlur(1.5)), {"all": 0.98}),
    (lambda im: im.resize((32, 32), Image.BILINEAR).resize((128, 128), Image.BILINEAR),
     {"colour": 1.0, "shape": 0.95, "position": 1.0, "background": 1.0, "pattern": 0.9}),
])
def test_detector_tolerates_blur(all_scenes_drawn, degrade, floor):
    images, combos = all_scenes_drawn
    readings = [detect.detect(np.asarray(degrade(Image.fromarray(im)))) for im in images]
    agreement = detect.agreement(readings, combos)
    for name, value in floor.items():
        assert agreement[name] >= value, agreement


def test_detector_on_an_empty_background():
    for name, value in scenes.BACKGROUNDS.items():
        image = np.full((scenes.SIZE, scenes.SIZE, 3), value, dtype=np.uint8)
        reading = detect.detect(image)
        assert reading.background == name and reading.shape is None and reading.colour is None


def test_edit_errors_measure_against_the_ideal_edit():
    """The ideal edit (the source drawn with the new word, same jitter) scores zero; the unedited
    source is wrong on the object only; a shifted object is wrong on the object and the background."""
    source = scenes.Scene("red", "plain", "circle", "left", "gray")
    target = source.replace(shape="square")
    assert detect.edit_errors(scenes.draw(target, 5), source, target, 5) == {"object error": 0.0,
                                                                          "background error": 0.0}
    unedited = detect.edit_errors(scenes.draw(source, 5), source, target, 5)
    assert unedited["object error"] > 10 and unedited["background error"] == 0.0
    moved = detect.edit_errors(np.roll(scenes.draw(target, 5), 20, axis=1), source, target, 5)
    assert moved["object error"] > unedited["object error"] and moved["background error"] > 5


def test_committed_weights_match_their_checksums_and_size_limit():
    """tools/toy_world/train.py --check: the committed files are the ones CHECKSUMS names, <= 5 MB each."""
    import toy_world.train as train

    assert train.check(train.HERE) == 0
    for name in (train.DIT_FILE, train.VAE_FILE):
        assert (train.HERE / name).stat().st_size <= 5_000_000, name


def test_measurements_merge_into_their_section_and_keep_the_rest(tmp_path):
    from toy_world import harness

    path = tmp_path / "measured.json"
    harness.merge_json(path, "", {"about": "x"})
    harness.merge_json(path, "translation", {"shape edits": {"edits": 2}})
    harness.merge_json(path, "translation sweeps/step_size 1.0", {"shape edits": {"edits": 3}})
    harness.merge_json(path, "translation", {"colour edits": {"edits": 4}})
    assert json.loads(path.read_text()) == {
        "about": "x",
        "translation": {"shape edits": {"edits": 2}, "colour edits": {"edits": 4}},
        "translation sweeps": {"step_size 1.0": {"shape edits": {"edits": 3}}}}
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary file left
