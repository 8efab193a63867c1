"""Difference Inversion's building blocks (delta interpolation, Difference tokens, losses), in
plain PyTorch.

Difference Inversion (Kim, Kim, Kim, CVPR 2025, arXiv 2506.07750) solves the image analogy
A : A' :: B : B'. It learns a few *Difference tokens* D that encode only the A -> A' change and
appends them to a full prompt of B. Three parts, each one function here:

1. Delta interpolation (Sec. 4.2): the target direction D_interp is a slerp between the CLIP
   image delta and the CLIP caption delta, alpha = 0.8 (:func:`delta_interpolation`).
2. Token consistency loss (Sec. 4.3): [P(A); +D] must denoise A', and [P(A'); -D] must
   denoise A (:func:`token_consistency_losses`). A CLIP loss ties the projected Difference
   tokens to D_interp (:func:`clip_direction_loss`). Its exact form is not public, so it is
   taken from VISII.
3. Zero initialisation of D (:func:`difference_tokens`).

No official code for Difference Inversion has been released. Everything the paper leaves open is
taken from its predecessor VISII (Nguyen, Li, Ojha, Lee, "Visual Instruction Inversion: Image
Editing via Visual Prompting", NeurIPS 2023), official code ``thaoshibe/visii`` @ 83e678f,
``visii.py`` (cited as ``visii.py:L``) and ``configs/config_ip2p.yaml``.

Embeddings here are vectors on the last axis (``[..., C]``). Every function broadcasts over the
leading axes. The model is only seen through a ``predict(latent, t, conditioning)`` callable
and a regression ``target`` the caller computes (eps for eps-prediction, v for v-prediction).
This keeps the module free of any parameterisation and of ComfyUI.

Token space. The pack's DeltaInterpolationTrainer keeps D, by default, in the text encoders'
*output* (conditioning) space, as VISII optimises its instruction there: :func:`add_to_padding_rows`
adds +-D onto the last K padding rows of the encoded prompt, so a zero D leaves the conditioning
exactly as it was and -D is exactly the reverse change, the two properties the paper's argument
(zero init, negation) needs. The CLIP-loss feature is :func:`difference_token_feature` of D's CLIP-L
block. As an option D lives in the *input* token-embedding space (a standard ComfyUI ``embedding:``
file): the conditioning is then made by running the text encoder on the prompt with D inserted,
and the CLIP-loss feature is taken from the encoder's final-LayerNorm *outputs at the K positions
of D* (VISII's mean-then-project, visii.py:927-934). :func:`append_tokens` is the literal
concatenation; the losses, slerp and timestep schedule do not depend on the choice.

Rectified-flow models (FLUX.1; not in the paper, which uses SD). The consistency loss keeps its form
with the model's own target, the velocity eps - x0 at x = (1 - sigma) x0 + sigma eps
(:func:`noised_latent` with ``FLOW``). FLUX reads a pooled CLIP-L vector beside the text rows; the pack
gives D a pooled part too (:func:`add_to_pooled`), zero-initialised and negated like the rows.

References
- Kim, Kim, Kim, "Difference Inversion: Interpolate and Isolate the Difference with Token
  Consistency for Image Analogy Generation", CVPR 2025 (project page kdst-team/DifferenceInversion).
- Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985 (slerp).
- Nguyen et al., VISII, NeurIPS 2023, official code thaoshibe/visii.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .inversion import FLOW, VE

Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``predict(latent, t, conditioning) -> prediction`` (eps or v, the same kind as ``target``)."""

