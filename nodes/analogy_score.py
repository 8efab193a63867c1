"""Analogy Score: the CLIP measures Difference Inversion is evaluated with, as a node (``core.analogy_score``).

A graph that makes B' can score it with the CLIP vision model it already loaded for the trainer:
the CLIP directional similarity cos(E(B') - E(B), E(A') - E(A)) and the similarity of B' to B.
"""
from __future__ import annotations

import torch

from ..core import analogy_score as score
from . import host
from .analogy import CATEGORY
from .host import InputError, io

IMAGE_INPUTS = ("image_a", "image_a_edited", "image_b", "image_b_edited")


def _check_batches(images: dict[str, torch.Tensor]) -> None:
    """Each input an IMAGE batch; one A' per A; one B' per B, or one B for every B'."""
    for name in IMAGE_INPUTS:
        image = images[name]
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3 or image.shape[0] < 1:
            raise InputError(f"{name}: expected an IMAGE batch [batch, height, width, channels]")
    count = {name: images[name].shape[0] for name in IMAGE_INPUTS}
    if count["image_a_edited"] != count["image_a"]:
        raise InputError(
            f"image_a_edited: {count['image_a_edited']} images but image_a has {count['image_a']}; give one A' per A "
            "(pairs are matched by position in the batch)")
    if count["image_b"] not in (1, count["image_b_edited"]):
        raise InputError(
            f"image_b_edited: {count['image_b_edited']} images but image_b has {count['image_b']}; give one B' per B "
            "(pairs are matched by position in the batch), or a single B for every B'")


def score_text(scores: score.AnalogyScores) -> str:
    """One line that states both measures (means over the B pairs, and each pair's when several)."""
    directional, similarity = scores.directional_similarity.tolist(), scores.similarity_to_b.tolist()
    count = len(directional)
    unchanged = [i + 1 for i, changed in enumerate(scores.changed.tolist()) if not changed]

    def values(xs: list[float]) -> str:
        return "" if count == 1 else f" (mean of {count} pairs: {', '.join(f'{x:.4f}' for x in xs)})"

    line = (f"CLIP directional similarity {sum(directional) / count:.4f}{values(directional)} "
            "[B->B' against A->A': 1 the same change, 0 unrelated, -1 the reverse]; "
            f"similarity of B' to B {sum(similarity) / count:.4f}{values(similarity)}")
    if unchanged:
        which = "B' has" if count == 1 else f"B' of pair{'s' if len(unchanged) > 1 else ''} " \
                                            f"{', '.join(map(str, unchanged))} {'have' if len(unchanged) > 1 else 'has'}"
        line += f"; {which} B's CLIP embedding (no change), its directional similarity counted as 0"
    return line


class AnalogyScore(host.PackNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AnalogyScore",
            display_name="Analogy Score (CLIP)",
            category=CATEGORY,
            description=(
                "Scores an image analogy A : A' :: B : B' with a CLIP vision model, as Difference Inversion "
                "(Kim et al. CVPR 2025) is evaluated: the CLIP directional similarity cos(E(B') - E(B), E(A') - E(A)) "
                "(does B change the way A changed?) and the CLIP similarity of B' to B (how much of B is kept). "
                "E is the projected CLIP image embedding, normalised per image. Several B' are scored pair by pair; "
                "the outputs are the means."
            ),
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="A CLIP vision model (CLIPVisionLoader); the paper's evaluation "
                                    "uses CLIP, the trainer's ViT-L/14 is the natural choice."),
                io.Image.Input("image_a", tooltip="A: the exemplar before the change (several: one per A', matched by "
                               "position; their mean change is the reference)."),
                io.Image.Input("image_a_edited", tooltip="A': the exemplar after the change; as many images as image_a. "
                               "Must differ from A in CLIP space."),
                io.Image.Input("image_b", tooltip="B: the image the change was applied to; one per B', or one for all B'."),
                io.Image.Input("image_b_edited", tooltip="B': the generated result (e.g. the VAE Decode of the analogy "
                               "workflow); several images are scored pair by pair."),
            ],
            outputs=[
                io.Float.Output(id="directional_similarity", display_name="directional_similarity",
                                tooltip="cos(E(B') - E(B), E(A') - E(A)) in [-1, 1]: 1 = B changed as A did, 0 = unrelated "
                                        "change (also when B' equals B), -1 = the reverse change. Mean over the B pairs."),
                io.Float.Output(id="similarity_to_b", display_name="similarity_to_b",
                                tooltip="cos(E(B'), E(B)): 1 = B' looks like B to CLIP. Mean over the B pairs."),
                io.String.Output(id="text", display_name="text",
                                 tooltip="Both measures in one line of text (and each pair's when there are several), "
                                         "for Preview as Text."),
            ],
        )

    @classmethod
    def execute(cls, clip_vision, image_a, image_a_edited, image_b, image_b_edited) -> io.NodeOutput:
        cls.refuse_invalid(locals())
        if clip_vision is None:
            raise InputError("clip_vision: connect a CLIP vision model (CLIPVisionLoader)")
        images = dict(zip(IMAGE_INPUTS, (image_a, image_a_edited, image_b, image_b_edited)))
        _check_batches(images)
        with torch.no_grad():  # a measure, never differentiated (outside ComfyUI's inference mode too)
            embeds = {name: host.image_embeds(clip_vision, image) for name, image in images.items()}
        reference = score.exemplar_direction(embeds["image_a"], embeds["image_a_edited"])
        if not bool(score.is_change(reference)):
            raise InputError(
                "image_a_edited: A' has the same CLIP embedding as A (or the pairs' changes cancel out), so there is "
                "no A -> A' change to measure B' against; connect the edited exemplar A'")
        scores = score.analogy_scores(embeds["image_a"], embeds["image_a_edited"], embeds["image_b"],
                                      embeds["image_b_edited"])
        return io.NodeOutput(float(scores.directional_similarity.mean()), float(scores.similarity_to_b.mean()),
                             score_text(scores))
