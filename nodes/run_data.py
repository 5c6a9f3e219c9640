"""Train LoRA's data when it is more than one dataset's captions: several datasets (Combine Datasets),
regularisation datasets, and the preservation captions (LoRA Lab Preservation).

Every dataset is prepared as a lone one is (nodes/training_data.py: its own cache folder, the graph's VAE and
CLIP); preservation captions are encoded there too, through the same encoder, cache and per-sample conds as
the captions. A lone dataset without preservation takes exactly the path it always took.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from ..lora_core.data.dataset import ImageDataset
from ..lora_core.data.dataset_metadata import dataset_fingerprint
from ..lora_core.data.dataset_mix import (DatasetMix, DatasetPart, check_trainable, mix_fingerprint, mix_metadata,
                                          parts_of, training_view)
from ..lora_core.data.mixed_training_data import merge_training_data
from ..lora_core.data.preservation_captions import dop_captions, preservation_conds
from ..lora_core.data.training_samples import TrainingData
from ..lora_core.errors import DatasetError, TrainingError
from ..lora_core.training.preservation import Preservation, PreservationTerm, preservation_metadata
from .training_data import prepare_training_data

log = logging.getLogger("lora_lab")
TERM_NAMES = {"dop": "Differential output preservation", "blank_prompt": "Blank-prompt preservation"}


@dataclass
class RunData:
    data: TrainingData
    preservation: Preservation | None
    fingerprint: str  # the dataset inputs, for the resume check
    view: ImageDataset  # what the LoRA's kohya metadata describes (the training datasets as one)
    metadata: Callable[[], dict[str, str]] = field(default=lambda: {})  # called when the LoRA is saved


def prepare_run_data(patcher, dataset, vae, clip, conditioning: list | None, batch_size: int, seed: int,
                     train_text_encoder: bool = False, preservation: dict | None = None,
                     first_frame: str | None = None) -> RunData:
    check_trainable(dataset)
    if isinstance(dataset, ImageDataset) and not preservation:
        data = prepare_training_data(patcher, dataset, vae, clip, conditioning, batch_size, seed,
                                     train_text_encoder=train_text_encoder, first_frame=first_frame)
        return RunData(data, None, dataset_fingerprint(dataset), dataset)
    options = preservation or {}
    parts = parts_of(dataset)
    _refuse(options, parts, conditioning, train_text_encoder)
    datas, conds, captions = [], {name: [] for name in options}, {name: [] for name in options}
    for part, part_conditioning in zip(parts, _split(conditioning, parts)):
        def then(data, encoders, cache, part=part):
            for name, texts in _texts(options, part, data).items():
                if not texts:  # a regularisation dataset: no preservation term on its batches
                    texts = [""] * len(data.samples)
                    conds[name] += [None] * len(data.samples)
                else:
                    conds[name] += preservation_conds(data, encoders, cache, texts, TERM_NAMES[name])
                captions[name] += texts

        datas.append(prepare_training_data(patcher, part.dataset, vae, clip, part_conditioning, batch_size, seed,
                                           train_text_encoder=train_text_encoder, then=then,
                                           first_frame=first_frame))
    terms = [PreservationTerm(name, o["multiplier"], conds[name], _settings(name, o), captions[name])
             for name, o in options.items()]
    if len(parts) == 1:
        roles, data = [parts[0].regularisation] * len(datas[0].samples), datas[0]
    else:
        merged = merge_training_data(parts, datas, seed)
        roles, data = merged.roles, merged.data
    kept = Preservation(terms, roles if any(r is not None for r in roles) else None)
    mix = dataset if isinstance(dataset, DatasetMix) and len(parts) > 1 else None

    def metadata() -> dict[str, str]:
        meta = preservation_metadata(kept)
        if mix is not None:
            meta.update(mix_metadata(mix, getattr(data.order, "drawn", None)))
        return meta

    fingerprint = mix_fingerprint(dataset) if isinstance(dataset, DatasetMix) else dataset_fingerprint(dataset)
    view = training_view(dataset) if isinstance(dataset, DatasetMix) else dataset
    return RunData(data, kept if kept.active else None, fingerprint, view, metadata)


def _refuse(options: dict, parts: list[DatasetPart], conditioning, train_text_encoder: bool) -> None:
    """What cannot work, said before anything is encoded."""
    if options and conditioning is not None:
        raise DatasetError("LoRA Lab Preservation needs Train LoRA's clip input and no conditioning list: its "
                           "preservation captions are encoded through the CLIP, as the captions are")
    toward_base = bool(options) or any(p.regularisation is not None and p.regularisation.target == "base_prediction"
                                       for p in parts)
    if toward_base and train_text_encoder:
        raise TrainingError("LoRA Lab: preservation and regularisation toward the base model's prediction cannot be "
                            "combined with text-encoder training yet (the LoRA-off target would need every caption "
                            "encoded again without the text-encoder LoRA)")


def _split(conditioning: list | None, parts: list[DatasetPart]) -> list[Any]:
    """The conditioning list cut into each dataset's captions (Combine Datasets' captions output is theirs in order)."""
    if conditioning is None:
        return [None] * len(parts)
    sizes = [len(p.dataset.captions()) for p in parts]
    if len(conditioning) != sum(sizes):
        raise DatasetError(f"The conditioning list has {len(conditioning)} entries but the datasets have {sum(sizes)} "
                           "captions: connect the combined dataset's captions output to the text encoder")
    starts = [sum(sizes[:k]) for k in range(len(parts))]
    return [list(conditioning[s:s + n]) for s, n in zip(starts, sizes)]


def _texts(options: dict, part: DatasetPart, data: TrainingData) -> dict[str, list[str]]:
    """Each term's preservation caption per sample of a training dataset (none for regularisation data)."""
    if part.regularisation is not None:
        return {name: [] for name in options}
    out = {}
    for name, o in options.items():
        if name == "dop":
            trigger = o.get("trigger_word") or part.dataset.trigger_word
            texts, warnings = dop_captions([s.caption for s in data.samples], trigger, o["class_word"])
            for warning in warnings:
                log.warning("LoRA Lab %s: %s", part.name, warning)
            out[name] = texts
        else:
            out[name] = [""] * len(data.samples)
    return out


def _settings(name: str, options: dict) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != "multiplier" and (k != "trigger_word" or v)}
