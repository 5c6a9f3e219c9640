"""Which samples each micro-batch trains on: seeded epoch shuffling, resumable.

A micro-batch is a list of sample indices. Orders that group samples (aspect buckets) implement the same
two methods; the trainer only calls next_batch, state_dict and load_state_dict.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class BatchOrder(Protocol):
    def next_batch(self, size: int) -> list[int]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EpochShuffle:
    """Indices from a fresh seeded permutation of all n samples each time the previous one runs out."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.queue: list[int] = []

    def next_batch(self, size: int) -> list[int]:
        out = []
        while len(out) < size:
            if not self.queue:
                self.queue = torch.randperm(self.n, generator=self.generator).tolist()
            out.append(self.queue.pop(0))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "epoch_shuffle", "n": self.n, "queue": list(self.queue),
                "generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = list(state["queue"])
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
