"""Edit models in a real ComfyUI, in this process, with random small models of ComfyUI's own classes (Flux Kontext =
Flux-dev's architecture, Qwen-Image, Flux 2): a paired dataset's references reach each training sample's model
inputs exactly as ReferenceLatent puts them; they change the loss and the LoRA's gradient, while the loss sees
the target's tokens only; a model that takes no reference, and bad pairs, are refused or named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from .comfy_inprocess import call_node, load_builtin_extras, register_lora_lab_nodes
from .edit_helpers import CAPTIONS, FAMILIES, load_edit_model, make_pairs, paired_dataset, pattern, skip_unbuildable


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def edit(request, comfy, model_file):
    register_lora_lab_nodes()
    load_builtin_extras(("nodes_edit_model.py",))  # ReferenceLatent
    family = FAMILIES[request.param]
    skip_unbuildable(family)
    return family, *load_edit_model(family, model_file)


def training_data(model, vae, dataset, conds):
    import comfy.model_management

    from lora_lab.nodes.training_data import prepare_training_data

    with torch.inference_mode():  # as ComfyUI's executor runs Train LoRA
        comfy.model_management.load_models_gpu([model])
        return prepare_training_data(model, dataset, vae, None, conds, 1, seed=0)


def test_each_sample_gets_its_references_as_reference_latent_gives_them(edit, tmp_path):
    """Sample i's model inputs equal those the sampler builds from ReferenceLatent(VAEEncode(control i)) on the same
    conditioning: every input, ref_latents included, bit for bit."""
    from lora_lab.nodes.comfy_backend import encode_sample_cond

    family, model, vae = edit
    folder = make_pairs(tmp_path / "pairs")
    dataset, summary, captions = paired_dataset(folder)
    assert "pairs: 4 images with 1 control image from control/ folders beside the images" in summary
    conds = [family.conditioning(c) for c in captions]
    data = training_data(model, vae, dataset, conds)
    from lora_lab.nodes.training_data import largest_latent_shape

    shape = tuple(data.samples[0].latent.shape)  # the memory request counts the reference's area too (as large)
    assert largest_latent_shape(data) == (*shape[:-1], 2 * shape[-1])
    for i, (sample, info) in enumerate(zip(data.samples, data.infos)):
        control = np.asarray(Image.open(folder / "control" / info.item.path.name), dtype=np.float32) / 255.0
        (latent,) = call_node("VAEEncode", pixels=torch.from_numpy(control)[None], vae=vae)
        (with_ref,) = call_node("ReferenceLatent", conditioning=conds[i], latent=latent)
        with torch.inference_mode(False):
            expected = encode_sample_cond(model, with_ref, sample.latent, 0).inputs()
        got = sample.cond.inputs()
        assert "ref_latents" in got and set(got) == set(expected)
        for key in got:
            a, b = got[key].cond, expected[key].cond  # comfy.conds objects hold their value in .cond
            if isinstance(a, list):
                assert len(a) == len(b) == 1 and torch.equal(a[0], b[0]), key
            elif isinstance(a, torch.Tensor):
                assert torch.equal(a, b), key
            else:
                assert a == b, key


def _loss_and_gradient(model, sample, adapters, output_layer: str, seed: int = 3):
    """One sample's training loss at a fixed noise and noise level, the LoRA's gradient, and the gradient at the
    model's last per-token layer (rows: the target's tokens, then the references'), with the layer wrappers a
    training step has (lora_core.training.trainer._loop, checkpointing off)."""
    from lora_lab.lora_core.adapters.injection import attached
    from lora_lab.lora_core.training.checkpointing import gradient_checkpointing
    from lora_lab.lora_core.training.frozen_layers import frozen_base, frozen_parameters
    from lora_lab.lora_core.training.objective import diffusion_loss
    from lora_lab.nodes.comfy_backend import ComfyBackend
    from lora_lab.nodes.rope_autograd import ensure_rope_autograd
    from lora_lab.nodes.training_mode import comfy_training_mode

    ensure_rope_autograd()
    backend = ComfyBackend(model)
    root = backend.root
    outputs = []

    def keep(module, args, output):
        output.retain_grad()
        outputs.append(output)

    with torch.inference_mode(False), torch.enable_grad(), comfy_training_mode(), frozen_parameters(root), \
            frozen_base(root, backend.fetch_weight, backend.is_plain, backend.stored_weights), attached(root, adapters), \
            gradient_checkpointing(root, False, guard_inplace=True):
        for adapter in adapters.values():
            adapter.zero_grad(set_to_none=True)
        handle = dict(root.named_modules())[output_layer].register_forward_hook(keep)
        try:
            g = torch.Generator().manual_seed(seed)
            x0 = sample.latent[None].clone()
            noise = torch.randn(x0.shape, generator=g)
            loss = diffusion_loss(backend, x0, noise, torch.tensor([0.6]), [sample.cond]).mean()
            loss.backward()
        finally:
            handle.remove()
    # layers whose output nothing reads (the last block's text side) get no gradient at all
    grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for a in adapters.values() for p in a.parameters()])
    (out,) = outputs
    return float(loss), grad, out.grad.detach().float()


def _adapters(model):
    from lora_lab.lora_core.adapters.algorithms import new_adapter
    from lora_lab.lora_core.adapters.targets import select_targets

    root = model.model.diffusion_model
    g = torch.Generator().manual_seed(0)
    modules = dict(root.named_modules())
    adapters = {}
    with torch.inference_mode(False):
        for name in select_targets(root, "attention"):
            adapters[name] = new_adapter(modules[name], 4, 4.0, 0.0, g)
            with torch.no_grad():
                adapters[name].up.normal_(generator=g)
    return adapters


def test_the_reference_changes_the_loss_and_gradient_and_the_loss_sees_only_the_target(edit, tmp_path):
    family, model, vae = edit
    targets = make_pairs(tmp_path / "targets", count=2, controls=False)
    for name, seed in (("sources_a", 100), ("sources_b", 200)):
        for i in range(2):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(pattern((64, 64), seed + i)).save(tmp_path / name / f"img_{i:02d}.png")
    samples = {}
    for name in ("sources_a", "sources_b"):
        dataset, _summary, captions = paired_dataset(targets, control_folder=str(tmp_path / name))
        data = training_data(model, vae, dataset, [family.conditioning(c) for c in captions])
        samples[name] = data.samples[0]
    a, b = samples["sources_a"], samples["sources_b"]
    assert torch.equal(a.latent, b.latent)  # the same target; only its reference differs
    adapters = _adapters(model)
    loss_a, grad_a, out_a = _loss_and_gradient(model, a, adapters, family.output_layer)
    again, grad_again, _ = _loss_and_gradient(model, a, adapters, family.output_layer)
    loss_b, grad_b, _ = _loss_and_gradient(model, b, adapters, family.output_layer)
    assert again == loss_a and torch.equal(grad_again, grad_a)  # the comparison below can only see the reference
    assert abs(loss_b - loss_a) > 1e-4 * abs(loss_a), (loss_a, loss_b)
    assert (grad_b - grad_a).norm() > 1e-3 * grad_a.norm(), "the reference did not change the LoRA's gradient"

    target_tokens = out_a.shape[1] // 2  # the reference has the target's size: as many tokens
    assert out_a.shape[1] == 2 * target_tokens
    assert torch.count_nonzero(out_a[:, target_tokens:]) == 0, "the loss reached the reference tokens"
    assert torch.count_nonzero(out_a[:, :target_tokens]) == out_a[:, :target_tokens].numel()


def test_each_row_of_a_batch_keeps_its_own_reference(edit, tmp_path):
    """A batch of two targets (one bucket) whose references have buckets of their own (control_resolution): rows
    whose references differ in shape go to separate model calls, and each row's loss is the loss it has alone;
    references of one shape share a call."""
    from lora_lab.nodes.comfy_backend import ComfyBackend, concat_groups
    from lora_lab.lora_core.training.objective import diffusion_loss

    family, model, vae = edit
    folder = make_pairs(tmp_path / "pairs", count=2)
    # references of about 96x96 px: buckets 64x128, 96x96 and 128x64; the 64x64 targets all have one bucket
    buckets = {"min_bucket_side": 64, "max_bucket_side": 128, "bucket_step": 32, "small_images": "upscale"}
    for calls in (1, 2):  # square references: one shape; then a wide and a tall one in buckets of their own
        if calls == 2:
            for name, size in (("img_00.png", (64, 40)), ("img_01.png", (40, 64))):
                Image.fromarray(pattern(size, 7)).save(folder / "control" / name)
        dataset, _summary, captions = paired_dataset(folder, control_resolution=96, bucket_options=buckets)
        data = training_data(model, vae, dataset, [family.conditioning(c) for c in captions])
        a, b = data.samples
        shapes = {tuple(info.references[0].shape) for info in data.infos}
        assert len(shapes) == calls, shapes
        assert len(concat_groups([a.cond, b.cond])) == calls
        backend = ComfyBackend(model)
        g = torch.Generator().manual_seed(5)
        x0 = torch.stack([a.latent, b.latent])
        noise, u = torch.randn(x0.shape, generator=g), torch.tensor([0.3, 0.7])
        with torch.inference_mode(False), torch.no_grad():
            both = diffusion_loss(backend, x0, noise, u, [a.cond, b.cond])
            alone = [diffusion_loss(backend, x0[i:i + 1], noise[i:i + 1], u[i:i + 1], [s.cond])[0]
                     for i, s in enumerate((a, b))]
        assert torch.allclose(both, torch.stack(alone), rtol=1e-4, atol=1e-6), (calls, both, alone)
        assert not torch.isclose(both[0], both[1]), "the two rows' losses should differ"


def test_a_model_that_takes_no_reference_is_refused_naming_its_family(comfy, model_file, tmp_path):
    """SD3 (a random small MMDiT from UNETLoader) has no reference input: training it on pairs is an error that
    names the family and what to do, before any step."""
    import folder_paths

    register_lora_lab_nodes()
    unet, vae_file = model_file("sd3_small"), model_file("flux_vae")
    folder_paths.add_model_folder_path("diffusion_models", str(unet.parent))
    folder_paths.add_model_folder_path("vae", str(vae_file.parent))
    (model,) = call_node("UNETLoader", unet_name=unet.name, weight_dtype="default")
    (vae,) = call_node("VAELoader", vae_name=vae_file.name)
    dataset, _summary, captions = paired_dataset(make_pairs(tmp_path / "pairs", count=2))
    from .test_nodes import LoraLabTestConditioning

    conds = [call_node(LoraLabTestConditioning, text=c, seed=0, length=8, width=4096, pooled_width=2048,
                       guidance=0.0)[0] for c in captions]
    with pytest.raises(Exception, match=r"This sd3 model takes no reference images: ComfyUI's SD3 ignores the "
                                        r"reference latents .*disconnect 'Control Images'"):
        call_node("LoraLabTrain", model=model, vae=vae, dataset=[dataset], conditioning=conds,
                  **{k: [v] for k, v in dict(steps=1, learning_rate=1e-4, rank=4, alpha=4.0, target_preset="attention",
                                             batch_size=1, grad_accumulation=1, lr_schedule="constant", warmup_steps=0,
                                             timestep_sampling="auto", precision="fp32", gradient_checkpointing=False,
                                             seed=0, output_name="no_refs").items()})


def test_bad_pairs_are_named_by_the_dataset_node(comfy, tmp_path):
    register_lora_lab_nodes()
    folder = make_pairs(tmp_path / "pairs", count=4)
    (folder / "control" / "img_01.png").unlink()  # missing
    (folder / "control" / "img_02.png").write_bytes(b"not a png")  # unreadable
    Image.fromarray(pattern((64, 64), 9)).save(folder / "control" / "extra.png")  # no target
    dataset, summary, captions = paired_dataset(folder)
    assert [i.path.name for i in dataset.images] == ["img_00.png", "img_03.png"] and len(captions) == 2
    assert "Left out 1 image without its control" in summary and "img_01.png (no control/img_01.*)" in summary
    assert "whose control cannot be read: control/img_02.png" in summary
    assert "control image without a training image of the same name, not used: control/extra.png" in summary

    Image.fromarray(pattern((64, 40), 9)).save(folder / "control" / "img_03.png")  # another aspect
    with pytest.raises(Exception, match=r"control of another aspect than its image: control/img_03.png is 64x40 but "
                                        r"img_03.png is 64x64"):
        paired_dataset(folder)
    dataset, summary, _ = paired_dataset(folder, control_resolution=64)  # a bucket of its own: allowed
    assert "each in a bucket of its own of about 64x64 pixels" in summary
    assert CAPTIONS[0] in dataset.captions()


def test_dataset_control_images_follow_the_captions(comfy, tmp_path):
    """The list an image-seeing encoder (TextEncodeQwenImageEdit) takes beside the captions: one picture per caption,
    in the same order (validation last), each its control whole."""
    register_lora_lab_nodes()
    folder = make_pairs(tmp_path / "pairs", count=4)
    (options,) = call_node("LoraLabControlImages", control_folder="(control/ beside the images)", control_resolution=0)
    dataset, _summary, captions = call_node("LoraLabDataset", folder=str(folder), resolution=64, trigger_word="",
                                            default_caption="", cache_folder="", validation=1.0,
                                            control_options=options)
    (images,) = call_node("LoraLabDatasetControlImages", dataset=dataset, reference=1)
    assert len(images) == len(captions) == 4
    for item, image, caption in zip(dataset.all_items(), images, captions):
        control = np.asarray(Image.open(folder / "control" / item.path.name), dtype=np.float32) / 255.0
        assert caption == (folder / item.path.with_suffix(".txt").name).read_text()
        assert image.shape == (1, 64, 64, 3) and torch.equal(image[0], torch.from_numpy(control))
    with pytest.raises(Exception, match="has 1 control image"):
        call_node("LoraLabDatasetControlImages", dataset=dataset, reference=2)
