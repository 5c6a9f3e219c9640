"""Several datasets in one run: shares by weight and by repeats, regularisation marks, the mixed order's draw
(each batch from one dataset and one bucket, shares matching over a long run, exact resume), and the
metadata and summary that list every dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_lab.lora_core.data.bucket_order import BucketOrder, OrderItem
from lora_lab.lora_core.data.dataset import load_image_folder
from lora_lab.lora_core.data.dataset_mix import (as_regularisation, check_trainable, combine, mix_captions,
                                                 mix_fingerprint, mix_metadata, mix_summary, training_view)
from lora_lab.lora_core.data.mixed_order import MixedOrder
from lora_lab.lora_core.data.mixed_training_data import merge_training_data
from lora_lab.lora_core.data.samples import TrainSample
from lora_lab.lora_core.cache.encoding_cache import EncodingCache
from lora_lab.lora_core.data.training_samples import build_training_data
from lora_lab.lora_core.errors import DatasetError
from lora_lab.lora_core.training.state import load_train_state, save_train_state
from lora_lab.lora_core.training.trainer import TrainConfig, train
from test_training_samples import FakeEncoders


def folder(root: Path, name: str, n: int, repeats: int = 1, shapes=((64, 64), (96, 64))) -> Path:
    path = root / name / (f"{repeats}_{name}" if repeats > 1 else "")
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name) + n)
    for i in range(n):
        w, h = shapes[i % len(shapes)]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path / f"{name}{i}.png")
        (path / f"{name}{i}.txt").write_text(f"{name} picture {i}")
    return root / name


def dataset(root: Path, name: str, n: int, repeats: int = 1, trigger: str = ""):
    return load_image_folder(folder(root, name, n, repeats), 64, trigger_word=trigger)


def test_shares_by_weight_and_by_repeats_and_nesting(tmp_path):
    a, b, c = dataset(tmp_path, "a", 2), dataset(tmp_path, "b", 6), dataset(tmp_path, "c", 4, repeats=3)
    by_weight = combine([(a, 1.0), (b, 3.0)])
    assert [p.share for p in by_weight.parts] == [0.25, 0.75]
    by_repeats = combine([(a, 2.0), (b, 1.0)], "repeats")  # 2 x 2 samples against 1 x 6
    assert [p.share for p in by_repeats.parts] == pytest.approx([0.4, 0.6])
    nested = combine([(by_weight, 1.0), (c, 1.0)])  # the inner mix keeps its split within its half
    assert [p.share for p in nested.parts] == pytest.approx([0.125, 0.375, 0.5])
    assert combine([(by_weight, 1.0), (c, 1.0)], "repeats").parts[2].share == pytest.approx(12 / 20)
    with pytest.raises(DatasetError, match="at least two"):
        combine([(a, 1.0)])
    with pytest.raises(DatasetError, match="weight 0"):
        combine([(a, 0.0), (b, 0.0)])


def test_regularisation_marks_and_a_mix_needs_training_data(tmp_path):
    a, reg = dataset(tmp_path, "a", 2, trigger="sks"), dataset(tmp_path, "reg", 4)
    marked = as_regularisation(reg, "images", 0.5)
    with pytest.raises(DatasetError, match="Only regularisation datasets"):
        check_trainable(marked)
    mix = combine([(a, 1.0), (marked, 1.0)])
    check_trainable(mix)
    assert mix.parts[1].regularisation.target == "images" and mix.parts[1].regularisation.weight == 0.5
    with pytest.raises(DatasetError, match="target"):
        as_regularisation(reg, "toward the moon")
    meta = mix_metadata(mix, drawn=[3, 1])
    listed = json.loads(meta["lora_lab_datasets"])
    assert [(d["name"], d["share"], d["role"], d["batches_drawn"]) for d in listed] == [
        ("a", 0.5, "training", 3), ("reg", 0.5, "regularisation", 1)]
    assert listed[1]["target"] == "images" and meta["ss_num_reg_images"] == "4"
    text = mix_summary(mix)
    assert "a: 50.0% of batches, training" in text and "regularisation toward its images, weight 0.5" in text
    view = training_view(mix)
    assert len(view.images) == 2 and view.trigger_word == "sks"  # the regularisation images are not training images
    assert mix_captions(mix) == a.captions() + reg.captions()
    assert mix_fingerprint(mix) == mix_fingerprint(combine([(a, 1.0), (marked, 1.0)]))
    assert mix_fingerprint(mix) != mix_fingerprint(combine([(a, 2.0), (marked, 1.0)]))


def orders(sizes=(3, 5, 2), seed=0):
    items = [[OrderItem(bucket=(64, 64, 1), variants=(i,)) for i in range(n)] for n in sizes]
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    return [BucketOrder(it, seed=seed + k) for k, it in enumerate(items)], offsets


def test_the_share_of_each_dataset_matches_its_weight_over_a_long_run():
    bucket_orders, offsets = orders()
    shares, draws = [0.6, 0.3, 0.1], 20000
    mix = MixedOrder(bucket_orders, offsets, [6, 3, 1], seed=5)
    owner = {i: k for k, (o, n) in enumerate(zip(offsets, (3, 5, 2))) for i in range(o, o + n)}
    counts = [0, 0, 0]
    for _ in range(draws):
        batch = mix.next_batch(2)
        assert len({owner[i] for i in batch}) == 1  # one dataset per batch
        counts[owner[batch[0]]] += 1
    for k, p in enumerate(shares):
        sigma = math.sqrt(draws * p * (1 - p))
        print(f"dataset {k}: {counts[k]} of {draws} batches, expected {draws * p:.0f} +- {sigma:.0f}")
        assert abs(counts[k] - draws * p) < 4 * sigma
    assert mix.drawn == counts


def test_resuming_the_mixed_order_draws_what_an_uninterrupted_run_draws():
    whole_orders, offsets = orders()
    whole = MixedOrder(whole_orders, offsets, [1, 1, 2], seed=3)
    expected = [whole.next_batch(2) for _ in range(40)]
    first_orders, _ = orders()
    first = MixedOrder(first_orders, offsets, [1, 1, 2], seed=3)
    got = [first.next_batch(2) for _ in range(17)]
    state = json.loads(json.dumps(first.state_dict()))  # as a state file holds it
    again_orders, _ = orders()
    again = MixedOrder(again_orders, offsets, [1, 1, 2], seed=3)
    again.load_state_dict(state)
    assert got + [again.next_batch(2) for _ in range(23)] == expected
    assert again.drawn == whole.drawn
    other_orders, _ = orders()
    with pytest.raises(DatasetError, match="shares"):
        MixedOrder(other_orders, offsets, [1, 2, 2], seed=3).load_state_dict(state)
    with pytest.raises(DatasetError, match="not for this mix"):
        MixedOrder(*orders((3, 5)), [1, 1], seed=3).load_state_dict(state)


def mixed_data(tmp_path, seed=0):
    a = dataset(tmp_path, "a", 3)
    b = as_regularisation(dataset(tmp_path, "b", 4), "images", 0.5)
    mix = combine([(a, 2.0), (b, 1.0)])
    fake = FakeEncoders()
    datas = [build_training_data(p.dataset, fake.encoders(), EncodingCache(None), seed=seed, batch_size=1)
             for p in mix.parts]
    return mix, merge_training_data(list(mix.parts), datas, seed)


def test_merged_data_keeps_each_datasets_samples_roles_and_order(tmp_path):
    mix, merged = mixed_data(tmp_path)
    data = merged.data
    assert len(data.samples) == 7 and merged.offsets == [0, 3]
    assert merged.roles[:3] == [None] * 3 and all(r.target == "images" for r in merged.roles[3:])
    for _ in range(50):
        batch = data.order.next_batch(1)
        assert batch[0] < 7
    assert sum(data.order.drawn) == 50 and "a: " in data.report and "b: " in data.report


def test_a_run_on_a_mix_resumes_byte_identically(tmp_path):
    from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend
    from lora_lab.lora_core.cli.tiny_models import tiny_unet
    from lora_lab.lora_core.training.preservation import Preservation

    backend = DDPMUNetBackend(tiny_unet(seed=0, channels=(16, 32)).requires_grad_(False))
    config = TrainConfig(steps=6, learning_rate=1e-3, rank=4, alpha=4.0, seed=0)

    def run(steps, resume=None):
        _, merged = mixed_data(tmp_path)
        samples = [TrainSample(s.latent, s.cond, s.caption) for s in merged.data.samples]
        cfg = TrainConfig(**{**config.__dict__, "steps": steps})
        return train(backend, samples, cfg, order=merged.data.order, preservation=Preservation(roles=merged.roles),
                     resume=resume), merged.data.order

    (whole, whole_order) = run(6)
    (first, _) = run(3)
    path = save_train_state(tmp_path / "mix.state", first.state)
    (resumed, resumed_order) = run(6, load_train_state(path))
    assert resumed.losses == whole.losses
    assert all(torch.equal(getattr(resumed.lora.modules[n], f), getattr(whole.lora.modules[n], f))
               for n in whole.lora.modules for f in ("down", "up"))
    assert resumed_order.drawn == whole_order.drawn and sum(whole_order.drawn) == 6
