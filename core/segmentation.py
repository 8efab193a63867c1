"""Object masks from the UNet's own attention, as Eye-for-an-eye makes them without SAM masks, in
plain PyTorch (no scikit-learn).

Two mask sources of the official code (``sooyeon-go/eye_for_an_eye`` @ 8e23f6b,
``utils/segmentation.py``, taken from Cross-Image Attention, which took it from Prompt Mixing):

* **self-segmentation** (``Segmentor.cluster`` / ``cluster2noun`` / ``create_mask``, L42-100): the
  head-averaged self-attention map of one image, ``[N, N]`` (one row per query pixel, a softmax
  over the keys), is clustered by k-means into 5 segments; each segment is scored by the mean of
  the object word's normalised cross-attention inside it, and the segments scoring more than 1.4
  times the mean of the other segments form the object mask.
* **cross-attention threshold** (``cross_attn_map``, L102-122): the object word's head-averaged
  cross-attention map, min-max normalised, thresholded at 0.1.

Attention maps here are head-averaged, one image at a time: self-attention ``[N, N]`` and
cross-attention ``[N, T]`` over a row-major ``h x w`` token grid (``N = h*w``).

References
- Go, Choi, Shin, Uh, "Eye-for-an-eye", arXiv 2406.07008, 2024 (official code as above).
- Patashnik et al., "Localizing Object-level Shape Variations with Text-to-Image Diffusion
  Models" (Prompt Mixing), ICCV 2023, Sec. 4 (self-attention segmentation).
- Arthur, Vassilvitskii, "k-means++: the advantages of careful seeding", SODA 2007.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

NUM_SEGMENTS = 5  # Segmentor.num_segments (SEG L19)
NUM_INITS = 10  # KMeans(n_clusters=5, n_init=10) (SEG L52)
KMEANS_SEED = 1  # np.random.seed(1) (SEG L48)
OBJECT_SCORE_RATIO = 1.4  # cluster2noun: s_c > 1.4 * mean of the other clusters (SEG L90)
CROSS_THRESHOLD = 0.1  # config.cross_thres (config.py L59)


def head_averaged_attention(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """``mean_h softmax(Q_h K_h^T / sqrt(d))`` per batch row, ``[B, N, T]``: the
    ``attn_weight.mean(dim=1)`` the official segmentor takes of every stored map (SEG L51, L65).

    ``q`` is ``[B, N, heads*d]``, ``k`` ``[B, T, heads*d]`` (projected, before the head split). One
    head at a time, so at most ``B x N x T`` probabilities are alive (not ``B x heads x N x T``).
    Computed in float32.
    """
    b, n, inner = q.shape
    d = inner // heads
    qh = q.reshape(b, n, heads, d).float()
    kh = k.reshape(b, k.shape[1], heads, d).float()
    total = torch.zeros(b, n, k.shape[1], device=q.device)
    for head in range(heads):
        scores = torch.bmm(qh[:, :, head], kh[:, :, head].transpose(1, 2)) * (d ** -0.5)
        total += scores.softmax(dim=-1)
    return total / heads


class KMeansResult(NamedTuple):
    labels: torch.Tensor  # [N] long, cluster of each sample
    centers: torch.Tensor  # [k, D]
    inertia: float  # sum of squared distances to the assigned centers


def _squared_distances(x: torch.Tensor, centers: torch.Tensor, x_norms: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, k]`` squared Euclidean distances; ``x_norms`` = ``|x|^2`` per row, if already known."""
    if x_norms is None:
        x_norms = x.square().sum(1, keepdim=True)
    return (x_norms - 2 * x @ centers.t() + centers.square().sum(1)[None]).clamp_min(0)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first center uniformly at random, each
    next one with probability proportional to the squared distance to the nearest chosen center.
    scikit-learn's default adds greedy trials per center; this is the plain rule."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [x[first]]
    closest = _squared_distances(x, x[first : first + 1])[:, 0]
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than clusters: any point will do
            index = int(torch.randint(n, (1,), generator=generator))
        else:
            index = int(torch.multinomial(closest.cpu() / total, 1, generator=generator))
        centers.append(x[index])
        closest = torch.minimum(closest, _squared_distances(x, x[index : index + 1])[:, 0])
    return torch.stack(centers)


