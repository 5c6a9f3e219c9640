"""Bad `lora-lab train` configurations: a clear message, exit status 2, and no model loaded."""

from __future__ import annotations

import json

import pytest

from cli_helpers import DATASET, write_config
from lora_lab.__main__ import main
from lora_lab.lora_core.cli import model_folders
from lora_lab.lora_core.cli import train as train_cli
from lora_lab.lora_core.cli.config import ConfigError, load_config


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if anything tries to load weights."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the configuration was checked")
    monkeypatch.setattr(model_folders, "load_model", refuse)
    monkeypatch.setattr(train_cli, "load_model", refuse)


@pytest.fixture
def unet_folder(tmp_path):
    """A folder that looks like an SD1.5 pipeline to the pre-flight checks (JSON only, no weights)."""
    root = tmp_path / "sd15"
    for part in ("vae", "tokenizer", "text_encoder"):
        (root / part).mkdir(parents=True)
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768}))
    return root


def _fails(capsys, args: list[str], *expected: str) -> str:
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    return err


def test_unknown_key_named_with_nearest(tmp_path, unet_folder, capsys, no_loading):
    cfg = write_config(tmp_path / "run.toml", unet_folder, tmp_path / "out", train={"learning_rat": 1e-4})
    _fails(capsys, [str(cfg)], "unknown key train.'learning_rat'", "did you mean 'learning_rate'?", str(cfg))


def test_unknown_nested_key_and_section(tmp_path, unet_folder, capsys, no_loading):
    cfg = write_config(tmp_path / "a.toml", unet_folder, tmp_path / "out")
    cfg.write_text(cfg.read_text() + "[data.augment]\nflipp = 0.5\n")
    _fails(capsys, [str(cfg)], "data.augment.'flipp'", "did you mean 'flip'?")
    cfg2 = write_config(tmp_path / "b.toml", unet_folder, tmp_path / "out")
    cfg2.write_text(cfg2.read_text().replace("[output]", "[outputs]"))
    _fails(capsys, [str(cfg2)], "unknown key 'outputs'", "did you mean 'output'?")
    clean = write_config(tmp_path / "c.toml", unet_folder, tmp_path / "out")
    _fails(capsys, [str(clean), "--set", "train.rnak=4"], "did you mean 'rank'?")


def test_missing_model_folder(tmp_path, capsys, no_loading):
    cfg = write_config(tmp_path / "run.toml", tmp_path / "nowhere", tmp_path / "out")
    _fails(capsys, [str(cfg)], "model folder not found", str(tmp_path / "nowhere"))


def test_folder_without_a_model(tmp_path, capsys, no_loading):
    (tmp_path / "empty").mkdir()
    cfg = write_config(tmp_path / "run.toml", tmp_path / "empty", tmp_path / "out")
    _fails(capsys, [str(cfg)], "holds no diffusers model", "unet/config.json")


def test_family_the_folder_does_not_hold(tmp_path, unet_folder, capsys, no_loading):
    cfg = write_config(tmp_path / "run.toml", unet_folder, tmp_path / "out", model={"family": "flux"})
    _fails(capsys, [str(cfg)], "model.family = 'flux'", "holds a sd15 model (UNet2DConditionModel)", 'family = "sd15"')


def test_missing_text_encoder(tmp_path, unet_folder, capsys, no_loading):
    (unet_folder / "tokenizer").rmdir()
    cfg = write_config(tmp_path / "run.toml", unet_folder, tmp_path / "out")
    _fails(capsys, [str(cfg)], "lacks tokenizer/")


def test_world_size_must_divide_the_batch(tmp_path, unet_folder, capsys, monkeypatch, no_loading):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node 2 sets it; checked before joining a group
    cfg = write_config(tmp_path / "run.toml", unet_folder, tmp_path / "out", train={"batch_size": 3})
    _fails(capsys, [str(cfg)], "train.batch_size = 3", "does not divide by the 2 processes", "multiple of 2")


