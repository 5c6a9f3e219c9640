"""`lora-lab train` on an edit model: a tiny random FluxKontextPipeline folder (nothing downloaded) trained on pairs
([data.controls]). Each sample's reference reaches the transformer as FluxKontextPipeline passes it (its tokens after
the latent's, position ids with 1 on the first axis); it changes the loss and the LoRA's gradient, the loss sees the
target's tokens only; diffusers' Kontext pipeline loads the LoRA; a model that takes no reference is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import tiny_pipeline, write_config
from cond_probe import probe, random_adapters
from lora_lab.__main__ import main
from lora_lab.converters.trained_lora import FORMS
from lora_lab.lora_core.cache.encoding_cache import EncodingCache, MemoryStore
from lora_lab.lora_core.cli.config import ConfigError, load_config
from lora_lab.lora_core.cli.model_folders import inspect_folder, load_model
from lora_lab.lora_core.cli.train import run_training
from lora_lab.lora_core.data.buckets import BucketConfig
from lora_lab.lora_core.data.dataset import load_image_folder
from lora_lab.lora_core.data.pairs import PairConfig
from lora_lab.lora_core.data.training_samples import build_training_data
from lora_lab.lora_core.exit_status import EXIT_REFUSED
from lora_lab.lora_core.files.lora_file import load_lora_file

CAPTIONS = ["red circle", "blue square", "green triangle", "yellow shape"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_edit_pipelines")


def pattern(w: int, h: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def make_pairs(folder: Path, shapes=((64, 64),) * 4, controls: bool = True) -> Path:
    for i, (w, h) in enumerate(shapes):
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pattern(w, h, i)).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(CAPTIONS[i % len(CAPTIONS)])
        if controls:
            (folder / "control").mkdir(exist_ok=True)
            Image.fromarray(pattern(w, h, 100 + i)).save(folder / "control" / f"p{i}.png")
    return folder


def test_kontext_trains_on_pairs_and_diffusers_kontext_loads_the_lora(models, tmp_path):
    import diffusers
    from test_train_cli import _denoise, _load_part, _merged

    folder = tiny_pipeline("flux_kontext", models)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.toml", folder, out, data={"path": str(make_pairs(tmp_path / "pairs")),
                                                                 "controls": {"enabled": True}})
    result = run_training(load_config(cfg), inspect_folder(folder), FORMS)
    assert result.steps_done == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    comfy, meta = load_lora_file(out / "lora.safetensors")
    assert meta["lora_lab_family"] == "flux" and '"references": [1]' in meta["lora_lab_pairs"]
    assert all(k.startswith("lora_unet_") for k in comfy)

    parts = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    pipe = diffusers.FluxKontextPipeline(**{name: _load_part(folder / name) for name in parts})
    base = _denoise(pipe.transformer, "flux")
    expected = _denoise(_merged(pipe.transformer, result.lora), "flux")
    pipe.load_lora_weights(str(out / "lora.diffusers.safetensors"))
    assert (expected - base).abs().max() > 1e-4
    torch.testing.assert_close(_denoise(pipe.transformer, "flux"), expected, atol=2e-5, rtol=1e-4)


def _samples(model, folder: Path, second: Path | None = None, resolution: int = 0):
    dataset = load_image_folder(folder, 64, buckets=BucketConfig(64, 32, 128, 16),
                                pairs=PairConfig(second, resolution))
    cache = EncodingCache(None, memory=MemoryStore())
    return build_training_data(dataset, model.encoders, cache, seed=0).samples


def test_the_reference_reaches_the_transformer_and_the_loss_sees_only_the_target(models, tmp_path):
    model = load_model(inspect_folder(tiny_pipeline("flux_kontext", models)), text_encoder="hashed")
    targets = make_pairs(tmp_path / "targets", controls=False)
    for name, seed in (("a", 100), ("b", 200)):
        for i in range(4):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(pattern(64, 64, seed + i)).save(tmp_path / name / f"p{i}.png")
    a, b = _samples(model, targets, tmp_path / "a")[0], _samples(model, targets, tmp_path / "b")[0]
    assert torch.equal(a.latent, b.latent) and not torch.equal(a.cond["references"][0], b.cond["references"][0])
    adapters = random_adapters(model.backend.root)
    a_, again_, b_ = (probe(model.backend, s, adapters, "img_ids") for s in (a, a, b))
    loss_a, grad_a, out_a, ids = a_.loss, a_.grad, a_.out_grad, a_.seen
    again, grad_again, loss_b, grad_b = again_.loss, again_.grad, b_.loss, b_.grad
    assert again == loss_a and torch.equal(grad_again, grad_a)  # bit for bit: any change below is the reference's
    print(f"loss {loss_a} -> {loss_b}; gradient change {float((grad_b - grad_a).norm() / grad_a.norm()):.3g} of its norm")
    assert loss_b != loss_a and (grad_b - grad_a).norm() > 1e-3 * grad_a.norm()

    tokens = a.latent.shape[-1] * a.latent.shape[-2] // 4  # 2x2 patches of the target
    assert out_a.shape[1] == ids.shape[0] == 2 * tokens
    assert torch.count_nonzero(out_a[:, tokens:]) == 0 and torch.count_nonzero(out_a[:, :tokens]) > 0
    # FluxKontextPipeline's ids: the latent's grid at index 0, the reference's own grid at index 1
    assert torch.equal(ids[:tokens, 0], torch.zeros(tokens)) and torch.equal(ids[tokens:, 0], torch.ones(tokens))
    assert torch.equal(ids[:tokens, 1:], ids[tokens:, 1:])


def test_references_of_their_own_sizes_go_row_by_row(models, tmp_path):
    model = load_model(inspect_folder(tiny_pipeline("flux_kontext", models)), text_encoder="hashed")
    folder = make_pairs(tmp_path / "pairs", shapes=[(64, 64), (64, 64)])
    Image.fromarray(pattern(96, 48, 7)).save(folder / "control" / "p1.png")  # a wide control for a square image
    samples = _samples(model, folder, resolution=64)
    assert [tuple(s.cond["references"][0].shape[-2:]) for s in samples] == [(8, 8), (6, 10)]
    x = torch.stack([s.latent for s in samples])
    sigma = torch.tensor([0.4, 0.7])
    conds = [s.cond for s in samples]
    with torch.no_grad():
        both = model.backend.denoise(x, sigma, conds)
        rows = torch.cat([model.backend.denoise(x[i:i + 1], sigma[i:i + 1], conds[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(both, rows, rtol=0, atol=0)


def test_a_model_that_takes_no_reference_is_refused_before_loading(models, tmp_path, capsys):
    folder = tiny_pipeline("flux", models)
    cfg = write_config(tmp_path / "run.toml", folder, tmp_path / "out",
                       data={"path": str(make_pairs(tmp_path / "pairs")), "controls": {"enabled": True}})
    assert main(["train", str(cfg)]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert "holds a flux model (tiny-flux) that takes no reference images" in err and "FluxKontextPipeline" in err
    assert not (tmp_path / "out").exists()


def test_controls_config_is_checked(models, tmp_path):
    folder = tiny_pipeline("flux_kontext", models)
    data = str(make_pairs(tmp_path / "pairs"))
    for controls, message in (({"enabled": True, "resolution": 30}, "control_resolution must be 0"),
                              ({"enabled": True, "folder": str(tmp_path / "nowhere")}, "is not a folder")):
        cfg = write_config(tmp_path / "run.toml", folder, tmp_path / "out", data={"path": data, "controls": controls})
        with pytest.raises(ConfigError, match=message):
            from lora_lab.lora_core.cli.train import preflight

            preflight(load_config(cfg), 1)
    cfg = write_config(tmp_path / "run.toml", folder, tmp_path / "out",
                       data={"path": data, "controls": {"enabled": True}, "video": {"enabled": True}})
    with pytest.raises(ConfigError, match="data.controls pairs images; turn data.video off"):
        load_config(cfg)