def kmeans(x: torch.Tensor, k: int = NUM_SEGMENTS, n_init: int = NUM_INITS, seed: int = KMEANS_SEED,
           max_iter: int = 300, tol: float = 1e-4) -> KMeansResult:
    """Lloyd's k-means on the rows of ``x`` ``[N, D]`` with Euclidean distance, the best of
    ``n_init`` k-means++ seedings by inertia: what the official ``KMeans(n_clusters=5,
    n_init=10).fit(x)`` (scikit-learn 1.3 defaults: max_iter 300, tol 1e-4 relative to the mean
    feature variance) computes. Deterministic: the seedings draw from one ``torch.Generator``
    seeded with ``seed`` (the official draws from numpy's global RNG after ``np.random.seed(1)``,
    so cluster numbering and, on ambiguous data, the partition can differ from scikit-learn's).
    A cluster left empty takes the sample farthest from its center.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects [N, D] samples, got {tuple(x.shape)}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"kmeans: {k} clusters for {x.shape[0]} samples")
    x = x.float()
    generator = torch.Generator().manual_seed(seed)
    threshold = tol * float(x.var(dim=0, unbiased=False).mean())
    x_norms = x.square().sum(1, keepdim=True)
    best: KMeansResult | None = None
    for _ in range(n_init):
        centers = kmeans_plus_plus(x, k, generator)
        for _ in range(max_iter):
            distances = _squared_distances(x, centers, x_norms)
            labels = distances.argmin(dim=1)
            counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros_like(centers).index_add_(0, labels, x)
            new_centers = sums / counts.clamp_min(1)[:, None].to(x.dtype)
            for empty in torch.nonzero(counts == 0).flatten().tolist():
                farthest = int(distances.gather(1, labels[:, None]).argmax())
                new_centers[empty] = x[farthest]
                labels[farthest] = empty
            shift = float((new_centers - centers).square().sum())
            centers = new_centers
            if shift <= threshold:
                break
        distances = _squared_distances(x, centers, x_norms)
        labels = distances.argmin(dim=1)
        inertia = float(distances.gather(1, labels[:, None]).sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(labels, centers, inertia)
    return best


def self_attention_segments(self_attention: torch.Tensor, num_segments: int = NUM_SEGMENTS,
                            n_init: int = NUM_INITS, seed: int = KMEANS_SEED) -> torch.Tensor:
    """``Segmentor.cluster`` for one image (SEG L42-58): k-means over the rows of its head-averaged
    self-attention map ``[N, N]`` (a pixel's feature is where it attends). Returns ``[N]`` labels."""
    if self_attention.ndim != 2 or self_attention.shape[0] != self_attention.shape[1]:
        raise ValueError(f"expected a head-averaged self-attention map [N, N], got {tuple(self_attention.shape)}")
    return kmeans(self_attention, num_segments, n_init, seed).labels


def word_map(cross_attention: torch.Tensor, token: int, grid: tuple[int, int]) -> torch.Tensor:
    """The ``token``-th column of a head-averaged cross-attention map ``[N, T]`` as an ``[h, w]``
    image (row-major tokens, ``N = h*w``)."""
    h, w = grid
    if cross_attention.ndim != 2 or cross_attention.shape[0] != h * w:
        raise ValueError(f"cross-attention map {tuple(cross_attention.shape)} does not fit a {h}x{w} grid")
    if not 0 <= token < cross_attention.shape[1]:
        raise ValueError(f"token {token} is not among the map's {cross_attention.shape[1]} text tokens")
    return cross_attention[:, token].reshape(h, w).float()


def upsample_nearest(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[h, w]`` to ``size`` by nearest neighbour (for a factor 2 this is the official
    ``np.repeat(np.repeat(x, 2, axis=0), 2, axis=1)`` of ``cluster2noun``, and
    ``F.interpolate(mask, (64, 64))`` of ``set_masks_32``)."""
    return F.interpolate(image[None, None].float(), size=tuple(size), mode="nearest")[0, 0]


def segment_object_scores(segments: torch.Tensor, object_map: torch.Tensor, num_segments: int) -> torch.Tensor:
    """``score(c)`` of ``cluster2noun`` (SEG L70-86): the mean over segment ``c`` of the object
    word's map normalised as the official code does, ``(m - |min m|) / max m`` (not min-max).
    ``segments`` ``[N]`` labels, ``object_map`` ``[N]`` on the same grid. Empty segments score 0."""
    m = object_map.reshape(-1).float()
    normalised = (m - m.min().abs()) / m.max()
    sums = torch.zeros(num_segments, device=m.device).index_add_(0, segments.to(m.device), normalised)
    counts = torch.bincount(segments.to(m.device), minlength=num_segments).float()
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums))


def object_segments(scores: torch.Tensor, ratio: float = OBJECT_SCORE_RATIO) -> torch.Tensor:
    """The segments named by the object word (``cluster2noun`` L87-92 for one word): ``s_c >
    ratio * mean(s without its single largest value)``. Returns a ``[num_segments]`` bool.

    The official code leaves every segment "BG" when none passes, and its AdaIN then computes NaN
    statistics over an empty mask; here the best-scoring segment is taken instead (our choice)."""
    largest = int(scores.argmax())
    rest = torch.cat([scores[:largest], scores[largest + 1 :]])
    threshold = ratio * rest.mean() if rest.numel() else scores.new_tensor(float("-inf"))
    chosen = scores > threshold
    if not bool(chosen.any()):
        chosen[largest] = True
    return chosen


def self_segmentation_mask(self_attention: torch.Tensor, cross_attention: torch.Tensor, token: int,
                           self_grid: tuple[int, int], cross_grid: tuple[int, int],
                           num_segments: int = NUM_SEGMENTS, n_init: int = NUM_INITS, seed: int = KMEANS_SEED,
                           ratio: float = OBJECT_SCORE_RATIO) -> torch.Tensor:
    """One image's object mask by self-segmentation (``get_object_masks`` at one resolution, SEG
    L42-100): segments of the self-attention at ``self_grid``, named by the word ``token`` of the
    cross-attention at ``cross_grid`` (nearest-upsampled to ``self_grid``; the official pairs the
    32x32 self-attention with the 16x16 cross-attention, the 64x64 with the 32x32). Returns a
    binary float ``[h, w]`` on ``self_grid``."""
    if self_attention.shape[0] != self_grid[0] * self_grid[1]:
        raise ValueError(f"self-attention map {tuple(self_attention.shape)} does not fit a {self_grid} grid")
    segments = self_attention_segments(self_attention, num_segments, n_init, seed)
    object_map = upsample_nearest(word_map(cross_attention, token, cross_grid), self_grid).to(segments.device)
    chosen = object_segments(segment_object_scores(segments, object_map.reshape(-1), num_segments), ratio)
    return chosen[segments].reshape(self_grid).float()


def cross_attention_mask(cross_attention: torch.Tensor, token: int, grid: tuple[int, int],
                         threshold: float = CROSS_THRESHOLD) -> torch.Tensor:
    """``cross_attn_map`` (SEG L102-116): the word's map, min-max normalised, ``> threshold``.
    Returns a binary float ``[h, w]`` on ``grid``. A constant map (max = min) selects nothing."""
    m = word_map(cross_attention, token, grid)
    span = m.max() - m.min()
    if float(span) <= 0:
        return torch.zeros_like(m)
    return ((m - m.min()) / span > threshold).float()