Composer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``compose(prompt_embeds, signed_tokens) -> conditioning``: how [P; +-D] is built."""

# Below this sine of the angle, two unit vectors are treated as parallel or antiparallel.
_PARALLEL_EPS = 1e-6


# --- delta interpolation (Sec. 4.2) ---------------------------------------------------------


def normalize(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """v / ||v||_2 over the last axis. A zero vector stays zero (it is not turned into NaN).

    VISII normalises its edit direction the same way: ``e / e.norm(p=2, dim=-1, keepdim=True)``
    (visii.py:775).
    """
    return F.normalize(v, p=2.0, dim=-1, eps=eps)


def _orthogonal_unit(a: torch.Tensor) -> torch.Tensor:
    """A unit vector orthogonal to the unit vector ``a``. It is deterministic: Gram-Schmidt
    applied to the basis vector along a's smallest |component|. It is used only when the
    great circle is undefined (b = -a)."""
    k = a.abs().argmin(dim=-1, keepdim=True)
    e = torch.zeros_like(a).scatter_(-1, k, 1.0)
    return normalize(e - (a * e).sum(-1, keepdim=True) * a)


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation of the directions of ``a`` and ``b`` (Shoemake 1985).

    slerp(a, b; alpha) = sin((1 - alpha) theta) / sin theta * a + sin(alpha theta) / sin theta * b,
    where theta = angle(a, b). This is Difference Inversion's Eq. for D_interp (Sec. 4.2).
    alpha = 0 gives a, alpha = 1 gives b, and the result has unit norm for every alpha.

    Both inputs are normalised first. The equivalent form cos(alpha theta) a + sin(alpha theta) u
    is used instead, with u = normalize(b - (a.b) a) and theta = atan2(||b - (a.b) a||, a.b).
    atan2 keeps theta accurate near 0 and pi, where acos loses precision. It needs no division by
    sin theta. Degenerate cases:
      * nearly parallel (sin theta ~ 0 and a.b > 0): normalised lerp, which equals slerp to first order;
      * antiparallel (b = -a): every great circle through a and -a is valid. One is chosen
        deterministically (see ``_orthogonal_unit``), so the result still has unit norm and
        ends at b.

    ``alpha`` is a float or a tensor that broadcasts over the leading axes of ``a`` and ``b``.
    """
    a, b = torch.broadcast_tensors(normalize(a), normalize(b))
    alpha = torch.as_tensor(alpha, dtype=a.dtype, device=a.device)
    if alpha.ndim > 0:
        alpha = alpha.unsqueeze(-1)
    dot = (a * b).sum(-1, keepdim=True)
    perp = b - dot * a
    perp_norm = perp.norm(dim=-1, keepdim=True)
    theta = torch.atan2(perp_norm, dot)

    degenerate = perp_norm < _PARALLEL_EPS
    antiparallel = degenerate & (dot < 0)
    u = torch.where(degenerate, _orthogonal_unit(a), perp / perp_norm.clamp_min(_PARALLEL_EPS))
    rotated = torch.cos(alpha * theta) * a + torch.sin(alpha * theta) * u
    # Nearly parallel: theta ~ 0, so use a normalised lerp. u is then arbitrary but has no effect.
    lerped = normalize((1.0 - alpha) * a + alpha * b)
    parallel = degenerate & ~antiparallel
    return torch.where(parallel, lerped, rotated)


def delta_interpolation(
    img_before: torch.Tensor,
    img_after: torch.Tensor,
    txt_before: torch.Tensor,
    txt_after: torch.Tensor,
    alpha: float | torch.Tensor = 0.8,
) -> torch.Tensor:
    """D_interp = Slerp(D_img, D_txt; alpha), Difference Inversion Sec. 4.2.

    D_img = normalize(E_I(A') - E_I(A)) and D_txt = normalize(E_T(cap A') - E_T(cap A)).
    E_I and E_T are the *projected* CLIP image and text embeddings of one CLIP model (its joint
    space; ViT-L/14 gives 768-d vectors). The captions come from BLIP-2.

    Convention (project page ablation figure ``ablation_alpha.png``, columns labelled "0
    (image)" ... "1.0 (text)"): alpha weights the **text** endpoint. alpha = 0 is the pure image
    delta, alpha = 1 the pure text delta, and the paper's alpha = 0.8 leans towards the text delta.

    Like VISII (visii.py:770-775), the raw projected features are subtracted and then only the
    difference is normalised. The embeddings are not normalised per image first. The paper
    gives no normalisation order.
    """
    if img_before.shape[-1] != txt_before.shape[-1]:
        raise ValueError(
            f"image ({img_before.shape[-1]}-d) and text ({txt_before.shape[-1]}-d) embeddings must "
            "share CLIP's joint (projected) space"
        )
    d_img = normalize(img_after - img_before)
    d_txt = normalize(txt_after - txt_before)
    return slerp(d_img, d_txt, alpha)


