"""LoRA Lab's framework-free core: torch only, never `comfy` or the converters. Layers, top to bottom; a module
imports its own layer and those below it, never a sibling or one above (tests/test_layers.py checks every import):

    cli/                          `lora-lab train / demo / cache`: config, model folders, diffusers backend, run files
    training/                     the loop and its config, one run, objective, noise, timesteps, losses, precision,
                                  checkpointing, frozen layers, EMA, LR schedule, state, validation, distributed
    data/ | adapters/ | optimizers/   datasets and samples | adapter algorithms, targets, injection | optimizers
    cache/                        content keys and the encoding cache
    files/                        LoRA files and metadata, atomic safetensors I/O, nested tensors, loss plot
    errors, exit_status, families, version
"""
