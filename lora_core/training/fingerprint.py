"""What a run was made with, so a resumed run can prove it continues the same one.

The settings part holds every setting that changes the arithmetic (not `steps`: a run may be extended;
not `seed`: after a resume every random draw comes from the saved RNG state; not output or UI options).
The dataset part is a SHA-256 over each sample's latent bytes and caption (and loss mask, when it has one), in
order: it changes with any image, crop, flip, VAE, caption or mask.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields, is_dataclass
from typing import Any, Iterable


from ..errors import TrainingError

IGNORED = frozenset({"steps", "seed", "init_lora", "gradient_checkpointing", "guard_inplace"})


def _plain(value: Any) -> Any:
    """A JSON-stable form of a setting (dataclasses, tuples, dicts)."""
    if is_dataclass(value):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return float(value)
    return value


def settings_fingerprint(config: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(config, f.name)) for f in fields(config) if f.name not in IGNORED}


def dataset_fingerprint(samples: Iterable[Any]) -> dict[str, Any]:
    digest, count = hashlib.sha256(), 0
    for sample in samples:
        latent = sample.latent.detach().float().cpu().contiguous()
        digest.update(json.dumps(list(latent.shape)).encode())
        digest.update(latent.numpy().tobytes())
        digest.update(str(getattr(sample, "caption", "")).encode("utf-8") + b"\0")
        mask = getattr(sample, "mask", None)
        if mask is not None:  # only then: a run without masks keeps the fingerprint it always had
            digest.update(b"mask" + mask.detach().float().cpu().contiguous().numpy().tobytes())
        count += 1
    return {"samples": count, "sha256": digest.hexdigest()}


def run_fingerprint(config: Any, samples: list[Any]) -> dict[str, Any]:
    return {"settings": settings_fingerprint(config), "dataset": dataset_fingerprint(samples)}


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Human-readable list of what differs between a saved fingerprint and this run's."""
    out = []
    old_d, new_d = saved.get("dataset", {}), now.get("dataset", {})
    if old_d != new_d:
        if old_d.get("samples") != new_d.get("samples"):
            out.append(f"dataset: {old_d.get('samples')} samples in the state, {new_d.get('samples')} now")
        else:
            out.append("dataset: the images, captions or their encoding (VAE, crop, flip) differ")
    old_s, new_s = saved.get("settings", {}), now.get("settings", {})
    for name in sorted(set(old_s) | set(new_s)):
        old, new = old_s.get(name), new_s.get(name)
        if name == "identity" and isinstance(old, dict) and isinstance(new, dict):
            # the host's own facts (model family, the dataset's inputs as its loader hashed them)
            for key in sorted(set(old) | set(new)):
                if _plain(old.get(key)) != _plain(new.get(key)):
                    out.append(f"{key}: {json.dumps(old.get(key))} in the state, {json.dumps(new.get(key))} now")
        elif _plain(old) != _plain(new):
            out.append(f"{name}: {json.dumps(old)} in the state, {json.dumps(new)} now")
    return out


def check_same_run(saved: dict[str, Any], now: dict[str, Any], source: str = "the training state") -> None:
    if not saved:
        return
    diff = differences(saved, now)
    if diff:
        raise TrainingError(f"cannot resume from {source}: it was made with other data or settings; "
                            + "; ".join(diff))