# --- Difference tokens (Sec. 4.3, zero init) ------------------------------------------------


def difference_tokens(
    num_tokens: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device | str] = None,
    requires_grad: bool = True,
) -> torch.Tensor:
    """The learnable Difference tokens D, ``[num_tokens, width]``, initialised to **zero**.

    The project page says every Difference token starts at 0 (index.html l.199). Its ablation
    "Config C" shows that random or word initialisation leaks content. ``width`` is the width of
    the conditioning the UNet cross-attends to, e.g. 768 for SD1.5.
    """
    if num_tokens < 1 or width < 1:
        raise ValueError(f"need num_tokens >= 1 and width >= 1, got {num_tokens}, {width}")
    return torch.zeros(num_tokens, width, dtype=dtype, device=device, requires_grad=requires_grad)


def append_tokens(prompt_embeds: torch.Tensor, signed_tokens: torch.Tensor) -> torch.Tensor:
    """[P ; s D]: append the (signed) tokens after the prompt's rows, along the token axis.

    ``prompt_embeds`` is ``[B, L, C]`` (or ``[L, C]``) and ``signed_tokens`` is ``[K, C]``, or
    ``[B, K, C]``. The result is ``[B, L + K, C]``. Cross-attention accepts any sequence length.
    VISII instead pastes into the 77 rows at ``eos + 2`` (visii.py:1332-1334). To do that, pass
    another :data:`Composer` to :func:`token_consistency_losses`.
    """
    tokens = signed_tokens.to(prompt_embeds.dtype)
    if tokens.ndim == prompt_embeds.ndim - 1:
        tokens = tokens.expand(prompt_embeds.shape[:-2] + tokens.shape)
    return torch.cat([prompt_embeds, tokens], dim=-2)


def add_to_padding_rows(conditioning: torch.Tensor, signed_rows: torch.Tensor) -> torch.Tensor:
    """[P ; s D] in the conditioning space: ``conditioning`` ``[B, T, W]`` (the text encoder's output,
    T = 77 x chunks for CLIP, T >= 256 for FLUX.1's T5-XXL) with ``signed_rows`` ``[K, W]`` added onto
    its **last K rows**, the padding after the end token of the last chunk (the caller checks that
    they are padding).

    The sequence length stays T. This is the composition of research note
    ``docs/research/difference_inversion_official.md`` section 4.3 (option C), chosen over
    :func:`append_tokens` because (i) a zero difference (or strength 0) gives P back *exactly*
    (x + 0 = x), which the paper's zero-initialisation argument and an exact replay of B need, while
    appended zero rows still dilute every cross-attention softmax; (ii) a T that is not a multiple of
    77 stops ComfyUI batching cond with uncond. VISII also keeps 77 rows and edits them in place
    (visii.py:941-944, 1333-1334). Cross-attention has no positional encoding on the context, so where
    the rows sit does not matter, only what they hold. Differentiable in ``signed_rows``.
    """
    k = signed_rows.shape[-2]
    if k > conditioning.shape[-2]:
        raise ValueError(f"{k} rows do not fit a conditioning of {conditioning.shape[-2]} rows")
    rows = signed_rows.to(device=conditioning.device, dtype=conditioning.dtype)
    head, tail = conditioning[..., :-k, :], conditioning[..., -k:, :]
    return torch.cat([head, tail + rows], dim=-2)


# --- token consistency loss (Sec. 4.3) ------------------------------------------------------


