"""core.translation pieces of the guided edit: explicit attention probabilities, sampled PatchNCE
(equal to the full-map PatchNCE at the same locations), VP <-> sigma-space latents, the SGD step
and the bounded reference store."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from exemplar_edit.core import translation as tr


def test_attention_probabilities_and_attend_match_sdpa():
    g = torch.Generator().manual_seed(0)
    b, n, t, heads, d = 2, 16, 77, 4, 8
    q, k, v = (torch.randn(b, m, heads * d, generator=g) for m in (n, t, t))
    probs = tr.attention_probabilities(q, k, heads)
    assert probs.shape == (b * heads, n, t)
    assert torch.allclose(probs.sum(-1), torch.ones(b * heads, n), atol=1e-6)
    split = lambda x: x.reshape(b, -1, heads, d).transpose(1, 2)  # noqa: E731
    expected = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, heads * d)
    assert torch.allclose(tr.attend(probs, v, heads), expected, atol=1e-5)


def test_sampled_patch_nce_equals_full_map_patch_nce():
    g = torch.Generator().manual_seed(1)
    grid = (8, 6)
    feat_ref, feat_edit = torch.randn(2, 48, 16, generator=g), torch.randn(2, 48, 16, generator=g)
    ids = tr.draw_patch_ids(grid, (1, 2), 20, torch.Generator().manual_seed(3))
    assert [len(i) for i in ids] == [20, 12]  # 2x2 patches of 8x6: 4*3 = 12 < 20
    full = tr.patch_nce_loss(feat_edit, feat_ref, patch_sizes=(1, 2), grid=grid, patch_ids=ids)
    sampled = tr.patch_nce_from_samples(tr.sample_patch_features(feat_edit, grid, (1, 2), ids),
                                        tr.sample_patch_features(feat_ref, grid, (1, 2), ids))
    assert torch.allclose(full, sampled)
    # the random draw of patch_nce_loss is draw_patch_ids with the same generator
    drawn = tr.patch_nce_loss(feat_edit, feat_ref, num_patches=20, grid=grid, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(drawn, full)


def test_cross_attention_loss_and_gradient_zero_for_identical_maps_through_attention():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 16, 32, generator=g, requires_grad=True)
    k = torch.randn(1, 77, 32, generator=g)
    ref = tr.attention_probabilities(q.detach(), k, 4)
    loss = tr.cross_attention_loss([tr.attention_probabilities(q, k, 4)], [ref])
    loss.backward()
    assert loss.item() == 0.0 and q.grad.abs().max().item() == 0.0
    moved = tr.cross_attention_loss([tr.attention_probabilities(q.detach() + 0.5, k, 4)], [ref])
    assert moved.item() > 0


def test_vp_round_trip_and_guidance_step():
    x = torch.randn(1, 4, 8, 8)
    sigma = 3.0
    x_vp = tr.vp_latent(x, sigma)
    assert torch.allclose(x_vp * math.sqrt(1 + sigma**2), x)
    assert torch.allclose(tr.sigma_space_latent(x_vp, sigma), x)
    grad = torch.ones_like(x)
    assert torch.allclose(tr.latent_guidance_step(x_vp, grad, 0.1), x_vp - 0.1)
    assert tr.guidance_loss(2.0, 5.0, 1.0, 0.0) == 2.0  # lambda_cut = 0: pix2pix-zero
    assert tr.guidance_loss(2.0, 5.0, 0.0, 3.0) == 15.0


def test_reference_store_keeps_half_precision_copies():
    store = tr.ReferenceStore(torch.float16, offload=True)
    maps = torch.rand(8, 64, 77)
    store.put_maps(0, "positive", ("output", 3, 0), maps)
    maps.add_(1.0)  # the store holds its own copy
    back = store.maps(0, "positive", ("output", 3, 0), torch.zeros(1))
    assert back.dtype == torch.float32 and torch.allclose(back, maps - 1.0, atol=1e-3)
    assert store.nbytes() == 8 * 64 * 77 * 2
    ids = [torch.arange(5)]
    store.put_patch_ids(0, "l", ids)
    store.put_samples(0, "positive", "l", [torch.randn(1, 5, 3)])
    assert store.has_samples(0, "positive", "l") and not store.has_samples(1, "positive", "l")
    assert torch.equal(store.patch_ids(0, "l")[0], ids[0]) and store.layers(0, "positive") == (1, 1)
    store.clear()
    assert store.nbytes() == 0 and store.patch_ids(0, "l") is None


def test_reference_store_keeps_patch_ids_as_long_once_and_owns_half_precision_copies():
    """Locations are converted at put time (int64, on the features' device) and handed back without
    a copy per read; maps are kept in half precision, cast into a copy of their own, and without a copy
    when they already are (the caller hands them over)."""
    store = tr.ReferenceStore(torch.float16, offload=True)
    store.put_patch_ids(0, "l", [torch.arange(5, dtype=torch.int32)], torch.device("cpu"))
    first, again = store.patch_ids(0, "l")[0], store.patch_ids(0, "l")[0]
    assert first.dtype == torch.long and first is again and torch.equal(first, torch.arange(5))
    feat = torch.randn(1, 16, 3)
    direct = tr.sample_patch_features(feat, (4, 4), (1,), [torch.arange(5)])[0]
    assert torch.equal(tr.sample_patch_features(feat, (4, 4), (1,), [first])[0], direct)
    with torch.inference_mode():  # the recording pass runs in inference mode, the guided pass does not
        store.put_patch_ids(1, "l", tr.draw_patch_ids((4, 4), (1,), 5, torch.Generator().manual_seed(0)))
    leaf = feat.clone().requires_grad_(True)
    tr.sample_patch_features(leaf, (4, 4), (1,), store.patch_ids(1, "l"))[0].sum().backward()
    assert leaf.grad is not None
    for offload in (True, False):
        # a float32 map is stored as its own half-precision copy; one already in the stored dtype is kept
        # without a copy (issue 23: the probes hand over the fresh probabilities of each pass)
        full = torch.rand(4, 6)
        original = full.half()
        store = tr.ReferenceStore(torch.float16, offload=offload)
        store.put_maps(0, "positive", "l", full)
        full.add_(1.0)
        assert torch.equal(store.maps(0, "positive", "l", original), original)
        half = torch.rand(4, 6).half()
        store.put_maps(1, "positive", "l", half)
        assert store.maps(1, "positive", "l", half).data_ptr() == half.data_ptr()
