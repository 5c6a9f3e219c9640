"""Batches from several datasets in one run: each batch is drawn whole from one dataset's own order.

Which dataset a batch comes from is drawn with probability equal to its share, from the mix's own seeded
generator; the dataset's order (a BucketOrder: one bucket, one shape) then gives the batch. Sample indices
of dataset k are offset by the samples of the datasets before it. The generator's state, every dataset's
order state and the batches drawn so far are the state_dict, so a resumed run draws what an uninterrupted
run would have drawn.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import DatasetError
from .sample_order import BatchOrder


class MixedOrder:
    def __init__(self, orders: Sequence[BatchOrder], offsets: Sequence[int], shares: Sequence[float], seed: int):
        if not orders or len(orders) != len(offsets) or len(orders) != len(shares):
            raise DatasetError("a mix needs one order, one sample offset and one share per dataset")
        if any(not s >= 0 for s in shares) or not sum(shares) > 0:
            raise DatasetError(f"dataset shares must be >= 0 and not all 0, got {list(shares)}")
        self.orders, self.offsets = list(orders), [int(o) for o in offsets]
        total = float(sum(shares))
        self.shares = [float(s) / total for s in shares]
        self.probabilities = torch.tensor(self.shares, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = [0] * len(self.orders)  # batches drawn from each dataset so far

    def next_batch(self, size: int) -> list[int]:
        k = int(torch.multinomial(self.probabilities, 1, generator=self.generator))
        self.drawn[k] += 1
        return [self.offsets[k] + i for i in self.orders[k].next_batch(size)]

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "mixed_order", "shares": list(self.shares), "drawn": list(self.drawn),
                "orders": [o.state_dict() for o in self.orders], "generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "mixed_order" or len(state.get("orders", ())) != len(self.orders):
            raise DatasetError(f"the saved sample order is not for this mix of {len(self.orders)} datasets "
                               f"({state.get('kind')}, {len(state.get('orders', ()))} datasets)")
        if [round(s, 12) for s in state["shares"]] != [round(s, 12) for s in self.shares]:
            raise DatasetError(f"the saved sample order was drawn with dataset shares {state['shares']}, "
                               f"this mix has {self.shares}")
        for order, saved in zip(self.orders, state["orders"]):
            order.load_state_dict(saved)
        self.drawn = [int(n) for n in state["drawn"]]
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
