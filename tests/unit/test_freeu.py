"""core.freeu against the official Eye-for-an-eye FreeU (models/unet_2d_condition.py L24-40, L346-360),
written out here as the official code runs it (CPU instead of .cuda()), on small tensors."""
from __future__ import annotations

import pytest
import torch
from torch.fft import fftn, fftshift, ifftn, ifftshift

from exemplar_edit.core import freeu


def official_fourier_filter(x, threshold, scale):
    x_freq = fftn(x, dim=(-2, -1))
    x_freq = fftshift(x_freq, dim=(-2, -1))
    B, C, H, W = x_freq.shape
    mask = torch.ones((B, C, H, W))
    crow, ccol = H // 2, W // 2
    mask[..., crow - threshold:crow + threshold, ccol - threshold:ccol + threshold] = scale
    x_freq = x_freq * mask
    x_freq = ifftshift(x_freq, dim=(-2, -1))
    return ifftn(x_freq, dim=(-2, -1)).real


def official_up_block_input(h, model_channels=320):
    """The official up loop's FreeU lines (L348-358) on one up block's input."""
    h = h.clone()
    if h.shape[1] == 4 * model_channels:
        h[:, :h.shape[1] // 2] = h[:, :h.shape[1] // 2] * 1.2
        h = official_fourier_filter(h, threshold=1, scale=0.9)
    if h.shape[1] == 2 * model_channels:
        h[:, :h.shape[1] // 2] = h[:, :h.shape[1] // 2] * 1.4
        h = official_fourier_filter(h, threshold=1, scale=0.2)
    return h


@pytest.mark.parametrize("size", [(8, 8), (16, 16), (6, 10)])
@pytest.mark.parametrize("scale", [0.2, 0.9])
def test_fourier_filter_is_the_official_one(size, scale):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(freeu.fourier_filter(x, 1, scale), official_fourier_filter(x, 1, scale), atol=1e-5)


@pytest.mark.parametrize("channels", [8, 16])
def test_official_freeu_is_the_official_up_loop(channels):
    """model_channels 4 on 8x8 maps: 16 channels take (b1, s1), 8 take (b2, s2)."""
    h = torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(1))
    b, s = freeu.level_constants(channels, 4, *freeu.BACKBONE_SCALES, *freeu.SKIP_FREQUENCY_SCALES)
    ours = freeu.official_freeu(h, b, s)
    assert torch.allclose(ours, official_up_block_input(h, 4), atol=1e-5)
    assert (ours - h).abs().max() > 0.05


def test_what_the_filter_does_to_the_spectrum():
    """DC times s; frequencies (1, 0) and (0, 1) times (1 + s) / 2; (1, -1) and higher unchanged."""
    s = 0.2
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    before, after = torch.fft.fft2(x), torch.fft.fft2(freeu.fourier_filter(x, 1, s))
    assert torch.allclose(after[..., 0, 0], s * before[..., 0, 0])
    assert torch.allclose(after[..., 1, 0], (1 + s) / 2 * before[..., 1, 0])
    assert torch.allclose(after[..., 0, 1], (1 + s) / 2 * before[..., 0, 1])
    assert torch.allclose(after[..., 1, 7], before[..., 1, 7])
    assert torch.allclose(after[..., 3, 2], before[..., 3, 2])
    # the filter computes in float32 (as ComfyUI's): equal to float32 rounding, which depends on the CPU's FFT
    assert torch.allclose(freeu.fourier_filter(x, 1, 1.0), x, rtol=0, atol=1e-6)


def test_backbone_scaling_before_the_filter_on_the_first_half_only():
    h = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    scaled = freeu.official_freeu(h, 2.0, 1.0)  # s = 1: the filter is the identity
    assert torch.allclose(scaled[:, :2], 2 * h[:, :2], atol=1e-6)
    assert torch.allclose(scaled[:, 2:], h[:, 2:], atol=1e-6)


def test_level_constants_by_width():
    assert freeu.level_constants(1280, 320, 1.2, 1.4, 0.9, 0.2) == (1.2, 0.9)
    assert freeu.level_constants(640, 320, 1.2, 1.4, 0.9, 0.2) == (1.4, 0.2)
    assert freeu.level_constants(320, 320, 1.2, 1.4, 0.9, 0.2) is None
