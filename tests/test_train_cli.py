"""`lora-lab train` in one process on tiny random diffusers pipelines (built by the test, nothing downloaded).

For each family: the CLI trains on the bundled tiny dataset, writes both forms with metadata, and the
diffusers/PEFT file loaded by diffusers' own `load_lora_weights` into the pipeline changes the denoiser
exactly as the trained LoRA does (its weight deltas merged into a copy of the base).
"""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch

from cli_helpers import tiny_pipeline, write_config
from lora_lab.__main__ import main
from lora_lab.lora_core.files.lora_file import load_lora_file
from lora_lab.lora_core.cli.model_folders import inspect_folder
from lora_lab.converters.trained_lora import FORMS
from lora_lab.lora_core.cli.train import run_training
from lora_lab.lora_core.cli.config import load_config

PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline",
             "flux": "FluxPipeline", "sana": "SanaPipeline", "wan": "WanPipeline"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_pipelines")


def _load_part(path):
    import diffusers
    import transformers

    if (path / "scheduler_config.json").is_file():
        cls = json.loads((path / "scheduler_config.json").read_text())["_class_name"]
        return getattr(diffusers, cls).from_pretrained(path)
    if (path / "tokenizer.json").is_file():
        return transformers.AutoTokenizer.from_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    if "_class_name" in config:
        return getattr(diffusers, config["_class_name"]).from_pretrained(path)
    return getattr(transformers, config["architectures"][0]).from_pretrained(path)


def _pipeline(folder, family):
    """The family's diffusers pipeline class built from the folder's parts (optional parts left out)."""
    import diffusers

    cls = getattr(diffusers, PIPELINES[family])
    kwargs = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        if (folder / name).is_dir():
            kwargs[name] = _load_part(folder / name)
        elif param.default is inspect.Parameter.empty:
            kwargs[name] = None
    return cls(**kwargs)


