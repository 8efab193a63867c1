"""Files and progress: the embeddings folder, atomic writes, ComfyUI's progress bar."""
from __future__ import annotations

from typing import Optional

import torch

import comfy.utils

from .facts import InputError


def embeddings_folder() -> str:
    """Where new embeddings are saved: the first ``embeddings`` model folder."""
    import folder_paths

    return folder_paths.get_folder_paths("embeddings")[0]


DIFFERENCES = "differences"


def differences_folder() -> str:
    """Where differences learned in the conditioning space are saved: models/differences (or the
    first folder registered for "differences"). Not the embeddings folder: they are not input
    vectors, and 'embedding:NAME' must never load them as such."""
    import os

    import folder_paths

    if DIFFERENCES not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(DIFFERENCES, os.path.join(folder_paths.models_dir, DIFFERENCES))
    return folder_paths.get_folder_paths(DIFFERENCES)[0]


def add_model_folder(kind: str, path: str) -> None:
    """Makes ``path`` the first folder ComfyUI searches for models of ``kind`` (e.g. "embeddings")."""
    import folder_paths

    folder_paths.add_model_folder_path(kind, str(path), is_default=True)


def text_encoder_file_names() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("text_encoders")


def model_relative_path(path: str) -> str:
    """``path`` as the user knows it, relative to ComfyUI's models folder (``embeddings/x.safetensors``):
    error messages never show the server's absolute paths."""
    import os

    import folder_paths

    roots = [(folder_paths.models_dir, "")] + [(folder, kind) for kind in ("embeddings", "differences")
                                               if kind in folder_paths.folder_names_and_paths
                                               for folder in folder_paths.get_folder_paths(kind)]
    for root, kind in roots:
        try:
            relative = os.path.relpath(path, root)
        except ValueError:  # another drive on Windows
            continue
        if not relative.startswith(".."):
            return os.path.join(kind, relative) if kind else relative
    return os.path.basename(path)


def _default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file under the process's umask."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_tensors_atomically(path: str, tensors: dict[str, torch.Tensor], metadata: Optional[dict] = None) -> None:
    """Writes a safetensors file via a temporary file in the same folder and ``os.replace``."""
    import os
    import tempfile

    import safetensors.torch

    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                                    metadata=metadata)
        os.chmod(tmp, _default_file_mode())  # mkstemp makes it 0600: readable by other services like any model file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class TrainingProgress:
    """ComfyUI's progress bar for a training loop, plus the current loss as the node's progress text."""

    def __init__(self, total: int):
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        self.node_id = context.node_id if context is not None else None
        self.bar = comfy.utils.ProgressBar(total)

    def update(self, step: int, text: Optional[str] = None) -> None:
        self.bar.update_absolute(step)
        if text is None or self.node_id is None:
            return
        try:
            from server import PromptServer

            instance = getattr(PromptServer, "instance", None)
            if instance is not None:
                instance.send_progress_text(text, self.node_id)
        except Exception:  # no server (in-process runs): the bar alone
            pass




# --- what a saved file was made from (train once, reuse) -------------------------------------------

_SAMPLES_PER_TENSOR = 16


