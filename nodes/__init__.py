"""ComfyUI glue: node classes and the adapter from ComfyUI objects to lora_core. Imported only inside ComfyUI."""
