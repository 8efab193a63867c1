"""Zero-shot image-to-image translation losses (pix2pix-zero / pix2pix-zeroCon), in plain PyTorch.

pix2pix-zero (Parmar et al., SIGGRAPH 2023) edits an inverted image by denoising it with the
caption embedding plus an *edit direction* (Sec. 3.2), while a *cross-attention guidance* loss
L_xa keeps the edited pass's cross-attention maps close to those of the reconstruction pass
(Sec. 3.3). pix2pix-zeroCon (Si et al., arXiv 2503.20484) adds a patch-wise contrastive
(PatchNCE / CUT) loss between UNet features of the edited and reconstruction passes. It has no
public code, so that loss follows the closest official implementation, the ``CutLoss`` of
Contrastive Denoising Score (CDS, Nam et al., CVPR 2024).

Shapes
- Cross-attention maps of one layer: ``[B*heads, HW, 77]`` (the ``attn_probs`` of an ``attn2``).
- PatchNCE features of one layer: ``[B, HW, C]`` or ``[HW, C]`` on a square ``res x res`` token
  grid in row-major order (the ``hidden_states`` output of a self-attention ``attn1``), or any
  ``h x w`` grid given by ``grid``.
- Text embeddings: ``[N, 77, D]``, one row per sentence (the text encoder's last hidden state).

Official code
- pix2pix-zero ``pix2pixzero/pix2pix-zero``: ``src/utils/edit_pipeline.py`` (edit loop, L_xa at
  ~L148), ``src/utils/edit_directions.py`` (``construct_direction``),
  ``src/make_edit_direction.py`` (``load_sentence_embeddings``).
- CDS ``HyelinNAM/ContrastiveDenoisingScore`` @ e3082ae: ``utils/loss.py`` L10-79 (``CutLoss``),
  ``pipeline_cds.py`` L134 and L187-197 (its use on the ``attn1`` outputs of the up blocks),
  ``run.py`` L18-19 (defaults ``patch_size=[1, 2]``, ``n_patches=256``).

References
- Parmar, Kumar Singh, Zhang, Li, Lu, Zhu, "Zero-shot Image-to-Image Translation", SIGGRAPH 2023.
- Si et al., "Contrastive Learning Guided Latent Diffusion Model for Image-to-Image Translation"
  (pix2pix-zeroCon), arXiv 2503.20484, 2025.
- Nam, Kwon, Park, Ye, "Contrastive Denoising Score for Text-guided Latent Diffusion Image
  Editing", CVPR 2024.
- Park, Efros, Zhang, Zhu, "Contrastive Learning for Unpaired Image-to-Image Translation"
  (CUT), ECCV 2020, Eq. 2-3 (PatchNCE).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .inversion import FLOW, VE

NEGATIVE_DIAGONAL_FILL = -10.0
"""Value written over the self-pair logits before dividing by tau (CDS ``utils/loss.py`` L72)."""


# --- cross-attention guidance (pix2pix-zero Sec. 3.3) ----------------------------------------


def cross_attention_loss(
    maps_edit: Sequence[torch.Tensor], maps_ref: Sequence[torch.Tensor]
) -> torch.Tensor:
    """pix2pix-zero's cross-attention guidance loss
    ``L_xa = sum_layers mean_{B*heads} sum_{HW, 77} (M_edit - M_ref)^2``.

    This is the official ``loss += ((curr - ref)**2).sum((1, 2)).mean(0)`` over every ``attn2``
    module (``src/utils/edit_pipeline.py`` ~L148). ``maps_edit[l]`` and ``maps_ref[l]`` are
    ``[B*heads, HW, tokens]`` for layer ``l``. The reference maps are detached and moved to the
    edit maps' device and dtype, as the official ``d_ref_t2attn[t][name].detach().cuda()``.
    Returns a scalar.
    """
    maps_edit = list(maps_edit)
    maps_ref = list(maps_ref)
    if len(maps_edit) != len(maps_ref):
        raise ValueError(f"{len(maps_edit)} edit layers but {len(maps_ref)} reference layers")
    if not maps_edit:
        raise ValueError("cross_attention_loss needs at least one layer")
    loss = maps_edit[0].new_zeros(())
    for layer, (curr, ref) in enumerate(zip(maps_edit, maps_ref)):
        if curr.ndim != 3 or curr.shape != ref.shape:
            raise ValueError(
                f"layer {layer}: expected two [B*heads, HW, tokens] maps of one shape, "
                f"got {tuple(curr.shape)} and {tuple(ref.shape)}"
            )
        ref = ref.detach().to(device=curr.device, dtype=curr.dtype)
        loss = loss + ((curr - ref) ** 2).sum((1, 2)).mean(0)
    return loss


# --- PatchNCE (CUT Eq. 2-3; CDS utils/loss.py CutLoss) --------------------------------------


def _square_grid(hw: int) -> tuple[int, int]:
    res = math.isqrt(hw)
    if res * res != hw:
        raise ValueError(f"{hw} tokens are not a square grid; pass grid=(h, w)")
    return res, res


def pool_patches(feat: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """``[B, HW, C]`` tokens to L2-normalised patch features ``[B, (h//p)*(w//p), C]``.

    CDS ``get_attn_cut_loss`` (``utils/loss.py`` L21-36): tokens to ``[B, C, h, w]``, for
    ``patch_size > 1`` ``nn.AvgPool2d(kernel_size=p)`` (stride p, floor: an odd edge row or column
    is dropped), then ``F.normalize(dim=1)`` over channels (eps 1e-12), back to row-major tokens.
    """
    b, hw, c = feat.shape
    h, w = grid
    if h * w != hw:
        raise ValueError(f"grid {grid} does not hold {hw} tokens")
    x = feat.reshape(b, h, w, c).permute(0, 3, 1, 2)
    if patch_size > 1:
        x = F.avg_pool2d(x, kernel_size=patch_size)
    x = F.normalize(x, dim=1)
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def sample_patch_ids(
    num_locations: int,
    num_patches: int,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``min(num_patches, num_locations)`` distinct random locations, the same for reference and
    edit: the first entries of a random permutation (CDS ``utils/loss.py`` L37-39, which uses
    ``np.random.permutation``; here ``torch.randperm`` with an optional seeded generator)."""
    perm = torch.randperm(num_locations, generator=generator)
    ids = perm[: int(min(num_patches, num_locations))]
    return ids.to(device) if device is not None else ids


def patch_nce(sample_ref: torch.Tensor, sample_edit: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Per-patch PatchNCE loss ``[N]`` of ``N`` matched, L2-normalised patch features ``[N, C]``.

    CDS ``CutLoss.PatchNCELoss`` (``utils/loss.py`` L49-79): the reference is detached (L57) and
    is the anchor; ``l_pos[i] = <ref_i, edit_i>`` (L59-61); ``l_neg[i, j] = <ref_i, edit_j>``
    (L67) with the diagonal overwritten by -10 (L71-72, so ``exp(-10 / tau)`` makes it vanish);
    logits ``[l_pos, l_neg] / tau`` (L75) and cross-entropy against class 0 (L77), no reduction.
    """
    ref = sample_ref.detach()
    n = ref.shape[0]
    l_pos = (ref * sample_edit).sum(-1, keepdim=True)
    l_neg = ref @ sample_edit.transpose(0, 1)
    diagonal = torch.eye(n, device=ref.device, dtype=torch.bool)
    l_neg = l_neg.masked_fill(diagonal, NEGATIVE_DIAGONAL_FILL)
    logits = torch.cat((l_pos, l_neg), dim=1) / tau
    target = torch.zeros(n, dtype=torch.long, device=ref.device)
    return F.cross_entropy(logits, target, reduction="none")


def patch_nce_loss(
    feat_edit: torch.Tensor,
    feat_ref: torch.Tensor,
    num_patches: int = 256,
    patch_sizes: Sequence[int] = (1, 2),
    tau: float = 0.07,
    generator: Optional[torch.Generator] = None,
    grid: Optional[tuple[int, int]] = None,
    patch_ids: Optional[Sequence[torch.Tensor]] = None,
) -> torch.Tensor:
    """PatchNCE (CUT) loss of one layer, as CDS ``CutLoss.get_attn_cut_loss`` (``utils/loss.py``
    L15-47): ``sum_{p in patch_sizes} mean_i PatchNCE_i``.

    For each patch size ``p``: average-pool both maps by ``p`` and L2-normalise (
    :func:`pool_patches`), draw ``num_patches`` random locations shared by reference and edit
    (:func:`sample_patch_ids`, a fresh draw per patch size, L37-39), and average the per-patch
    :func:`patch_nce` (L46). Only ``feat_edit`` receives a gradient.

    ``feat_edit``/``feat_ref`` are ``[B, HW, C]`` or ``[HW, C]``; ``grid`` defaults to a square
    ``res x res`` (the official ``int(np.sqrt(res2))``). The official code keeps only batch item 0
    (``[:1]``, L41/L44); here a batch gives the mean of the per-item losses at the same locations,
    which for ``B = 1`` is the official loss. ``patch_ids`` (one index tensor per patch size)
    replaces the random draw, e.g. to replay the official locations.
    CDS calls it with ``num_patches=256, patch_sizes=(1, 2)`` and the default ``tau=0.07``, on the
    ``attn1`` outputs of the UNet up blocks, summed over those layers and weighted by
    ``w_cut = 3`` (``pipeline_cds.py`` L187-197, ``run.py`` L16-19).
    """
    if feat_edit.shape != feat_ref.shape:
        raise ValueError(f"shape mismatch: edit {tuple(feat_edit.shape)} vs ref {tuple(feat_ref.shape)}")
    if feat_edit.ndim == 2:
        feat_edit, feat_ref = feat_edit[None], feat_ref[None]
    if feat_edit.ndim != 3:
        raise ValueError(f"expected [B, HW, C] or [HW, C] features, got {tuple(feat_edit.shape)}")
    grid = tuple(grid) if grid is not None else _square_grid(feat_edit.shape[1])
    if patch_ids is not None and len(patch_ids) != len(patch_sizes):
        raise ValueError(f"{len(patch_ids)} patch_ids for {len(patch_sizes)} patch sizes")
    feat_ref = feat_ref.detach().to(feat_edit.dtype)

    if patch_ids is None:
        patch_ids = draw_patch_ids(grid, patch_sizes, num_patches, generator, feat_edit.device)
    samples_ref = sample_patch_features(feat_ref, grid, patch_sizes, patch_ids)
    samples_edit = sample_patch_features(feat_edit, grid, patch_sizes, patch_ids)
    return patch_nce_from_samples(samples_edit, samples_ref, tau)


def patch_grid_size(grid: tuple[int, int], patch_size: int) -> int:
    """Number of ``patch_size x patch_size`` patches of an ``h x w`` grid (AvgPool2d floor)."""
    return (grid[0] // patch_size) * (grid[1] // patch_size)


def draw_patch_ids(
    grid: tuple[int, int],
    patch_sizes: Sequence[int],
    num_patches: int,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """One :func:`sample_patch_ids` draw per patch size, in order (CDS ``utils/loss.py`` L37-39),
    for an ``h x w`` token grid. Draw once and use the result for the reference and the edit."""
    return [
        sample_patch_ids(patch_grid_size(grid, ps), num_patches, generator, device) for ps in patch_sizes
    ]


def sample_patch_features(
    feat: torch.Tensor,
    grid: tuple[int, int],
    patch_sizes: Sequence[int],
    patch_ids: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """``[B, HW, C]`` features to one ``[B, N, C]`` tensor per patch size: the L2-normalised patch
    means (:func:`pool_patches`) at the locations ``patch_ids`` (CDS ``utils/loss.py`` L21-44).

    This is all PatchNCE needs of the reference pass, so storing these samples instead of the whole
    feature map keeps a reference trajectory small (256 x C numbers per layer, step and size).
    """
    if len(patch_ids) != len(patch_sizes):
        raise ValueError(f"{len(patch_ids)} patch_ids for {len(patch_sizes)} patch sizes")
    samples = []
    for ps, ids in zip(patch_sizes, patch_ids):
        pooled = pool_patches(feat, grid, ps)
        samples.append(pooled[:, ids.to(device=feat.device, dtype=torch.long)])
    return samples


def patch_nce_from_samples(
    samples_edit: Sequence[torch.Tensor], samples_ref: Sequence[torch.Tensor], tau: float = 0.07
) -> torch.Tensor:
    """``sum_{p} mean_b mean_i PatchNCE_i`` of matched patch samples (one ``[B, N, C]`` pair per
    patch size, from :func:`sample_patch_features`): CDS ``get_attn_cut_loss`` L41-47 after the
    sampling. The reference samples are detached and cast to the edit's device and dtype."""
    if len(samples_edit) != len(samples_ref):
        raise ValueError(f"{len(samples_edit)} edit samples but {len(samples_ref)} reference samples")
    loss = samples_edit[0].new_zeros(())
    for edit, ref in zip(samples_edit, samples_ref):
        ref = ref.detach().to(device=edit.device, dtype=edit.dtype)
        if edit.shape != ref.shape:
            raise ValueError(f"sample shape mismatch: edit {tuple(edit.shape)} vs ref {tuple(ref.shape)}")
        per_item = [patch_nce(ref[b], edit[b], tau).mean() for b in range(edit.shape[0])]
        loss = loss + torch.stack(per_item).mean()
    return loss


# --- edit direction (pix2pix-zero Sec. 3.2) --------------------------------------------------


def edit_direction(source_embeddings: torch.Tensor, target_embeddings: torch.Tensor) -> torch.Tensor:
    """Per-token edit direction ``Delta = mean_n E_tgt[n] - mean_n E_src[n]``, shape ``[1, 77, D]``.

    ``source_embeddings`` ``[N_s, 77, D]`` and ``target_embeddings`` ``[N_t, 77, D]`` are the text
    encoder's full last hidden states of each sentence (padded to 77 tokens): the official
    ``load_sentence_embeddings`` averages them over sentences (``src/make_edit_direction.py``),
    and ``construct_direction`` returns ``(embs_b.mean(0) - embs_a.mean(0)).unsqueeze(0)``
    (``src/utils/edit_directions.py``). The edit pass then adds it to the conditional caption
    embedding (``prompt_embeds_edit[1:2] += edit_dir``, ``edit_pipeline.py``).
    """
    if source_embeddings.ndim != 3 or target_embeddings.ndim != 3:
        raise ValueError(
            "expected [N, tokens, D] embeddings, got "
            f"{tuple(source_embeddings.shape)} and {tuple(target_embeddings.shape)}"
        )
    if source_embeddings.shape[1:] != target_embeddings.shape[1:]:
        raise ValueError(
            f"token/width mismatch: {tuple(source_embeddings.shape[1:])} vs {tuple(target_embeddings.shape[1:])}"
        )
    return (target_embeddings.mean(0) - source_embeddings.mean(0)).unsqueeze(0)


SENTENCE_TEMPLATES: tuple[str, ...] = (
    "{a} {c}",
    "a photo of {a} {c}",
    "a picture of {a} {c}",
    "a close-up photo of {a} {c}",
    "a photograph of {a} {c} in the scene",
    "an image showing {a} {c}",
    "a high quality photo of {a} {c}",
    "a realistic photo of {a} {c}",
    "a blurry photo of {a} {c}",
    "a bright photo of {a} {c}",
    "a cropped photo of {a} {c}",
    "{a} {c} in the center of the picture",
)
"""The pack's own fixed templates (not the official GPT-3 sentence files). ``{a}`` is the
article, ``{c}`` the concept."""

CAPTION_TEMPLATES: tuple[str, ...] = (
    "{caption}, {a} {c}",
    "{a} {c}, {caption}",
)
"""Extra templates that put the concept next to the image's caption, used when one is given."""

_ARTICLES = ("a ", "an ", "the ")


def _article(concept: str) -> tuple[str, str]:
    """``(article, concept)``: no extra article when the concept starts with one, else "an"
    before a vowel letter and "a" otherwise (a spelling rule, so "an hour" is written "a hour")."""
    lowered = concept.lower()
    if lowered.startswith(_ARTICLES):
        article, rest = concept.split(" ", 1)
        return article, rest
    return ("an" if lowered[:1] in "aeiou" and lowered else "a"), concept


def sentence_templates(concept: str, caption: Optional[str] = None) -> list[str]:
    """Deterministic sentences around ``concept`` for :func:`edit_direction`.

    This is the pack's own substitute for pix2pix-zero's ~1000 GPT-3 sentences per concept
    (``assets/`` sentence files; the Gradio demo also offers a fixed template): the
    :data:`SENTENCE_TEMPLATES`, plus :data:`CAPTION_TEMPLATES` when a ``caption`` is given. No
    language model is used. Use the same ``caption`` for the source and the target concept so
    that the direction only carries the concept change.
    """
    concept = " ".join(concept.split())
    if not concept:
        raise ValueError("sentence_templates needs a non-empty concept")
    article, word = _article(concept)
    sentences = [t.format(a=article, c=word) for t in SENTENCE_TEMPLATES]
    if caption is not None and caption.strip():
        caption = " ".join(caption.split())
        sentences += [t.format(caption=caption, a=article, c=word) for t in CAPTION_TEMPLATES]
    return sentences


CAPTION_WRAPPERS: tuple[str, ...] = (
    "{P}",
    "a photo of {S}",
    "an image showing {S}",
    "{S}, high quality",
    "{S}, detailed photograph",
    "a close-up of {S}",
    "a wide shot of {S}",
    "{S} in natural light",
    "a realistic picture of {S}",
    "there is {S}",
    "{S}, sharp focus",
    "a cropped photo of {S}",
    "{S}, centered",
    "a bright photo of {S}",
    "a dark photo of {S}",
    "a blurry photo of {S}",
)
"""The pack's sentences around a whole caption (``{P}`` the caption as typed, ``{S}`` its subject
without a leading "a photo of"-like phrase). Their prefixes and suffixes of different lengths move
the caption's tokens to different positions, as pix2pix-zero's free-form sentences do, so the mean
difference is not tied to one token layout."""

_DEPICTION_PREFIXES = ("a photo of ", "a photograph of ", "a picture of ", "an image of ", "an image showing ",
                       "a painting of ", "a drawing of ")


def caption_subject(caption: str) -> str:
    """The caption without a leading depiction phrase ("a photo of a cat" -> "a cat"), so the
    wrappers of :data:`CAPTION_WRAPPERS` do not stack two of them."""
    caption = " ".join(caption.split())
    lowered = caption.lower()
    for prefix in _DEPICTION_PREFIXES:
        if lowered.startswith(prefix) and len(caption) > len(prefix):
            return caption[len(prefix):]
    return caption


def changed_words(caption: str, target_caption: str) -> tuple[str, str]:
    """The words that differ between two captions: both without their longest common word prefix
    and suffix (case-insensitive). "a photo of a cat sitting" -> "a photo of a dog sitting" gives
    ("cat", "dog"); an addition gives an empty source ("a cat" -> "a cat with glasses": ("", "with
    glasses"))."""
    a, b = caption.split(), target_caption.split()
    lower_a, lower_b = [w.lower() for w in a], [w.lower() for w in b]
    start = 0
    while start < min(len(a), len(b)) and lower_a[start] == lower_b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and lower_a[len(a) - 1 - end] == lower_b[len(b) - 1 - end]:
        end += 1
    return " ".join(a[start:len(a) - end]), " ".join(b[start:len(b) - end])


def caption_sentences(caption: str, changed_word: str) -> list[str]:
    """One side's sentence set in the caption form of the edit direction (pix2pix-zeroCon, Si et al.
    2025, Fig. 2: the direction comes from the reference image's caption and the target prompt; the
    paper's sentences come from BLIP and a language model, which the pack does not use): the caption
    in each of :data:`CAPTION_WRAPPERS`, plus :func:`sentence_templates` around the words that changed
    (none when nothing was removed or added on this side). Both sides use the same wrappers in the
    same order, so whatever a wrapper adds cancels in the mean difference (pix2pix-zero Sec. 3.2)."""
    caption = " ".join(caption.split())
    if not caption:
        raise ValueError("caption_sentences needs a non-empty caption")
    subject = caption_subject(caption)
    sentences = [w.format(P=caption, S=subject) for w in CAPTION_WRAPPERS]
    if changed_word.strip():
        sentences += sentence_templates(changed_word)
    return sentences


# --- explicit attention (the maps L_xa compares) ---------------------------------------------


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Cross-attention probabilities ``softmax(Q K^T / sqrt(d))`` as ``[B*heads, N, T]``.

    ``q`` is ``[B, N, heads*d]`` and ``k`` ``[B, T, heads*d]`` (projected, before the head split),
    the inputs of an ``attn2``. This is the ``attn_probs`` pix2pix-zero's processor stores
    (``src/utils/cross_attention.py``: ``attention_probs = attn.get_attention_scores(...)``). The
    softmax runs in float32; the result has ``q``'s dtype.
    """
    b, n, inner = q.shape
    d = inner // heads
    qh = q.reshape(b, n, heads, d).transpose(1, 2).reshape(b * heads, n, d)
    kh = k.reshape(b, k.shape[1], heads, d).transpose(1, 2).reshape(b * heads, k.shape[1], d)
    scores = torch.bmm(qh.float(), kh.float().transpose(1, 2)) * (d ** -0.5)
    return scores.softmax(dim=-1).to(q.dtype)


def attend(probs: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """``probs @ V`` with the heads merged back: ``[B*heads, N, T]`` x ``[B, T, heads*d]`` ->
    ``[B, N, heads*d]`` (the attention output before ``to_out``)."""
    b, t, inner = v.shape
    d = inner // heads
    vh = v.reshape(b, t, heads, d).transpose(1, 2).reshape(b * heads, t, d)
    out = torch.bmm(probs.to(v.dtype), vh)
    return out.reshape(b, heads, -1, d).transpose(1, 2).reshape(b, -1, inner)


# --- the guidance step on x_t (pix2pix-zero Sec. 3.3, zeroCon) -------------------------------


def guidance_loss(
    cross_attention: torch.Tensor | float,
    patch_nce: torch.Tensor | float,
    lambda_xa: float,
    lambda_cut: float,
) -> torch.Tensor | float:
    """pix2pix-zeroCon's guidance objective ``lambda_xa * L_xa + lambda_cut * L_PatchNCE``.

    ``lambda_cut = 0`` is pix2pix-zero's objective (its loss weight is 1 and the step size
    ``xa_guidance`` carries the scale); ``lambda_xa = 0`` leaves the contrastive term alone.
    """
    return lambda_xa * cross_attention + lambda_cut * patch_nce


def vp_latent(x: torch.Tensor, sigma: float, process: str = VE) -> torch.Tensor:
    """The sampler's latent to the latent the model reads and pix2pix-zero steps on. Sigma space
    (``x = x0 + sigma * eps``, process ``VE``): the variance-preserving latent of diffusers,
    ``x_vp = sqrt(alpha_bar) * x = x / sqrt(1 + sigma^2)`` (``alpha_bar = 1 / (1 + sigma^2)``; Karras
    et al. 2022, Eq. 1-3 and Table 1). A rectified-flow latent (``FLOW``) is already the model's
    input (``x = (1 - sigma) x0 + sigma eps``, Liu et al. 2023, Eq. 1): unchanged."""
    if process == FLOW:
        return x
    return x / math.sqrt(1.0 + sigma * sigma)


def sigma_space_latent(x_vp: torch.Tensor, sigma: float, process: str = VE) -> torch.Tensor:
    """Inverse of :func:`vp_latent`: ``x = x_vp * sqrt(1 + sigma^2)`` (``FLOW``: unchanged)."""
    if process == FLOW:
        return x_vp
    return x_vp * math.sqrt(1.0 + sigma * sigma)


def latent_guidance_step(x_vp: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
    """One SGD step on the latent: ``x_t <- x_t - eta * dL/dx_t`` (pix2pix-zero
    ``opt = SGD([x_in], lr=xa_guidance); loss.backward(); opt.step()``, ``edit_pipeline.py``),
    taken on the variance-preserving latent ``x_vp`` as the official code does."""
    return x_vp - step_size * grad


class ReferenceStore:
    """What the reference (reconstruction) pass leaves for the edit pass, bounded in memory.

    Entries are keyed by ``(step, role, layer)``: ``role`` is the CFG row (``"positive"`` or
    ``"negative"``), ``layer`` any hashable layer name. Cross-attention maps are kept whole
    (``L_xa`` compares every entry); for PatchNCE only the sampled patch features and their
    locations are kept (:func:`sample_patch_features`), ~``256 x C`` numbers per layer and patch
    size instead of ``HW x C``. Tensors are stored in ``dtype`` (None: their own dtype) and, with
    ``offload``, in CPU memory; :meth:`maps` / :meth:`samples` bring them back.
    """

    def __init__(self, dtype: Optional[torch.dtype] = torch.float16, offload: bool = False):
        self.dtype = dtype
        self.offload = offload
        self._maps: dict = {}
        self._samples: dict = {}
        self._ids: dict = {}

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        dtype = self.dtype or t.dtype
        if self.offload and t.device.type != "cpu":
            return t.to(dtype).to("cpu")  # cast on the device first: fewer bytes to copy over
        return t.to(dtype)

    def clear(self) -> None:
        self._maps.clear()
        self._samples.clear()
        self._ids.clear()

    def has_maps(self, step: int, role: str, layer) -> bool:
        return (step, role, layer) in self._maps

    def put_maps(self, step: int, role: str, layer, maps: torch.Tensor) -> None:
        self._maps[(step, role, layer)] = self._keep(maps)

    def maps(self, step: int, role: str, layer, like: torch.Tensor) -> torch.Tensor:
        return self._maps[(step, role, layer)].to(device=like.device, dtype=like.dtype)

    def patch_ids(self, step: int, layer) -> Optional[list[torch.Tensor]]:
        """The stored locations themselves (callers only index with them, never write to them)."""
        ids = self._ids.get((step, layer))
        return None if ids is None else list(ids)

    def put_patch_ids(
        self, step: int, layer, ids: list[torch.Tensor], device: torch.device | str | None = None
    ) -> None:
        """Keeps ``ids`` as int64 on ``device`` (the features' device; default: where they are), so
        that :func:`sample_patch_features` indexes with them without a copy in every layer call.
        Locations are kept on that device even with ``offload``: a few hundred integers. The copies
        are made outside inference mode: a recording pass under ``torch.inference_mode`` may put
        them, and a differentiable pass indexes with them (autograd saves the index)."""
        with torch.inference_mode(False):
            self._ids[(step, layer)] = [
                i.to(device=i.device if device is None else device, dtype=torch.long, non_blocking=True, copy=True)
                for i in ids
            ]

    def has_samples(self, step: int, role: str, layer) -> bool:
        return (step, role, layer) in self._samples

    def put_samples(self, step: int, role: str, layer, samples: Sequence[torch.Tensor]) -> None:
        self._samples[(step, role, layer)] = [self._keep(s) for s in samples]

    def samples(self, step: int, role: str, layer, like: torch.Tensor) -> list[torch.Tensor]:
        return [s.to(device=like.device, dtype=like.dtype) for s in self._samples[(step, role, layer)]]

    def layers(self, step: int, role: str) -> tuple[int, int]:
        """(map layers, feature layers) stored for ``step`` and ``role``."""
        maps = sum(1 for (s, r, _l) in self._maps if s == step and r == role)
        feats = sum(1 for (s, r, _l) in self._samples if s == step and r == role)
        return maps, feats

    def nbytes(self) -> int:
        total = sum(t.numel() * t.element_size() for t in self._maps.values())
        total += sum(s.numel() * s.element_size() for v in self._samples.values() for s in v)
        return total
