"""The algorithms of the pack in plain PyTorch (no ComfyUI import), each function citing the
equation it implements."""