def _hash_tensor_sample(digest, tensor: torch.Tensor) -> None:
    """Adds a tensor's shape, dtype and ``_SAMPLES_PER_TENSOR`` values spread over it to ``digest``:
    enough to tell checkpoints, fine-tunes and merges apart (they change nearly every weight) without
    reading gigabytes."""
    digest.update(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return
    flat = tensor.detach().reshape(-1)
    count = min(_SAMPLES_PER_TENSOR, flat.numel())
    index = (torch.arange(count, dtype=torch.int64) * (flat.numel() - 1)) // max(1, count - 1)
    digest.update(flat[index.to(flat.device)].float().cpu().numpy().tobytes())


def _hash_value(digest, value, depth: int = 0) -> None:
    """Weight patches (LoRA and the like): tensors sampled, numbers and strings in full."""
    if torch.is_tensor(value):
        _hash_tensor_sample(digest, value)
    elif isinstance(value, (str, int, float, bool)) or value is None:
        digest.update(repr(value).encode())
    elif isinstance(value, (list, tuple)):
        for item in value:
            _hash_value(digest, item, depth + 1)
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _hash_value(digest, value[key], depth + 1)
    elif depth < 4 and hasattr(value, "__dict__"):
        digest.update(type(value).__name__.encode())
        _hash_value(digest, {k: v for k, v in vars(value).items() if not k.startswith("_")}, depth + 1)


def weights_fingerprint(module: torch.nn.Module, patches: Optional[dict] = None, extra: str = "") -> str:
    """A short hash of a model's weights (every tensor's name and shape, a sample of its values) and
    of the weight patches applied to it (LoRAs): the identity of a checkpoint, recorded in a saved
    file so that it is reused only with the model it was made with."""
    import hashlib

    digest = hashlib.sha256(extra.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        _hash_tensor_sample(digest, tensor)
    if patches:
        _hash_value(digest, patches)
    return digest.hexdigest()[:16]


def model_fingerprint(model) -> str:
    """The diffusion model's (MODEL, a ModelPatcher) weights and weight patches."""
    return weights_fingerprint(model.model, getattr(model, "patches", None))


def clip_fingerprint(clip) -> str:
    """The text encoders as they encode: a hash of the conditioning of a fixed probe prompt, which
    covers their weights, patches and layer setting (CLIPSetLastLayer). Not their state dict: a
    checkpoint CLIP holds tensors the file does not set (SD1.x's text_projection), whose values
    differ at every load."""
    import hashlib

    cond, _ = clip.encode_from_tokens(clip.tokenize("a photo of a house, 1234"), return_pooled=True)
    digest = hashlib.sha256(f"layer={getattr(clip, 'layer_idx', None)}|".encode())
    digest.update(cond.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def vae_fingerprint(vae) -> str:
    return weights_fingerprint(vae.first_stage_model)


def clip_vision_fingerprint(clip_vision) -> str:
    return weights_fingerprint(clip_vision.model, getattr(getattr(clip_vision, "patcher", None), "patches", None))


def content_hash(tensor: torch.Tensor) -> str:
    """The sha256 of a tensor's values (as float32) and shape: an image's identity."""
    import hashlib

    data = tensor.detach().float().cpu().contiguous()
    return hashlib.sha256(f"{tuple(data.shape)}|".encode() + data.numpy().tobytes()).hexdigest()[:16]


def existing_file(path: str, input_name: str, fix: str) -> bool:
    """Whether a file is at ``path``; InputError naming ``input_name``, the path (relative to the
    models folder) and ``fix`` when something else is (a folder, a device): it is never read or replaced."""
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(f"{input_name}: {model_relative_path(path)} is a link to nothing; {fix}") from None
        return False
    except OSError as e:
        raise InputError(f"{input_name}: {model_relative_path(path)} cannot be read ({e.strerror}); {fix}") from None
    if stat.S_ISREG(mode):
        return True
    kind = "a folder" if stat.S_ISDIR(mode) else "not a plain file"
    raise InputError(f"{input_name}: {model_relative_path(path)} is {kind}; {fix}")


def read_safetensors(path: str, input_name: str, fix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor (on the CPU) and the string metadata of the safetensors file at ``path``, read in
    full; InputError naming ``input_name``, the file (relative to the models folder) and ``fix`` when
    it cannot be (not safetensors, cut short, a header that claims more data than the file holds):
    never a part of it."""
    import safetensors

    existing_file(path, input_name, fix)
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except OSError as e:
        reason = e.strerror or type(e).__name__
    except Exception as e:  # safetensors' own SafetensorError and anything else the file makes it raise
        reason = str(e).replace(path, model_relative_path(path)).strip() or type(e).__name__
    else:
        return tensors, metadata
    raise InputError(f"{input_name}: {model_relative_path(path)} cannot be read as a safetensors file ({reason}); "
                     f"{fix}")
