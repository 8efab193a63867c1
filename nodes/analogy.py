"""Image analogy A : A' :: B : B' by Difference Inversion (Kim, Kim, Kim, CVPR 2025).

DeltaInterpolationTrainer learns K Difference tokens from a before/after pair, in the text encoders'
output (conditioning) space by default, saved in models/differences, or in their input space as a
standard ComfyUI embedding; TokenInjector adds them (or a saved one, by name) to a prompt of B.
The workflow ``image_analogy`` inverts B (edit-friendly, at the sampling cfg) and replays it with that
prompt to make B': with a zero difference B' is B. On FLUX-class flow models (``image_analogy_flux``)
the loss is the flow-matching error, the rows are those of the text encoder FLUX reads (FLUX.1:
T5-XXL) and the difference has a pooled CLIP-L part, which carries the CLIP loss.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..core import difference as dif
from . import host
from .host import InputError, io

CATEGORY = f"{host.ROOT_CATEGORY}/analogy"

DifferenceType = io.Custom("EXEMPLAR_DIFFERENCE")

DEFAULT_TOKENS = 4

IF_EXISTS_ERROR, IF_EXISTS_REUSE, IF_EXISTS_OVERWRITE = "error", "reuse", "overwrite"
IF_EXISTS = (IF_EXISTS_ERROR, IF_EXISTS_REUSE, IF_EXISTS_OVERWRITE)
METADATA_KEY = "exemplar_edit"

CONDITIONING, INPUT_EMBEDDING = "conditioning", "input_embedding"
TOKEN_SPACES = (CONDITIONING, INPUT_EMBEDDING)

POOLED = "pooled"
"""The key of the pooled-vector part of a conditioning-space difference (FLUX-class models), beside
the text encoders' keys ("l", "g", "t5xxl")."""
POOLED_FILE_KEY = "pooled_output"
"""Its tensor name in a difference file, beside the text encoders' embedding keys ("clip_l", "t5xxl")."""


@dataclass
class DifferenceEmbedding:
    """Difference tokens per text encoder (key as in ``clip.tokenize``: "l", "g", ...), ``[K, width]``."""

    rows: dict[str, torch.Tensor]
    space: str = INPUT_EMBEDDING  # CONDITIONING: added onto encoder output rows; INPUT_EMBEDDING: token vectors
    name: str = ""
    path: str = ""
    losses: list[float] = field(default_factory=list)  # total loss per step
    selection: Optional[dif.TokenSelection] = None  # validation losses and the kept step
    trained_for: Optional[dict] = None  # ``text_record``: the model kind and text layout it was trained with


def text_record(model, rows: dict[str, torch.Tensor], file_keys: dict[str, str]) -> dict:
    """What a difference was trained for, saved in its file and checked by Token Injector: the model's
    latent family and prediction, and the width of each part of the difference by its file key."""
    return {"model_family": host.model_family(model), "prediction": host.prediction_type(model),
            "parts": {file_keys[key]: int(value.shape[-1]) for key, value in rows.items()}}


def describe_parts(parts: dict[str, int]) -> str:
    """``{"t5xxl": 4096, "pooled_output": 768}`` as 't5xxl rows (4096 wide) and a pooled vector (768)'."""
    rows = [f"{key} ({width} wide)" for key, width in parts.items() if key != POOLED_FILE_KEY]
    text = ("rows of " + " + ".join(rows)) if rows else "no text rows"
    if POOLED_FILE_KEY in parts:
        text += f" and a pooled vector ({parts[POOLED_FILE_KEY]} wide)"
    return text


DIFFERENCE_FOLDERS = "models/differences (token_space input_embedding: models/embeddings)"


def check_embedding_name(name: str, input_name: str = "name") -> str:
    """The file stem for ``name`` (the trainer's ``name``, the injector's ``embedding_name``: one rule);
    refuses names that are not a plain file name ``embedding:NAME`` can use."""
    return host.file_stem(name, input_name, DIFFERENCE_FOLDERS)


def difference_path(stem: str, space: str) -> str:
    """Input-space differences are ``embedding:`` files (models/embeddings); conditioning-space ones
    live in models/differences, where 'embedding:NAME' cannot mistake them for input vectors."""
    folder = host.differences_folder() if space == CONDITIONING else host.embeddings_folder()
    return os.path.join(folder, f"{stem}.safetensors")


def check_padding_room(clip, tokens: dict, num_tokens: int, input_name: str, layout=None) -> None:
    """A conditioning-space difference is added onto the last ``num_tokens`` rows of the last chunk of
    the text encoders that form the conditioning (``layout``; CLIP: 77-row chunks, FLUX.1's T5-XXL: one
    chunk of at least 256 rows; ``core.difference.add_to_padding_rows``): they must be padding, after
    the end token."""
    keys = None if layout is None else [slot.key for slot in layout]
    room = host.padding_rows(clip, tokens, keys)
    if room < num_tokens:
        chunk = "T5 tokens (256 rows)" if keys is not None and "t5xxl" in keys else "last 77-token chunk"
        fixes = ("shorten the prompt or train with fewer num_tokens" if "T5" in chunk else
                 "shorten the prompt by a few words (or lengthen it into a new chunk), train with fewer "
                 "num_tokens, or use token_space input_embedding")
        raise InputError(
            f"{input_name}: its {chunk} has {room} padding rows after the end token, fewer than the "
            f"{num_tokens} rows of the difference (it is added onto padding rows so that the prompt itself is "
            f"unchanged); {fixes}")


def conditioning_with_difference(conditioning: list, layout, rows: dict[str, torch.Tensor],
                                 strength: float) -> list:
    """CONDITIONING [P; strength * D] in the conditioning space: every entry's cond with the difference
    rows (the text encoders' blocks side by side, as ``layout`` orders them) added onto its last K
    rows and, where the difference has a pooled part (FLUX-class models), its pooled output shifted by
    it; everything else is P's own. ``strength * D == 0`` gives P's values exactly."""
    block = torch.cat([rows[slot.key].float() for slot in layout], dim=-1) * strength
    out = []
    for cond, extra in conditioning:
        extra = dict(extra)
        if POOLED in rows:
            extra["pooled_output"] = dif.add_to_pooled(extra["pooled_output"], rows[POOLED].float() * strength)
        out.append([dif.add_to_padding_rows(cond, block), extra])
    return out


