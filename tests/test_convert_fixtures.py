"""Every real key list converts to both sides: zero unmatched keys (except named, by-nature ones) and equal deltas."""

from __future__ import annotations

import pytest

from convert_deltas import assert_same_deltas, module_deltas
from convert_fixtures import complete_modules, fixture_lines, fixture_sections, fixture_state_dict, guess_shape
import torch

from lora_lab.converters import convert_state_dict
from lora_lab.converters.analyse import analyse
from lora_lab.converters.source import DictSource

# (fixture, section, arch or None, divisor, {target: set of reasons allowed for unmatched keys})
NO_DIFFUSERS_FORM = "diffusers/PEFT"  # "... has no (exact) diffusers/PEFT (LoRA) form"
CASES = [
    ("flux_kohya_sdscripts.txt", None, None, 128, {}),
    ("flux_kohya_with_clip_te1.txt", None, None, 128, {}),
    ("flux_diffusers_peft_transformer_prefix.txt", None, None, 128, {}),
    ("flux_aitoolkit_diffusion_model_prefix.txt", None, None, 128, {}),
    ("flux_sdscripts_docstring_3formats.txt", 0, None, 128, {}),
    ("flux_sdscripts_docstring_3formats.txt", 1, None, 128, {}),
    ("flux_sdscripts_docstring_3formats.txt", 2, None, 128, {}),
    ("flux_xlabs.txt", None, None, 128, {}),
    ("sana_diffusers_DERIVED.txt", None, None, 80, {}),
    ("sd15_kohya_diffusers_unet_names.txt", 0, None, 1, {}),
    ("sd15_kohya_diffusers_unet_names.txt", 1, None, 1, {}),
    ("sd15_sdxl_diffusers_unet_prefix_not_loaded_by_comfy.txt", 0, None, 1, {}),
    ("sd15_sdxl_diffusers_unet_prefix_not_loaded_by_comfy.txt", 1, "sdxl", 1, {}),
    ("sd15_sdxl_diffusers_unet_prefix_not_loaded_by_comfy.txt", 2, "sdxl", 1, {}),
    ("sd15_sdxl_diffusers_unet_prefix_not_loaded_by_comfy.txt", 3, "sd15", 1, {"diffusers": {NO_DIFFUSERS_FORM}}),
    # six attention modules of one block, printed without shapes: at test width they fit Flux, Qwen-Image and the
    # other MMDiTs as well as SD3 (test_detection_pairs.py), so the family is given
    ("sd3_onetrainer_mixture.txt", None, "sd3", 1, {}),
    ("sdxl_kohya_sgm_names.txt", 0, None, 1, {}),
    ("sdxl_kohya_sgm_names.txt", 1, None, 1, {"diffusers": {NO_DIFFUSERS_FORM}}),
    ("wan_diffusers_names_finetrainers.txt", None, None, 1, {}),
    ("wan_comfy_native_peft_suffix.txt", None, None, 1, {}),
    ("wan_comfy_native_lightx2v_style.txt", 0, None, 1, {"diffusers": {NO_DIFFUSERS_FORM}}),
    ("wan_comfy_native_lightx2v_style.txt", 1, None, 1, {"diffusers": {NO_DIFFUSERS_FORM}}),
    ("wan_musubi_kohya_dora.txt", None, None, 1, {}),
    ("hunyuanvideo_various.txt", 0, "hunyuan_video", 1, {"diffusers": {NO_DIFFUSERS_FORM}}),
    ("hunyuanvideo_various.txt", 1, None, 1, {}),
    ("hunyuanvideo_diffusers_and_diffusion_pipe.txt", 0, None, 64, {}),
    ("hunyuanvideo_diffusers_and_diffusion_pipe.txt", 1, None, 64, {}),
    ("qwen_image_formats.txt", 0, None, 64, {}),
    ("qwen_image_formats.txt", 1, None, 64, {}),
    ("qwen_image_formats.txt", 2, None, 64, {}),
    ("qwen_image_formats.txt", 3, None, 64, {}),
    ("qwen_image_formats.txt", 4, None, 64, {}),
    ("chroma_formats.txt", 0, None, 64, {"diffusers": {"DoRA"}}),
    ("chroma_formats.txt", 1, "chroma", 64, {}),
    ("chroma_formats.txt", 2, "chroma", 64, {}),
    ("lumina2_formats.txt", 0, None, 64, {}),
    ("lumina2_formats.txt", 1, None, 64, {}),
    ("z_image_formats.txt", 0, None, 64, {}),
    ("z_image_formats.txt", 1, None, 64, {}),
    ("z_image_formats.txt", 2, None, 64, {}),
    ("wan22_ti2v_5b.txt", 0, None, 64, {}),
    ("wan22_ti2v_5b.txt", 1, None, 64, {}),
    ("wan22_ti2v_5b.txt", 2, None, 64, {}),
    ("flux_onetrainer_dora_split_qkv.txt", None, None, 64, {"diffusers": {"DoRA"}}),
    ("flux_diffusers_attention_only.txt", None, None, 64, {}),
    # 2026 families: kohya, ComfyUI (diffusion_model.) and diffusers forms
    *[(f"{name}_formats.txt", s, None, 64, {}) for name, n in (("flux2", 6), ("krea2", 3), ("hidream", 3),
                                                               ("kandinsky5", 4), ("hunyuan_image21", 3),
                                                               ("hunyuan_video15", 3), ("anima", 4)) for s in range(n)],
    *[("ltx2_formats.txt", s, None, 64, {"diffusers": {"no diffusers name map"}}) for s in (0, 1)],  # text connectors
    ("ltx2_formats.txt", 2, None, 64, {}),
    ("anima_kohya_te_real_partial.txt", None, "anima", 1, {}),  # a text-encoder fragment: any LLM family's names
    ("flux2_klein_lokr_real_partial.txt", None, "flux2", 1, {"diffusers": {NO_DIFFUSERS_FORM}}),
    ("hidream_real_partial.txt", 0, None, 1, {}),
    ("hidream_real_partial.txt", 1, None, 1, {"diffusers": {NO_DIFFUSERS_FORM}}),
    # LLM text encoders, decoder layer 0, kohya and ComfyUI forms (at test size the shape ratios tell Flux 2's three
    # encoders apart); a text-encoder-only file of an encoder several families load needs its family
    *[("llm_text_encoders_DERIVED.txt", 2 * i + form, arch, 16, {}) for i, arch in enumerate(
        ("anima", "z_image", "flux2", "flux2", "flux2", "qwen_image", "lumina2", "hidream", "krea2", "ltx2"))
      for form in (0, 1)],
]

