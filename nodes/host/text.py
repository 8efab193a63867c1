"""Text encoders, embeddings, CLIP vision and the VAE: tokens, ``embedding:`` files, encodes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

import comfy.sample

from .facts import InputError

# --- text tokens, embeddings, CLIP vision (Difference Inversion, nodes/analogy.py) ---------------
#
# A Difference embedding is a few vectors per text encoder of the CLIP, in the encoder's *input*
# token-embedding space, stored as ComfyUI's ``embedding:`` files read them
# (``comfy/sd1_clip.py load_embed``): ``{"clip_l": [K, 768]}`` for SD1.x, plus ``"clip_g": [K, 1280]``
# for SDXL. Vectors enter a prompt as ``(tensor_row, 1.0)`` entries of ``clip.tokenize(...)``, exactly
# as the tokenizer inserts an ``embedding:NAME`` it loaded.


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of a CLIP: its key in ``clip.tokenize(...)`` ("l", "g", "h"), the key its
    vectors have in an embedding file ("clip_l", ...), and its token-embedding width."""

    key: str
    embedding_key: str
    width: int


def _sub_tokenizer(clip, key: str):
    tokenizer = clip.tokenizer
    sub = getattr(tokenizer, f"clip_{key}", None) or getattr(tokenizer, key, None)
    if sub is None and getattr(tokenizer, "clip_name", None) == key:
        sub = getattr(tokenizer, tokenizer.clip, None)
    return sub


def text_encoder_slots(clip) -> list[TextEncoderSlot]:
    """The text encoders of ``clip`` whose prompts take embedding vectors, in tokenize order."""
    slots = []
    for key in clip.tokenize(""):
        sub = _sub_tokenizer(clip, key)
        if sub is None or not hasattr(sub, "embedding_key"):
            raise InputError(f"clip: text encoder {key!r} of this CLIP does not accept embeddings (not a CLIP tokenizer)")
        slots.append(TextEncoderSlot(key=key, embedding_key=sub.embedding_key, width=int(sub.embedding_size)))
    return slots


def append_embedding_rows(clip, tokens: dict, rows_by_key: dict[str, torch.Tensor]) -> dict:
    """``tokens`` (from ``clip.tokenize(prompt)``) with ``rows_by_key[key]`` appended as one group of
    embedding vectors after the prompt's words, each at weight 1.0: the token lists ComfyUI's
    tokenizer makes for ``prompt + " embedding:NAME"`` when the file holds these rows. The rows keep
    their autograd graph. The tokenizer's chunking is reproduced (``sd1_clip.py``
    ``tokenize_with_weights``): a group shorter than ``max_word_length`` that does not fit the last
    75-token chunk opens a new chunk; a longer one is split across chunks."""
    import numbers

    out = {}
    for key, chunks in tokens.items():
        rows = rows_by_key.get(key)
        if rows is None:
            out[key] = chunks
            continue
        sub = _sub_tokenizer(clip, key)
        if not is_clip_tokenizer(clip, key):
            raise InputError(f"clip: the tokenizer of text encoder {key!r} is not a CLIP tokenizer this node supports")
        end, start, pad = sub.end_token, sub.start_token, sub.pad_token
        chunks = [list(chunk) for chunk in chunks]
        last = chunks.pop()
        eos = next(i for i in range(1, len(last))
                   if isinstance(last[i][0], numbers.Integral) and int(last[i][0]) == end)
        batch = [tuple(entry[:2]) for entry in last[:eos]]
        chunks.append(batch)
        group = [(rows[i], 1.0) for i in range(rows.shape[0])]
        is_large = len(group) >= sub.max_word_length
        while group:
            if len(group) + len(batch) > sub.max_length - 1:
                remaining = sub.max_length - len(batch) - 1
                if is_large:
                    batch.extend(group[:remaining])
                    batch.append((end, 1.0))
                    group = group[remaining:]
                else:
                    batch.append((end, 1.0))
                    batch.extend([(pad, 1.0)] * remaining)
                batch = [(start, 1.0)]
                chunks.append(batch)
            else:
                batch.extend(group)
                group = []
        batch.append((end, 1.0))
        batch.extend([(pad, 1.0)] * (sub.max_length - len(batch)))
        out[key] = chunks
    return out


