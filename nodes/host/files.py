"""Files and progress: the embeddings folder, atomic writes, ComfyUI's progress bar."""
from __future__ import annotations

from typing import Optional

import torch

import comfy.utils

def embeddings_folder() -> str:
    """Where new embeddings are saved: the first ``embeddings`` model folder."""
    import folder_paths

    return folder_paths.get_folder_paths("embeddings")[0]


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

    for root in (folder_paths.models_dir, *folder_paths.get_folder_paths("embeddings")):
        try:
            relative = os.path.relpath(path, root)
        except ValueError:  # another drive on Windows
            continue
        if not relative.startswith(".."):
            return relative if root == folder_paths.models_dir else os.path.join("embeddings", relative)
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


