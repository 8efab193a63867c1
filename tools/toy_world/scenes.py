"""Procedural scenes of the toy world: one object on a plain background, with its caption.

A scene is five attributes, each one word of the caption::

    a {colour} {pattern} {shape} on the {position}, {background} background
    "a red striped circle on the left, gray background"

so two scenes that differ in one attribute have captions that differ in exactly one word (what
translation "red circle" -> "blue circle" and analogies red circle : blue circle :: red square : ?
rely on). Within a caption the object's size and position jitter by a few pixels (the ``seed`` of
:func:`draw`), so a caption is a small distribution, not one image.

Geometry is chosen for FLUX's latent grid (8x VAE, 2x2 patches): the image is 128x128 (a 16x16
latent, 8x8 = 64 image tokens); stripes are 8-pixel bands and dots sit in the middle of 8x8 cells
of a 16-pixel grid, both fixed to the image grid, so a pattern survives an 8x VAE. The pattern is
a dark shade of the object's colour, so the colour stays readable whatever the pattern.

Drawing is plain numpy with 4x4 supersampled (anti-aliased) edges, deterministic for a given
``(attributes, seed)`` on any machine.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

SIZE = 128
"""Image side in pixels (the VAE latent is SIZE / 8)."""

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 50, 50), "green": (60, 190, 80), "blue": (50, 90, 225), "yellow": (235, 200, 40)}
PATTERNS = ("plain", "striped", "dotted")
POSITIONS = ("left", "right")
BACKGROUNDS = {"gray": (128, 128, 128), "white": (235, 235, 235), "dark": (25, 25, 25)}

SHADE = 0.5
"""The pattern's colour: the object's colour times SHADE."""
CENTRE_X = {"left": 36.0, "right": 92.0}
CENTRE_Y = 64.0
JITTER = 4.0        # +- pixels of the object's centre, x and y
RADIUS = (22.0, 28.0)   # the object's half-extent, pixels (uniform)
STRIPE_PERIOD = 16  # pixels; the shade band is the lower 8 rows of each period
DOT_PERIOD = 16     # pixels; a dot in the middle of the top-left 8x8 cell of each 16x16 square
DOT_RADIUS = 3.5
SUPERSAMPLE = 4

ATTRIBUTES = ("colour", "pattern", "shape", "position", "background")


@dataclass(frozen=True)
class Scene:
    colour: str
    pattern: str
    shape: str
    position: str
    background: str

    def __post_init__(self):
        for name, allowed in (("colour", COLOURS), ("pattern", PATTERNS), ("shape", SHAPES),
                              ("position", POSITIONS), ("background", BACKGROUNDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {list(allowed)}")

    @property
    def caption(self) -> str:
        return caption(self)

    def replace(self, **changes) -> "Scene":
        return Scene(**{**asdict(self), **changes})

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def caption(scene: Scene) -> str:
    """The scene's caption (one word per attribute)."""
    return (f"a {scene.colour} {scene.pattern} {scene.shape} on the {scene.position}, "
            f"{scene.background} background")


def parse_caption(text: str) -> Scene:
    """The inverse of :func:`caption` (ValueError for any other sentence)."""
    words = text.replace(",", " ").split()
    if len(words) != 9 or words[0] != "a" or words[4:6] != ["on", "the"] or words[8] != "background":
        raise ValueError(f"not a toy-world caption: {text!r}")
    return Scene(colour=words[1], pattern=words[2], shape=words[3], position=words[6], background=words[7])


def all_scenes() -> list[Scene]:
    """Every attribute combination, in a fixed order (4 x 3 x 3 x 2 x 3 = 216)."""
    return [Scene(c, p, s, pos, b) for c, p, s, pos, b in
            itertools.product(COLOURS, PATTERNS, SHAPES, POSITIONS, BACKGROUNDS)]


def _coverage(inside, cx: float, cy: float, r: float) -> np.ndarray:
    """Fraction of each pixel inside the region ``inside(x, y, cx, cy, r)`` (SUPERSAMPLE^2 samples)."""
    n = SIZE * SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float64) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(coords, coords)
    mask = inside(x, y, cx, cy, r).astype(np.float64)
    return mask.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3))


def inside_shape(shape: str):
    if shape == "circle":
        return lambda x, y, cx, cy, r: (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if shape == "square":
        return lambda x, y, cx, cy, r: (np.abs(x - cx) <= 0.9 * r) & (np.abs(y - cy) <= 0.9 * r)
    # an isosceles triangle pointing up: apex (cx, cy - r), base y = cy + r of half-width r
    return lambda x, y, cx, cy, r: (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2)


def _inside_pattern(pattern: str):
    if pattern == "striped":
        return lambda x, y, cx, cy, r: np.mod(y, STRIPE_PERIOD) >= STRIPE_PERIOD / 2
    if pattern == "dotted":
        return lambda x, y, cx, cy, r: ((np.mod(x, DOT_PERIOD) - 4.0) ** 2 + (np.mod(y, DOT_PERIOD) - 4.0) ** 2
                                        <= DOT_RADIUS ** 2)
    return lambda x, y, cx, cy, r: np.zeros_like(x, dtype=bool)


def layout(scene: Scene, seed: int) -> tuple[float, float, float]:
    """The object's centre x, centre y and half-extent for ``seed`` (the jitter within a caption)."""
    rng = np.random.default_rng([seed, 7])
    dx, dy = rng.uniform(-JITTER, JITTER, size=2)
    r = rng.uniform(*RADIUS)
    return CENTRE_X[scene.position] + dx, CENTRE_Y + dy, r


def draw(scene: Scene, seed: int = 0) -> np.ndarray:
    """The scene as a (SIZE, SIZE, 3) uint8 RGB image."""
    cx, cy, r = layout(scene, seed)
    obj = _coverage(inside_shape(scene.shape), cx, cy, r)[..., None]
    shade = _coverage(_inside_pattern(scene.pattern), cx, cy, r)[..., None]
    colour = np.array(COLOURS[scene.colour], dtype=np.float64)
    fill = colour * (1.0 - shade) + colour * SHADE * shade
    background = np.array(BACKGROUNDS[scene.background], dtype=np.float64)
    image = background * (1.0 - obj) + fill * obj
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def object_mask(scene: Scene, seed: int = 0) -> np.ndarray:
    """``[SIZE, SIZE]`` float32: 1 where ``draw(scene, seed)`` covers more than half a pixel with the object."""
    cx, cy, r = layout(scene, seed)
    return (_coverage(inside_shape(scene.shape), cx, cy, r) > 0.5).astype(np.float32)


def draw_dataset(count: int, seed: int) -> tuple[np.ndarray, list[Scene]]:
    """``count`` scenes cycling through :func:`all_scenes` in a seeded random order, each with its
    own jitter: images (count, SIZE, SIZE, 3) uint8 and their scenes."""
    rng = np.random.default_rng(seed)
    combos = all_scenes()
    scenes: list[Scene] = []
    while len(scenes) < count:
        scenes.extend(combos[i] for i in rng.permutation(len(combos)))
    scenes = scenes[:count]
    jitter_seeds = rng.integers(0, 2**31 - 1, size=count)
    images = np.stack([draw(s, int(j)) for s, j in zip(scenes, jitter_seeds)])
    return images, scenes
