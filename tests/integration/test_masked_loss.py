"""Masked loss in a real ComfyUI, in this process, on the random SD1.5: Load Training Images with Mask Options
counts the masked images in its summary, and Train LoRA trains on them; with every mask black (floor 0) the
loss is 0 and the trained MODEL is the base model bit for bit, with half-white masks it is not."""

from __future__ import annotations

import torch

from .comfy_inprocess import call_node
from .sample_data import make_image_folder
from .test_train_inprocess import BASE

MASKED = 3  # of the 4 images; the fourth has no mask file


def _masked_folder(root, white_columns: int):
    """4 captioned 64x64 images; mask/ holds a mask for the first 3, white in the left `white_columns` columns."""
    from PIL import Image

    folder = make_image_folder(root)
    (folder / "mask").mkdir()
    for i in range(MASKED):
        mask = Image.new("L", (64, 64), 0)
        if white_columns:
            mask.paste(255, (0, 0, white_columns, 64))
        mask.save(folder / "mask" / f"img_{i:02d}.png")
    return folder


def _dataset(folder, floor=0.0):
    (options,) = call_node("LoraLabMaskOptions", mask="mask_folder", mask_floor=floor)
    dataset, summary, _captions = call_node("LoraLabDataset", folder=str(folder), resolution=64, trigger_word="",
                                            default_caption="", mask_options=options)
    return dataset, summary


def _apply_model(patcher):
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    g = torch.Generator().manual_seed(3)
    x, cond = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        return patcher.model.apply_model(x, torch.tensor([3.0]), c_crossattn=cond)


def test_a_masked_dataset_trains_and_its_summary_counts_the_masked_images(sd15, tmp_path):
    model, clip, vae = sd15
    dataset, summary = _dataset(_masked_folder(tmp_path / "masked", white_columns=32))
    assert f"{MASKED} of 4 images masked (0 by alpha, {MASKED} by a mask file)" in summary
    assert "1 image without a mask" in summary and "img_03.png" in summary
    assert sum(item.mask is not None for item in dataset.images) == MASKED
    trained, lora, loss, _clip = call_node("LoraLabTrain", model=model, clip=clip, vae=vae, dataset=dataset,
                                           **dict(BASE, steps=3, learning_rate=5e-3, output_name="masked"))[:4]
    assert len(loss["loss"]) == 3 and all(torch.isfinite(torch.tensor(loss["loss"])))
    assert lora.metadata["ss_masked_loss"] == "true" and f'"masked_images": {MASKED}' in lora.metadata["lora_lab_masks"]
    base, after = _apply_model(model), _apply_model(trained)
    _apply_model(model)
    assert (after - base).abs().max() > 0, "three steps changed nothing"


def test_all_black_masks_teach_nothing(sd15, tmp_path):
    """Every image masked out (floor 0): every step's loss is 0 and no gradient reaches the LoRA, whose up
    factors stay exactly 0, so the trained MODEL is the base model bit for bit."""
    from PIL import Image

    model, clip, vae = sd15
    folder = make_image_folder(tmp_path / "all_black")
    (folder / "mask").mkdir()
    for i in range(4):
        Image.new("L", (64, 64), 0).save(folder / "mask" / f"img_{i:02d}.png")
    dataset, summary = _dataset(folder)
    assert "4 of 4 images masked" in summary
    trained, lora, loss, _clip = call_node("LoraLabTrain", model=model, clip=clip, vae=vae, dataset=dataset,
                                           **dict(BASE, steps=2, learning_rate=5e-3, output_name="all_black"))[:4]
    assert loss["loss"] == [0.0, 0.0]
    ups = [v for k, v in lora.state_dict().items() if k.endswith("lora_up.weight")]
    assert ups and all(torch.count_nonzero(u) == 0 for u in ups)
    torch.testing.assert_close(_apply_model(trained), _apply_model(model), rtol=0, atol=0)
