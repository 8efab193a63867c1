#!/usr/bin/env python3
"""Draws the small pictures of the node help pages (``web/docs/images/*.png``) with PIL.

    .venv/bin/python tools/help_pictures.py

Diagrams only (the test models' random weights make no picture worth showing): the inversion
schedule, the appearance-transfer step schedule (from ``core.correspondence.TransferSchedule``, the
schedule the node runs), what a target mask keeps, how the replay, translation and analogy nodes
are wired, and what the analogy score measures. Text in the pictures is English: node and input
names stay as the frontend shows them. Files are written atomically and only when they change.
"""
from __future__ import annotations

import io
import math
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "web" / "docs" / "images"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

BG, FG, DIM = "#202020", "#e8e8e8", "#8a8a8a"
BLUE, GREEN, PURPLE, GOLD, RED = "#4a90c8", "#6ab04c", "#b05ab0", "#d4a93a", "#d25c5c"
BOX, BOX_EDGE = "#353535", "#5a5a5a"


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def canvas(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    im = Image.new("RGB", (width, height), BG)
    return im, ImageDraw.Draw(im)


def arrow(d: ImageDraw.ImageDraw, a: tuple, b: tuple, color: str = FG, width: int = 2) -> None:
    d.line([a, b], fill=color, width=width)
    angle = math.atan2(b[1] - a[1], b[0] - a[0])
    for side in (-0.45, 0.45):
        d.line([b, (b[0] - 10 * math.cos(angle + side), b[1] - 10 * math.sin(angle + side))], fill=color, width=width)


def box(d: ImageDraw.ImageDraw, xy: tuple, title: str, lines: tuple = (), color: str = BOX_EDGE) -> None:
    x0, y0, x1, y1 = xy
    d.rounded_rectangle(xy, radius=6, fill=BOX, outline=color, width=2)
    d.text((x0 + 8, y0 + 6), title, fill=FG, font=font(14))
    for i, line in enumerate(lines):
        d.text((x0 + 8, y0 + 26 + 16 * i), line, fill=DIM, font=font(12))


def inversion_schedule() -> Image.Image:
    """Where DDIM Invert stops and editing starts: steps 100, skip_steps 32 (Eye-for-an-eye)."""
    steps, skip = 100, 32
    im, d = canvas(640, 170)
    x0, x1, y = 40, 600, 80
    d.text((x0 - 10, 20), "image (sigma 0)", fill=FG, font=font(13))
    d.text((x1 - 80, 20), "pure noise", fill=FG, font=font(13))
    d.line([(x0, y), (x1, y)], fill=DIM, width=2)
    for k in range(0, steps + 1, 10):
        x = x0 + (x1 - x0) * k / steps
        d.line([(x, y - 5), (x, y + 5)], fill=DIM)
    stop = x0 + (x1 - x0) * (steps - skip) / steps
    arrow(d, (x0, y - 18), (stop, y - 18), BLUE, 3)
    d.text((x0 + 8, y - 40), "DDIM Invert: steps - skip_steps = 68 steps", fill=BLUE, font=font(12))
    d.rectangle([stop, y - 8, x1, y + 8], fill="#3a3a3a")
    d.text((stop + 8, y + 12), "skip_steps = 32: never reached", fill=DIM, font=font(12))
    arrow(d, (stop, y + 40), (x0, y + 40), GREEN, 3)
    d.text((x0 + 8, y + 48), "editing: SamplerCustom replays 68 steps back to an image", fill=GREEN, font=font(12))
    d.text((stop - 30, y - 60), "LATENT starts here", fill=GOLD, font=font(12))
    d.line([(stop, y - 46), (stop, y + 8)], fill=GOLD, width=2)
    return im


def appearance_schedule() -> Image.Image:
    """What Semantic Feature Rearrange does at each of the 68 editing steps, with its defaults."""
    from core.correspondence import TransferSchedule

    schedule, steps = TransferSchedule(), 68
    im, d = canvas(740, 190)
    left, top, cell = 250, 40, 7
    rows = [("feature injection", BLUE, schedule.injects),
            ("structure step (target's features)", GOLD,
             lambda k: schedule.injects(k) and schedule.takes_structure(k)),
            ("masked AdaIN after the step", GREEN, schedule.aligns_colour)]
    d.text((left, 12), "editing step 0 ... 67 (100 steps, skip_steps 32; defaults)", fill=FG, font=font(13))
    for r, (label, color, acts) in enumerate(rows):
        y = top + 18 + r * 40
        d.text((10, y + 2), label, fill=FG, font=font(12))
        for k in range(steps):
            x = left + k * cell
            d.rectangle([x, y, x + cell - 2, y + 20], fill=color if acts(k) else "#303030")
    for k in (0, 10, 20, 30, 40, 50, 60, 67):
        d.text((left + k * cell - 2, top + 140), str(k), fill=DIM, font=font(11))
    return im


def _blob(d: ImageDraw.ImageDraw, cx: int, cy: int, fill, outline=None) -> None:
    d.ellipse([cx - 42, cy - 30, cx + 42, cy + 30], fill=fill, outline=outline)
    d.ellipse([cx + 20, cy - 48, cx + 56, cy - 12], fill=fill, outline=outline)


def appearance_masks() -> Image.Image:
    """What the target mask means: white is rearranged, black is kept (the target's background)."""
    im, d = canvas(660, 200)
    panels = [("reference", 20), ("target", 180), ("target_mask", 340), ("output", 500)]
    for name, x in panels:
        d.text((x, 8), name, fill=FG, font=font(13))
        d.rectangle([x, 30, x + 140, 170], fill="#6d8f5a" if name != "target_mask" else "#000000")
    stripes = Image.new("RGB", (140, 140), "#c8782a")
    sd = ImageDraw.Draw(stripes)
    for i in range(-140, 140, 16):
        sd.line([(i, 0), (i + 140, 140)], fill="#5a2d0c", width=6)
    ref_mask = Image.new("L", (140, 140), 0)
    _blob(ImageDraw.Draw(ref_mask), 60, 80, 255)
    im.paste(stripes, (20, 30), ref_mask)
    _blob(d, 180 + 70, 110, "#9a9a9a")
    tgt_mask = Image.new("L", (140, 140), 0)
    _blob(ImageDraw.Draw(tgt_mask), 70, 80, 255)
    im.paste(Image.new("RGB", (140, 140), "#ffffff"), (340, 30), tgt_mask)
    im.paste(stripes, (500, 30), tgt_mask)
    d.text((340, 176), "white: rearranged", fill=DIM, font=font(11))
    d.text((500, 176), "background kept", fill=DIM, font=font(11))
    return im


def replay_wiring() -> Image.Image:
    """DDIM Invert's three outputs into the stock SamplerCustom with Inversion Replay Sampler."""
    im, d = canvas(640, 210)
    box(d, (20, 40, 200, 170), "DDIM Invert", ("LATENT", "INVERSION", "SIGMAS"), BLUE)
    box(d, (250, 110, 420, 170), "Inversion Replay", ("Sampler",), BLUE)
    box(d, (470, 30, 620, 190), "SamplerCustom", ("add_noise: off", "sampler", "sigmas", "latent_image"), GREEN)
    arrow(d, (200, 72), (470, 110), GOLD)
    arrow(d, (200, 88), (250, 135), PURPLE)
    arrow(d, (420, 135), (470, 78), PURPLE)
    arrow(d, (200, 104), (470, 94), GOLD)
    d.text((20, 10), "replay = the inversion's steps back; a patched model or another prompt edits", fill=FG,
           font=font(13))
    return im


def translation_wiring() -> Image.Image:
    """pix2pix-zeroCon: inversion, edit direction and the guider in SamplerCustomAdvanced."""
    im, d = canvas(700, 230)
    box(d, (20, 30, 210, 110), "DDIM Invert", ("ddim, cfg 1, pix2pix_zero", "LATENT, SIGMAS"), BLUE)
    box(d, (20, 130, 210, 210), "Edit Direction", ("caption -> target_caption",), PURPLE)
    box(d, (260, 130, 450, 210), "CutLoss Guidance", ("GUIDER", "lambda_xa, lambda_cut"), PURPLE)
    box(d, (500, 40, 680, 200), "SamplerCustomAdvanced", ("noise: DisableNoise", "guider", "sampler: ddim",
                                                           "sigmas", "latent_image"), GREEN)
    arrow(d, (210, 70), (500, 160), GOLD)
    arrow(d, (210, 170), (260, 170), PURPLE)
    arrow(d, (450, 170), (500, 100), PURPLE)
    d.text((20, 6), "the edit pass follows the reconstruction's attention (pix2pix-zero) and its patches (CUT)",
           fill=FG, font=font(12))
    return im


def analogy() -> Image.Image:
    """A : A' :: B : B' — the difference learned from A to A' is added to B."""
    im, d = canvas(640, 200)
    for x, label, color in ((30, "A", BLUE), (200, "A'", BLUE), (360, "B", GREEN), (530, "B'", GREEN)):
        d.rounded_rectangle([x, 50, x + 90, 140], radius=8, fill=BOX, outline=color, width=3)
        d.text((x + 36, 84), label, fill=FG, font=font(20))
    arrow(d, (125, 95), (195, 95), GOLD, 3)
    arrow(d, (455, 95), (525, 95), GOLD, 3)
    d.text((120, 60), "+D learned", fill=GOLD, font=font(12))
    d.text((445, 60), "+D injected", fill=GOLD, font=font(12))
    d.text((30, 160), "Delta Interpolation Trainer learns D from A, A'", fill=DIM, font=font(12))
    d.text((360, 160), "Token Injector adds D to B's prompt", fill=DIM, font=font(12))
    d.text((30, 14), "the same change, applied to a new picture", fill=FG, font=font(13))
    return im


def analogy_score() -> Image.Image:
    """What directional_similarity measures: the angle between the two changes in CLIP space."""
    im, d = canvas(520, 220)
    a, a2 = (60, 170), (220, 60)
    b, b2 = (280, 180), (450, 80)
    for p, q, color, label in ((a, a2, BLUE, "E(A') - E(A)"), (b, b2, GREEN, "E(B') - E(B)")):
        arrow(d, p, q, color, 3)
        d.text((p[0] - 10, p[1] + 8), label, fill=color, font=font(12))
    d.text((20, 10), "directional_similarity = cos(angle between the two changes)", fill=FG, font=font(13))
    d.text((20, 30), "1: B changed as A did    0: unrelated    -1: the reverse", fill=DIM, font=font(12))
    return im


PICTURES = {
    "inversion_schedule.png": inversion_schedule,
    "appearance_schedule.png": appearance_schedule,
    "appearance_masks.png": appearance_masks,
    "replay_wiring.png": replay_wiring,
    "translation_wiring.png": translation_wiring,
    "analogy.png": analogy,
    "analogy_score.png": analogy_score,
}


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, format="PNG",
                                                                                          optimize=True)
    return buf.getvalue()


def write(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    import workflow_ui  # tools/: the one atomic writer

    workflow_ui.write_atomic(path, data)
    return True


def main() -> int:
    for name, draw in PICTURES.items():
        path = OUT / name
        changed = write(path, png_bytes(draw()))
        print(f"{'wrote' if changed else 'unchanged'} {path.relative_to(REPO)} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
