"""torch.compile on the units (compiled_units.py): the same LoRA as the plain run, one compile per input shape
and grad mode and none for previews between steps, an exact resume, and a clean fall-back when compiling fails.
The backend is aot_eager (dynamo and AOTAutograd as with inductor, without generating C++: seconds, not
minutes); tests/integration/test_checkpointing_comfy.py runs inductor on ComfyUI's own classes."""

import pytest
import torch

from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend
from lora_lab.lora_core.cli.tiny_models import tiny_unet
from lora_lab.lora_core.training import compiled_units
from lora_lab.lora_core.training.trainer import train

from test_resume import lora_bytes, stopped_then_resumed
from test_trainer import assert_same_lora, config as base_config, make_samples


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=0, channels=(16, 32)).requires_grad_(False)


@pytest.fixture(autouse=True)
def aot_eager(monkeypatch):
    monkeypatch.setattr(compiled_units, "DEFAULT_BACKEND", "aot_eager")
    torch._dynamo.reset()  # compiled code is cached per function, across runs: each test counts its own
    yield
    torch._dynamo.reset()


def config(**kw):
    # eps=1 makes AdamW's update linear in the gradient: a rounding difference in a gradient stays one in the LoRA
    # (with the default eps the first steps are lr * sign(g), which flips for gradients that round to ~0)
    return base_config(**{"optimizer_settings": {"eps": 1.0}, "learning_rate": 1e-2, **kw})


def graphs(result) -> tuple[int, int]:
    import re

    assert result.compiled == "on", result.compiled
    found = re.fullmatch(r"(\d+) units, (\d+) graphs compiled for (\d+) input shapes in [\d.]+ s", result.compile_report)
    assert found, result.compile_report
    return int(found[2]), int(found[3])


@pytest.mark.parametrize("mode", ["off", "partial", "full"])
def test_compiled_units_give_the_plain_lora(unet, mode):
    backend, samples = DDPMUNetBackend(unet), make_samples(4)
    plain = train(backend, samples, config(gradient_checkpointing=mode))
    compiled = train(backend, samples, config(gradient_checkpointing=mode, compile=True))
    assert compiled.checkpointing == plain.checkpointing and compiled.warnings == []
    assert compiled.losses == pytest.approx(plain.losses, rel=1e-5)
    assert_same_lora(plain.lora, compiled.lora, atol=1e-6)
    assert plain.compiled == "off" and graphs(compiled)[0] > 0


def test_one_compile_per_input_shape_and_none_for_calls_between_steps(unet):
    """Each unit call signature is compiled once: repeating a shape recompiles nothing, a second latent shape
    (an aspect bucket) costs what the first did, and a no-grad forward between steps (a preview) runs eagerly."""
    backend = DDPMUNetBackend(unet)
    square, wide = make_samples(2), make_samples(2, seed=2)
    wide = [type(s)(torch.randn(4, 8, 12), s.cond, s.caption) for s in wide]
    probe = {"n": 0}

    def preview(report):
        with report.evaluating():
            backend.denoise(torch.randn(1, 4, 16, 16), torch.tensor([1.0]), [square[0].cond])
        probe["n"] += 1

    one = graphs(train(backend, square, config(steps=2, compile=True)))
    torch._dynamo.reset()
    longer = graphs(train(backend, square, config(steps=6, compile=True), on_step=preview))
    torch._dynamo.reset()
    two = graphs(train(backend, square + wide, config(steps=6, compile=True)))
    assert probe["n"] == 6 and longer == one  # more steps and the previews' own size compiled nothing
    assert two == (2 * one[0], 2 * one[1])


def test_a_second_run_in_the_process_reuses_the_compiled_code(unet):
    backend, samples = DDPMUNetBackend(unet), make_samples(4)
    first = train(backend, samples, config(steps=2, compile=True))
    again = train(backend, samples, config(steps=2, compile=True, seed=3))
    assert graphs(first)[0] > 0 and graphs(again) == (0, graphs(first)[1])


def test_a_compiled_run_resumes_byte_for_byte(unet, tmp_path):
    backend, samples = DDPMUNetBackend(unet), make_samples()
    cfg = config(compile=True, steps=6, grad_accum=2)
    straight = train(backend, samples, cfg)
    resumed = stopped_then_resumed(backend, samples, cfg, tmp_path)
    assert lora_bytes(resumed, tmp_path, "b") == lora_bytes(straight, tmp_path, "a")


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(unet, monkeypatch, caplog):
    def broken(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(compiled_units, "DEFAULT_BACKEND", broken)
    backend, samples = DDPMUNetBackend(unet), make_samples(4)
    plain = train(backend, samples, config(gradient_checkpointing="full"))
    fell_back = train(backend, samples, config(gradient_checkpointing="full", compile=True))
    assert fell_back.compiled.startswith("failed, ran eagerly") and "no C++ compiler here" in fell_back.compiled
    assert fell_back.compile_report.endswith("units eager")
    kinds = {type(u).__name__ for u in __import__("lora_lab.lora_core.training.checkpointing",
                                                      fromlist=["x"]).checkpoint_units(unet)}
    assert len(fell_back.warnings) == len(kinds)  # once per unit class
    assert all("torch.compile failed for" in w for w in fell_back.warnings)
    assert "torch.compile failed" in caplog.text
    assert_same_lora(plain.lora, fell_back.lora, atol=0)
