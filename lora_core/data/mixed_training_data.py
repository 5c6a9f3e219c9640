"""Several datasets' training data as one run's: samples side by side, one MixedOrder over their own orders,
and each sample's regularisation role (None for training data)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .bucket_order import BucketOrder
from .dataset_mix import DatasetPart, Regularisation
from .mixed_order import MixedOrder
from .training_samples import TrainingData


def derived_seed(seed: int, k: int) -> int:
    """The k-th seed drawn from a run's seed (within torch's seed range)."""
    return (int(seed) + k) % 2**64


@dataclass
class MixedTrainingData:
    data: TrainingData  # samples of all datasets; its order is the MixedOrder
    roles: list[Regularisation | None]  # per sample
    offsets: list[int]  # index of each dataset's first sample


def merge_training_data(parts: Sequence[DatasetPart], datas: Sequence[TrainingData], seed: int) -> MixedTrainingData:
    """Dataset k's batches come from its own bucket order, reseeded with derived_seed(seed, k) (so two datasets of
    the same layout do not draw in step), and which dataset serves a batch from derived_seed(seed, len(parts))."""
    samples, infos, validation, warnings, roles, offsets, orders, reports = [], [], [], [], [], [], [], []
    for k, (part, data) in enumerate(zip(parts, datas)):
        offsets.append(len(samples))
        samples += data.samples
        infos += data.infos
        roles += [part.regularisation] * len(data.samples)
        if part.regularisation is None:
            validation += data.validation
        elif data.validation:
            warnings.append(f"{part.name}: the held-out images of a regularisation dataset are not used for validation")
        warnings += [f"{part.name}: {w}" for w in data.warnings]
        orders.append(BucketOrder(data.order.items, seed=derived_seed(seed, k), flip=data.order.flip))
        reports.append(f"{part.name}: {data.report}")
    order = MixedOrder(orders, offsets, [p.share for p in parts], seed=derived_seed(seed, len(parts)))
    merged = TrainingData(samples, order, validation, warnings, "; ".join(reports), infos)  # type: ignore[arg-type]
    return MixedTrainingData(merged, roles, offsets)