# (fixture, section) -> the family (and variant) detection must give without --arch
DETECTED = {("hunyuanvideo_various.txt", 1): "hunyuan_video i2v", ("hunyuanvideo_diffusers_and_diffusion_pipe.txt", 0): "hunyuan_video",
            ("hunyuanvideo_diffusers_and_diffusion_pipe.txt", 1): "hunyuan_video", ("qwen_image_formats.txt", 0): "qwen_image",
            ("qwen_image_formats.txt", 4): "qwen_image", ("chroma_formats.txt", 0): "chroma",
            ("lumina2_formats.txt", 0): "lumina2", ("lumina2_formats.txt", 1): "lumina2",
            ("z_image_formats.txt", 0): "z_image", ("z_image_formats.txt", 1): "z_image", ("z_image_formats.txt", 2): "z_image",
            ("wan22_ti2v_5b.txt", 0): "wan t2v (wan2.2_5b)", ("wan22_ti2v_5b.txt", 2): "wan t2v (wan2.2_5b)",
            ("flux_onetrainer_dora_split_qkv.txt", None): "flux", ("flux_diffusers_attention_only.txt", None): "flux",
            ("flux2_formats.txt", 0): "flux2 dev", ("flux2_formats.txt", 2): "flux2 dev",
            ("flux2_formats.txt", 3): "flux2 klein 4b", ("flux2_formats.txt", 4): "flux2 klein 4b",
            ("flux2_formats.txt", 5): "flux2 klein 9b", ("krea2_formats.txt", 0): "krea2", ("krea2_formats.txt", 2): "krea2",
            ("hidream_formats.txt", 0): "hidream", ("hidream_formats.txt", 2): "hidream",
            ("kandinsky5_formats.txt", 0): "kandinsky5 lite", ("kandinsky5_formats.txt", 3): "kandinsky5 image",
            ("hunyuan_image21_formats.txt", 0): "hunyuan_image21", ("hunyuan_image21_formats.txt", 2): "hunyuan_image21",
            ("hunyuan_video15_formats.txt", 0): "hunyuan_video15", ("hunyuan_video15_formats.txt", 2): "hunyuan_video15",
            ("ltx2_formats.txt", 0): "ltx2", ("ltx2_formats.txt", 2): "ltx2", ("anima_formats.txt", 0): "anima",
            ("anima_formats.txt", 2): "anima", ("anima_formats.txt", 3): "anima",
            # text-encoder-only files: the encoder's width names the family where one family loads it
            ("llm_text_encoders_DERIVED.txt", 0): "anima", ("llm_text_encoders_DERIVED.txt", 6): "flux2",
            ("llm_text_encoders_DERIVED.txt", 8): "flux2", ("llm_text_encoders_DERIVED.txt", 12): "lumina2",
            ("llm_text_encoders_DERIVED.txt", 15): "hidream", ("llm_text_encoders_DERIVED.txt", 19): "ltx2"}