def _denoise(denoiser, family: str) -> torch.Tensor:
    """One forward on fixed random inputs of the right shapes."""
    gen = torch.Generator().manual_seed(7)
    c = denoiser.config
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    with torch.no_grad():
        if family in ("sd15", "sdxl"):
            extra = {}
            if family == "sdxl":
                extra["added_cond_kwargs"] = {"text_embeds": rand(1, 32), "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]])}
            return denoiser(rand(1, 4, 8, 8), torch.tensor([500]), encoder_hidden_states=rand(1, 6, c.cross_attention_dim),
                            **extra).sample
        if family == "flux":
            return denoiser(hidden_states=rand(1, 16, 16), encoder_hidden_states=rand(1, 6, 32), pooled_projections=rand(1, 32),
                            timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(6, 3)).sample
        if family == "sd3":
            return denoiser(hidden_states=rand(1, 4, 8, 8), encoder_hidden_states=rand(1, 6, 64), pooled_projections=rand(1, 64),
                            timestep=torch.tensor([500.0])).sample
        if family == "sana":
            return denoiser(rand(1, 4, 8, 8), encoder_hidden_states=rand(1, 6, 32), timestep=torch.tensor([500.0])).sample
        return denoiser(rand(1, 4, 1, 8, 8), timestep=torch.tensor([500.0]), encoder_hidden_states=rand(1, 6, 32)).sample


def _merged(denoiser, lora):
    """A copy of the base with every trained delta added to its layer's weight: what the LoRA must do."""
    merged = copy.deepcopy(denoiser)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for name, weights in lora.modules.items():
            modules[name].weight += weights.delta().to(modules[name].weight)
    return merged


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3", "flux", "sana", "wan"])
def test_train_writes_a_lora_diffusers_loads(family, models, tmp_path):
    folder = tiny_pipeline(family, models)
    out = tmp_path / "out"
    config = load_config(write_config(tmp_path / "run.toml", folder, out))
    result = run_training(config, inspect_folder(folder), FORMS)

    assert result.steps_done == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert len(result.lora.modules) > 0
    for name in ("lora.safetensors", "lora.diffusers.safetensors", "lora.state", "lora_loss.png",
                 "lora_report.json"):
        assert (out / name).is_file(), name
    comfy, meta = load_lora_file(out / "lora.safetensors")
    assert meta["lora_lab_family"] == family and meta["ss_network_dim"] == "4" and meta["ss_steps"] == "2"
    assert meta["modelspec.trigger_phrase"] == "rcircle"
    assert all(k.startswith(("lora_unet_", "lora_transformer_")) for k in comfy)

    pipe = _pipeline(folder, family)
    denoiser = pipe.unet if family in ("sd15", "sdxl") else pipe.transformer
    base = _denoise(denoiser, family)
    expected = _denoise(_merged(denoiser, result.lora), family)
    pipe.load_lora_weights(str(out / "lora.diffusers.safetensors"))
    loaded = {n.rsplit(".lora_A", 1)[0] for n, _ in denoiser.named_modules() if n.endswith(".lora_A")}
    assert loaded == set(result.lora.modules)  # every trained layer, and nothing else
    got = _denoise(denoiser, family)
    assert (expected - base).abs().max() > 1e-4  # the LoRA does change the output
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_flags_override_the_file_and_resume_continues(models, tmp_path):
    folder = tiny_pipeline("sd15", models)
    cfg = write_config(tmp_path / "run.toml", folder, tmp_path / "a", output={"formats": ["comfyui"], "loss_plot": False})
    assert main(["train", str(cfg), "--steps", "3", "--set", "train.rank=2", "--out", str(tmp_path / "full")]) == 0
    _, meta = load_lora_file(tmp_path / "full" / "lora.safetensors")
    assert meta["ss_steps"] == "3" and meta["ss_network_dim"] == "2"

    # 2 steps, then 1 more from the state: the same file as 3 straight steps
    assert main(["train", str(cfg), "--set", "train.rank=2", "--out", str(tmp_path / "part")]) == 0
    assert main(["train", str(cfg), "--steps", "3", "--set", "train.rank=2", "--out", str(tmp_path / "rest"),
                 "--resume", str(tmp_path / "part" / "lora.state")]) == 0
    a, _ = load_lora_file(tmp_path / "full" / "lora.safetensors")
    b, _ = load_lora_file(tmp_path / "rest" / "lora.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_source_date_epoch_makes_the_same_run_the_same_bytes(models, tmp_path, monkeypatch):
    """Timestamps are the only bytes two runs of one config differ by; $SOURCE_DATE_EPOCH fixes them."""
    folder = tiny_pipeline("sd15", models)
    cfg = write_config(tmp_path / "run.toml", folder, tmp_path / "a", output={"formats": ["comfyui"], "loss_plot": False})
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    for out in ("one", "two"):
        assert main(["train", str(cfg), "--out", str(tmp_path / out)]) == 0
    one, two = ((tmp_path / out / "lora.safetensors").read_bytes() for out in ("one", "two"))
    assert one == two
    _, meta = load_lora_file(tmp_path / "one" / "lora.safetensors")
    assert meta["ss_training_started_at"] == meta["ss_training_finished_at"] == "1700000000.0"


@pytest.mark.parametrize("family,algorithm,optimizer", [("sd15", "loha", "adafactor"), ("flux", "lokr", "adamw")])
def test_algorithms_and_optimizers_from_the_config(family, algorithm, optimizer, models, tmp_path):
    """The nodes' algorithms and optimizers through the CLI: LyCORIS keys in the ComfyUI form and their metadata.
    LoHa has an exact LoRA form, which diffusers applies as trained; this LoKr (full w2 at toy width) has none,
    so asking for the diffusers form is an error that says so, after the ComfyUI form and the state are written."""
    from lora_lab.lora_core.errors import LoraFormatError

    folder = tiny_pipeline(family, models)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.toml", folder, out, train={"algorithm": algorithm, "optimizer": optimizer,
                                                                 "learning_rate": 1e-2 if optimizer == "adamw" else 1e-1})
    if algorithm == "lokr":
        with pytest.raises(LoraFormatError, match="no exact diffusers/PEFT LoRA form"):
            run_training(load_config(cfg), inspect_folder(folder), FORMS)
        assert (out / "lora.safetensors").is_file() and (out / "lora.state").is_file()
        result = run_training(load_config(cfg, ['output.formats=["comfyui"]']), inspect_folder(folder), FORMS)
    else:
        result = run_training(load_config(cfg), inspect_folder(folder), FORMS)
    comfy, meta = load_lora_file(out / "lora.safetensors")
    assert meta["lora_lab_algorithm"] == algorithm and meta["ss_optimizer"] == optimizer
    role = {"loha": ".hada_w1_a", "lokr": ".lokr_w"}[algorithm]
    assert any(role in k for k in comfy) and len(result.lora.modules) > 0
    if algorithm == "lokr":
        return
    pipe = _pipeline(folder, family)
    denoiser = pipe.unet if family in ("sd15", "sdxl") else pipe.transformer
    base = _denoise(denoiser, family)
    expected = _denoise(_merged(denoiser, result.lora), family)
    pipe.load_lora_weights(str(out / "lora.diffusers.safetensors"))
    got = _denoise(denoiser, family)
    assert (expected - base).abs().max() > 1e-4
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_validation_loss_in_the_report_and_plot(models, tmp_path):
    folder = tiny_pipeline("sd15", models)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.toml", folder, out, data={"validation": 1, "validate_every": 1},
                       output={"formats": ["comfyui"]})
    result = run_training(load_config(cfg), inspect_folder(folder), FORMS)
    report = json.loads((out / "lora_report.json").read_text())
    assert [step for step, _ in report["validation"]] == [1, 2]
    assert report["losses"] == result.losses and len(report["step_seconds"]) == 2
    assert (out / "lora_loss.png").stat().st_size > 0
