"""Exemplar Edit: exemplar-based image editing nodes for ComfyUI.

ComfyUI calls ``comfy_entrypoint`` (its V3 extension API). Nothing here imports ComfyUI at
module import time, so ``core`` can be imported and tested without a host.
"""

__version__ = "0.1.0"

# Served by ComfyUI at /extensions/<this folder's name>/: the frontend's node help panel reads
# web/docs/<NodeId>.md (and web/docs/<NodeId>/<locale>.md). Translations are in locales/.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import ExemplarEditExtension

    return ExemplarEditExtension()