def token_consistency_losses(
    predict: Predictor,
    tokens: torch.Tensor,
    prompt_before: torch.Tensor,
    prompt_after: torch.Tensor,
    noisy_before: torch.Tensor,
    noisy_after: torch.Tensor,
    t: torch.Tensor,
    target_before: torch.Tensor,
    target_after: torch.Tensor,
    compose: Composer = append_tokens,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_after, L_before) of Difference Inversion's token consistency loss (Sec. 4.3, main figure):

        L_after  = || target_A'  - pred( z_{A',t}, t, [P(A) ; +D] ) ||^2
        L_before = || target_A   - pred( z_{A,t},  t, [P(A'); -D] ) ||^2

    Adding D to A's prompt must reconstruct A'. Negating it in A''s prompt must reconstruct A.
    The figure shows "- DIFF tokens", so this uses negation, not removal.
    ``noisy_*`` are the noised latents z_{X,t}. ``target_*`` is what the model regresses: the
    noise eps for eps-prediction (as in the paper and VISII), or v. The caller picks eps and t,
    and may share them between the two terms. The squared norm is a mean squared error, as in
    VISII (``nn.MSELoss()`` on fp32 values, visii.py:882 and 925). Gradients flow to ``tokens``
    (and to nothing else the caller has frozen). The weighted sum is the caller's job: VISII
    uses lambda_mse = 4 (configs/config_ip2p.yaml:26).
    """
    pred_after = predict(noisy_after, t, compose(prompt_before, tokens))
    pred_before = predict(noisy_before, t, compose(prompt_after, -tokens))
    loss_after = F.mse_loss(pred_after.float(), target_after.float())
    loss_before = F.mse_loss(pred_before.float(), target_before.float())
    return loss_after, loss_before


# --- CLIP direction loss (VISII form) -------------------------------------------------------


def difference_token_feature(
    tokens: torch.Tensor, text_projection: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """text_projection(mean over tokens), the projected text feature of the Difference tokens.

    This follows VISII (visii.py:928-929): ``text_projection(prompt_embeds[0].mean(0, keepdim=True))``,
    where ``text_projection`` is the CLIP ViT-L/14 ``text_projection`` layer (visii.py:777). VISII
    averages over all 77 rows of its optimised prompt. Difference Inversion ties *the Difference
    tokens* to D_interp, so only the K tokens are averaged here.
    """
    return text_projection(tokens.mean(dim=-2))


def clip_direction_loss(
    projected_token_feature: torch.Tensor,
    d_interp: torch.Tensor,
    max_similarity: float = 0.5,
) -> torch.Tensor:
    """VISII's CLIP loss, -clamp(cos(d, g), -1, 0.5), with g = the normalised projected feature.

    VISII (visii.py:930-934):
        text_embeds = text_embeds / text_embeds.norm(p=2, dim=-1, keepdim=True)
        loss_clip = nn.CosineSimilarity()(edit_direction_embed, text_embeds)
        loss_clip = torch.clamp(loss_clip, min=-1, max=0.5)
        loss = loss - lambda_clip * loss_clip            # lambda_clip = 0.1 (config_ip2p.yaml:25)
    ``edit_direction_embed`` is the unit CLIP image delta (visii.py:774-775). Here it is D_interp.
    This returns the term that gets *added* with weight lambda_clip: ``-clamp(cos, -1, max_similarity)``,
    averaged over leading axes. It lies in [-max_similarity, 1] and reaches its minimum
    -max_similarity once cos >= max_similarity. The clamp then stops the pull (zero gradient).

    At the zero initialisation the feature is 0. The loss is then finite (0), but the gradient
    of a cosine at 0 is huge, about 1/eps. Clip gradients before the optimiser step, as VISII
    does with ``clip_grad_value_`` (visii.py:937).
    """
    g = normalize(projected_token_feature)
    cos = F.cosine_similarity(d_interp.to(g.dtype), g, dim=-1, eps=1e-8)
    return -torch.clamp(cos, min=-1.0, max=max_similarity).mean()


# --- timestep sampling (VISII) --------------------------------------------------------------


def shuffled_timesteps(
    num_steps: int,
    num_train_timesteps: int = 1000,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """One training timestep per optimisation step, drawn from a shuffled schedule as VISII does.

    VISII (visii.py:893-907) takes ``total_index = range(0, 1000)`` and shuffles it once with
    ``random.shuffle``. Step ``index`` then trains at timestep ``t = index``, with the pre-drawn
    noise ``noises[index]`` (visii.py:886-888, 903). So 1000 steps visit every timestep
    0..999 exactly once.
    Here this is ``torch.randperm(num_train_timesteps)[:num_steps]``: distinct timesteps for
    ``num_steps <= num_train_timesteps``. Longer runs concatenate fresh permutations, which is
    the ``TODO: * times number of iterations`` at visii.py:896. Timesteps are then distinct within
    each block of ``num_train_timesteps``. The result is int64 ``[num_steps]`` and is
    deterministic for a seeded ``generator``.
    """
    if num_steps < 0 or num_train_timesteps < 1:
        raise ValueError(
            f"need num_steps >= 0 and num_train_timesteps >= 1, got {num_steps}, {num_train_timesteps}"
        )
    blocks = []
    remaining = num_steps
    while remaining > 0:
        perm = torch.randperm(num_train_timesteps, generator=generator)
        blocks.append(perm[:remaining])
        remaining -= blocks[-1].numel()
    if not blocks:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(blocks)


# --- training-loop helpers -----------------------------------------------------------------


def noised_latent(x0: torch.Tensor, sigma: torch.Tensor | float, noise: torch.Tensor,
                  process: str = VE) -> torch.Tensor:
    """z_{X,t} in the coordinates ComfyUI's model takes, for ``process``:

    - ``VE`` (eps/v-prediction UNets): x = x0 + sigma(t) * eps. This is the paper's
      z_{X,t} = sqrt(abar_t) z_X + sqrt(1 - abar_t) eps (figure steps 4/5) divided by sqrt(abar_t), with
      sigma(t) = sqrt((1 - abar_t) / abar_t) (the VP-to-sigma correspondence of Karras et al. 2022): the
      form ComfyUI's models take, which rescale by c_in = 1 / sqrt(sigma^2 + 1) = sqrt(abar_t)
      themselves. The noise eps (and so the eps / v targets) is the same in both forms.
    - ``FLOW`` (rectified-flow models, FLUX.1): x = (1 - sigma) x0 + sigma eps (Liu et al. 2023, Eq. 1;
      ``core.inversion.noisy_latent``), whose regression target is the velocity eps - x0.
    """
    if not torch.is_tensor(sigma):
        sigma = torch.tensor(float(sigma), dtype=x0.dtype, device=x0.device)
    sigma = sigma.to(x0.dtype).to(x0.device)
    while sigma.ndim < x0.ndim:
        sigma = sigma.unsqueeze(-1)
    if process == FLOW:
        return (1.0 - sigma) * x0 + sigma * noise
    return x0 + sigma * noise


def add_to_pooled(pooled: torch.Tensor, signed_delta: torch.Tensor) -> torch.Tensor:
    """The pooled text vector with a (signed) difference added: ``pooled`` ``[B, W]`` + ``signed_delta``
    ``[1, W]``, in ``pooled``'s dtype and device. As :func:`add_to_padding_rows`, a zero delta gives
    ``pooled`` back exactly and a negated one the exact reverse change. (FLUX-class models read the
    pooled CLIP-L vector through ``vector_in``: it modulates every block, so a difference needs it to
    reach what the text rows cannot; this pack's choice, the paper has no pooled vector.)"""
    return pooled + signed_delta.to(device=pooled.device, dtype=pooled.dtype)


# --- fair selection of the tokens (this pack; neither paper has a validation set) ---------------

KEEP_BEST_ON_VALIDATION = "best_on_validation"
KEEP_LAST = "last"
KEEP_MODES = (KEEP_BEST_ON_VALIDATION, KEEP_LAST)


def validation_timesteps(count: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """``count`` timesteps spread evenly over the training schedule: the midpoints of ``count`` equal
    bins of 0..T-1, ``floor((i + 1/2) T / count)``.

    VISII keeps the prompt of the lowest *single-draw* MSE (visii.py:949-952), each draw at a new
    timestep. That error changes by orders of magnitude with t (eps-prediction: large at small t),
    far more than the tokens change it, so the "best" step is the one that drew a favourable t.
    Judging every candidate on the same fixed timesteps (and the same noise, see
    :func:`validation_noises`) removes t from the comparison. The papers give no rule; this is the
    pack's choice.
    """
    if count < 1 or num_train_timesteps < 1:
        raise ValueError(f"need count >= 1 and num_train_timesteps >= 1, got {count}, {num_train_timesteps}")
    count = min(count, num_train_timesteps)
    return ((torch.arange(count, dtype=torch.float64) + 0.5) * num_train_timesteps / count).floor().long()


def validation_noises(count: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """``[count, *shape]`` standard normal noise, one per validation timestep, fixed by ``seed``:
    drawn from a generator of its own, so the validation set is the same for every candidate and
    does not shift the training draws."""
    generator = torch.Generator(device="cpu").manual_seed(seed % (2 ** 63))
    return torch.randn((count, *shape), generator=generator)


def is_validation_step(step: int, total_steps: int, every: int) -> bool:
    """Candidates are judged after every ``every``-th update and after the last one (``step`` counts
    completed updates, 1..total_steps)."""
    return step == total_steps or (every > 0 and step % every == 0)


@dataclass
class TokenSelection:
    """Which tokens a training run keeps: ``best_on_validation`` keeps the candidate of the lowest
    validation loss (the mean over one fixed validation set, :func:`validation_timesteps`), ``last``
    the final one. Every candidate's validation loss is recorded either way. The zero
    initialisation is no difference at all: it is recorded as the baseline, never kept."""

    keep: str = KEEP_BEST_ON_VALIDATION
    baseline: float = math.nan
    history: list[tuple[int, float]] = field(default_factory=list)
    kept_step: int = -1
    kept_loss: float = math.nan
    kept_tokens: Optional[dict[str, torch.Tensor]] = None

    def __post_init__(self) -> None:
        if self.keep not in KEEP_MODES:
            raise ValueError(f"keep must be one of {KEEP_MODES}, got {self.keep!r}")

    def offer(self, step: int, loss: float, tokens: dict[str, torch.Tensor]) -> bool:
        """Records candidate ``tokens`` (after ``step`` updates) with validation ``loss``; True when kept."""
        loss = float(loss)
        self.history.append((step, loss))
        better = not (loss >= self.kept_loss)  # a NaN kept_loss (nothing kept yet) is beaten by anything
        if self.keep == KEEP_LAST or self.kept_tokens is None or (better and math.isfinite(loss)):
            self.kept_step, self.kept_loss = step, loss
            self.kept_tokens = {k: v.detach().clone() for k, v in tokens.items()}
            return True
        return False

    def summary(self) -> str:
        """One line per candidate and the choice, for the node's output and progress text."""
        lines = [f"keep: {self.keep}; validation loss (mean over the fixed validation set):"]
        if math.isfinite(self.baseline):
            lines.append(f"  zero difference (start): {self.baseline:.6f}")
        for step, loss in self.history:
            mark = "  <- kept" if step == self.kept_step else ""
            lines.append(f"  step {step}: {loss:.6f}{mark}")
        return "\n".join(lines)


def validation_loss(evaluate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    sigmas: torch.Tensor, noises: torch.Tensor) -> float:
    """The mean of ``evaluate(sigma_i, noise_i)`` (a candidate's consistency error L_after + L_before
    at one draw) over the fixed validation draws: the same draws for every candidate."""
    total = 0.0
    for sigma, noise in zip(sigmas, noises):
        total += float(evaluate(sigma, noise))
    return total / max(1, len(sigmas))
