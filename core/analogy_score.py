"""How well an image analogy A : A' :: B : B' worked, measured in CLIP image space, in plain PyTorch.

Difference Inversion (Kim, Kim, Kim, CVPR 2025) evaluates B' with "CLIP and DINO directional
similarity — how well the generated B' aligns with the A:A' transformation in embedding space"
(project page, ``DI index.html:242``; see ``docs/research/difference_inversion_official.md`` §5).
The paper does not print the formula; the image-analogy form of the directional similarity is

    directional_similarity = cos( E(B') - E(B), E(A') - E(A) )

with E the projected CLIP image embedding (``image_embeds``). Next to it this module gives the
CLIP image similarity of B' to B, cos(E(B'), E(B)): how much of B survives. The two pull against
each other (InstructPix2Pix plots the same trade-off), so they are read together.

Each embedding is L2-normalised *before* the difference, as InstructPix2Pix's CLIP metrics do
(timothybrooks/instruct-pix2pix @2afcb7e, ``metrics/clip_similarity.py:33`` normalises each image
feature, ``:45`` takes the cosine of the feature differences, ``:46`` the image-to-image cosine).
The paper does not say; this is the pack's choice, and it makes the score independent of how
long each embedding happens to be. (The trainer's D_img follows VISII instead and normalises only
the difference, ``core.difference.delta_interpolation``; a training target and a metric need not
agree on that.)

Embeddings are vectors on the last axis; every function broadcasts over the leading axes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .difference import normalize

NO_CHANGE_TOLERANCE = 1e-3
"""An edit direction between two *unit* embeddings shorter than this is "no change" (the cosine
of the two embeddings is above 1 - 5e-7). A real edit moves a CLIP embedding by tenths; the
tolerance absorbs the rounding of encoding one image twice in a reduced precision."""


def edit_direction(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """E(after) - E(before), of per-image L2-normalised embeddings ``[..., D]``: the change an
    edit makes in CLIP space (instruct-pix2pix ``metrics/clip_similarity.py:33`` and ``:45``)."""
    return normalize(after) - normalize(before)


def exemplar_direction(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """The A -> A' direction ``[D]`` from ``M`` exemplar pairs ``[M, D]``: the mean of the pairs'
    edit directions (for one pair, E(A') - E(A)). With several pairs the mean is the change they
    share; the pack's choice, the paper scores single pairs."""
    return edit_direction(before, after).mean(dim=0)


def is_change(direction: torch.Tensor, tolerance: float = NO_CHANGE_TOLERANCE) -> torch.Tensor:
    """Whether each edit direction ``[..., D]`` (from :func:`edit_direction`) is a change at all:
    its length is above ``tolerance``. Bool ``[...]``."""
    return direction.norm(dim=-1) > tolerance


def directional_similarity(direction: torch.Tensor, reference: torch.Tensor,
                           tolerance: float = NO_CHANGE_TOLERANCE) -> torch.Tensor:
    """cos(E(B') - E(B), E(A') - E(A)) for each B pair: Difference Inversion's CLIP directional
    similarity (project page l.242, the image-analogy form; instruct-pix2pix
    ``metrics/clip_similarity.py:45`` computes the same cosine against a caption direction).

    ``direction`` is ``[..., D]`` (the B -> B' directions), ``reference`` ``[D]`` (the A -> A'
    direction). 1: B changed the way A did; 0: an unrelated change; -1: the reverse change.
    A direction that is no change (:func:`is_change` False) has no angle: its similarity is
    defined here as 0, the value of an unrelated change (not NaN, so that it can be averaged and
    compared). The caller refuses a ``reference`` that is no change: then nothing is measured."""
    cos = F.cosine_similarity(direction, reference.expand_as(direction), dim=-1, eps=1e-12)
    return torch.where(is_change(direction, tolerance), cos, torch.zeros_like(cos))


def image_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(E(a), E(b)) of two embeddings ``[..., D]``: the CLIP image similarity
    (instruct-pix2pix ``metrics/clip_similarity.py:46``). 1 for the same image."""
    a, b = torch.broadcast_tensors(a, b)
    return F.cosine_similarity(a, b, dim=-1, eps=1e-12)


@dataclass
class AnalogyScores:
    """Per B pair: directional similarity, similarity of B' to B, and whether B' changed at all."""

    directional_similarity: torch.Tensor  # [N]
    similarity_to_b: torch.Tensor  # [N]
    changed: torch.Tensor  # [N] bool


def analogy_scores(a: torch.Tensor, a_edited: torch.Tensor, b: torch.Tensor, b_edited: torch.Tensor,
                   tolerance: float = NO_CHANGE_TOLERANCE) -> AnalogyScores:
    """Both CLIP measures of an analogy from image embeddings: ``a``, ``a_edited`` ``[M, D]`` (the
    exemplar pairs), ``b`` ``[N, D]`` or ``[1, D]`` (one B for every B'), ``b_edited`` ``[N, D]``.
    B pair i is (b[i] or b[0], b_edited[i]). Raises ValueError when A -> A' is no change."""
    reference = exemplar_direction(a, a_edited)
    if not bool(is_change(reference, tolerance)):
        raise ValueError("the A -> A' direction is no change (A' has A's CLIP embedding, or several pairs' "
                         "changes cancel out): there is nothing to compare B -> B' with")
    direction = edit_direction(b, b_edited)
    return AnalogyScores(directional_similarity=directional_similarity(direction, reference, tolerance),
                         similarity_to_b=image_similarity(b_edited, b),
                         changed=is_change(direction, tolerance))
