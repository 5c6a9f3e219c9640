"""`lora-lab train` over two CPU processes (torchrun, gloo): the same LoRA as one process at the same global batch.

Every rank draws the global step and computes its half; the LoRA gradients are averaged. So the two-process
LoRA equals the one-process LoRA up to float summation order, and a state written by one process continues
in two. Each run is a fresh `python -m lora_lab train` process with one thread.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from cli_helpers import run_cli, tiny_pipeline, write_config
from lora_lab.lora_core.training.distributed import Distributed
from lora_lab.lora_core.files.lora_file import load_lora_file

pytestmark = pytest.mark.slow
TOL = dict(atol=1e-5, rtol=1e-4)  # fp32: the batch mean summed in two halves, then all-reduced


def _assert_same_lora(a_path, b_path):
    a, _ = load_lora_file(a_path)
    b, _ = load_lora_file(b_path)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], **TOL, msg=key)
    changed = [k for k in a if k.endswith("lora_up.weight") and a[k].abs().max() > 1e-4]
    assert changed  # trained, not the zero init on both sides


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    folder = tiny_pipeline("sd15", root)
    # global batch 4 = 2 processes x 2, accumulation 2, warm-up + cosine: every part of the step is split
    train = {"steps": 3, "batch_size": 4, "grad_accum": 2, "lr_schedule": "cosine", "warmup_steps": 1}
    config = write_config(root / "run.toml", folder, root / "unused", train=train, output={"formats": ["comfyui"]})
    return root, config


def test_two_processes_equal_one(setup):
    root, config = setup
    _ok(run_cli([str(config), "--out", str(root / "one")], processes=1))
    _ok(run_cli([str(config), "--out", str(root / "two")], processes=2))
    _assert_same_lora(root / "one" / "lora.safetensors", root / "two" / "lora.safetensors")
    one = json.loads((root / "one" / "lora_report.json").read_text())
    two = json.loads((root / "two" / "lora_report.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)  # rank 0 logs the global mean
    assert not (root / "two" / "lora_report.json.tmp").exists()


def test_resume_one_process_then_two(setup):
    """3 steps in one process saving at step 2; steps 3 resumed in two processes from that state == 3 steps in one."""
    root, config = setup
    if not (root / "one" / "lora.safetensors").is_file():
        _ok(run_cli([str(config), "--out", str(root / "one")], processes=1))
    _ok(run_cli([str(config), "--out", str(root / "first"), "--set", "output.save_every=2"], processes=1))
    state = root / "first" / "lora-step000002.state"
    assert state.is_file() and (root / "first" / "lora-step000002.safetensors").is_file()
    _ok(run_cli([str(config), "--out", str(root / "rest"), "--resume", str(state)], processes=2))
    _assert_same_lora(root / "one" / "lora.safetensors", root / "rest" / "lora.safetensors")
    rest = json.loads((root / "rest" / "lora_report.json").read_text())
    assert rest["world_size"] == 2 and rest["steps"] == 3 and len(rest["step_seconds"]) == 1


def test_rank_slices_cover_the_batch_once():
    batch, noise, u, conds = list(range(6)), [torch.full((1,), i) for i in range(6)], torch.arange(6.0), list("abcdef")
    parts = [Distributed(rank=r, world_size=3, device=torch.device("cpu")).shard(batch, noise, u, conds) for r in range(3)]
    assert sum((p[0] for p in parts), []) == batch
    assert torch.cat([p[2] for p in parts]).tolist() == u.tolist()
    assert sum((p[3] for p in parts), []) == conds
    assert [int(n) for p in parts for n in p[1]] == batch


def test_dropout_seed_depends_on_rank_and_step_only():
    def draw(rank, step):
        Distributed(rank=rank, world_size=2, device=torch.device("cpu")).seed_step(5, step)
        return torch.rand(3)

    assert torch.equal(draw(1, 4), draw(1, 4))
    assert not torch.equal(draw(0, 4), draw(1, 4)) and not torch.equal(draw(1, 4), draw(1, 5))


@pytest.mark.skipif(os.environ.get("LORA_LAB_TEST_ACCELERATE") != "1",
                    reason="set LORA_LAB_TEST_ACCELERATE=1 to also launch through `accelerate launch` (needs accelerate)")
def test_accelerate_launch(setup):
    import subprocess
    import sys

    root, config = setup
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29731",
           "-m", "lora_lab", "train", str(config), "--out", str(root / "acc")]
    _ok(subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600))
    assert json.loads((root / "acc" / "lora_report.json").read_text())["world_size"] == 2
    if (root / "one" / "lora.safetensors").is_file():
        _assert_same_lora(root / "one" / "lora.safetensors", root / "acc" / "lora.safetensors")


def test_a_nan_in_two_processes_is_saved_once_by_rank_0(setup, tmp_path):
    """A learning rate of 1e30 makes a later step's loss NaN on every rank at once (the loss is the all-reduced
    mean): rank 0 saves the step before it with its state while the other waits, and only rank 0 reports."""
    import re

    root, config = setup
    out = tmp_path / "out"
    proc = run_cli([str(config), "--out", str(out), "--set", "train.learning_rate=1e30"], processes=2)
    assert proc.returncode == 1, proc.stderr[-3000:]
    stops = re.findall(r"lora-lab train: stopped: loss became nan at step (\d+)", proc.stderr)
    assert len(stops) == 1 and int(stops[0]) > 1, proc.stderr[-3000:]
    stem = f"lora_step{int(stops[0]) - 1:05d}"
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.safetensors", f"{stem}.state"]
    assert f"--resume {out / stem}.state" in proc.stderr
