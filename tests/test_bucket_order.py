"""BucketOrder: every batch from one bucket, each item once per epoch, seeded, exact resume, variants and flips."""

from __future__ import annotations

from collections import Counter

import pytest

from lora_lab.lora_core.data.bucket_order import BucketOrder, OrderItem
from lora_lab.lora_core.errors import DatasetError


def items(buckets: dict[str, int]) -> list[OrderItem]:
    out, sample = [], 0
    for bucket, n in buckets.items():
        for _ in range(n):
            out.append(OrderItem(bucket=bucket, variants=(sample,)))
            sample += 1
    return out


def test_batches_come_from_one_bucket_and_cover_an_epoch():
    its = items({"portrait": 4, "landscape": 6, "square": 3})
    order = BucketOrder(its, seed=0)
    bucket_of = {it.variants[0]: it.bucket for it in its}
    # an epoch: ceil(4/2) + ceil(6/2) + ceil(3/2) = 2 + 3 + 2 batches
    epoch = [order.next_batch(2) for _ in range(7)]
    for batch in epoch:
        assert len(batch) == 2 and len(set(batch)) == 2
        assert len({bucket_of[i] for i in batch}) == 1
    seen = Counter(i for batch in epoch for i in batch)
    assert set(seen) == set(range(13))  # every item at least once
    assert sum(seen.values()) - 13 == 1  # the odd square bucket was topped up by one other square item
    assert [bucket_of[b[0]] for b in epoch] != sorted(bucket_of[b[0]] for b in epoch)  # buckets interleaved


def test_same_seed_same_batches_other_seed_other_batches():
    its = items({"a": 5, "b": 5})

    def run(seed: int) -> list[list[int]]:
        order = BucketOrder(its, seed=seed)
        return [order.next_batch(2) for _ in range(20)]

    assert run(3) == run(3) and run(3) != run(4)


def test_resume_continues_exactly():
    its = [OrderItem(bucket=k % 2, variants=(2 * k, 2 * k + 1), flipped=(100 + k, 200 + k)) for k in range(7)]
    full = BucketOrder(its, seed=11, flip=0.5)
    expected = [full.next_batch(3) for _ in range(12)]

    first = BucketOrder(its, seed=11, flip=0.5)
    got = [first.next_batch(3) for _ in range(5)]
    state = first.state_dict()
    resumed = BucketOrder(its, seed=999, flip=0.5)  # the state carries the generator, not the seed
    resumed.load_state_dict(state)
    got += [resumed.next_batch(3) for _ in range(7)]
    assert got == expected


def test_state_from_another_dataset_is_refused():
    state = BucketOrder(items({"a": 3}), seed=0).state_dict()
    with pytest.raises(DatasetError, match="not for this dataset"):
        BucketOrder(items({"a": 4}), seed=0).load_state_dict(state)


def test_variants_and_flip_probability():
    its = [OrderItem(bucket="x", variants=(0, 1, 2), flipped=(10, 11, 12)), OrderItem(bucket="x", variants=(3, 4, 5), flipped=(13, 14, 15))]
    order = BucketOrder(its, seed=0, flip=0.3)
    picks = Counter(i for _ in range(6000) for i in order.next_batch(1))
    flipped = sum(n for i, n in picks.items() if i >= 10)
    assert abs(flipped / 6000 - 0.3) < 0.03
    plain = [picks[i] for i in range(6)]
    assert max(plain) / min(plain) < 1.25  # variants picked uniformly
    assert BucketOrder(its, seed=0, flip=0.0).next_batch(2)[0] < 10  # flip off never flips


def test_repeats_are_separate_items_but_not_distinct_images():
    repeated = [OrderItem(bucket="x", variants=(0,))] * 3 + [OrderItem(bucket="x", variants=(1,))]
    order = BucketOrder(repeated, seed=0)
    batches = [order.next_batch(2) for _ in range(2)]
    assert sorted(i for b in batches for i in b).count(0) >= 2
    with pytest.raises(DatasetError, match="fewer than the batch size 3"):
        BucketOrder(repeated, seed=0).next_batch(3)


def test_flip_needs_mirrored_samples():
    with pytest.raises(DatasetError, match="mirrored"):
        BucketOrder(items({"a": 2}), seed=0, flip=0.5)
