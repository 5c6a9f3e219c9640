"""LoRA files: kohya-style safetensors (.lora_down/.lora_up/.alpha) with ss_* and modelspec metadata.

The metadata is what kohya's tools, ComfyUI-Manager/Civitai and A1111 read. Timestamps are only written
when given: without them the same training run produces a byte-identical file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from .safetensors_io import save_safetensors_atomic
from ..errors import LoraFormatError
from ..families import modelspec
from ..version import __version__


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))


def training_metadata(
    *,
    family: str,
    rank: int,
    alpha: float,
    learning_rate: float,
    max_steps: int,
    steps_done: int,
    num_images: int,
    batch_size: int = 1,
    grad_accum: int = 1,
    lr_schedule: str = "constant",
    warmup_steps: int = 0,
    seed: int = 0,
    precision: str = "fp32",
    dropout: float = 0.0,
    targets: str | list[str] = "",
    prediction: str = "",
    output_name: str = "",
    title: str = "",
    trigger_words: list[str] | str = (),
    tag_frequency: dict[str, dict[str, int]] | None = None,
    comment: str = "",
    resolution: tuple[int, int] | None = None,
    started_at: float | None = None,
    finished_at: float | None = None,
    compute_dtype: str | None = None,
    base_loras: list[dict] | None = None,
    timestep_sampling: str = "",
    gradient_checkpointing: str = "",
) -> dict[str, str]:
    """Header metadata (all values str) for a LoRA trained by LoRA Lab.

    precision is the autocast asked for; compute_dtype the dtype the layers really computed in (what
    ss_mixed_precision reports); base_loras the LoRAs the trained model already carried; gradient_checkpointing
    what checkpointing did (off, on (N units), or nothing to wrap).
    """
    ran = compute_dtype or precision
    # Any model ComfyUI loads can be trained: unknown families get their own name in the metadata.
    ss_base_model, architecture, implementation = modelspec(family)
    triggers = [trigger_words] if isinstance(trigger_words, str) else list(trigger_words)
    triggers = [t.strip() for t in triggers if t and t.strip()]
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(int(rank)),
        "ss_network_alpha": _num(alpha),
        "ss_network_dropout": _num(dropout),
        "ss_base_model_version": ss_base_model,
        "ss_learning_rate": _num(learning_rate),
        "ss_max_train_steps": str(int(max_steps)),
        "ss_steps": str(int(steps_done)),
        "ss_num_train_images": str(int(num_images)),
        "ss_batch_size_per_device": str(int(batch_size)),
        "ss_gradient_accumulation_steps": str(int(grad_accum)),
        "ss_lr_scheduler": lr_schedule,
        "ss_lr_warmup_steps": str(int(warmup_steps)),
        "ss_mixed_precision": {"fp32": "no"}.get(ran, ran),
        "ss_seed": str(int(seed)),
        "ss_training_comment": comment,
        "ss_tag_frequency": json.dumps(tag_frequency or {"dataset": {}}, sort_keys=True),
        "ss_output_name": output_name,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": implementation,
        "modelspec.title": title or output_name or "LoRA Lab LoRA",
        "modelspec.trigger_phrase": ", ".join(triggers),
        "lora_lab_version": __version__,
        "lora_lab_family": family,
        "lora_lab_prediction": prediction,
        "lora_lab_targets": json.dumps(targets if isinstance(targets, str) else list(targets)),
        "lora_lab_rank": str(int(rank)),
        "lora_lab_alpha": _num(alpha),
        "lora_lab_steps": str(int(steps_done)),
        "lora_lab_learning_rate": _num(learning_rate),
        "lora_lab_dataset_size": str(int(num_images)),
        "lora_lab_trigger_words": json.dumps(triggers),
        "lora_lab_autocast": precision,
        "lora_lab_compute_dtype": ran,
        "lora_lab_timestep_sampling": timestep_sampling,
    }
    if gradient_checkpointing:  # what ran (trainer.TrainResult.checkpointing), not only what was asked
        meta["ss_gradient_checkpointing"] = str(gradient_checkpointing.startswith("on"))
        meta["lora_lab_gradient_checkpointing"] = gradient_checkpointing
    if base_loras:
        meta["lora_lab_base_loras"] = json.dumps(base_loras, sort_keys=True)
    if resolution is not None:
        meta["modelspec.resolution"] = f"{int(resolution[0])}x{int(resolution[1])}"
    if started_at is not None:
        meta["ss_training_started_at"] = str(float(started_at))
    if finished_at is not None:
        meta["ss_training_finished_at"] = str(float(finished_at))
        meta["modelspec.date"] = _iso(finished_at)
    return meta


def algorithm_metadata(config) -> dict[str, str]:
    """kohya/LyCORIS keys for the algorithm and optimizer (ss_network_module, ss_network_args, ss_optimizer, LRs)."""
    algorithm = getattr(config, "algorithm", "lora")
    options = dict(getattr(config, "algorithm_options", {}) or {})
    meta = {"lora_lab_algorithm": algorithm, "lora_lab_optimizer": getattr(config, "optimizer", "adamw"),
            "ss_optimizer": getattr(config, "optimizer", "adamw"), "ss_unet_lr": _num(config.learning_rate)}
    if algorithm != "lora":
        lycoris_algo = {"dora": "lora", "oft": "diag-oft"}.get(algorithm, algorithm)  # LyCORIS' own names
        args = {"algo": lycoris_algo, **{k: str(v) for k, v in options.items()}}
        if algorithm == "dora":
            args["dora_wd"] = "True"
            args["wd_on_output"] = str(options.get("axis", "input") == "output")
        meta.update(ss_network_module="lycoris.kohya", ss_network_args=json.dumps(args, sort_keys=True))
    if getattr(config, "train_text_encoder", False):
        te_lr = config.text_encoder_lr if config.text_encoder_lr is not None else config.learning_rate
        meta.update(ss_text_encoder_lr=_num(te_lr), ss_network_train_unet_only="False")
    else:
        meta["ss_network_train_unet_only"] = "True"
    if getattr(config, "ema_decay", 0.0):
        meta["lora_lab_ema_decay"] = _num(config.ema_decay)
    return meta


def _num(x: float) -> str:
    return repr(float(x))  # "16.0", "0.0001": what kohya writes


def save_lora_file(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a LoRA safetensors atomically; metadata values must be strings."""
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise LoraFormatError(f"metadata values must be str; not for {bad}")
    if not state_dict:
        raise LoraFormatError(f"refusing to write an empty LoRA to {path}")
    path = Path(path)
    save_safetensors_atomic(state_dict, path, metadata)
    return path


def load_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors LoRA; raises LoraFormatError naming the file."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except FileNotFoundError:
        raise LoraFormatError(f"LoRA file not found: {path}") from None
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise LoraFormatError(f"{path} is not a readable safetensors file: {e}") from None
