"""LoRA key formats: detect, read, write and map names between diffusers/PEFT and ComfyUI/kohya."""
