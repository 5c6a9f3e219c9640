"""Batches drawn within one bucket, seeded and resumable: the trainer's BatchOrder for buckets and variants.

An epoch shuffles the items of every bucket, cuts each bucket into batches of the requested size (the last
one topped up with other items of the same bucket, so every batch is full and of one shape), and shuffles
the batches of all buckets together. Each item names its cached variants: when a batch is handed out, one
variant per item is picked (uniformly), and the mirrored version of it with the flip probability.
All draws come from the order's own generator, whose state is part of state_dict, so a resumed run
continues with exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import DatasetError


@dataclass(frozen=True)
class OrderItem:
    bucket: Hashable
    variants: tuple[int, ...]  # sample indices, one picked per draw
    flipped: tuple[int, ...] = ()  # the same variants mirrored (empty: no flip)


@dataclass
class BucketOrder:
    items: list[OrderItem]
    seed: int
    flip: float = 0.0
    _queue: list[list[int]] = field(default_factory=list, repr=False)  # item indices per batch
    _size: int = 0

    def __post_init__(self) -> None:
        if not self.items:
            raise DatasetError("No training items to draw batches from")
        if self.flip > 0 and any(not item.flipped for item in self.items):
            raise DatasetError("flip > 0 needs the mirrored variants of every item")
        self.generator = torch.Generator().manual_seed(self.seed)
        self.buckets: dict[Hashable, list[int]] = {}
        for i, item in enumerate(self.items):
            self.buckets.setdefault(item.bucket, []).append(i)

    def next_batch(self, size: int) -> list[int]:
        if size != self._size or not self._queue:
            if size != self._size:
                self._queue = []
            self._size = size
            self._queue = self._epoch(size)
        return [self._pick(i) for i in self._queue.pop(0)]

    def _epoch(self, size: int) -> list[list[int]]:
        batches: list[list[int]] = []
        for key in sorted(self.buckets, key=repr):  # fixed order: draws must not depend on dict order
            members = self.buckets[key]
            distinct = len({self.items[i].variants for i in members})
            if distinct < size:
                raise DatasetError(f"bucket {key} holds {distinct} distinct items, fewer than the batch size {size}")
            order = [members[j] for j in torch.randperm(len(members), generator=self.generator).tolist()]
            for start in range(0, len(order), size):
                batch = order[start:start + size]
                if len(batch) < size:
                    batch += self._top_up(batch, members, size - len(batch))
                batches.append(batch)
        return [batches[j] for j in torch.randperm(len(batches), generator=self.generator).tolist()]

    def _top_up(self, batch: list[int], members: list[int], missing: int) -> list[int]:
        """Other items of the bucket (not the images already in the batch), drawn at random."""
        taken = {self.items[i].variants for i in batch}
        candidates = [i for i in members if self.items[i].variants not in taken]
        picks: list[int] = []
        for j in torch.randperm(len(candidates), generator=self.generator).tolist():
            if len(picks) == missing:
                break
            if self.items[candidates[j]].variants not in taken:
                picks.append(candidates[j])
                taken.add(self.items[candidates[j]].variants)
        return picks

    def _pick(self, index: int) -> int:
        item = self.items[index]
        k = int(torch.randint(len(item.variants), (), generator=self.generator)) if len(item.variants) > 1 else 0
        if self.flip > 0 and float(torch.rand((), generator=self.generator)) < self.flip:
            return item.flipped[k]
        return item.variants[k]

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "bucket_order", "n": len(self.items), "size": self._size,
                "queue": [list(b) for b in self._queue], "generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "bucket_order" or state.get("n") != len(self.items):
            raise DatasetError(f"the saved sample order is not for this dataset ({state.get('kind')}, "
                               f"{state.get('n')} items; this dataset has {len(self.items)})")
        self._size = int(state["size"])
        self._queue = [list(b) for b in state["queue"]]
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
