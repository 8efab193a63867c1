"""FreeU as the official Eye-for-an-eye UNet hard-codes it, in plain PyTorch.

FreeU (Si, Huang, Jiang, Liu, "FreeU: Free Lunch in Diffusion U-Net", CVPR 2024) scales the
decoder's backbone features and damps their lowest frequencies. The official Eye-for-an-eye code
(``sooyeon-go/eye_for_an_eye`` @ 8e23f6b, ``models/unet_2d_condition.py``) applies it in its own
place: **once per decoder level**, on the backbone input of each diffusers up block (before any skip
is concatenated), with the Fourier filter on that **backbone** tensor (L346-360), always on (in the
inversion too). ComfyUI's stock ``FreeU`` node instead acts at every output block and filters the
skip features. This module holds the formula; ``nodes/appearance.py`` places it.
"""
from __future__ import annotations

import torch

# FreeU's SD1.4/1.5 constants, hard-coded in the official UNet (L348-358)
BACKBONE_SCALES = (1.2, 1.4)  # b1 (4x model channels), b2 (2x model channels)
SKIP_FREQUENCY_SCALES = (0.9, 0.2)  # s1, s2 (the official names; here they damp the backbone)


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """``Fourier_filter`` of the official UNet (L24-40, FreeU's own): the centred 2D spectrum of
    ``x`` ``[B, C, H, W]`` times a mask that is ``scale`` on the ``2*threshold`` square around the
    centre (index ``H//2 - threshold .. H//2 + threshold - 1``) and 1 elsewhere, transformed back, the
    real part. Computed in float32 (as ComfyUI's ``Fourier_filter``), returned in ``x``'s dtype."""
    dtype = x.dtype
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    _, _, height, width = spectrum.shape
    mask = torch.ones(spectrum.shape, device=x.device)
    crow, ccol = height // 2, width // 2
    mask[..., crow - threshold : crow + threshold, ccol - threshold : ccol + threshold] = scale
    spectrum = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(dtype)


def official_freeu(h: torch.Tensor, backbone_scale: float, frequency_scale: float) -> torch.Tensor:
    """The official FreeU step on an up block's backbone input ``h`` ``[B, C, H, W]`` (L348-358):
    ``h[:, :C/2] *= b`` then ``h = Fourier_filter(h, threshold=1, scale=s)``, on **all** channels of
    the scaled backbone. Returns a new tensor."""
    half = h.shape[1] // 2
    scaled = torch.cat([h[:, :half] * backbone_scale, h[:, half:]], dim=1)
    return fourier_filter(scaled, 1, frequency_scale)


def level_constants(channels: int, model_channels: int, b1: float, b2: float, s1: float,
                    s2: float) -> tuple[float, float] | None:
    """``(b, s)`` for a backbone with ``channels`` channels (official: 1280 -> b1, s1; 640 -> b2, s2
    for SD1.5, i.e. 4x and 2x the model's base channels), ``None`` for any other width."""
    if channels == 4 * model_channels:
        return b1, s1
    if channels == 2 * model_channels:
        return b2, s2
    return None
