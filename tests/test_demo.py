"""`lora-lab demo` end to end with few steps (the full run is the same code with --steps 150)."""

import argparse
import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lora_lab.lora_core.cli import demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    # the bundled example is part of the pack: its absence is a broken path, not a reason to skip
    assert (demo.DATASET / "circle_01.png").exists(), f"bundled dataset missing at {demo.DATASET}"
    out = tmp_path_factory.mktemp("demo")
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    lines = []
    args = parser.parse_args(["--out", str(out), "--steps", "6"])
    demo.run_demo(args.out, steps=args.steps, seed=args.seed, dataset=args.dataset, log=lines.append)
    return out, lines


def test_demo_writes_lora_plot_and_report(demo_run):
    out, lines = demo_run
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 6 and report["images"] == 7 and report["samples"] == 8  # 2_extra folder repeats twice
    with safe_open(str(out / "demo_lora.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
        assert f.get_tensor(keys[0]).dtype == torch.float32
    assert meta["ss_network_module"] == "networks.lora" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.trigger_phrase"] == "rcircle" and meta["ss_steps"] == "6" and meta["ss_num_train_images"] == "7"
    assert len(keys) == 3 * report["modules"] and all(k.startswith("lora_unet_") for k in keys)
    assert any(k.endswith("attn2_to_k.alpha") for k in keys)
    assert Image.open(out / "loss.png").size == (768, 384)
    assert any("strength" in line for line in lines) and any("wrote" in line for line in lines)


def test_demo_strength_sweep_shows_the_effect(demo_run):
    out, _ = demo_run
    rows = {r["strength"]: r for r in json.loads((out / "report.json").read_text())["strengths"]}
    assert rows[0.0]["output_change"] == 0.0
    assert 0 < rows[0.5]["output_change"] < rows[1.0]["output_change"]  # effect grows with strength
    assert rows[-1.0]["output_change"] > 0
    assert len({round(r["eval_loss"], 6) for r in rows.values()}) == 4  # every strength changes the loss