def test_bad_values(tmp_path, unet_folder, capsys, no_loading):
    cfg = write_config(tmp_path / "run.toml", unet_folder, tmp_path / "out")
    _fails(capsys, [str(cfg), "--set", "train.rank=four"], "train.rank must be int, got 'four'")
    _fails(capsys, [str(cfg), "--set", 'output.formats=["kohya"]'], "output.formats has 'kohya'")
    _fails(capsys, [str(cfg), "--set", "model.dtype=fp8"], "model.dtype = 'fp8'")
    _fails(capsys, [str(cfg), "--set", "data.augment.flip=2.0"], "flip")
    _fails(capsys, [str(cfg), "--data", str(tmp_path / "no_data")], "is not a folder")
    _fails(capsys, [str(tmp_path / "missing.toml")], "config file not found")
    (tmp_path / "broken.toml").write_text("[train\nsteps = 1")
    _fails(capsys, [str(tmp_path / "broken.toml")], "not valid TOML")


def test_file_and_flags_merge(tmp_path, unet_folder):
    cfg = write_config(tmp_path / "run.toml", unet_folder, tmp_path / "out", data={"buckets": {"enabled": True}})
    config = load_config(cfg, ["train.rank=32", "output.formats=['comfyui', 'diffusers']", "data.trigger_word=sks"])
    assert config.train.rank == 32 and config.train.steps == 2
    assert config.output.formats == ["comfyui", "diffusers"] and config.data.trigger_word == "sks"
    assert config.data.buckets.enabled and config.data.path == str(DATASET)
    with pytest.raises(ConfigError, match="section"):
        load_config(cfg, ["rank=3"])


def test_gradient_checkpointing_takes_a_mode_or_the_old_booleans(tmp_path, unet_folder):
    from lora_lab.lora_core.training.checkpoint_modes import checkpointing_mode

    cfg = write_config(tmp_path / "run.toml", unet_folder, tmp_path / "out")
    for value, mode in (("true", "full"), ("false", "off"), ("'partial'", "partial"), ("full", "full")):
        config = load_config(cfg, [f"train.gradient_checkpointing={value}"])
        assert checkpointing_mode(config.train.gradient_checkpointing) == mode


def test_example_configs_parse():
    import dataclasses

    from cli_helpers import REPO
    from lora_lab.lora_core.training.trainer import TrainConfig

    if "optimizer" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        pytest.skip("the example configs name optimizers (CAME, AdamW 8-bit, Adafactor): the optional optimizer packages")

    examples = sorted((REPO / "examples" / "configs").glob("*.toml"))
    assert len(examples) >= 3
    for path in examples:
        config = load_config(path)
        assert config.model.family != "auto" and config.output.formats


def test_tensorboard_without_the_package(tmp_path, unet_folder, capsys, no_loading):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    cfg = write_config(tmp_path / "run.toml", unet_folder, tmp_path / "out", output={"tensorboard": True})
    _fails(capsys, [str(cfg)], "output.tensorboard needs the tensorboard package")


def test_text_encoder_training_refused(tmp_path, unet_folder, capsys, no_loading):
    cfg = write_config(tmp_path / "run.toml", unet_folder, tmp_path / "out", train={"train_text_encoder": True})
    _fails(capsys, [str(cfg)], "train_text_encoder is not supported by lora-lab train")


