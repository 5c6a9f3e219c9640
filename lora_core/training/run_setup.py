"""What a run trains and with what: the layers that get adapters (roots, target_names), the adapters themselves
(fresh or from a LoRA), their parameter groups, and the optimizer and LR schedule over them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..adapters.algorithms import Adapter, adapter_from_weights, new_adapter
from ..adapters.lora_weights import split_component
from ..adapters.targets import select_targets
from ..errors import TrainingError
from ..optimizers import make_optimizer
from .backend import Backend
from .checks import optimizer_settings
from .frozen_layers import plain_fetch
from .lr_schedule import make_scheduler, self_schedule

if TYPE_CHECKING:
    from .trainer import TrainConfig


def roots(backend: Backend, config: TrainConfig) -> dict[str, torch.nn.Module]:
    """Module trees that get adapters: "" is the diffusion model; text encoders by component (te1, ...)."""
    out = {"": backend.root}
    if config.train_text_encoder:
        out.update(getattr(backend, "text_encoders", {}) or {})
    return out


def make_adapters(backend: Backend, config: TrainConfig, generator: torch.Generator) -> dict[str, Adapter]:
    fetch = getattr(backend, "fetch_weight", plain_fetch)
    trees = roots(backend, config)
    modules = {(f"{c}:{n}" if c else n): m for c, tree in trees.items() for n, m in tree.named_modules()}
    if config.init_lora is not None:
        missing = [n for n in config.init_lora.modules if n not in modules]
        if missing:
            raise TrainingError(f"the LoRA to continue from has modules this model lacks: {', '.join(missing[:5])}")
        adapters = {n: adapter_from_weights(modules[n], w, fetch) for n, w in config.init_lora.modules.items()}
        for a in adapters.values():
            a.dropout = torch.nn.Dropout(config.dropout) if config.dropout > 0 else torch.nn.Identity()
    else:
        adapters = {n: new_adapter(modules[n], config.rank, config.alpha, config.dropout, generator, config.algorithm,
                                   fetch, n, **config.algorithm_options) for n in target_names(backend, config)}
    return {n: a.to(backend.device).train() for n, a in adapters.items()}


def target_names(backend: Backend, config: TrainConfig) -> list[str]:
    """The layers that get a new adapter: the diffusion model's targets, then each text encoder's as component:name."""
    names = list(select_targets(backend.root, config.targets))
    for component, tree in roots(backend, config).items():
        if component:
            names += [f"{component}:{n}" for n in select_targets(tree, config.text_encoder_targets)]
    return names


def param_groups(adapters: dict[str, Adapter], config: TrainConfig) -> list[dict[str, Any]]:
    """The diffusion model's adapters at learning_rate, the text encoders' at text_encoder_lr."""
    model = [p for n, a in adapters.items() if split_component(n)[0] == "model" for p in a.parameters()]
    text = [p for n, a in adapters.items() if split_component(n)[0] != "model" for p in a.parameters()]
    groups = [{"params": model, "lr": config.learning_rate, "name": "model"}]
    if text:
        lr = config.text_encoder_lr if config.text_encoder_lr is not None else config.learning_rate
        groups.append({"params": text, "lr": lr, "name": "text encoder"})
    return [g for g in groups if g["params"]]


def optimizer_and_schedule(groups: list[dict[str, Any]], config: TrainConfig):
    spec, settings = optimizer_settings(config)  # check_train_config has checked them
    optimizer = make_optimizer(config.optimizer, groups, settings)
    if spec.schedule_free:
        return optimizer, make_scheduler(optimizer, "constant", 0, config.steps)
    if spec.self_scheduled({**spec.defaults, **settings}):
        return optimizer, self_schedule(optimizer)
    return optimizer, make_scheduler(optimizer, config.lr_schedule, config.warmup_steps, config.steps, config.lr_cycles)