def conditioning_layout(clip) -> list[TextEncoderSlot]:
    """The text encoders whose outputs form the rows of ``clip``'s conditioning, in the order their
    values sit side by side in a row: SDXL concatenates CLIP-L's 768 then CLIP-G's 1280 values
    (``comfy/sdxl_clip.py`` ``SDXLClipModel.encode_token_weights``); SD1.x and SD2.x have one encoder;
    FLUX.1's rows are T5-XXL's alone (``comfy/text_encoders/flux.py``: its CLIP-L only gives the pooled
    vector). Checked against an encode of the empty prompt: the width of a row, and for an encoder
    chosen among several, the number of rows."""
    slots = {slot.key: slot for slot in text_encoder_slots(clip)}
    cond = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)[0]
    rows, width = cond.shape[1], cond.shape[-1]
    if set(slots) == {"l", "g"}:
        layout = [slots["l"], slots["g"]]
    elif len(slots) == 1:
        layout = list(slots.values())
    else:  # one encoder forms the rows (FLUX.1: T5-XXL, 256 rows for a short prompt), the others pool
        empty = clip.tokenize("")
        layout = [slot for key, slot in slots.items()
                  if slot.width == width and sum(len(chunk) for chunk in empty[key]) == rows]
    if len(layout) != 1 and [s.key for s in layout] != ["l", "g"]:
        raise InputError(f"clip: text encoders {sorted(slots)} are not a CLIP layout this node supports "
                         "(SD1.x, SD2.x, SDXL, FLUX.1)")
    if width != sum(slot.width for slot in layout):
        raise InputError(f"clip: its conditioning is {width} wide, not the {sum(s.width for s in layout)} "
                         f"of its text encoders {[s.key for s in layout]}; this CLIP is not supported in the "
                         "conditioning space")
    return layout


def padding_rows(clip, tokens: dict, keys: Optional[list[str]] = None) -> int:
    """How many rows after the end token the last chunk of ``tokens`` has (the fewest over the text
    encoders ``keys``, default all): the rows a difference in the conditioning space may be added
    onto. A CLIP chunk is 77 rows; T5-XXL's one chunk is at least 256 rows (FLUX.1), so long prompts
    leave it none."""
    import numbers

    room = None
    for key in keys if keys is not None else list(tokens):
        sub = _sub_tokenizer(clip, key)
        end = getattr(sub, "end_token", None)
        start = int(getattr(sub, "tokens_start", 1))
        last = tokens[key][-1]
        eos = next((i for i in range(start, len(last))
                    if isinstance(last[i][0], numbers.Integral) and int(last[i][0]) == end), None)
        if eos is None:
            raise InputError(f"clip: the tokens of text encoder {key!r} have no end token; not a tokenizer "
                             "this node supports")
        free = len(last) - 1 - eos
        room = free if room is None else min(room, free)
    return int(room or 0)


def is_clip_tokenizer(clip, key: str) -> bool:
    """Whether text encoder ``key`` of ``clip`` is a CLIP (77-token chunks with start and end tokens, as
    ``append_embedding_rows`` reproduces them); FLUX.1's T5-XXL is not."""
    sub = _sub_tokenizer(clip, key)
    return (sub is not None and sub.start_token is not None and sub.end_token is not None
            and sub.pad_to_max_length and not sub.pad_left and sub.min_length is None
            and sub.min_padding is None)


def pooled_output_is_projected(clip) -> bool:
    """Whether the CLIP-L pooled vector in this CLIP's conditioning is the projected CLIP text feature
    (``return_projected_pooled``); FLUX.1 and SD1.x CLIPs give the unprojected end-token state, the
    input of ``text_projection``."""
    module = getattr(clip.cond_stage_model, "clip_l", None)
    return bool(getattr(module, "return_projected_pooled", False))


def encode_tokens(clip, tokens: dict) -> list:
    """A CONDITIONING for ``tokens``, as CLIPTextEncode makes it (``encode_from_tokens_scheduled``)."""
    return clip.encode_from_tokens_scheduled(tokens)