def _ids(case):
    return f"{case[0].removesuffix('.txt')}[{case[1]}]"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
@pytest.mark.parametrize("to", ["comfyui", "diffusers"])
def test_fixture_converts_exactly(case, to):
    name, section, arch, divisor, allowed = case
    sd = fixture_state_dict(name, divisor, section)
    out, meta, report = convert_state_dict(sd, {}, to, arch=arch)
    reasons = {u.reason for u in report.unmatched}
    unexpected = {r for r in reasons if not any(a in r for a in allowed.get(to, ()))}
    assert not unexpected, report
    if not out:
        assert reasons, "nothing converted and nothing reported"
        return
    before = module_deltas(sd, arch=arch)
    after = module_deltas(out, meta, arch=arch or report.family)
    dropped = {u.key for u in report.unmatched}
    lost = set(module_deltas({k: sd[k] for k in dropped if k in sd}, arch=arch or report.family)) if dropped else set()
    assert_same_deltas(before, after, only_in=set(before) - lost)


@pytest.mark.parametrize("case", sorted(DETECTED, key=str), ids=[f"{n}[{s}]" for n, s in sorted(DETECTED, key=str)])
def test_family_and_variant_detected_from_keys_and_shapes(case):
    """At full size: shapes are part of the evidence (e.g. Wan 2.2 TI2V-5B is the width-3072 Wan)."""
    name, section = case
    lines = fixture_lines(name) if section is None else fixture_sections(name)[section]
    shapes = dict(lines)
    sd = {k: torch.tensor(1.0) if k.endswith(".alpha") else torch.empty(shapes.get(k) or guess_shape(k), device="meta")
          for k in complete_modules([k for k, _ in lines])}
    assert analyse(DictSource(sd)).variant == DETECTED[case]


def test_every_fixture_section_is_covered():
    import os

    from convert_fixtures import FIXTURES

    covered = {c[0] for c in CASES}
    for f in os.listdir(FIXTURES):
        if f.endswith(".txt"):
            assert f in covered, f
    assert len(fixture_sections("sd15_sdxl_diffusers_unet_prefix_not_loaded_by_comfy.txt")) == 4
