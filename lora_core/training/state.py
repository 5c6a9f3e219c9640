"""Everything a run needs to continue exactly where it stopped, and its file form.

The state is taken between optimizer steps: adapter parameters, optimizer / scheduler / grad-scaler state,
every RNG the run draws from (the run's own generator, torch's global CPU RNG for adapter dropout, the
device RNG), the sample order, the step and the loss history. It is written beside the LoRA as <name>.state,
a safetensors file (tensors, with a JSON header in its metadata for everything else), atomically. The name
does not end in .safetensors, so ComfyUI's LoRA lists (which scan models/loras by extension) never offer it
as a LoRA; states written as <name>.state.safetensors by earlier versions are still read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import devices
from ..files.safetensors_io import save_safetensors_atomic
from ..files.tensor_tree import join, split
from ..errors import TrainingError

STATE_SUFFIX = ".state"
LEGACY_STATE_SUFFIX = ".state.safetensors"
_FORMAT = "lora_lab.train_state/1"


@dataclass
class TrainState:
    step: int
    adapters: dict[str, torch.Tensor]  # "<module>::<param>" -> tensor
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, Any]  # generator / cpu / device states as byte lists
    order: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)  # dataset and settings the run was made with
    ema: dict[str, Any] | None = None  # the EMA of the adapter weights, when on


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """The run's generator, the CPU's and the device's (under its kind: "cuda", "xpu", "mps")."""
    state = {"generator": generator.get_state().tolist(), "cpu": torch.get_rng_state().tolist()}
    own = devices.get_rng_state(device)
    if own is not None:
        state[device.type] = own.tolist()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
    torch.set_rng_state(torch.tensor(state["cpu"], dtype=torch.uint8))
    if device.type in devices.ACCELERATORS and device.type in state:  # a state saved on another kind keeps this one's
        devices.set_rng_state(device, torch.tensor(state[device.type], dtype=torch.uint8))


def state_path(lora_path: str | os.PathLike) -> Path:
    """The state file that belongs to a LoRA file (x.safetensors -> x.state)."""
    path = Path(lora_path)
    name = path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else path.name
    return path.with_name(name + STATE_SUFFIX)


def is_state_file(path: str | os.PathLike) -> bool:
    name = Path(path).name
    return name.endswith(STATE_SUFFIX) or name.endswith(LEGACY_STATE_SUFFIX)


def existing_state_path(lora_path: str | os.PathLike) -> Path:
    """state_path, or the earlier <name>.state.safetensors where only that exists."""
    state = state_path(lora_path)
    legacy = state.with_name(state.name[: -len(STATE_SUFFIX)] + LEGACY_STATE_SUFFIX)
    return legacy if not state.exists() and legacy.exists() else state


def save_train_state(path: str | os.PathLike, state: TrainState) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    body = {name: split(getattr(state, name), tensors, name)
            for name in ("adapters", "optimizer", "scheduler", "scaler", "rng", "order")}
    if state.ema is not None:
        body["ema"] = split(state.ema, tensors, "ema")
    body.update(step=state.step, losses=state.losses, fingerprint=state.fingerprint)
    if not tensors:
        tensors["step"] = torch.tensor(state.step)  # safetensors refuses a file without tensors
    path = Path(path)
    save_safetensors_atomic(tensors, path, {"format": _FORMAT, "state": json.dumps(body, sort_keys=True)})
    return path


def _read(path: Path, tensors: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The state's JSON body and (if asked) its tensors; a missing, corrupt or foreign file is a TrainingError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except FileNotFoundError:
        raise TrainingError(f"training state file not found: {path}") from None
    except Exception as error:  # safetensors' own error types for corrupt files
        raise TrainingError(f"{path} is not a readable training state ({type(error).__name__})") from None
    if meta.get("format") != _FORMAT:
        raise TrainingError(f"{path} is not a LoRA Lab training state (format {meta.get('format')!r})")
    return json.loads(meta["state"]), data


def read_state_step(path: str | os.PathLike) -> int:
    """The step a state was taken after, from the file's header alone (no tensor is read)."""
    body, _ = _read(Path(path), tensors=False)
    return int(body["step"])


def load_train_state(path: str | os.PathLike) -> TrainState:
    body, tensors = _read(Path(path), tensors=True)
    return TrainState(
        step=int(body["step"]), losses=list(body["losses"]), fingerprint=dict(body["fingerprint"]),
        ema=join(body["ema"], tensors) if "ema" in body else None,
        **{name: join(body[name], tensors) for name in ("adapters", "optimizer", "scheduler", "scaler", "rng", "order")},
    )


def copied_to_cpu(obj: Any) -> Any:
    """Deep copy of a state dict's tensors (optimizers hand out their live state), on the CPU as a state file
    holds them: taking it needs no device memory, which an out-of-memory stop lacks."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: copied_to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copied_to_cpu(v) for v in obj)
    return obj
