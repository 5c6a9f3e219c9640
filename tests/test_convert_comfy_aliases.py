"""Names ComfyUI's loader accepts that are not the usual trainer names still convert."""

from __future__ import annotations

import torch

from lora_lab.converters import convert_state_dict, to_comfyui_state_dict


def test_sdxl_class_embedding_kohya_name_is_label_emb():
    # comfy.utils.unet_to_diffusers names SDXL's label_emb "class_embedding", so ComfyUI loads these keys
    g = torch.Generator().manual_seed(0)
    sd = {"lora_unet_class_embedding_linear_1.lora_down.weight": torch.randn(2, 2816, generator=g),
          "lora_unet_class_embedding_linear_1.lora_up.weight": torch.randn(1280, 2, generator=g),
          "lora_unet_class_embedding_linear_1.alpha": torch.tensor(1.0)}
    out, _, report = to_comfyui_state_dict(sd, None, arch="sdxl")
    assert not report.unmatched
    assert torch.equal(out["lora_unet_label_emb_0_0.lora_down.weight"], sd["lora_unet_class_embedding_linear_1.lora_down.weight"])
    back, _, _ = convert_state_dict(out, None, "diffusers", arch="sdxl")
    assert any(k.startswith("unet.add_embedding.linear_1.") for k in back), sorted(back)