def _check_images(image_before: torch.Tensor, image_after: torch.Tensor) -> None:
    for name, image in (("image_before", image_before), ("image_after", image_after)):
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3:
            raise InputError(f"{name}: expected an IMAGE batch [batch, height, width, channels]")
    if image_before.shape[:3] != image_after.shape[:3]:
        raise InputError(
            f"image_after: {tuple(image_after.shape[:3])} (batch, height, width) does not match image_before's "
            f"{tuple(image_before.shape[:3])}; resize or crop both images of the pair to the same size "
            "(e.g. ImageScale) and give the same number of befores and afters"
        )
    if min(image_before.shape[1:3]) < 16:
        raise InputError(f"image_before: {image_before.shape[2]}x{image_before.shape[1]} px is too small")


def _encode_pair(model, clip, tokens_a: dict, tokens_b: dict) -> tuple[list, list]:
    """The CONDITIONINGs of two token lists. For a model without a pooled text input (SD1.x, SD2.x)
    and single-chunk prompts they run as one text-encoder batch: the encoder sees each chunk alone
    and the result is split back, so it equals two separate encodes (only the first pooled output
    would be kept, and these models do not read it)."""
    single = all(len(chunks) == 1 for tokens in (tokens_a, tokens_b) for chunks in tokens.values())
    if single and not host.uses_pooled_text(model):
        merged = {key: tokens_a[key] + tokens_b[key] for key in tokens_a}
        cond, extra = host.encode_tokens(clip, merged)[0]
        length = cond.shape[1] // 2
        return [[cond[:, :length], extra]], [[cond[:, length:], extra]]
    return host.encode_tokens(clip, tokens_a), host.encode_tokens(clip, tokens_b)


def difference_prompts(model, clip, prompt_tokens_before: dict, prompt_tokens_after: dict,
                       rows: dict[str, torch.Tensor]) -> tuple[list, list]:
    """The CONDITIONINGs [P(A); +D] and [P(A'); -D] of the token consistency loss (Sec. 4.3),
    differentiable with respect to ``rows`` when ``clip`` is a ``differentiable_clip``."""
    return _encode_pair(
        model, clip, host.append_embedding_rows(clip, prompt_tokens_before, rows),
        host.append_embedding_rows(clip, prompt_tokens_after, {k: -v for k, v in rows.items()}))


def term_error(run: host.ModelRun, conditioning: list, latent: torch.Tensor, sigma: torch.Tensor,
               noise: torch.Tensor) -> torch.Tensor:
    """|| target - pred(z_{X,t}, t, conditioning) ||^2 (mean) for one term of the token consistency
    loss, in the model's own target: ``(D_hat - x0) / output_scale``, which is eps - eps_hat (eps
    models) or v - v_hat (v models) at z_{X,t} = x0 + sigma * noise, and for rectified-flow models
    (FLUX.1) the flow-matching error v_hat - v of the velocity v = noise - x0 at
    z_{X,t} = (1 - sigma) x0 + sigma * noise (``dif.noised_latent``). ``latent`` is in model space
    ``[N, C, h, w]``; ``sigma`` a scalar tensor."""
    process = dif.FLOW if host.is_flow_model(run.patcher) else dif.VE
    x = dif.noised_latent(latent, sigma, noise, process)
    sigmas = sigma.reshape(1).to(x.device, x.dtype).expand(x.shape[0])
    prepared = run.prepare_conditioning(conditioning, x)
    error = (run.denoise(x, sigmas, prepared) - latent) / run.output_scale(sigmas, x)
    return error.float().pow(2).mean()


