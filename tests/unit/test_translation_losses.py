"""core.translation without ComfyUI: PatchNCE against a loop-based re-statement of the official
CDS ``CutLoss`` (utils/loss.py L15-79), pix2pix-zero's cross-attention loss L_xa, and the edit
direction / sentence templates. The comparison with the official code itself is in
core/TRANSLATION_CHECK.md."""
from __future__ import annotations

import pytest
import torch

from exemplar_edit.core import translation as tr


# --- loop-based re-statement of the official CutLoss ------------------------------------------


def loop_pool_normalise(feat: torch.Tensor, h: int, w: int, p: int) -> list[torch.Tensor]:
    """One image's ``[HW, C]`` tokens -> row-major list of L2-normalised p x p block means (the
    AvgPool2d floor drops a trailing partial block)."""
    out = []
    for by in range(h // p):
        for bx in range(w // p):
            acc = torch.zeros_like(feat[0])
            for dy in range(p):
                for dx in range(p):
                    acc = acc + feat[(by * p + dy) * w + (bx * p + dx)]
            v = acc / (p * p)
            out.append(v / torch.clamp(torch.sqrt((v * v).sum()), min=1e-12))
    return out


def loop_cut_loss(edit, ref, h, w, patch_sizes, ids_per_size, tau=0.07):
    """sum_p mean_i [ -l_pos_i/tau + log(exp(l_pos_i/tau) + sum_j exp(l_neg_ij/tau)) ],
    l_pos_i = <r_i, e_i>, l_neg_ij = <r_i, e_j> for j != i and -10 for j == i; r detached."""
    total = 0.0
    for p, ids in zip(patch_sizes, ids_per_size):
        r_all = loop_pool_normalise(ref.detach(), h, w, p)
        e_all = loop_pool_normalise(edit, h, w, p)
        r = [r_all[k] for k in ids.tolist()]
        e = [e_all[k] for k in ids.tolist()]
        per_patch = []
        for i in range(len(ids)):
            pos = (r[i] * e[i]).sum() / tau
            logits = [pos]
            for j in range(len(ids)):
                neg = torch.tensor(-10.0, dtype=edit.dtype) if j == i else (r[i] * e[j]).sum()
                logits.append(neg / tau)
            per_patch.append(torch.logsumexp(torch.stack(logits), 0) - pos)
        total = total + torch.stack(per_patch).mean()
    return total


def replay_ids(seed, h, w, patch_sizes, num_patches):
    g = torch.Generator().manual_seed(seed)
    return [tr.sample_patch_ids((h // p) * (w // p), num_patches, g) for p in patch_sizes]


CASES = [
    # (h, w, C, num_patches, patch_sizes)
    (6, 6, 8, 10, (1, 2)),
    (5, 5, 4, 256, (1, 2)),  # fewer locations than patches; odd grid -> pooled floor
    (6, 6, 5, 7, (1, 2, 3)),
    (4, 6, 3, 9, (1, 2)),  # non-square grid given explicitly
]


@pytest.mark.parametrize("h,w,c,num_patches,patch_sizes", CASES)
def test_patch_nce_matches_loop_restatement(h, w, c, num_patches, patch_sizes):
    g = torch.Generator().manual_seed(h * 100 + c)
    ref = torch.randn(h * w, c, generator=g, dtype=torch.float64)
    edit0 = ref + 0.7 * torch.randn(h * w, c, generator=g, dtype=torch.float64)

    edit = edit0.clone().requires_grad_(True)
    grid = None if h == w else (h, w)
    ours = tr.patch_nce_loss(
        edit, ref, num_patches=num_patches, patch_sizes=patch_sizes,
        generator=torch.Generator().manual_seed(7), grid=grid,
    )
    ours.backward()

    ids = replay_ids(7, h, w, patch_sizes, num_patches)
    assert all(len(i) == min(num_patches, (h // p) * (w // p)) for i, p in zip(ids, patch_sizes))
    edit_l = edit0.clone().requires_grad_(True)
    expected = loop_cut_loss(edit_l, ref, h, w, patch_sizes, ids)
    expected.backward()

    assert ours.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(edit.grad, edit_l.grad, rtol=1e-9, atol=1e-12)


def test_patch_nce_explicit_ids_and_batch_mean():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 36, 6, generator=g, dtype=torch.float64)
    edit = torch.randn(2, 36, 6, generator=g, dtype=torch.float64)
    ids = [torch.tensor([0, 5, 7, 30]), torch.tensor([8, 1, 3])]
    both = tr.patch_nce_loss(edit, ref, patch_ids=ids)
    single = [tr.patch_nce_loss(edit[b], ref[b], patch_ids=ids) for b in range(2)]
    assert both.item() == pytest.approx((single[0].item() + single[1].item()) / 2, rel=1e-12)
    assert single[0].item() == pytest.approx(loop_cut_loss(edit[0], ref[0], 6, 6, (1, 2), ids).item(), rel=1e-10)


def test_patch_nce_prefers_kept_features_over_shuffled():
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(1, 16 * 16, 32, generator=g)
    kept = 3.0 * ref + 0.1 * torch.randn(ref.shape, generator=g)  # same directions: invariant to scale
    shuffled = ref[:, torch.randperm(256, generator=g)]
    l_kept = tr.patch_nce_loss(kept, ref, generator=torch.Generator().manual_seed(0))
    l_shuf = tr.patch_nce_loss(shuffled, ref, generator=torch.Generator().manual_seed(0))
    assert l_kept.item() < 0.05
    # the true match of each reference patch is now a negative: ~(1 - cos)/tau per patch size
    assert l_shuf.item() > l_kept.item() + 10.0


def test_patch_nce_gradient_reaches_edit_only():
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(1, 64, 8, generator=g).requires_grad_(True)
    edit = torch.randn(1, 64, 8, generator=g).requires_grad_(True)
    loss = tr.patch_nce_loss(edit, ref, num_patches=16, generator=torch.Generator().manual_seed(3))
    loss.backward()
    assert ref.grad is None
    assert edit.grad is not None and edit.grad.abs().sum() > 0


def test_patch_nce_deterministic_with_seeded_generator():
    g = torch.Generator().manual_seed(4)
    ref = torch.randn(1, 256, 16, generator=g)
    edit = ref + torch.randn(1, 256, 16, generator=g)
    a = tr.patch_nce_loss(edit, ref, num_patches=20, generator=torch.Generator().manual_seed(11))
    b = tr.patch_nce_loss(edit, ref, num_patches=20, generator=torch.Generator().manual_seed(11))
    c = tr.patch_nce_loss(edit, ref, num_patches=20, generator=torch.Generator().manual_seed(12))
    assert a.item() == b.item()
    assert a.item() != c.item()


def test_patch_nce_rejects_bad_shapes():
    x = torch.randn(1, 30, 4)
    with pytest.raises(ValueError):
        tr.patch_nce_loss(x, x)  # 30 tokens: not square, no grid
    with pytest.raises(ValueError):
        tr.patch_nce_loss(torch.randn(1, 36, 4), torch.randn(1, 36, 5))


# --- cross-attention guidance L_xa ---------------------------------------------------------------


def _maps(seed, shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.softmax(torch.randn(s, generator=g), -1) for s in shapes]


SHAPES = [(8, 64, 77), (8, 16, 77), (16, 256, 77)]


def test_cross_attention_loss_zero_for_identical_maps():
    ref = _maps(0, SHAPES)
    edit = [m.clone().requires_grad_(True) for m in ref]
    loss = tr.cross_attention_loss(edit, ref)
    loss.backward()
    assert loss.item() == 0.0
    assert all(e.grad.abs().max().item() == 0.0 for e in edit)


def test_cross_attention_loss_known_perturbation():
    ref = _maps(1, SHAPES)
    deltas = [0.01, 0.02, -0.03]
    edit = [(m + d).requires_grad_(True) for m, d in zip(ref, deltas)]
    loss = tr.cross_attention_loss(edit, ref)
    # per layer: sum over HW*77 of d^2, mean over B*heads
    expected = sum(d * d * s[1] * s[2] for d, s in zip(deltas, SHAPES))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    for e, d, s in zip(edit, deltas, SHAPES):
        torch.testing.assert_close(e.grad, torch.full(s, 2 * d / s[0]))


def test_cross_attention_loss_sums_layers_and_matches_official_formula():
    ref = _maps(2, SHAPES)
    edit = _maps(3, SHAPES)
    total = tr.cross_attention_loss(edit, ref)
    per_layer = [tr.cross_attention_loss([e], [r]) for e, r in zip(edit, ref)]
    assert total.item() == pytest.approx(sum(p.item() for p in per_layer), rel=1e-6)
    official = sum(((e - r) ** 2).sum((1, 2)).mean(0) for e, r in zip(edit, ref))
    assert total.item() == pytest.approx(official.item(), rel=1e-6)
    assert total.item() > 0


def test_cross_attention_loss_detaches_reference_and_checks_shapes():
    ref = [m.requires_grad_(True) for m in _maps(4, SHAPES[:1])]
    edit = [m.requires_grad_(True) for m in _maps(5, SHAPES[:1])]
    tr.cross_attention_loss(edit, ref).backward()
    assert ref[0].grad is None and edit[0].grad is not None
    with pytest.raises(ValueError):
        tr.cross_attention_loss(_maps(0, SHAPES[:2]), _maps(0, SHAPES[:1]))
    with pytest.raises(ValueError):
        tr.cross_attention_loss(_maps(0, [(8, 64, 77)]), _maps(0, [(8, 16, 77)]))


# --- edit direction and sentence templates ----------------------------------------------------------


def test_edit_direction_shape_zero_and_linear():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(5, 77, 32, generator=g)
    tgt = torch.randn(3, 77, 32, generator=g)
    d = tr.edit_direction(src, tgt)
    assert d.shape == (1, 77, 32)
    torch.testing.assert_close(d, (tgt.mean(0) - src.mean(0))[None])
    assert tr.edit_direction(src, src.clone()).abs().max().item() == 0.0
    # linear in the inputs
    src2 = torch.randn(5, 77, 32, generator=g)
    tgt2 = torch.randn(3, 77, 32, generator=g)
    a, b = 0.3, -1.7
    torch.testing.assert_close(
        tr.edit_direction(a * src + b * src2, a * tgt + b * tgt2),
        a * d + b * tr.edit_direction(src2, tgt2),
        rtol=1e-5, atol=1e-5,
    )
    # swapping the sets flips the sign
    torch.testing.assert_close(tr.edit_direction(tgt, src), -d)
    with pytest.raises(ValueError):
        tr.edit_direction(src, torch.randn(3, 77, 16))
    with pytest.raises(ValueError):
        tr.edit_direction(src[0], tgt[0])


def test_sentence_templates_deterministic():
    cats = tr.sentence_templates("cat")
    assert cats == tr.sentence_templates("cat")
    assert len(cats) == len(tr.SENTENCE_TEMPLATES) and len(set(cats)) == len(cats)
    assert all("cat" in s for s in cats)
    assert "a photo of a cat" in cats
    assert "a photo of an owl" in tr.sentence_templates("owl")
    assert "a photo of the moon" in tr.sentence_templates("the moon")
    with_caption = tr.sentence_templates("dog", caption="a cat on a sofa")
    assert with_caption[: len(tr.SENTENCE_TEMPLATES)] == tr.sentence_templates("dog")
    assert len(with_caption) == len(tr.SENTENCE_TEMPLATES) + len(tr.CAPTION_TEMPLATES)
    assert all("a cat on a sofa" in s for s in with_caption[len(tr.SENTENCE_TEMPLATES):])
    with pytest.raises(ValueError):
        tr.sentence_templates("  ")


@pytest.mark.parametrize("caption, target, expected", [
    ("a photo of a cat sitting", "a photo of a dog sitting", ("cat", "dog")),
    ("a man", "a man with glasses", ("", "with glasses")),
    ("A photo of a Cat", "a photo of a cat", ("", "")),
    ("a cat on a sofa", "a tiger on a bed", ("cat on a sofa", "tiger on a bed")),
    ("a red car", "a blue car", ("red", "blue")),
])
def test_changed_words_strip_the_common_prefix_and_suffix(caption, target, expected):
    assert tr.changed_words(caption, target) == expected


def test_caption_sentences_pair_the_wrappers_on_both_sides():
    source = tr.caption_sentences("a photo of a cat sitting", "cat")
    target = tr.caption_sentences("a photo of a dog sitting", "dog")
    wrappers = len(tr.CAPTION_WRAPPERS)
    assert source[0] == "a photo of a cat sitting" and target[0] == "a photo of a dog sitting"
    # the depiction phrase is not stacked: "a photo of a cat sitting", not "a photo of a photo of ..."
    assert source[1] == "a photo of a cat sitting" and "a close-up of a cat sitting" in source
    for s, t in zip(source[:wrappers], target[:wrappers]):  # same wrapper, only the changed word differs
        assert s.replace("cat", "dog") == t
    assert source[wrappers:] == tr.sentence_templates("cat")
    assert target[wrappers:] == tr.sentence_templates("dog")
    # an addition: the source side has only the wrapped caption
    added = tr.caption_sentences("a man", "")
    assert len(added) == wrappers and "there is a man" in added
    with pytest.raises(ValueError):
        tr.caption_sentences("  ", "dog")
