"""A rule-based reader of toy-world images (no model): shape, colour, pattern, position, background.

Plain numpy and scipy.ndimage (both come with ComfyUI).

It knows the palette and geometry of :mod:`scenes` and is tolerant enough for decoded (blurred,
slightly off-colour) images:

* background: the palette colour nearest to the median of the image's outer frame;
* object: the largest connected blob of pixels nearer (in RGB) to a palette colour or its dark
  shade than to the background;
* colour: each object pixel votes for the hue of its nearest palette colour or shade; the majority
  wins;
* pattern: each object pixel's "shade-ness" (0 at the full colour, 1 at the shade), its mean and
  its 16-pixel periodicity along y (stripes) and along x (dots have both);
* shape: which of the three drawn shapes, of the object's area and placed on its centroid, overlaps
  it best (intersection over union);
* position: the object's centroid left or right of the middle.

``detect`` returns a :class:`Reading` whose fields are ``None`` when nothing object-like was found.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .scenes import (ATTRIBUTES, BACKGROUNDS, COLOURS, DOT_PERIOD, SHADE, SHAPES, STRIPE_PERIOD, Scene, draw,
                     inside_shape, object_mask)

OBJECT_MARGIN = 0.6     # a pixel is the object's when its distance to a palette colour < this x to the background
MIN_BACKGROUND_DISTANCE = 24.0  # RGB distance from the background below which a pixel is background
MIN_OBJECT_PIXELS = 150  # fewer object pixels: no object
FRAME = 3               # pixels of the outer frame that the background is read from
EDGE = 3                # pixels of the object's rim left out of the pattern reading


@dataclass(frozen=True)
class Reading:
    colour: str | None
    pattern: str | None
    shape: str | None
    position: str | None
    background: str | None
    object_pixels: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def agrees(self, scene: Scene) -> dict[str, bool]:
        """Per attribute: does this reading match ``scene``?"""
        return {name: getattr(self, name) == getattr(scene, name) for name in ATTRIBUTES}


def _as_rgb255(image) -> np.ndarray:
    """(H, W, 3) float array in 0..255 from uint8, float 0..1 or a ComfyUI IMAGE tensor (1, H, W, 3)."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"one image at a time, got a batch of {array.shape[0]}")
        array = array[0]
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64)
    return np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0)  # as saved to an 8-bit file


def _nearest(value: np.ndarray, palette: dict[str, tuple]) -> str:
    names = list(palette)
    distances = [np.linalg.norm(value - np.array(palette[n], dtype=np.float64)) for n in names]
    return names[int(np.argmin(distances))]


def _periodic_amplitude(profile: np.ndarray, weights: np.ndarray, period: int) -> float:
    """Amplitude of the ``period`` component of a weighted 1-D profile (0 for a constant one)."""
    if weights.sum() < 1:
        return 0.0
    positions = np.arange(profile.size)
    phase = np.exp(-2j * np.pi * positions / period)
    mean = (profile * weights).sum() / weights.sum()
    return float(2 * np.abs(((profile - mean) * weights * phase).sum()) / weights.sum())


# area of each shape per squared half-extent r^2, and its centroid's offset below the centre, per r
_AREA = {"circle": np.pi, "square": 1.8 ** 2, "triangle": 2.0}
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 3.0}


def _template_iou(mask: np.ndarray, shape: str, centroid_x: float, centroid_y: float, area: int) -> float:
    r = float(np.sqrt(area / _AREA[shape]))
    cy = centroid_y - _CENTROID_DY[shape] * r
    height, width = mask.shape
    x, y = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    template = inside_shape(shape)(x, y, centroid_x, cy, r)
    return float((template & mask).sum() / max((template | mask).sum(), 1))


