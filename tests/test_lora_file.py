"""Saving: kohya keys + .alpha, ss_*/modelspec metadata, atomic writes, byte-identical reruns."""

import hashlib
import json
import os

import pytest
import torch
from safetensors import safe_open

from lora_lab.lora_core.data.captions import tag_frequency
from lora_lab.lora_core.files import atomic
from lora_lab.lora_core.files import safetensors_io
from lora_lab.lora_core.cli.diffusers_backend import DDPMUNetBackend
from lora_lab.lora_core.errors import LoraFormatError
from lora_lab.lora_core.files.lora_file import load_lora_file, save_lora_file, training_metadata
from lora_lab.lora_core.adapters.lora_weights import LoraModuleWeights, LoraWeights
from lora_lab.lora_core.cli.tiny_models import TinyTextEncoder, tiny_unet
from lora_lab.lora_core.training.trainer import TrainConfig, train
from lora_lab.lora_core.data.samples import TrainSample


def meta(**kw):
    base = dict(family="sd15", rank=4, alpha=2.0, learning_rate=1e-4, max_steps=10, steps_done=10, num_images=3,
                seed=7, targets="attention", trigger_words=["rcircle"], tag_frequency=tag_frequency(["rcircle, red, blue", "rcircle, red"]),
                output_name="circle")
    return training_metadata(**{**base, **kw})


def small_lora():
    g = torch.Generator().manual_seed(0)
    return LoraWeights({
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": LoraModuleWeights(torch.randn(4, 8, generator=g), torch.randn(8, 4, generator=g), 2.0),
        "down_blocks.0.resnets.0.conv1": LoraModuleWeights(torch.randn(4, 8, 3, 3, generator=g), torch.randn(8, 4, 1, 1, generator=g), 4.0),
    })


def test_metadata_has_kohya_and_modelspec_keys():
    m = meta()
    assert all(isinstance(v, str) for v in m.values())
    assert m["ss_network_module"] == "networks.lora" and m["ss_network_dim"] == "4" and m["ss_network_alpha"] == "2.0"
    assert m["ss_base_model_version"] == "sd_v1" and m["ss_seed"] == "7" and m["ss_num_train_images"] == "3"
    assert json.loads(m["ss_tag_frequency"]) == {"dataset": {"blue": 1, "rcircle": 2, "red": 2}}
    assert m["modelspec.sai_model_spec"] == "1.0.0" and m["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert m["modelspec.trigger_phrase"] == "rcircle" and m["modelspec.title"] == "circle"
    assert {"lora_lab_version", "lora_lab_targets", "lora_lab_rank", "lora_lab_steps"} <= m.keys()
    assert not any("started_at" in k or "finished_at" in k or k == "modelspec.date" for k in m)  # deterministic
    timed = meta(started_at=1.0e9, finished_at=1.0e9 + 60)
    assert timed["ss_training_finished_at"] == "1000000060.0" and timed["modelspec.date"].startswith("2001-09-09")
    for family, arch in [("sdxl", "stable-diffusion-xl-v1-base/lora"), ("flux", "flux-1-dev/lora"), ("sd3", "sd3/lora"),
                         ("wan", "wan-2.1/lora"), ("sana", "sana/lora")]:
        assert meta(family=family)["modelspec.architecture"] == arch
    # any model ComfyUI loads can be trained: an unknown family is named, not refused
    other = meta(family="hidream")
    assert other["ss_base_model_version"] == "hidream" and other["modelspec.architecture"] == "hidream/lora"


def test_kohya_state_dict_roundtrip(tmp_path):
    lora = small_lora()
    sd = lora.kohya_state_dict()
    assert set(sd) == {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha",
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight",
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight",
        "lora_unet_down_blocks_0_resnets_0_conv1.alpha",
    }
    assert sd["lora_unet_down_blocks_0_resnets_0_conv1.alpha"].dim() == 0
    path = save_lora_file(tmp_path / "x.safetensors", sd, meta())
    tensors, metadata = load_lora_file(path)
    assert metadata == meta()
    back = LoraWeights.from_kohya_state_dict(tensors, list(lora.modules))
    for name, w in lora.modules.items():
        assert torch.equal(back.modules[name].down, w.down) and back.modules[name].alpha == w.alpha
        torch.testing.assert_close(back.modules[name].delta(), w.delta())
    with pytest.raises(LoraFormatError, match="matches no module"):
        LoraWeights.from_kohya_state_dict(tensors, ["something.else"])


def test_save_is_atomic_and_validates(tmp_path, monkeypatch):
    path = tmp_path / "keep.safetensors"
    save_lora_file(path, small_lora().kohya_state_dict(), meta())
    original = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_lora_file(path, small_lora().kohya_state_dict(), meta(seed=8))
    monkeypatch.undo()
    assert path.read_bytes() == original and os.listdir(tmp_path) == ["keep.safetensors"]  # no temp left
    with pytest.raises(LoraFormatError, match="must be str"):
        save_lora_file(path, small_lora().kohya_state_dict(), {"ss_network_dim": 4})
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoraFormatError, match="bad.safetensors"):
        load_lora_file(tmp_path / "bad.safetensors")


def _train_and_save(path):
    unet = tiny_unet(seed=0, channels=(16, 32)).requires_grad_(False)
    te, g = TinyTextEncoder(), torch.Generator().manual_seed(1)
    samples = [TrainSample(torch.randn(4, 8, 8, generator=g), {"encoder_hidden_states": te(f"cap {i}")}, f"cap {i}") for i in range(3)]
    cfg = TrainConfig(steps=3, learning_rate=1e-3, rank=4, alpha=4.0, dropout=0.1, batch_size=2, targets="attention_mlp",
                      timestep_sampling="logit_normal", seed=11)
    result = train(DDPMUNetBackend(unet), samples, cfg)
    save_lora_file(path, result.lora.kohya_state_dict(), meta(steps_done=result.steps_done, seed=cfg.seed))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_byte_identical_file(tmp_path):
    assert _train_and_save(tmp_path / "a.safetensors") == _train_and_save(tmp_path / "b.safetensors")
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        ups = [f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")]
    assert any(torch.count_nonzero(u) for u in ups)  # it trained: the file is not just the zero init


def test_canonical_safetensors_encoding_loads_with_safetensors():
    from safetensors.torch import load

    t = {"w": torch.randn(3, 4), "alpha": torch.tensor(2.0), "h": torch.randn(5, dtype=torch.bfloat16),
         "i": torch.arange(7), "f": torch.ones(2, dtype=torch.float16)}
    data = safetensors_io.safetensors_bytes(t, {"b": "1", "a": "2"})
    back = load(data)
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in t.items())
    assert data == safetensors_io.safetensors_bytes(dict(reversed(list(t.items()))), {"a": "2", "b": "1"})  # order-free
