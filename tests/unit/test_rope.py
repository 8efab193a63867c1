"""core.rope: rotary position embedding and its inverse."""
from __future__ import annotations

import math

import torch

from exemplar_edit.core import rope


def freqs_for(positions: torch.Tensor, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """``[L, dim/2, 2, 2]`` rotation matrices as FLUX's EmbedND builds them for one axis."""
    omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = positions.double()[:, None] * omega[None]
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([cos, -sin, sin, cos], dim=-1).reshape(len(positions), dim // 2, 2, 2).float()


def test_rotation_is_the_complex_multiplication_of_roformer():
    x = torch.randn(2, 3, 5, 8)
    freqs = freqs_for(torch.arange(5), 8)
    rotated = rope.apply_rotary(x, freqs)
    angles = torch.view_as_complex(torch.stack([freqs[..., 0, 0], freqs[..., 1, 0]], dim=-1).contiguous())
    expected = torch.view_as_real(torch.view_as_complex(x.reshape(2, 3, 5, 4, 2).contiguous()) * angles)
    assert torch.allclose(rotated, expected.reshape(x.shape), atol=1e-6)


def test_undo_inverts_and_preserves_norms():
    x = torch.randn(1, 2, 7, 16)
    freqs = freqs_for(torch.arange(7) * 3, 16)
    rotated = rope.apply_rotary(x, freqs)
    assert torch.allclose(rope.undo_rotary(rotated, freqs), x, atol=1e-6)
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_moving_a_token_rotates_it_for_its_new_position():
    """Undo at the source position, apply at the destination: the dot product with a query at
    distance d is that of the two rotated tokens d apart (relative position only)."""
    q, k = torch.randn(16), torch.randn(16)
    freqs = freqs_for(torch.arange(10), 16)
    at = lambda t, p: rope.apply_rotary(t[None], freqs[p:p + 1])[0]  # noqa: E731
    moved = rope.apply_rotary(rope.undo_rotary(at(k, 7)[None], freqs[7:8]), freqs[2:3])[0]
    assert math.isclose(float(at(q, 5) @ moved), float(at(q, 3) @ at(k, 0)), rel_tol=1e-4, abs_tol=1e-5)