def load_embedding_rows(clip, name: str) -> dict[str, torch.Tensor]:
    """The vectors ``embedding:NAME`` inserts for each text encoder of ``clip``, read by ComfyUI's
    own loader from the CLIP's embedding folders. Raises InputError when no encoder finds them."""
    import comfy.sd1_clip

    rows = {}
    for slot in text_encoder_slots(clip):
        sub = _sub_tokenizer(clip, slot.key)
        embed = comfy.sd1_clip.load_embed(name, sub.embedding_directory, sub.embedding_size, sub.embedding_key)
        if embed is None:
            continue
        if embed.ndim == 1:
            embed = embed.unsqueeze(0)
        if embed.shape[-1] != slot.width:
            continue  # the tokenizer skips a width mismatch too (with a warning)
        rows[slot.key] = embed.float()
    if not rows:
        raise InputError(
            f"embedding_name: no embedding {name!r} with vectors for this CLIP in models/embeddings; train one with "
            "Delta Interpolation Trainer or check the name"
        )
    return rows




def image_embeds(clip_vision, image: torch.Tensor) -> torch.Tensor:
    """Projected CLIP image embeddings ``[batch, D]`` (``CLIPVisionEncode``'s ``image_embeds``)."""
    return clip_vision.encode_image(image, crop=True)["image_embeds"].float()


def vae_encode(vae, image: torch.Tensor) -> torch.Tensor:
    """VAE Encode: raw latents of an IMAGE batch, as the stock node computes them."""
    return vae.encode(image[:, :, :, :3])


def model_space_latent(model, samples: torch.Tensor) -> torch.Tensor:
    """A VAE latent scaled into the space the model denoises in (the sampler's ``process_latent_in``)."""
    samples = comfy.sample.fix_empty_latent_channels(model, samples)
    return model.model.process_latent_in(samples)



@dataclass
class AlignmentEncoder:
    """A CLIP text encoder with a real text projection, loaded from a file (see
    ``load_alignment_text_encoder``): the text side of the joint space the CLIP vision model embeds in."""

    clip: Any
    slot: TextEncoderSlot
    projection: torch.Tensor  # [D, width]: feature = hidden @ projection.T (nn.Linear, no bias)


_PROJECTION_KEYS = ("text_projection.weight", "text_projection", "transformer.text_projection.weight")


def _tensor_names(path: str) -> set[str]:
    """The tensor names in a model file, read without loading the tensors where the format allows."""
    if path.endswith(".safetensors"):
        import safetensors

        with safetensors.safe_open(path, framework="pt") as f:
            return set(f.keys())
    import comfy.utils

    return set(comfy.utils.load_torch_file(path, safe_load=True))