def detect(image) -> Reading:
    rgb = _as_rgb255(image)
    height, width, _ = rgb.shape
    frame = np.concatenate([rgb[:FRAME].reshape(-1, 3), rgb[-FRAME:].reshape(-1, 3),
                            rgb[:, :FRAME].reshape(-1, 3), rgb[:, -FRAME:].reshape(-1, 3)])
    background = _nearest(np.median(frame, axis=0), BACKGROUNDS)
    background_rgb = np.array(BACKGROUNDS[background], dtype=np.float64)
    prototypes, families = [], []
    for index, value in enumerate(COLOURS.values()):
        for factor in (1.0, SHADE):
            prototypes.append(np.array(value, dtype=np.float64) * factor)
            families.append(index)
    prototypes_rgb = np.stack(prototypes)
    to_background = np.linalg.norm(rgb - background_rgb, axis=-1)
    to_prototypes = np.linalg.norm(rgb[:, :, None, :] - prototypes_rgb, axis=-1)
    # object: nearer to some palette colour (or its shade) than to the background, and not background
    # (edge pixels count from about 60% of the way to the object's colour: blurred rims and colour
    # bleeding around a decoded object stay out)
    mask = (to_prototypes.min(axis=-1) < OBJECT_MARGIN * to_background) & (to_background > MIN_BACKGROUND_DISTANCE)
    # the largest 8-connected blob (decoded images have specks of off-colour pixels elsewhere)
    labels, found = ndimage.label(mask, structure=np.ones((3, 3)))
    if found > 1:
        mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    count = int(mask.sum())
    if count < MIN_OBJECT_PIXELS:
        return Reading(None, None, None, None, background, count)
    ys, xs = np.nonzero(mask)
    pixels = rgb[mask]

    # colour: each object pixel votes for the hue of its nearest prototype
    votes = np.bincount(np.array(families)[np.argmin(to_prototypes[mask], axis=-1)], minlength=len(COLOURS))
    colour = list(COLOURS)[int(np.argmax(votes))]

    # pattern: shade-ness of each object pixel along the colour -> shade segment
    full = np.array(COLOURS[colour], dtype=np.float64)
    dark = full * SHADE
    segment = full - dark
    shadeness = np.zeros((height, width))
    shadeness[mask] = np.clip(((full - pixels) @ segment) / (segment @ segment), 0.0, 1.0)
    # the interior only: anti-aliased or blurred edges mix in the background, which reads as shade
    interior = mask.copy()
    for shift in range(1, EDGE + 1):
        interior[shift:] &= mask[:-shift]
        interior[:-shift] &= mask[shift:]
        interior[:, shift:] &= mask[:, :-shift]
        interior[:, :-shift] &= mask[:, shift:]
    if interior.sum() < MIN_OBJECT_PIXELS // 3:
        interior = mask
    shadeness = np.where(interior, shadeness, 0.0)
    weight = interior.astype(np.float64)
    row_w, col_w = weight.sum(axis=1), weight.sum(axis=0)
    row_profile = shadeness.sum(axis=1) / np.maximum(row_w, 1)
    col_profile = shadeness.sum(axis=0) / np.maximum(col_w, 1)
    along_y = _periodic_amplitude(row_profile, row_w, STRIPE_PERIOD)
    along_x = _periodic_amplitude(col_profile, col_w, DOT_PERIOD)
    mean_shade = float(shadeness[interior].mean())
    if along_y > 0.25 and along_x < 0.5 * along_y:
        pattern = "striped"
    elif along_y > 0.06 and along_x > 0.06 and mean_shade > 0.05:
        pattern = "dotted"
    elif mean_shade > 0.3:  # shaded all over without a period: stripes blurred out
        pattern = "striped"
    else:
        pattern = "plain"

    # shape: the drawn shape (scenes.py's geometry) of the object's area, placed on its centroid,
    # that overlaps it best (intersection over union)
    shape = max(SHAPES, key=lambda name: _template_iou(mask, name, xs.mean() + 0.5, ys.mean() + 0.5, count))

    position = "left" if xs.mean() < width / 2 else "right"
    return Reading(colour, pattern, shape, position, background, count)


EDIT_MARGIN = 3  # pixels around the source's and the target's object left out of the background error


def edit_errors(image, source: Scene, target: Scene, seed: int) -> dict[str, float]:
    """Mean absolute RGB error (0..255) of an edited image against the ideal edit ``draw(target, seed)``:
    the scene with the edited words changed and everything else, the jitter of size and place
    included, as in ``draw(source, seed)``. ``object error`` is read over the source's and the target's
    object (with a margin of EDIT_MARGIN pixels): the new shape or colour at the source's place and
    size; ``background error`` over the rest, where the ideal edit equals the source."""
    result = _as_rgb255(image)
    ideal = draw(target, seed).astype(np.float64)
    objects = (object_mask(source, seed) > 0) | (object_mask(target, seed) > 0)
    objects = ndimage.binary_dilation(objects, iterations=EDIT_MARGIN)
    error = np.abs(result - ideal).mean(axis=-1)
    return {"object error": float(error[objects].mean()), "background error": float(error[~objects].mean())}


def edit_scores(image, source: Scene, target: Scene, seed: int, reading: Reading | None = None) -> dict[str, float]:
    """How well ``image`` makes the one-attribute edit ``source`` -> ``target`` (drawn with ``seed``):
    ``changed`` 1 when the edited attribute reads the target's value, ``kept`` the share of the other
    four reading the source's, ``both`` 1 when the edit is made and all four are kept, and the pixel
    errors of :func:`edit_errors`. ``reading``: ``detect(image)`` when the caller has it already."""
    result = reading if reading is not None else detect(image)
    (attribute,) = [a for a in ATTRIBUTES if getattr(source, a) != getattr(target, a)]
    kept = [getattr(result, a) == getattr(source, a) for a in ATTRIBUTES if a != attribute]
    changed = getattr(result, attribute) == getattr(target, attribute)
    return {"changed": float(changed), "kept": float(np.mean(kept)), "both": float(changed and all(kept)),
            **edit_errors(image, source, target, seed)}


def agreement(readings: list[Reading], scenes: list[Scene]) -> dict[str, float]:
    """Fraction of readings that match their scenes, per attribute and for all five ("all")."""
    if len(readings) != len(scenes) or not scenes:
        raise ValueError("need one reading per scene, at least one")
    per = [r.agrees(s) for r, s in zip(readings, scenes)]
    out = {name: float(np.mean([p[name] for p in per])) for name in ATTRIBUTES}
    out["all"] = float(np.mean([all(p.values()) for p in per]))
    return out

