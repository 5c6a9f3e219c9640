"""Several datasets in one run: each with its share of the batches, and regularisation datasets among them.

A DatasetMix is a list of parts; a part is a dataset (ImageDataset: images or videos), the probability that
a batch comes from it, and, for a regularisation dataset, what it trains toward (the base model's own
prediction, or its images as DreamBooth's class images) and its loss weight. Shares are given by weight
(a batch comes from input i with probability w_i / sum w) or by repeats (each input's samples count w_i
times: probability w_i n_i / sum w_j n_j, n = samples per epoch). Mixes nest: a mix combined again is
flattened, its parts keeping their shares within it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Sequence, Union

from ..cache.keys import make_key
from ..errors import DatasetError
from .dataset import ImageDataset
from .dataset_files import count
from .dataset_metadata import dataset_fingerprint

REGULARISATION_TARGETS = ("base_prediction", "images")
SHARE_BY = ("weight", "repeats")


@dataclass(frozen=True)
class Regularisation:
    """What a regularisation dataset trains toward, and the weight of its loss."""

    target: str  # base_prediction: the model's own prediction with the LoRA off; images: its images (DreamBooth)
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.target not in REGULARISATION_TARGETS:
            raise DatasetError(f"regularisation target must be one of {', '.join(REGULARISATION_TARGETS)}, "
                               f"got {self.target!r}")
        if not self.weight >= 0:
            raise DatasetError(f"regularisation weight must be >= 0, got {self.weight}")


@dataclass(frozen=True)
class DatasetPart:
    dataset: ImageDataset
    share: float  # probability that a batch comes from this dataset
    regularisation: Regularisation | None = None

    @property
    def name(self) -> str:
        return self.dataset.root.name if self.dataset.root is not None else "dataset"

    @property
    def samples_per_epoch(self) -> int:
        return len(self.dataset.expanded())


@dataclass(frozen=True)
class DatasetMix:
    parts: tuple[DatasetPart, ...]

    @property
    def training_parts(self) -> list[DatasetPart]:
        return [p for p in self.parts if p.regularisation is None]


AnyDataset = Union[ImageDataset, DatasetMix]


def parts_of(dataset: AnyDataset) -> list[DatasetPart]:
    return list(dataset.parts) if isinstance(dataset, DatasetMix) else [DatasetPart(dataset, 1.0)]


def samples_per_epoch(dataset: AnyDataset) -> int:
    return sum(p.samples_per_epoch for p in parts_of(dataset))


def combine(inputs: Sequence[tuple[AnyDataset, float]], share_by: str = "weight") -> DatasetMix:
    """Datasets (or mixes) with a weight each -> one mix whose parts' shares sum to 1."""
    if share_by not in SHARE_BY:
        raise DatasetError(f"share_by must be one of {', '.join(SHARE_BY)}, got {share_by!r}")
    if len(inputs) < 2:
        raise DatasetError("Combine Datasets needs at least two datasets")
    if any(not w >= 0 for _, w in inputs):
        raise DatasetError(f"dataset weights must be >= 0, got {[w for _, w in inputs]}")
    sizes = [w * (samples_per_epoch(d) if share_by == "repeats" else 1) for d, w in inputs]
    total = sum(sizes)
    if not total > 0:
        raise DatasetError("every dataset has weight 0: give at least one a positive weight")
    parts = tuple(replace(part, share=size / total * part.share)
                  for (dataset, _), size in zip(inputs, sizes) for part in parts_of(dataset))
    return DatasetMix(tuple(p for p in parts if p.share > 0))


def as_regularisation(dataset: AnyDataset, target: str, weight: float = 1.0) -> DatasetMix:
    """The dataset (every part of a mix) marked as regularisation data."""
    mark = Regularisation(target, weight)
    return DatasetMix(tuple(replace(p, regularisation=mark) for p in parts_of(dataset)))


def check_trainable(dataset: AnyDataset) -> None:
    if isinstance(dataset, DatasetMix) and not dataset.training_parts:
        raise DatasetError("Only regularisation datasets were given: combine them with the training dataset "
                           "('Combine Datasets'), which they then regularise")


def mix_summary(mix: DatasetMix) -> str:
    lines = [f"{count(len(mix.parts), 'dataset')} combined; each batch comes from one of them:"
             if len(mix.parts) > 1 else "1 dataset:"]
    for part in mix.parts:
        lines.append(f"  {part.name}: {part.share:.1%} of batches, {_role(part)}, "
                     f"{count(len(part.dataset.images), part.dataset.noun)} ({part.samples_per_epoch} samples per epoch)")
    for part in mix.parts:
        lines.append(f"[{part.name}]")
        lines += ["  " + line for line in part.dataset.summary().splitlines()]
    return "\n".join(lines)


def _role(part: DatasetPart) -> str:
    reg = part.regularisation
    if reg is None:
        return "training"
    toward = "the base model's prediction" if reg.target == "base_prediction" else "its images"
    return f"regularisation toward {toward}, weight {reg.weight:g}"


def mix_metadata(mix: DatasetMix, drawn: Sequence[int] | None = None) -> dict[str, str]:
    """lora_lab_datasets: each dataset, its share and role (and the batches drawn from it); kohya's count
    of regularisation images."""
    listed = []
    for k, part in enumerate(mix.parts):
        entry = {"name": part.name, "kind": part.dataset.kind, "items": len(part.dataset.images),
                 "share": part.share, "role": "training" if part.regularisation is None else "regularisation"}
        if part.regularisation is not None:
            entry.update(target=part.regularisation.target, weight=part.regularisation.weight)
        if drawn is not None:
            entry["batches_drawn"] = int(drawn[k])
        listed.append(entry)
    meta = {"lora_lab_datasets": json.dumps(listed, sort_keys=True)}
    regs = [p for p in mix.parts if p.regularisation is not None]
    if regs:
        meta["ss_num_reg_images"] = str(sum(len(p.dataset.images) for p in regs))
    return meta


def mix_fingerprint(mix: DatasetMix) -> str:
    """Equal for the same datasets, shares and roles (for resume checks)."""
    def role(part: DatasetPart) -> list | None:
        reg = part.regularisation
        return None if reg is None else [reg.target, reg.weight]

    return make_key("dataset_mix", [[dataset_fingerprint(p.dataset), p.share, role(p)] for p in mix.parts])


def training_view(mix: DatasetMix) -> ImageDataset:
    """The training datasets as one ImageDataset, for the LoRA's kohya metadata (image count, buckets, folders,
    tags, trigger words); settings that differ between them are those of the first."""
    parts = mix.training_parts
    first = parts[0].dataset
    triggers = list(dict.fromkeys(p.dataset.trigger_word for p in parts if p.dataset.trigger_word))
    kinds = {p.dataset.kind for p in parts}
    # the masks of the first dataset that has them, so the metadata counts the masked images of all of them
    masks = next((p.dataset.masks for p in parts if p.dataset.masks.active), first.masks)
    return replace(first, images=[i for p in parts for i in p.dataset.images], masks=masks,
                   validation=[i for p in parts for i in p.dataset.validation], trigger_word=", ".join(triggers),
                   warnings=[w for p in parts for w in p.dataset.warnings],
                   kind="videos" if "videos" in kinds else first.kind)


def mix_captions(mix: DatasetMix) -> list[str]:
    """Every part's captions output, part after part: what a text-encoder node encodes for the mix."""
    return [c for p in mix.parts for c in p.dataset.captions()]