def load_alignment_text_encoder(file_name: str, input_name: str) -> AlignmentEncoder:
    """Loads a single CLIP text encoder file from ``models/text_encoders`` with ComfyUI's own loader
    (what CLIPLoader does, type stable_diffusion), after checking that the file carries its
    ``text_projection``. Checkpoint CLIPs are never used for this: SD1.x checkpoints do not store
    CLIP-L's projection and ComfyUI leaves it uninitialised."""
    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path(  # None when missing
        "text_encoders", file_name) if file_name else None
    if path is None:
        raise InputError(f"{input_name}: text encoder file {file_name!r} not found in models/text_encoders")
    if not any(k in _tensor_names(path) for k in _PROJECTION_KEYS):
        raise InputError(
            f"{input_name}: {file_name} has no text_projection, so its text features are not in CLIP's joint "
            "image-text space; use the full CLIP text model that matches the CLIP vision model (for ViT-L/14: "
            "OpenAI clip-vit-large-patch14's text encoder, e.g. a clip_l.safetensors that includes text_projection.weight)"
        )
    # the stock loader, as CLIPLoader calls it: on current hosts it also registers how to load the
    # encoder again, which gradients through it use (host.gradients)
    clip = comfy.sd.load_clip(ckpt_paths=[path], embedding_directory=folder_paths.get_folder_paths("embeddings"),
                              clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    slots = text_encoder_slots(clip)
    if len(slots) != 1:
        raise InputError(f"{input_name}: {file_name} holds {len(slots)} text encoders; give a single CLIP text encoder file")
    slot = slots[0]
    module = getattr(clip.cond_stage_model, f"clip_{slot.key}", None)
    projection = getattr(getattr(module, "transformer", None), "text_projection", None)
    if projection is None:
        raise InputError(f"{input_name}: {file_name} is not a CLIP text encoder with a text projection")
    # Read the encoder's last layer (final LayerNorm), as CLIP's own text features do, whatever the
    # family's default layer for conditioning is: a layer index beyond the depth selects "last".
    clip.clip_layer(-(10 ** 6))
    weight = projection.weight.detach().float().clone()
    return AlignmentEncoder(clip=clip, slot=slot, projection=weight)


def last_hidden_and_pooled(clip, tokens: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's final-LayerNorm hidden states ``[chunks, 77, width]`` and its *unprojected*
    pooled state at the end token ``[1, width]``, for an ``AlignmentEncoder.clip``."""
    out = clip.encode_from_tokens(tokens, return_pooled="unprojected", return_dict=True)
    return out["cond"].float(), out["pooled_output"].float()


def token_embedding_scale(clip, key: str) -> float:
    """max |value| of the encoder's token-embedding table: the scale of real input vectors."""
    module = getattr(clip.cond_stage_model, f"clip_{key}", None)
    if module is None:
        module = clip.cond_stage_model
    table = module.transformer.get_input_embeddings().weight
    return float(table.detach().float().abs().max())




def encode_text(clip, text: str) -> tuple[torch.Tensor, Optional[torch.Tensor], tuple[str, ...]]:
    """``(cond [1, 77*k, width], pooled or None, text-encoder keys)`` as CLIPTextEncode encodes
    ``text`` (the CLIP's own layer setting and encoders: ``("l",)`` SD1.x, ``("g", "l")`` SDXL)."""
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return cond, pooled, tuple(sorted(tokens))


def clip_identity(clip) -> object:
    """The object that identifies a CLIP with its patches (LoRAs, layer setting): its patcher."""
    return clip.patcher




def _conditioning_token_key(clip) -> str:
    """Which text encoder's tokens are the rows of the conditioning this CLIP encodes: the one with
    as many tokens as the encoded empty prompt has rows (SD1.x/SDXL: CLIP-L, whose 77 positions the
    other CLIP shares; FLUX.1: T5-XXL, 256 rows; its CLIP-L only gives the pooled vector)."""
    tokens = clip.tokenize("")
    keys = sorted(tokens)
    if len({len(tokens[key][0]) for key in keys}) == 1:  # one encoder, or CLIPs sharing their 77 positions
        return "l" if "l" in keys else keys[0]
    rows = clip.encode_from_tokens(tokens).shape[1]
    matching = [key for key in keys if len(tokens[key][0]) == rows]
    return "l" if "l" in matching else (matching or keys)[0]


def word_token_position(clip, prompt: str, word: str, input_name: str = "object_word") -> int:
    """The position of ``word``'s first sub-token among the text tokens of ``prompt`` as the CLIP
    tokenizes it (start token = 0 where the tokenizer has one), i.e. the column of that word in the
    model's cross-attention maps (on FLUX.1: the T5 tokens, which are its conditioning's rows). The
    official Eye-for-an-eye code takes NLTK word index + 1, which is the same when every word before
    it is one token. Looks in the first chunk (the one cross-attention maps of short prompts have)."""
    key = _conditioning_token_key(clip)
    sub = _sub_tokenizer(clip, key)
    start = int(getattr(sub, "tokens_start", 1))
    end = getattr(sub, "end_token", None)

    def token_ids(text: str) -> list[int]:
        return [int(entry[0]) for entry in clip.tokenize(text)[key][0] if not torch.is_tensor(entry[0])]

    if end is None:
        end = token_ids("")[start]  # [start?, end, padding...]
    prompt_ids = token_ids(prompt)
    word_tokens = token_ids(word)  # [start?, word tokens..., end, padding...]
    word_ids = word_tokens[start : word_tokens.index(end)] if end in word_tokens else []
    if not word.strip() or not word_ids:
        raise InputError(f"{input_name}: empty; type the object's word as it appears in the prompt (e.g. 'cat')")
    for position in range(len(prompt_ids) - len(word_ids) + 1):
        if prompt_ids[position : position + len(word_ids)] == word_ids:
            return position
    raise InputError(f"{input_name}: {word!r} is not a word of the prompt {prompt!r}; type a word of the prompt "
                     "the images were inverted with (the same text as its CLIPTextEncode)")
