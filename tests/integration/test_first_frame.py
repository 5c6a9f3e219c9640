"""Image-to-video training in a real ComfyUI (in this process), on random small Wan models: the first frame really
reaches training. Wan 2.1 I2V (WanImageToVideo's concat latent and mask): the same latent with another first frame
in its cond gives another loss and another LoRA gradient, and the cond holds what WanImageToVideo builds from that
frame. Wan 2.2 TI2V-5B (Wan22ImageToVideoLatent's clean first latent frame): another first frame changes the loss
and the gradient, the model sees timestep 0 on that frame, and the loss ignores what the model predicts there."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from .comfy_inprocess import call_node, load_builtin_extras, register_lora_lab_nodes
from .test_video_wan import write_clip

av = pytest.importorskip("av", reason="PyAV reads the training videos")


@pytest.fixture(scope="module")
def loaded(comfy, model_file, tmp_path_factory):
    """name -> (MODEL, VAE) for the I2V and TI2V kinds, through the stock UNETLoader / VAELoader."""
    import folder_paths

    register_lora_lab_nodes()
    load_builtin_extras(("nodes_wan.py",))
    out = {}
    for kind, vae_kind in (("wan21_i2v_small", "wan_vae"), ("wan22_ti2v_small", "wan22_vae")):
        unet, vae = model_file(kind), model_file(vae_kind)
        folder_paths.add_model_folder_path("diffusion_models", str(unet.parent))
        folder_paths.add_model_folder_path("vae", str(vae.parent))
        (model,) = call_node("UNETLoader", unet_name=unet.name, weight_dtype="default")
        (loaded_vae,) = call_node("VAELoader", vae_name=vae.name)
        out[kind] = (model, loaded_vae)
    return out


def clip_dataset(folder: Path, count: int = 1):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        write_clip(folder / f"clip{i}.mp4", frames=9, seed=i, lossless=True)
        (folder / f"clip{i}.txt").write_text(f"moving pattern number {i}")
    dataset, _, captions = call_node(
        "LoraLabVideoDataset", folder=str(folder), resolution=64, frames=9, frame_sampling="head", target_fps=0.0,
        clips_per_video=1, aspect_buckets=True, include_images=False, short_videos="fewer_frames", trigger_word="",
        caption_template="", default_caption="", validation=0.0, cache_folder="")
    return dataset, conditioning(captions)


def conditioning(texts: list[str]) -> list:
    from .test_nodes import LoraLabTestConditioning

    return [call_node(LoraLabTestConditioning, text=t, seed=0, length=16, width=4096, pooled_width=0, guidance=0.0)[0]
            for t in texts]


def training_data(model, vae, dataset, conds, first_frame):
    from lora_lab.nodes.training_data import prepare_training_data

    with torch.inference_mode():
        return prepare_training_data(model, dataset, vae, None, conds, 1, seed=0, first_frame=first_frame)


def loss_and_grad(model, samples, u: float = 0.6, model_output=None):
    """The loss of the samples at fixed noise and level, and its gradient on a LoRA with non-zero up weights."""
    import comfy.model_management

    from lora_lab.lora_core.adapters.algorithms import new_adapter
    from lora_lab.lora_core.adapters.injection import attached
    from lora_lab.lora_core.training.frozen_layers import frozen_base, frozen_parameters
    from lora_lab.lora_core.training.objective import diffusion_loss
    from lora_lab.nodes.comfy_backend import ComfyBackend
    from lora_lab.nodes.rope_autograd import ensure_rope_autograd

    ensure_rope_autograd()
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([model])
    backend = ComfyBackend(model)
    if model_output is not None:
        backend.model = copy.copy(backend.model)
        backend.model.apply_model = model_output(backend.model.apply_model)
    name = "blocks.0.self_attn.q"
    module = dict(backend.root.named_modules())[name]
    adapter = new_adapter(module, 4, 4.0, 0.0, torch.Generator().manual_seed(0), "lora", name=name)
    with torch.no_grad():
        adapter.up.normal_(generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(5)
    x0 = torch.stack([s.latent for s in samples])
    noise = torch.randn(x0.shape, generator=g)
    root = backend.root
    with torch.inference_mode(False), torch.enable_grad(), frozen_parameters(root), \
            frozen_base(root, backend.fetch_weight, backend.is_plain, backend.stored_weights), \
            attached(root, {name: adapter}):
        loss = diffusion_loss(backend, x0, noise, torch.full((len(samples),), u), [s.cond for s in samples]).mean()
        loss.backward()
    return float(loss), adapter.down.grad.clone()


def test_wan21_i2v_cond_is_wan_image_to_video_of_the_clips_first_frame(loaded, tmp_path):
    model, vae = loaded["wan21_i2v_small"]
    dataset, conds = clip_dataset(tmp_path / "i2v")
    data = training_data(model, vae, dataset, conds, "concat")
    info, sample = data.infos[0], data.samples[0]
    assert tuple(sample.latent.shape) == (16, 3, 8, 8)

    start = info.first_frame()  # the clip's first frame as the latent saw it
    positive, _, latent = call_node("WanImageToVideo", positive=conds[0], negative=conds[0], vae=vae, width=64,
                                    height=64, length=9, batch_size=1, start_image=start)
    extras = positive[0][1]
    from lora_lab.nodes.comfy_backend import encode_sample_cond

    with torch.inference_mode(False):
        reference = encode_sample_cond(model, positive, sample.latent, 0)
    for key in ("c_concat", "c_crossattn"):
        assert torch.equal(sample.cond.model_conds[key].cond, reference.model_conds[key].cond), key
    concat = sample.cond.model_conds["c_concat"].cond
    assert concat.shape == (1, 20, 3, 8, 8) and extras["concat_mask"][0, 0, :, 0, 0].tolist() == [0.0, 1.0, 1.0]
    assert bool((concat[:, :4, 0] == 1).all()) and bool((concat[:, :4, 1:] == 0).all())  # mask channels: frame 0 known


def test_wan21_i2v_first_frame_changes_loss_and_gradient(loaded, tmp_path):
    model, vae = loaded["wan21_i2v_small"]
    dataset, conds = clip_dataset(tmp_path / "i2v_pair")
    data = training_data(model, vae, dataset, conds, "concat")
    from lora_lab.nodes.first_frame_conds import FirstFrameConds
    from lora_lab.lora_core.cache.encoding_cache import EncodingCache

    info = data.infos[0]
    other = torch.flip(info.first_frame(), dims=(1,))  # another start image, same latent to learn
    swapped = replace(info, first_frame=lambda: other, latent_key=info.latent_key + ":other")
    with torch.inference_mode(False), torch.no_grad():
        cond = FirstFrameConds("concat", model, vae, EncodingCache(None), 0)(conds[0], swapped)
    plain = data.samples[0]
    moved = replace(plain, cond=cond)
    loss_a, grad_a = loss_and_grad(model, [plain])
    loss_b, grad_b = loss_and_grad(model, [moved])
    again, grad_again = loss_and_grad(model, [plain])
    assert loss_a == again and torch.equal(grad_a, grad_again)  # deterministic: the difference is the frame's
    assert abs(loss_a - loss_b) > 1e-4 * abs(loss_a)
    assert (grad_a - grad_b).norm() > 1e-3 * grad_a.norm()


def test_wan22_ti2v_first_frame_is_kept_clean_at_timestep_zero_and_out_of_the_loss(loaded, tmp_path):
    model, vae = loaded["wan22_ti2v_small"]
    dataset, conds = clip_dataset(tmp_path / "ti2v")
    data = training_data(model, vae, dataset, conds, "latent")
    sample, info = data.samples[0], data.infos[0]
    assert tuple(sample.latent.shape) == (48, 3, 4, 4)

    # the known frame is what Wan22ImageToVideoLatent puts there: the first frame encoded alone
    (start,) = call_node("Wan22ImageToVideoLatent", vae=vae, width=64, height=64, length=9, batch_size=1,
                         start_image=info.first_frame())
    with torch.inference_mode(False):
        expected = model.model.process_latent_in(start["samples"])[0, :, :1]
    torch.testing.assert_close(sample.cond.known_frames, expected, rtol=1e-4, atol=1e-4)
    assert start["noise_mask"][0, 0, :, 0, 0].tolist() == [0.0, 1.0, 1.0]

    seen = []
    hook = model.model.diffusion_model.register_forward_pre_hook(lambda m, args, kw: seen.append(
        (args[0][:, :, 0].clone(), (kw.get("timestep") if "timestep" in kw else args[1]).clone())), with_kwargs=True)
    try:
        loss, grad = loss_and_grad(model, [sample], u=0.6)
    finally:
        hook.remove()
    x_in, timestep = seen[0]
    assert torch.equal(x_in, sample.latent[None, :, 0].to(x_in))  # frame 0 enters clean, not noised
    assert timestep.shape == (1, 3) and timestep[0, 0] == 0 and bool((timestep[0, 1:] > 0).all())

    def garbage_on(frame):
        def wrap(apply_model):
            def patched(*args, **kwargs):
                out = apply_model(*args, **kwargs)
                return torch.cat([out[:, :, :frame], out[:, :, frame:frame + 1] + 7.0, out[:, :, frame + 1:]], 2)
            return patched
        return wrap

    assert loss_and_grad(model, [sample], u=0.6, model_output=garbage_on(0))[0] == loss  # frame 0: no loss
    assert loss_and_grad(model, [sample], u=0.6, model_output=garbage_on(1))[0] > 2 * loss  # frame 1 counts

    # another first frame (the latent's frame 0, which conditions the rest) changes loss and gradient
    other = sample.latent.clone()
    other[:, 0] = torch.flip(other[:, 0], dims=(-1,))
    from lora_lab.lora_core.data.samples import TrainSample
    from lora_lab.nodes.comfy_backend import SampleCond

    cond = SampleCond(sample.cond.model_conds)
    cond.known_frames = other[:, :1]
    loss_b, grad_b = loss_and_grad(model, [TrainSample(other, cond, sample.caption)], u=0.6)
    assert abs(loss - loss_b) > 1e-4 * abs(loss) and (grad - grad_b).norm() > 1e-3 * grad.norm()


def test_first_frame_needs_a_model_that_takes_one(loaded):
    from lora_lab.lora_core.errors import TrainingError
    from lora_lab.nodes.first_frame_conds import resolve_first_frame

    i2v, ti2v = loaded["wan21_i2v_small"][0].model, loaded["wan22_ti2v_small"][0].model
    assert resolve_first_frame("auto", i2v) == "concat" and resolve_first_frame("auto", ti2v) is None
    assert resolve_first_frame("first frame", ti2v) == "latent" and resolve_first_frame("off", i2v) is None
    t2v = type("WAN21", (), {"image_to_video": False, "model_config": None})()  # a text-to-video Wan
    assert resolve_first_frame("auto", t2v) is None
    with pytest.raises(TrainingError, match="first frame"):
        resolve_first_frame("first frame", t2v)