def _gradient_boundary(conditioning: list) -> tuple[list, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A copy of ``conditioning`` whose differentiable tensors are fresh leaves, and the
    (original, leaf) pairs: the UNet part of the graph can then be freed term by term, and the
    leaves' gradients carried through the text encoder afterwards."""
    out, pairs = [], []
    for cond, extra in conditioning:
        extra = dict(extra)
        if cond.requires_grad:
            leaf = cond.detach().requires_grad_(True)
            pairs.append((cond, leaf))
            cond = leaf
        for key, value in list(extra.items()):
            if torch.is_tensor(value) and value.requires_grad:
                extra[key] = value.detach().requires_grad_(True)
                pairs.append((value, extra[key]))
        out.append([cond, extra])
    return out, pairs


def consistency_step(run: host.ModelRun, prompts: tuple[list, list], latent_before: torch.Tensor,
                     latent_after: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, weight: float = 1.0,
                     extra_loss: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The token consistency loss (Sec. 4.3, see ``core.difference``), detached:

        L_after  = || target - pred(z_{A',t}, t, [P(A) ; +D]) ||^2
        L_before = || target - pred(z_{A,t},  t, [P(A'); -D]) ||^2

    with ``noise`` the shared eps ``[N, C, h, w]`` and ``prompts`` the CONDITIONINGs
    ([P(A); +D], [P(A'); -D]) of a token space. Inside ``host.gradient_mode`` with differentiable
    clones it also accumulates into the tokens' ``.grad`` the gradient of
    ``weight * (L_after + L_before) + extra_loss``; without gradients it only evaluates.

    The two UNet terms run one after the other, each followed by its own backward pass up to a
    gradient boundary at the conditioning, so only one term's UNet activations are alive at a time
    (half the memory of one batch of both); the text encoders' small graph is then backpropagated
    once with the summed conditioning gradients (and ``extra_loss``, the CLIP term)."""
    cond_after, cond_before = prompts
    values, boundary = [], []
    for conditioning, latent in ((cond_after, latent_after), (cond_before, latent_before)):
        leaves, pairs = _gradient_boundary(conditioning)
        error = term_error(run, leaves, latent, sigma, noise)
        if error.requires_grad and weight != 0:
            (weight * error).backward()
        values.append(error.detach())
        boundary += pairs
    outputs = [original for original, leaf in boundary if leaf.grad is not None]
    grads = [leaf.grad for _, leaf in boundary if leaf.grad is not None]
    if extra_loss is not None and extra_loss.requires_grad:
        outputs.append(extra_loss)
        grads.append(torch.ones_like(extra_loss))
    if outputs:
        torch.autograd.backward(outputs, grads)
    return values[0], values[1]


class InputEmbeddingSpace:
    """Difference tokens in the text encoders' input space: vectors inserted after the prompt's
    words, encoded with it (a standard ``embedding:`` file). The text encoders run in every step."""

    name = INPUT_EMBEDDING
    feature_is_projected = False  # clip_loss_rows gives hidden states, which text_projection reads

    def __init__(self, model, clip, alignment, target_slot, slots, prompt_before: str, prompt_after: str,
                 num_tokens: int):
        self.model, self.clip, self.alignment, self.target_slot = model, clip, alignment, target_slot
        self.num_tokens = num_tokens
        self.tokens_before, self.tokens_after = clip.tokenize(prompt_before), clip.tokenize(prompt_after)
        self.empty_alignment_tokens = alignment.clip.tokenize("")
        self.grad_limits = {s.key: host.token_embedding_scale(clip, s.key) for s in slots}
        self.shapes = {s.key: (num_tokens, s.width) for s in slots}
        self.file_keys = {s.key: s.embedding_key for s in slots}

    def prepare(self, device) -> None:
        """Inside ``host.gradient_mode``: the differentiable text encoders."""
        self.text_encoder = host.differentiable_clip(self.clip)
        self.align_encoder = host.differentiable_clip(self.alignment.clip)

    def prompts(self, rows: dict[str, torch.Tensor]) -> tuple[list, list]:
        return difference_prompts(self.model, self.text_encoder, self.tokens_before, self.tokens_after, rows)

    def clip_loss_rows(self, rows: dict[str, torch.Tensor], device) -> torch.Tensor:
        """The alignment encoder's final-LayerNorm outputs at the K token positions (module docstring
        of ``core.difference``): input vectors are not in CLIP's joint space themselves."""
        hidden, _ = host.last_hidden_and_pooled(
            self.align_encoder, host.append_embedding_rows(self.align_encoder, self.empty_alignment_tokens,
                                                           {self.target_slot.key: rows[self.target_slot.key]}))
        return hidden[0, 1:1 + self.num_tokens].to(device)


class ConditioningSpace:
    """Difference rows in the text encoders' output space, added onto the last K (padding) rows of
    the encoded prompt (``core.difference.add_to_padding_rows``), one block per text encoder side by
    side as the conditioning holds them (SDXL: CLIP-L then CLIP-G; FLUX.1: T5-XXL). For models that
    read a pooled text vector through FLUX's ``vector_in`` (``pooled_width``), the difference also
    has a pooled part, added onto the prompt's pooled CLIP-L vector (``core.difference.add_to_pooled``);
    the CLIP loss then acts on that part, the one in CLIP's own space on every FLUX-class model. Other
    models' pooled output (SDXL) stays the prompt's own. P(A) and P(A') are encoded once; gradients
    run from the model straight to D."""

    name = CONDITIONING

    def __init__(self, clip, target_slot, prompt_before: str, prompt_after: str, num_tokens: int,
                 pooled_width: Optional[int] = None):
        self.layout = host.conditioning_layout(clip)
        self.target_slot = target_slot
        encoded = []
        for input_name, prompt in (("prompt_before", prompt_before), ("prompt_after", prompt_after)):
            tokens = clip.tokenize(prompt)
            check_padding_room(clip, tokens, num_tokens, input_name, self.layout)
            encoded.append(host.encode_tokens(clip, tokens))
        self.cond_before, self.cond_after = encoded
        self.shapes = {slot.key: (num_tokens, slot.width) for slot in self.layout}
        self.file_keys = {slot.key: slot.embedding_key for slot in self.layout}
        # VISII clips gradient values at the largest value of the encoded prompt (visii.py:937)
        self.grad_limits, offset = {}, 0
        for slot in self.layout:
            self.grad_limits[slot.key] = max(float(c[..., offset:offset + slot.width].abs().max())
                                             for c, _ in self.cond_before + self.cond_after)
            offset += slot.width
        self.feature_is_projected = False
        if pooled_width is not None:
            pooled = [extra.get("pooled_output") for _, extra in self.cond_before + self.cond_after]
            if any(p is None or p.shape[-1] != pooled_width for p in pooled):
                raise InputError(
                    f"clip: the model reads a {pooled_width}-wide pooled text vector but this CLIP's conditioning has "
                    f"{'none' if pooled[0] is None else f'a {pooled[0].shape[-1]}-wide one'}; connect the text "
                    "encoders the model was made for (FLUX.1: DualCLIPLoader with clip_l and t5xxl, type flux)")
            self.shapes[POOLED] = (1, pooled_width)
            self.file_keys[POOLED] = POOLED_FILE_KEY
            self.grad_limits[POOLED] = max(float(p.abs().max()) for p in pooled)
            self.feature_is_projected = host.pooled_output_is_projected(clip)

    def prepare(self, device) -> None:
        """Inside ``host.gradient_mode``: ordinary (not inference-mode) copies on the device."""
        def copy(conditioning):
            return [[c.detach().clone().to(device, torch.float32),
                     {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in extra.items()}]
                    for c, extra in conditioning]
        self.cond_before, self.cond_after = copy(self.cond_before), copy(self.cond_after)

    def prompts(self, rows: dict[str, torch.Tensor]) -> tuple[list, list]:
        return (conditioning_with_difference(self.cond_before, self.layout, rows, 1.0),
                conditioning_with_difference(self.cond_after, self.layout, rows, -1.0))

    def clip_loss_rows(self, rows: dict[str, torch.Tensor], device) -> torch.Tensor:
        """The CLIP-L part of D itself. With a pooled part (FLUX-class models) that part: FLUX.1's
        pooled vector is CLIP-L's unprojected end-token state, exactly what ``text_projection`` turns
        into CLIP's text feature, and its rows (T5-XXL) are in no CLIP space. Otherwise the CLIP-L
        block of the rows: for SD1.x the conditioning is CLIP-L's final-LayerNorm output, the space
        ``text_projection`` reads; for SDXL it is the penultimate layer without the final LayerNorm,
        so the tie is approximate there (research note section 3)."""
        return rows[POOLED] if POOLED in rows else rows[self.target_slot.key]


def recorded_inputs(**values) -> dict:
    """What a trained difference depends on, as saved in its file: every value JSON-exact (a float
    comes back as the same float), so a later run compares equal exactly when its inputs are the same."""
    return json.loads(json.dumps(values, sort_keys=True))


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


REUSE_FIX = "choose another name, or set if_exists to overwrite to train again and replace it"
INJECT_FIX = ("train it again with Delta Interpolation Trainer (if_exists overwrite), or delete the file and give "
              "another name")


@dataclass
class SavedDifference:
    """A difference file read in full and checked (``read_difference_file``)."""

    rows: dict[str, torch.Tensor]  # by part key ("l", "g", "t5xxl", ``POOLED``), for the parts the file holds
    tensors: dict[str, torch.Tensor]  # as stored, by file key
    metadata: dict


def read_difference_file(path: str, file_keys: dict[str, str], widths: dict[str, int], input_name: str,
                         fix: str) -> SavedDifference:
    """The difference saved at ``path`` (one ``[K, width]`` tensor per text encoder and, on FLUX-class
    models, a ``[1, width]`` pooled part under ``POOLED_FILE_KEY``) and the file's metadata: the one
    reader of the trainer's files, for Token Injector's ``embedding_name`` and the trainer's
    ``if_exists`` reuse. ``file_keys`` maps part keys to tensor names, ``widths`` tensor names to the
    width this CLIP/model gives them. InputError naming ``input_name``, the file (relative to the models
    folder) and ``fix`` when it cannot be read, holds no tokens, holds other than floating-point
    ``[K, width]`` tensors of one K, a width that is not its text encoder's, or a value that is not
    finite (NaN tokens give a black image): never a part of it."""
    tensors, metadata = host.read_safetensors(path, input_name, fix)
    where = host.model_relative_path(path)
    if not tensors:
        raise InputError(f"{input_name}: {where} holds no tensors; {fix}")
    for key, tensor in tensors.items():
        if not tensor.is_floating_point() or tensor.ndim != 2 or 0 in tensor.shape:
            raise InputError(f"{input_name}: {where} holds {key!r} as a {str(tensor.dtype).replace('torch.', '')} "
                             f"tensor of shape {list(tensor.shape)}, not difference tokens [tokens, width]; {fix}")
        if key in widths and tensor.shape[1] != widths[key]:
            raise InputError(f"{input_name}: {where} holds {key!r} tokens {tensor.shape[1]} wide, but this CLIP's "
                             f"{key} is {widths[key]} wide; {fix}")
        if not torch.isfinite(tensor).all():
            raise InputError(f"{input_name}: {where} holds values that are not finite (NaN or infinite) in "
                             f"{key!r}; {fix}")
    counts = {key: tensor.shape[0] for key, tensor in tensors.items() if key != POOLED_FILE_KEY}
    if not counts:
        raise InputError(f"{input_name}: {where} holds no difference tokens; {fix}")
    if len(set(counts.values())) > 1:
        raise InputError(f"{input_name}: {where} holds different numbers of tokens per text encoder ({counts}); {fix}")
    rows = {key: tensors[name].float() for key, name in file_keys.items() if name in tensors}
    return SavedDifference(rows=rows, tensors=tensors, metadata=metadata)


def reuse_saved_difference(saved: SavedDifference, path: str, stem: str, inputs: dict,
                           file_keys: dict[str, str], space: str) -> DifferenceEmbedding:
    """The difference ``saved`` at ``path``, when the inputs recorded in it equal ``inputs``; otherwise
    InputError naming every field that differs."""
    where = host.model_relative_path(path)
    try:
        record = json.loads(saved.metadata.get(METADATA_KEY, "null"))
    except ValueError as e:
        raise InputError(f"name: {where} has a record of its inputs that cannot be read ({e}); {REUSE_FIX}") from None
    saved_inputs = record.get("inputs") if isinstance(record, dict) else None
    if not isinstance(saved_inputs, dict):
        raise InputError(f"name: {where} exists but records no trainer inputs (made by another tool or an older "
                         "version of this node), so it cannot be reused safely; choose another name or set if_exists "
                         "to overwrite")
    differing = sorted(k for k in set(saved_inputs) | set(inputs) if saved_inputs.get(k) != inputs.get(k))
    if differing:
        details = "; ".join(f"{k}: {_shown(saved_inputs.get(k))} in the file, {_shown(inputs.get(k))} now"
                            for k in differing)
        raise InputError(f"if_exists: {where} was trained from other inputs ({details}); choose another name to keep "
                         "both, or set if_exists to overwrite to train again")
    missing = [name for key, name in file_keys.items() if key not in saved.rows]
    if missing:
        raise InputError(f"name: {where} holds no {missing} part for this model and CLIP; {REUSE_FIX}")
    rows = saved.rows
    selection = dif.TokenSelection(record.get("keep", dif.KEEP_BEST_ON_VALIDATION))
    selection.history = [(int(step), float(loss)) for step, loss in record.get("validation", [])]
    selection.baseline = float(record.get("validation_baseline", math.nan))
    selection.kept_step = int(record.get("kept_step", -1))
    selection.kept_loss = float(record.get("validation_loss", math.nan))
    selection.kept_tokens = rows
    return DifferenceEmbedding(rows=rows, space=space, name=stem, path=path, selection=selection,
                               trained_for=record.get("trained_for"))


def load_saved_difference(clip, name: str) -> DifferenceEmbedding:
    """A saved difference by name: models/differences/<name> (conditioning space) first, then the
    embedding ComfyUI's own loader finds for 'embedding:<name>' (input space)."""
    stem = check_embedding_name(name, "embedding_name")
    path = difference_path(stem, CONDITIONING)
    if host.existing_file(path, "embedding_name", INJECT_FIX):
        slots = host.text_encoder_slots(clip)
        file_keys = {s.key: s.embedding_key for s in slots} | {POOLED: POOLED_FILE_KEY}
        saved = read_difference_file(path, file_keys, {s.embedding_key: s.width for s in slots}, "embedding_name",
                                     INJECT_FIX)
        try:
            record = json.loads(saved.metadata.get(METADATA_KEY, "null"))
        except ValueError:
            record = None
        trained_for = record.get("trained_for") if isinstance(record, dict) else None
        if not isinstance(trained_for, dict):  # made before this was recorded: its tensors say what it holds
            trained_for = {"parts": {name: int(t.shape[-1]) for name, t in saved.tensors.items()}}
        return DifferenceEmbedding(rows=saved.rows, space=CONDITIONING, name=stem, path=path, trained_for=trained_for)
    try:
        rows = host.load_embedding_rows(clip, stem)
    except InputError:
        raise InputError(f"embedding_name: no difference {stem!r} in models/differences and no embedding of that name "
                         "with vectors for this CLIP in models/embeddings; train one with Delta Interpolation Trainer "
                         "or check the name") from None
    bad = sorted(key for key, row in rows.items() if not torch.isfinite(row).all())
    if bad:
        raise InputError(f"embedding_name: the embedding {stem!r} (models/embeddings) holds values that are not finite "
                         f"(NaN or infinite) for text encoder(s) {bad}; {INJECT_FIX}")
    return DifferenceEmbedding(rows=rows, space=INPUT_EMBEDDING, name=stem)


class DeltaInterpolationTrainer(host.PackNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DeltaInterpolationTrainer",
            display_name="Delta Interpolation Trainer (Difference Inversion)",
            category=CATEGORY,
            description=(
                "Learns K Difference tokens that encode only the change from image_before (A) to image_after (A'), "
                "through your own model (Difference Inversion, Kim et al. CVPR 2025): zero-initialised tokens, a token "
                "consistency loss ([P(A); +D] must denoise A', [P(A'); -D] must denoise A) and a CLIP loss tying them "
                "to the slerp of the CLIP image and caption deltas, judged on a fixed validation set. token_space "
                "conditioning (default) adds D onto padding rows of the encoded prompt, so a zero difference leaves "
                "the prompt exactly as it was (saved in models/differences/<name>.safetensors, for Token Injector); "
                "input_embedding learns input token vectors (models/embeddings/<name>.safetensors, usable as "
                "'embedding:<name>' in any prompt)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.x, SD2.x, SDXL, or a FLUX.1-class flow model) "
                               "to learn the difference through; it is not changed (gradients run on a clone)."),
                io.Clip.Input("clip", tooltip="The model's CLIP (from the same checkpoint; FLUX.1: DualCLIPLoader clip_l + "
                              "t5xxl, type flux) with the layer setting you generate with; one set of tokens per "
                              "text encoder that forms the conditioning (SDXL: clip_l and clip_g; FLUX.1: t5xxl, "
                              "plus a pooled CLIP-L part)."),
                io.Vae.Input("vae", tooltip="The model's VAE, to encode the two images once."),
                io.Image.Input("image_before", tooltip="A: the image before the change."),
                io.Image.Input("image_after", tooltip="A': the same image after the change; same size as image_before."),
                io.ClipVision.Input("clip_vision", tooltip="A CLIP vision model (CLIPVisionLoader), for D_img = E_I(A') - E_I(A). "
                                    "The paper uses OpenAI CLIP ViT-L/14."),
                io.Combo.Input("alignment_text_encoder", options=host.text_encoder_file_names(),
                               tooltip="The text tower of the SAME CLIP model as clip_vision, with its text_projection "
                                       "(a file in models/text_encoders; for ViT-L/14 a full clip_l.safetensors). Used for "
                                       "D_txt and the CLIP loss. SD1.x checkpoints lack this projection."),
                io.String.Input("caption_before", default="", multiline=True,
                                tooltip="Caption of A: what the image shows (the paper uses BLIP-2 captions), for the "
                                        "text delta D_txt. Must differ from caption_after unless alpha is 0."),
                io.String.Input("caption_after", default="", multiline=True,
                                tooltip="Caption of A': what the changed image shows, for the text delta D_txt "
                                        "(e.g. 'a house in summer' -> 'a house in winter, covered in snow')."),
                io.String.Input("prompt_before", default="a photo", multiline=True,
                                tooltip="P(A): a prompt describing A; [P(A); +D] must reconstruct A'."),
                io.String.Input("prompt_after", default="a photo", multiline=True,
                                tooltip="P(A'): a prompt describing A'; [P(A'); -D] must reconstruct A."),
                io.String.Input("name", default="difference",
                                tooltip="File name of the difference: models/differences/<name>.safetensors (conditioning "
                                        "space, give the name to Token Injector) or models/embeddings/<name>.safetensors "
                                        "(input_embedding space, also 'embedding:<name>'). Letters, digits, '-' and '_'."),
                io.Combo.Input("if_exists", options=list(IF_EXISTS), default=IF_EXISTS_REUSE,
                               tooltip="When the file for name exists (its folder follows token_space). reuse: load it without training "
                                       "when it was trained from the same inputs (images, captions, prompts, settings, "
                                       "models; recorded in the file), refuse naming what differs otherwise. error: stop. "
                                       "overwrite: train again and replace it."),
                io.Combo.Input("token_space", options=list(TOKEN_SPACES), default=CONDITIONING,
                               tooltip="Where the tokens live. conditioning: rows added onto the text encoders' output "
                                       "(as VISII optimises it), so zero tokens change nothing and -D is exactly the "
                                       "reverse change; a file for Token Injector. input_embedding: vectors in the "
                                       "encoders' input space, a standard 'embedding:' file; a zero token there still "
                                       "changes the prompt's encoding (CLIP text encoders only, not FLUX.1's T5)."),
                io.Int.Input("num_tokens", default=DEFAULT_TOKENS, min=1, max=16,
                             tooltip="K, the number of Difference tokens (paper: not given). 4 holds a change while "
                                     "leaving little room for content; below 8 they stay one group in a prompt chunk."),
                io.Float.Input("alpha", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Slerp weight of the text delta in D_interp: 0 = image delta only, 1 = caption delta "
                                       "only (paper: 0.8)."),
                io.Int.Input("steps", default=1000, min=1, max=100000,
                             tooltip="Optimisation steps, one distinct timestep each from a shuffled schedule (VISII: 1000)."),
                io.Float.Input("learning_rate", default=0.001, min=1e-6, max=1.0, step=0.0001, round=1e-6,
                               tooltip="AdamW learning rate (VISII: 0.001)."),
                io.Float.Input("lambda_mse", default=4.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Weight of the token consistency loss (VISII: 4)."),
                io.Float.Input("lambda_clip", default=0.1, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the CLIP direction loss (VISII: 0.1)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the timestep order, the noise and the validation set: the same seed gives "
                                     "the same tokens."),
                io.Combo.Input("keep", options=list(dif.KEEP_MODES), default=dif.KEEP_BEST_ON_VALIDATION,
                               tooltip="Which tokens to save. best_on_validation: those with the lowest consistency loss "
                                       "on a fixed validation set (the same timesteps, spread over the schedule, and the "
                                       "same noise for every candidate). last: those of the final step. A single "
                                       "training draw is no measure: its error depends on its timestep far more than on "
                                       "the tokens."),
                io.Int.Input("validation_every", default=50, min=1, max=100000,
                             tooltip="Judge the tokens on the validation set after every N steps (and after the last). "
                                     "Each check costs 2 x validation_timesteps model evaluations without gradients."),
                io.Int.Input("validation_timesteps", default=8, min=1, max=100,
                             tooltip="Size of the validation set: timesteps spread evenly over the schedule, each with "
                                     "one noise fixed by the seed."),
            ],
            outputs=[
                DifferenceType.Output(display_name="DIFFERENCE", tooltip="The learned Difference tokens (as 'keep' chooses), "
                                      "for Token Injector."),
                io.String.Output(display_name="embedding_name", tooltip="The saved difference's name, for Token "
                                 "Injector's embedding_name (input_embedding space: also 'embedding:<name>' in a prompt)."),
                io.String.Output(display_name="validation", tooltip="The validation loss of every candidate, the zero "
                                 "difference's for comparison, and which step was kept."),
                io.Float.Output(display_name="validation_loss", tooltip="The validation loss of the kept tokens."),
            ],
        )

    @classmethod
    def validate_inputs(cls, name=None, caption_before=None, caption_after=None, alpha=None) -> bool | str:
        return cls.validation_result(locals())

    @classmethod
    def check_inputs(cls, values: dict) -> None:
        # only the name itself: whether the file exists is checked when the node runs, so a prompt that
        # ComfyUI answers from its cache (the same inputs again) is not refused for the file it saved
        if values.get("name") is not None:
            check_embedding_name(values["name"])
        before, after, alpha = values.get("caption_before"), values.get("caption_after"), values.get("alpha")
        if before is not None and after is not None and alpha is not None and alpha > 0 and (
                not before.strip() or not after.strip() or before.strip() == after.strip()):
            raise InputError(
                f"caption_after: {'empty' if not after.strip() or not before.strip() else 'the same as caption_before'}, "
                f"so the caption delta D_txt is zero and alpha ({alpha}, the weight of D_txt in the slerp with the "
                "image delta) has nothing to interpolate; describe A in caption_before and A' in caption_after, or set "
                "alpha to 0 to learn from the image delta alone")

    @classmethod
    def execute(cls, model, clip, vae, image_before, image_after, clip_vision, alignment_text_encoder,
                caption_before, caption_after, prompt_before, prompt_after, name, if_exists, token_space,
                num_tokens, alpha, steps, learning_rate, lambda_mse, lambda_clip, seed,
                keep=dif.KEEP_BEST_ON_VALIDATION, validation_every=50, validation_timesteps=8) -> io.NodeOutput:
        cls.refuse_invalid(locals())
        stem = check_embedding_name(name)
        path = difference_path(stem, token_space)
        if steps < 1 or num_tokens < 1:
            raise InputError("steps and num_tokens: must be at least 1")
        # the file is state, not a value: checked when the node runs, before any work
        exists = host.existing_file(path, "name", "choose another name (a folder is never replaced)")
        if exists and if_exists not in (IF_EXISTS_REUSE, IF_EXISTS_OVERWRITE):
            raise InputError(f"name: {host.model_relative_path(path)} already exists; choose another name, or set "
                             "if_exists to reuse (load it when it was trained from these inputs) or overwrite")
        _check_images(image_before, image_after)
        host.check_sigma_space_model(model, flows=True)
        slots = host.text_encoder_slots(clip)
        if token_space == INPUT_EMBEDDING:
            others = [s.embedding_key for s in slots if not host.is_clip_tokenizer(clip, s.key)]
            if others:
                raise InputError(
                    f"token_space: input_embedding learns input vectors of every text encoder and runs the encoders "
                    f"with gradients at every step; this CLIP also has {others} (T5-XXL on FLUX.1: 4.7B parameters, "
                    "no CLIP tokenizer), which this space does not support. Use token_space conditioning (its "
                    "difference rows are added onto the T5 padding rows the model reads)")
        inputs = recorded_inputs(
            model=host.model_fingerprint(model), clip=host.clip_fingerprint(clip), vae=host.vae_fingerprint(vae),
            clip_vision=host.clip_vision_fingerprint(clip_vision), alignment_text_encoder=alignment_text_encoder,
            image_before=host.content_hash(image_before), image_after=host.content_hash(image_after),
            caption_before=caption_before, caption_after=caption_after, prompt_before=prompt_before,
            prompt_after=prompt_after, token_space=token_space, num_tokens=num_tokens, alpha=alpha, steps=steps,
            learning_rate=learning_rate, lambda_mse=lambda_mse, lambda_clip=lambda_clip, seed=seed, keep=keep,
            validation_every=validation_every, validation_timesteps=validation_timesteps)
        pooled_width = host.pooled_vector_width(model) if token_space == CONDITIONING else None
        if token_space == CONDITIONING:
            layout = host.conditioning_layout(clip)
            file_keys = {s.key: s.embedding_key for s in layout}
            widths = {s.embedding_key: s.width for s in layout}
            if pooled_width is not None:
                file_keys[POOLED] = POOLED_FILE_KEY
                widths[POOLED_FILE_KEY] = pooled_width
        else:
            file_keys = {s.key: s.embedding_key for s in slots}
            widths = {s.embedding_key: s.width for s in slots}
        if exists and if_exists == IF_EXISTS_REUSE:
            saved = read_difference_file(path, file_keys, widths, "name", REUSE_FIX)
            difference = reuse_saved_difference(saved, path, stem, inputs, file_keys, token_space)
            selection = difference.selection
            return io.NodeOutput(difference, stem, selection.summary(), selection.kept_loss)
        alignment = host.load_alignment_text_encoder(alignment_text_encoder, "alignment_text_encoder")
        target_slot = next((s for s in slots if s.key == alignment.slot.key and s.width == alignment.slot.width), None)
        if target_slot is None:
            raise InputError(
                f"alignment_text_encoder: it is a {alignment.slot.embedding_key} encoder ({alignment.slot.width} wide) but the "
                f"model's CLIP has {[s.embedding_key for s in slots]}; give the text encoder one of them was taken from "
                "(SD1.x and SDXL: CLIP-L)")

        # --- what does not change, computed once ---------------------------------------------
        embeds_before = host.image_embeds(clip_vision, image_before).mean(0)
        embeds_after = host.image_embeds(clip_vision, image_after).mean(0)
        if embeds_before.shape[-1] != alignment.projection.shape[0]:
            raise InputError(
                f"clip_vision: its image embeddings are {embeds_before.shape[-1]}-d but alignment_text_encoder projects to "
                f"{alignment.projection.shape[0]}-d; use the vision and text towers of one CLIP model (ViT-L/14: 768)")
        projection = alignment.projection
        _, pooled_before = host.last_hidden_and_pooled(alignment.clip, alignment.clip.tokenize(caption_before))
        _, pooled_after = host.last_hidden_and_pooled(alignment.clip, alignment.clip.tokenize(caption_after))
        text_before = pooled_before[0].to(projection.device) @ projection.T
        text_after = pooled_after[0].to(projection.device) @ projection.T
        d_interp = dif.delta_interpolation(embeds_before, embeds_after.to(embeds_before.device),
                                           text_before.to(embeds_before.device), text_after.to(embeds_before.device),
                                           alpha)

        if token_space == CONDITIONING:
            space = ConditioningSpace(clip, target_slot, prompt_before, prompt_after, num_tokens, pooled_width)
        else:
            space = InputEmbeddingSpace(model, clip, alignment, target_slot, slots, prompt_before, prompt_after,
                                        num_tokens)
        latent_before = host.model_space_latent(model, host.vae_encode(vae, image_before))
        latent_after = host.model_space_latent(model, host.vae_encode(vae, image_after))
        # one entry per training timestep, drawn uniformly: for FLUX.1 the 10000 levels of its shifted
        # schedule (ModelSamplingFlux), so the draws follow the shift the model samples with
        train_sigmas = host.training_sigmas(model)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        timesteps = dif.shuffled_timesteps(steps, len(train_sigmas), generator)

        check_timesteps = dif.validation_timesteps(validation_timesteps, len(train_sigmas))
        check_noise = dif.validation_noises(len(check_timesteps), tuple(latent_after.shape), seed + 1)
        selection = dif.TokenSelection(keep)

        rows, losses = _train(
            model, space, projection, d_interp, latent_before, latent_after, train_sigmas, timesteps,
            generator, learning_rate, lambda_mse, lambda_clip, selection, validation_every,
            train_sigmas[check_timesteps], check_noise)

        if os.path.exists(path) and if_exists != IF_EXISTS_OVERWRITE:
            raise InputError(f"name: {host.model_relative_path(path)} appeared during training; choose another name or "
                             "set if_exists to overwrite")
        trained_for = text_record(model, rows, space.file_keys)
        metadata = {METADATA_KEY: json.dumps({
            "method": "Difference Inversion (DeltaInterpolationTrainer)", "inputs": inputs, "token_space": token_space,
            "model_family": host.model_family(model), "keep": keep, "kept_step": selection.kept_step,
            "validation_loss": selection.kept_loss, "validation": selection.history,
            "validation_baseline": selection.baseline, "trained_for": trained_for}, sort_keys=True)}
        try:
            host.save_tensors_atomically(path, {space.file_keys[key]: value for key, value in rows.items()}, metadata)
        except OSError as e:  # e.g. a folder of that name made during training: never replaced
            raise InputError(f"name: {host.model_relative_path(path)} cannot be written "
                             f"({e.strerror or type(e).__name__}); choose another name and run again") from None
        difference = DifferenceEmbedding(rows=rows, space=token_space, name=stem, path=path, losses=losses,
                                         selection=selection, trained_for=trained_for)
        return io.NodeOutput(difference, stem, selection.summary(), selection.kept_loss)


def _train(model, space, projection, d_interp, latent_before, latent_after, train_sigmas, timesteps,
           generator, learning_rate, lambda_mse, lambda_clip, selection: dif.TokenSelection,
           validation_every: int, validation_sigmas: torch.Tensor, validation_noise: torch.Tensor,
           ) -> tuple[dict[str, torch.Tensor], list[float]]:
    steps = len(timesteps)
    progress = host.TrainingProgress(steps)
    display_every = max(1, steps // 100)
    device = host.compute_device()
    with host.gradient_mode():
        unet = host.differentiable_model(model)
        space.prepare(device)
        rows = {key: dif.difference_tokens(*shape, device=device) for key, shape in space.shapes.items()}
        optimizer = torch.optim.AdamW(list(rows.values()), lr=learning_rate)
        clean_before = latent_before.clone().to(device, torch.float32)
        clean_after = latent_after.clone().to(device, torch.float32)
        projection_t = projection.clone().to(device)
        project = (lambda h: h) if space.feature_is_projected else (lambda h: h @ projection_t.T)  # noqa: E731
        target = d_interp.clone().to(device)
        losses = torch.zeros(steps, device=device)
        step_sigmas = train_sigmas[timesteps].to(device)
        check_sigmas = validation_sigmas.to(device)
        check_noise = validation_noise.to(device, torch.float32)
        # noise is drawn by the CPU generator (the seed's values on every device); page-locked on
        # CUDA so that its upload does not block the loop
        pin_noise = torch.device(device).type == "cuda"

        def train_steps(run: host.ModelRun) -> None:
            def validate(step: int) -> float:
                with torch.no_grad():
                    prompts = space.prompts(rows)  # the same tokens at every validation timestep: encode once
                    return dif.validation_loss(
                        lambda sigma, noise: sum(consistency_step(
                            run, prompts, clean_before, clean_after, sigma, noise)),
                        check_sigmas, check_noise)

            with host.gradient_mode():
                selection.baseline = validate(0)
                for step in range(steps):
                    host.check_interrupted()
                    sigma = step_sigmas[step]
                    noise = torch.randn(clean_after.shape, generator=generator, pin_memory=pin_noise).to(
                        device, non_blocking=True)
                    if lambda_clip > 0:
                        feature = dif.difference_token_feature(space.clip_loss_rows(rows, device), project)
                        clip_loss = dif.clip_direction_loss(feature, target)
                    else:  # no CLIP term: skip the alignment encoder's pass
                        clip_loss = torch.zeros((), device=device)
                    optimizer.zero_grad(set_to_none=True)
                    loss_after, loss_before = consistency_step(
                        run, space.prompts(rows), clean_before, clean_after, sigma, noise,
                        lambda_mse, lambda_clip * clip_loss if lambda_clip > 0 else None)
                    mse = loss_after + loss_before
                    loss = lambda_mse * mse + lambda_clip * clip_loss.detach()
                    for key, value in rows.items():  # VISII visii.py:937; keeps AdamW's moments finite
                        torch.nn.utils.clip_grad_value_([value], space.grad_limits[key])
                    optimizer.step()
                    losses[step] = loss.detach()
                    done = step + 1
                    if dif.is_validation_step(done, steps, validation_every):
                        value = validate(done)
                        selection.offer(done, value, rows)
                        progress.update(done, f"step {done}/{steps}  validation {value:.5f}  (kept: step "
                                              f"{selection.kept_step}, {selection.kept_loss:.5f}; zero difference "
                                              f"{selection.baseline:.5f})")
                    elif done % display_every == 0:
                        shown, shown_mse, shown_clip = torch.stack(
                            [t.detach().to(loss.device, torch.float32) for t in (loss, mse, clip_loss)]).tolist()
                        progress.update(done, f"step {done}/{steps}  loss {shown:.4f}  "
                                              f"(consistency {shown_mse:.4f}, clip {shown_clip:.3f})")
                    else:
                        progress.update(done)

        host.run_with_model(unet, tuple(clean_after.shape), train_steps)
    result = {k: v.detach().float().cpu() for k, v in selection.kept_tokens.items()}
    return result, losses.cpu().tolist()


def check_difference_fits(difference: DifferenceEmbedding, layout, conditioning: list) -> None:
    """A conditioning-space difference must have a part for each text encoder that forms this CLIP's
    conditioning rows, of its width, and a pooled part only where the conditioning has a pooled vector
    of that width: otherwise it was trained for another kind of model (a FLUX.1 difference, T5 rows
    and a pooled CLIP-L vector, given an SD CLIP, or the reverse) or another text encoder."""
    pooled = conditioning[0][1].get("pooled_output") if conditioning else None
    here = {slot.embedding_key: slot.width for slot in layout}
    if difference.trained_for is not None and isinstance(difference.trained_for.get("parts"), dict):
        parts = {str(k): int(v) for k, v in difference.trained_for["parts"].items()}
    else:
        names = {slot.key: slot.embedding_key for slot in layout} | {POOLED: POOLED_FILE_KEY}
        parts = {names.get(key, key): int(value.shape[-1]) for key, value in difference.rows.items()}
    rows_part = {k: v for k, v in parts.items() if k != POOLED_FILE_KEY}
    pooled_fits = POOLED_FILE_KEY not in parts or (pooled is not None and pooled.shape[-1] == parts[POOLED_FILE_KEY])
    if rows_part == here and pooled_fits and all(slot.key in difference.rows for slot in layout):
        return
    subject = repr(difference.name) if difference.name else "it"
    family = (difference.trained_for or {}).get("model_family")
    if family:
        flow = " (rectified flow)" if difference.trained_for.get("prediction") == host.FLOW_PREDICTION else ""
        subject += f" was trained for the {family} model family{flow}, whose conditioning has"
    else:
        subject += " has"
    clip_has = describe_parts(here | ({POOLED_FILE_KEY: int(pooled.shape[-1])} if pooled is not None
                                      and POOLED_FILE_KEY in parts else {}))
    raise InputError(
        f"difference: {subject} {describe_parts(parts)}, but this CLIP's conditioning has {clip_has}; a difference "
        "only applies to the kind of model and text encoders it was trained with (FLUX.1: T5-XXL rows and a pooled "
        "CLIP-L vector; SD1.x: CLIP-L rows; SDXL: CLIP-L + CLIP-G rows). Connect that model's CLIP, or train a "
        "difference with this model")


class TokenInjector(host.PackNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TokenInjector",
            display_name="Token Injector (Difference Inversion)",
            category=CATEGORY,
            description=(
                "Adds Difference tokens to a full prompt of B and encodes it: the conditioning for B' "
                "(Difference Inversion). Conditioning-space tokens are added, times strength, onto the last padding "
                "rows of the encoded prompt: strength 0 (or a zero difference) gives exactly CLIPTextEncode of the "
                "prompt, -1 exactly the reverse change. Input-space tokens (an embedding) are appended to the words: "
                "at strength 1 this equals CLIPTextEncode with '<text> embedding:<name>'."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of the model that generates B' (the family the difference was trained with)."),
                io.String.Input("text", default="a photo", multiline=True, dynamic_prompts=True,
                                tooltip="The full prompt of B (the one B is inverted with); the Difference tokens are "
                                        "added after it."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Scale of the Difference tokens: 1 applies the learned change, negative values "
                                       "the reverse change; 0 leaves the prompt exactly as it is (conditioning space)."),
                DifferenceType.Input("difference", optional=True,
                                     tooltip="Difference tokens from Delta Interpolation Trainer. Leave unconnected to load "
                                             "embedding_name instead."),
                io.String.Input("embedding_name", default="", optional=True,
                                tooltip="Name of a saved difference, used when 'difference' is not connected: "
                                        "models/differences/<name> (conditioning space) first, else the embedding "
                                        "'embedding:<name>' loads (input space)."),
            ],
            outputs=[io.Conditioning.Output(display_name="CONDITIONING",
                                            tooltip="The conditioning of '<text> + Difference tokens', for the sampler.")],
        )

    @classmethod
    def validate_inputs(cls, embedding_name=None) -> bool | str:
        return cls.validation_result(locals())

    @classmethod
    def check_inputs(cls, values: dict) -> None:
        name = values.get("embedding_name")
        if name and name.strip():
            check_embedding_name(name, "embedding_name")

    @classmethod
    def execute(cls, clip, text, strength, difference=None, embedding_name="") -> io.NodeOutput:
        cls.refuse_invalid(locals())
        if clip is None:
            raise InputError("clip: connect the model's CLIP (a checkpoint loader's CLIP output)")
        if difference is not None:
            if not isinstance(difference, DifferenceEmbedding):
                raise InputError("difference: expected the DIFFERENCE output of Delta Interpolation Trainer")
        elif embedding_name and embedding_name.strip():
            difference = load_saved_difference(clip, embedding_name)
        else:
            raise InputError("difference: connect a Delta Interpolation Trainer, or give embedding_name")
        rows = difference.rows
        if difference.space == CONDITIONING:
            slots = host.conditioning_layout(clip)
            tokens = clip.tokenize(text)
            conditioning = host.encode_tokens(clip, tokens)
            check_difference_fits(difference, slots, conditioning)
            check_padding_room(clip, tokens, rows[slots[0].key].shape[0], "text", slots)
            return io.NodeOutput(conditioning_with_difference(conditioning, slots, rows, strength))
        slots = host.text_encoder_slots(clip)
        missing = [s.embedding_key for s in slots if s.key not in rows or rows[s.key].shape[-1] != s.width]
        if missing:
            raise InputError(
                f"difference: it has no {missing} vectors for this CLIP (it holds {sorted(rows)}); use a difference "
                "trained with a model of the same family")
        tokens = host.append_embedding_rows(clip, clip.tokenize(text),
                                            {s.key: rows[s.key].float() * strength for s in slots})
        return io.NodeOutput(host.encode_tokens(clip, tokens))
