"""Rotary position embedding (RoPE) on attention queries and keys, in plain PyTorch.

FLUX-class DiTs rotate each query and key by angles that depend on the token's position before the
joint attention (Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021,
Eq. 34; FLUX applies it per axis of (text, row, column) ids). A patch that sees q/k *after* the
rotation and wants position-free features (for semantic matching) or wants to move a token's
content to another position undoes the rotation at the old position and applies it at the new one.

``freqs`` has ComfyUI's ``EmbedND`` layout ``[..., L, d/2, 2, 2]``: for each token and each pair of
channels ``(2j, 2j+1)`` the 2x2 rotation matrix ``R = [[cos, -sin], [sin, cos]]``, so
``rotated[2j + i] = R[i, 0] x[2j] + R[i, 1] x[2j + 1]``. Rotations are orthogonal, so the inverse
is the transpose.
"""
from __future__ import annotations

import torch


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``R(p) x`` for every token p (RoFormer Eq. 34): ``x`` is ``[..., L, d]``, ``freqs``
    ``[..., L, d/2, 2, 2]`` broadcasting over the leading axes. Computed in ``freqs``' dtype."""
    pairs = x.to(freqs.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    rotated = freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]
    return rotated.reshape(*x.shape).type_as(x)


def undo_rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``R(p)^T x``: the position-free query or key a rotated one came from (the inverse of
    :func:`apply_rotary`, exact up to rounding since R is orthogonal)."""
    return apply_rotary(x, freqs.transpose(-1, -2))
