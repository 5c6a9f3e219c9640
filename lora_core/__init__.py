"""Framework-free training core: no ComfyUI import anywhere below this package."""
