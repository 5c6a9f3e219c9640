"""ComfyUI is the judge for LoRAs on the 2026 families' LLM text encoders (Qwen3, Qwen2.5-VL, Qwen3-VL, Gemma 2 / 3,
Llama 3.1, Mistral), built as ComfyUI builds them (its own classes, full size, on the meta device).

One LoRA on the decoder's first and last layer (q/k/v/o, gate/up/down), in the three forms in circulation - kohya
`lora_te_layers_N_...`, ComfyUI `text_encoders.<attribute>.transformer.model....` and diffusers/PEFT
`<text_encoder>.<transformers path>` - converts to keys ComfyUI maps on that snapshot (every key) that patch exactly
what the ComfyUI form patches. Where ComfyUI reads the original itself (the ComfyUI form on both snapshots, the
kohya form on August's single-encoder CLIPs), that is the original's own patches.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from .convert_judge import assert_loads_fully, assert_same_patches, cm, lora_factors, shapes_of  # noqa: F401

# family, ComfyUI module, factory, factory kwargs, ComfyUI attribute; the encoder is the CLIP's only one in each
ENCODERS = [
    ("anima", "anima", "te", {}, "qwen3_06b"),
    ("z_image", "z_image", "te", {}, "qwen3_4b"),
    ("flux2", "flux", "klein_te", {"model_type": "qwen3_4b"}, "qwen3_4b"),
    ("flux2", "flux", "klein_te", {"model_type": "qwen3_8b"}, "qwen3_8b"),
    ("flux2", "flux", "flux2_te", {}, "mistral3_24b"),
    ("qwen_image", "qwen_image", "te", {}, "qwen25_7b"),
    ("lumina2", "lumina2", "te", {}, "gemma2_2b"),
    ("hidream", "hidream", "hidream_clip", {"clip_l": False, "clip_g": False, "t5": False, "llama": True}, "llama"),
    ("krea2", "krea2", "te", {}, "qwen3vl_4b"),
    ("ltx2", "lt", "ltxav_te", {}, "gemma3_12b"),
]
ALPHA = 1.5


def text_encoder_or_skip(module: str, factory: str, kwargs: dict):
    import comfyui_version

    try:
        cls = getattr(importlib.import_module(f"comfy.text_encoders.{module}"), factory)(**kwargs)
    except (ImportError, AttributeError):
        pytest.skip(f"ComfyUI {comfyui_version.__version__} has no {module}.{factory}")
    with torch.device("meta"):
        return cls(device="meta", dtype=torch.float32)


def _forms(te, attr: str, family: str):
    """(kohya, ComfyUI, diffusers) LoRAs with the same factors on the decoder's first and last layer, and the
    diffusers form's metadata."""
    from lora_lab.converters.families import FAMILIES

    root = f"{attr}.transformer.model."
    layers = {n[len(root):]: tuple(m.weight.shape) for n, m in te.named_modules()
              if n.startswith(root + "layers.") and isinstance(m, torch.nn.Linear)}
    last = max(int(n.split(".")[1]) for n in layers)
    layers = {n: s for n, s in layers.items() if int(n.split(".")[1]) in (0, last)}
    encoder = next(e for e in FAMILIES[family].llm_encoders if e.comfy == attr)
    kohya, comfy, diffusers = {}, {}, {}
    for name, shape in layers.items():
        down, up = lora_factors(attr + name, shape)
        flat = "lora_te_" + name.replace(".", "_")
        kohya.update({f"{flat}.lora_down.weight": down, f"{flat}.lora_up.weight": up, f"{flat}.alpha": torch.tensor(ALPHA)})
        base = f"text_encoders.{root}{name}"
        comfy.update({f"{base}.lora_A.weight": down, f"{base}.lora_B.weight": up, f"{base}.alpha": torch.tensor(ALPHA)})
        base = f"{encoder.diffusers}.{encoder.hf_path}{name}"
        diffusers.update({f"{base}.lora_A.weight": down, f"{base}.lora_B.weight": up})
    meta = {"lora_adapter_metadata": f'{{"{encoder.diffusers}.r": 2, "{encoder.diffusers}.lora_alpha": {ALPHA}}}'}
    return kohya, comfy, diffusers, meta, len(layers)


@pytest.mark.parametrize("family, module, factory, kwargs, attr", ENCODERS, ids=[e[4] for e in ENCODERS])
def test_llm_text_encoder_lora_in_every_form(cm, caplog, family, module, factory, kwargs, attr):
    import comfy.lora

    from lora_lab.converters import to_comfyui_state_dict

    te = text_encoder_or_skip(module, factory, kwargs)
    km = comfy.lora.model_lora_keys_clip(te, {})
    shapes = shapes_of(te)
    kohya, comfy_form, diffusers, meta, n = _forms(te, attr, family)
    assert_loads_fully(comfy_form, km, caplog)  # ComfyUI's own form: the reference
    kohya_read = "lora_te_layers_0_self_attn_q_proj" in km  # August, this encoder alone in its CLIP
    for name, original, metadata in (("kohya", kohya, None), ("ComfyUI", comfy_form, None),
                                     ("diffusers", diffusers, meta)):
        ours, _, report = to_comfyui_state_dict(original, metadata, arch=family)
        assert not report.unmatched, (name, report.unmatched[:3])
        assert all(k.startswith(f"text_encoders.{attr}.transformer.model.layers.") for k in ours), name
        assert len(ours) == 3 * n
        assert_loads_fully(ours, km, caplog)
        assert assert_same_patches(comfy_form, ours, km, shapes, caplog, sample=4) >= 4  # all patched, 4 compared
        if name == "kohya" and kohya_read:
            assert assert_same_patches(kohya, ours, km, shapes, caplog, sample=4) >= 4


def test_anima_kohya_lora_with_its_text_encoder(cm, caplog):
    """The case of ComfyUI #13747: a kohya sd-scripts Anima LoRA that also trained Qwen3 0.6B (lora_unet_ and
    lora_te_ keys). August reads the original itself; ours maps every key on the Anima model and its text encoder and
    patches exactly the same weights with the same deltas."""
    from convert_fixtures import fixture_state_dict

    from lora_lab.converters import to_comfyui_state_dict

    from .convert_judge import key_map, unet_shapes
    from .family_configs import ANIMA
    from .test_convert_families_2026 import model_or_skip

    model = model_or_skip(ANIMA, "anima")
    te = text_encoder_or_skip("anima", "te", {})
    km = key_map(model, te)
    shapes = {**unet_shapes(model), **shapes_of(te)}
    original = fixture_state_dict("anima_formats.txt", section=3)
    ours, _, report = to_comfyui_state_dict(original)
    assert report.family == "anima" and not report.unmatched
    assert sum(k.startswith("text_encoders.qwen3_06b.") for k in ours) == 21
    assert_loads_fully(ours, km, caplog)
    assert assert_same_patches(original, ours, km, shapes, caplog) == len(original) // 3