# (--set flags, words the one-line error must hold: the value at fault and the allowed ones)
BAD_VALUES = {
    "model.family": (["model.family=flux2"], "'flux2'", "auto, sd15, sdxl"),
    "model.dtype": (["model.dtype=fp8"], "'fp8'", "fp32, bf16, fp16"),
    "model.text_encoder": (["model.text_encoder=clip"], "'clip'", "pipeline, hashed"),
    "model.prediction": (["model.prediction=x0"], "'x0'", "auto, eps, v"),
    "model.device": (["model.device=gpu"], "'gpu'", "auto or a torch device"),
    "data.small_images": (["data.small_images=crop"], "'crop'", "upscale, skip"),
    "data.video.frame_sampling": (["data.video.frame_sampling=random"], "'random'", "head, uniform, chunk"),
    "train.optimizer": (["train.optimizer=adamx"], "'adamx'", "adamw, adamw8bit, adafactor"),
    "train.optimizer_settings": (["train.optimizer_settings={betaz=1}"], "'betaz'", "betas, eps, weight_decay"),
    "train.lr_schedule": (["train.lr_schedule=cosin"], "'cosin'", "constant, constant_with_warmup, cosine"),
    "train.algorithm": (["train.algorithm=glora"], "'glora'", "lora, loha, lokr, dora"),
    "train.algorithm_options": (["train.algorithm=lokr", "train.algorithm_options={factr=4}"], "'factr'",
                                "factor, decompose_both"),
    "train.algorithm_options.axis": (["train.algorithm=dora", "train.algorithm_options={axis='rows'}"], "'rows'",
                                     "input, output"),
    "train.timestep_sampling": (["train.timestep_sampling=logit"], "'logit'", "uniform, logit_normal, sigmoid"),
    "train.precision": (["train.precision=fp8"], "'fp8'", "fp32, bf16, fp16"),
    "train.loss.loss_type": (["train.loss.loss_type=l3"], "'l3'", "l2, l1, huber, smooth_l1"),
    "train.loss.huber_schedule": (["train.loss.huber_schedule=snrr"], "'snrr'", "constant, exponential, snr"),
    "train.targets": (["train.targets=attention_mpl"], "'attention_mpl'", "did you mean 'attention_mlp'?"),
    "output.formats": (['output.formats=["kohya"]'], "'kohya'", "comfyui, diffusers"),
    "schedule-free with a schedule": (["train.optimizer=adamw_schedulefree", "train.lr_schedule=cosine"],
                                      "'cosine'", "set lr_schedule to constant"),
    "train.ema_decay": (["train.ema_decay=1.5"], "1.5", "(0, 1)"),
    "EMA with schedule-free": (["train.optimizer=adamw_schedulefree", "train.ema_decay=0.99"], "EMA", "schedule-free"),
    "train.timestep_min/max": (["train.timestep_min=0.6", "train.timestep_max=0.5"], "min=0.6 max=0.5", "0 <= min < max <= 1"),
    "train.gradient_checkpointing": (["train.gradient_checkpointing=half"], "'half'", "off, partial, full"),
    "train.checkpoint_budget": (["train.checkpoint_budget=1.5"], "1.5", "[0, 1]"),
}


@pytest.mark.parametrize("key", list(BAD_VALUES))
def test_each_bad_value_exits_2_in_one_line_before_any_model_loads(key, tmp_path, unet_folder, capsys, no_loading):
    sets, value, allowed = BAD_VALUES[key]
    cfg = write_config(tmp_path / "run.toml", unet_folder, tmp_path / "out")
    args = [str(cfg)] + [word for s in sets for word in ("--set", s)]
    err = _fails(capsys, args, value, allowed, str(cfg))
    assert len(err.strip().splitlines()) == 1, err


def test_the_same_config_without_a_bad_value_reaches_the_loader(tmp_path, unet_folder, no_loading):
    """The guard above is real: a good config gets as far as loading the model (which no_loading refuses)."""
    cfg = write_config(tmp_path / "run.toml", unet_folder, tmp_path / "out")
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["train", str(cfg)])


def test_existing_outputs_are_refused_before_loading(tmp_path, unet_folder, capsys, no_loading):
    from lora_lab.lora_core.training.state import TrainState, save_train_state

    out = tmp_path / "out"
    out.mkdir()
    (out / "lora_loss.png").write_bytes(b"plot of an earlier run")
    cfg = write_config(tmp_path / "run.toml", unet_folder, out)
    _fails(capsys, [str(cfg)], f"{out / 'lora_loss.png'} exists", "--overwrite", "another --name")
    assert (out / "lora_loss.png").read_bytes() == b"plot of an earlier run"
    with pytest.raises(AssertionError, match="a model was loaded"):  # another name, or no plot: nothing to replace
        main(["train", str(cfg), "--name", "other"])
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["train", str(cfg), "--set", "output.loss_plot=false"])

    # periodic saves: the ones after the resume step would be rewritten, the earlier ones not
    (out / "lora_loss.png").unlink()
    state = save_train_state(out / "lora-step000002.state", TrainState(2, {}, {}, {}, {}, {}, {}))
    (out / "lora-step000002.safetensors").write_bytes(b"x")
    every = ["--steps", "6", "--set", "output.save_every=2"]
    _fails(capsys, [str(cfg), *every], f"{out / 'lora-step000002.safetensors'} exists", "(and 1 more file(s)")
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["train", str(cfg), *every, "--resume", str(state)])
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["train", str(cfg), *every, "--overwrite"])


def test_a_resume_file_that_is_not_a_state_is_refused(tmp_path, unet_folder, capsys, no_loading):
    (tmp_path / "lora.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    cfg = write_config(tmp_path / "run.toml", unet_folder, tmp_path / "out")
    _fails(capsys, [str(cfg), "--resume", str(tmp_path / "lora.safetensors")], "output.resume",
           "is not a LoRA Lab training state")
