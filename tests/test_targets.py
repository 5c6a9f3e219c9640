"""Target presets on real module names: diffusers models (tiny, real classes) and ComfyUI/original names.

The ComfyUI name lists were read off ComfyUI's own model classes (comfy/ldm/flux, mmdit, wan, openaimodel)
instantiated at toy size; SGM UNet names follow comfy/ldm/modules/attention.py.
"""

import re

import pytest
import torch
from torch import nn

from lora_lab.lora_core.errors import TrainingError
from lora_lab.lora_core.adapters.targets import select_targets


def tree(names, conv=()):
    """nn.Module tree whose Linear (or Conv2d for names in `conv`) leaves have exactly these paths."""
    root = nn.Module()
    for name in names:
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, nn.Conv2d(4, 4, 1) if name in conv else nn.Linear(4, 4))
    return root


def blockwise(names, n=2):
    return [re.sub(r"\.N\.", f".{i}.", x) for i in range(n) for x in names] if any(".N." in x for x in names) else names


COMFY_FLUX = blockwise("""img_in time_in.in_layer time_in.out_layer vector_in.in_layer guidance_in.out_layer txt_in
double_blocks.N.img_mod.lin double_blocks.N.img_attn.qkv double_blocks.N.img_attn.proj double_blocks.N.img_mlp.0
double_blocks.N.img_mlp.2 double_blocks.N.txt_mod.lin double_blocks.N.txt_attn.qkv double_blocks.N.txt_attn.proj
double_blocks.N.txt_mlp.0 double_blocks.N.txt_mlp.2 single_blocks.N.linear1 single_blocks.N.linear2
single_blocks.N.modulation.lin final_layer.linear final_layer.adaLN_modulation.1""".split())
COMFY_SD3 = blockwise("""x_embedder.proj t_embedder.mlp.0 t_embedder.mlp.2 y_embedder.mlp.0 context_embedder
joint_blocks.N.context_block.attn.qkv joint_blocks.N.context_block.attn.proj joint_blocks.N.context_block.mlp.fc1
joint_blocks.N.context_block.mlp.fc2 joint_blocks.N.context_block.adaLN_modulation.1 joint_blocks.N.x_block.attn.qkv
joint_blocks.N.x_block.attn.proj joint_blocks.N.x_block.mlp.fc1 joint_blocks.N.x_block.mlp.fc2
joint_blocks.N.x_block.adaLN_modulation.1 final_layer.linear final_layer.adaLN_modulation.1""".split())
COMFY_WAN = blockwise("""patch_embedding text_embedding.0 text_embedding.2 time_embedding.0 time_projection.1
blocks.N.self_attn.q blocks.N.self_attn.k blocks.N.self_attn.v blocks.N.self_attn.o blocks.N.cross_attn.q
blocks.N.cross_attn.k blocks.N.cross_attn.v blocks.N.cross_attn.o blocks.N.cross_attn.k_img blocks.N.cross_attn.v_img
blocks.N.ffn.0 blocks.N.ffn.2 head.head img_emb.proj.1 img_emb.proj.3""".split())
SANA_ORIGINAL = blockwise("""x_embedder.proj t_embedder.mlp.0 t_block.1 y_embedder.y_proj.fc1 blocks.N.attn.qkv
blocks.N.attn.proj blocks.N.cross_attn.q_linear blocks.N.cross_attn.kv_linear blocks.N.cross_attn.proj
blocks.N.mlp.inverted_conv.conv blocks.N.mlp.point_conv.conv final_layer.linear""".split())
SGM_UNET = blockwise("""time_embed.0 time_embed.2 input_blocks.0.0 input_blocks.1.0.emb_layers.1 input_blocks.1.0.in_layers.2
input_blocks.1.1.proj_in input_blocks.1.1.transformer_blocks.N.attn1.to_q input_blocks.1.1.transformer_blocks.N.attn1.to_k
input_blocks.1.1.transformer_blocks.N.attn1.to_v input_blocks.1.1.transformer_blocks.N.attn1.to_out.0
input_blocks.1.1.transformer_blocks.N.attn2.to_q input_blocks.1.1.transformer_blocks.N.attn2.to_k
input_blocks.1.1.transformer_blocks.N.attn2.to_v input_blocks.1.1.transformer_blocks.N.attn2.to_out.0
input_blocks.1.1.transformer_blocks.N.ff.net.0.proj input_blocks.1.1.transformer_blocks.N.ff.net.2
input_blocks.1.1.proj_out middle_block.1.transformer_blocks.N.attn1.to_q out.2 label_emb.0.0""".split())
SGM_CONVS = {"input_blocks.0.0", "input_blocks.1.0.in_layers.2", "out.2", "input_blocks.1.1.proj_in", "input_blocks.1.1.proj_out"}


def leafs(names, pattern):
    return sorted(n for n in names if re.search(pattern, n))


@pytest.mark.parametrize(
    "names,conv,attention,mlp",
    [
        (COMFY_FLUX, (), r"(img_attn|txt_attn)\.(qkv|proj)$|single_blocks\.\d\.linear[12]$", r"(img|txt)_mlp\.[02]$"),
        (COMFY_SD3, (), r"block\.attn\.(qkv|proj)$", r"mlp\.fc[12]$"),
        (COMFY_WAN, (), r"_attn\.(q|k|v|o|k_img|v_img)$", r"ffn\.[02]$"),
        (SANA_ORIGINAL, {n for n in SANA_ORIGINAL if n.endswith(".conv")}, r"attn\.(qkv|proj|q_linear|kv_linear)$", r"mlp\.(inverted|point)_conv\.conv$"),
        (SGM_UNET, SGM_CONVS, r"attn[12]\.to_(q|k|v|out\.0)$", r"ff\.net\.(0\.proj|2)$"),
    ],
    ids=["comfy-flux", "comfy-sd3", "comfy-wan", "sana-original", "sgm-unet"],
)
def test_presets_on_original_names(names, conv, attention, mlp):
    root = tree(names, conv)
    assert sorted(select_targets(root, "attention")) == leafs(names, attention)
    assert sorted(select_targets(root, "attention_mlp")) == leafs(names, f"{attention}|{mlp}")
    all_linear = select_targets(root, "all_linear")
    assert set(leafs(names, f"{attention}|{mlp}")) - set(conv) <= set(all_linear)
    for name in all_linear:  # never embeddings, norms, modulation, or top-level in/out layers
        assert not re.search(r"emb|norm|mod\.|modulation|^(img_in|txt_in|final_layer|head|out\.|input_blocks\.0\.0)", name), name


def _diffusers_models():
    from diffusers import FluxTransformer2DModel, SanaTransformer2DModel, SD3Transformer2DModel, WanTransformer3DModel

    torch.manual_seed(0)
    yield "flux", FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                         num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))
    yield "sd3", SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
                                       joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4)
    yield "sana", SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                         num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16, sample_size=8)
    yield "wan", WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                       text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32)


EXPECTED_DIFFUSERS = {
    "flux": {"attention": r"attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)$|single_transformer_blocks\.0\.proj_out$",
             "mlp": r"ff(_context)?\.net\.(0\.proj|2)$|proj_mlp$"},
    "sd3": {"attention": r"attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)$", "mlp": r"ff(_context)?\.net\.(0\.proj|2)$"},
    "sana": {"attention": r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", "mlp": r"ff\.conv_(inverted|point)$"},
    "wan": {"attention": r"attn[12]\.(to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)$", "mlp": r"ffn\.net\.(0\.proj|2)$"},
}


def test_presets_on_diffusers_models():
    for family, model in _diffusers_models():
        names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        exp = EXPECTED_DIFFUSERS[family]
        assert sorted(select_targets(model, "attention")) == leafs(names, exp["attention"]), family
        assert sorted(select_targets(model, "attention_mlp")) == leafs(names, exp["attention"] + "|" + exp["mlp"]), family
        for name in select_targets(model, "all_linear"):
            assert not re.search(r"emb|norm|^(proj_out|x_embedder|context_embedder|caption_projection|patch_embedding)", name), (family, name)


def test_unet_presets_and_custom_patterns():
    from lora_lab.lora_core.cli.tiny_models import tiny_unet

    unet = tiny_unet()
    attn = select_targets(unet, "attention")
    assert attn and all(re.search(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", n) for n in attn)
    assert select_targets(unet, "attn2.to_k") == [n for n in attn if n.endswith("attn2.to_k")]
    assert select_targets(unet, "*.attn1.to_q, *attn2.to_v") == [n for n in attn if n.endswith(("attn1.to_q", "attn2.to_v"))]
    assert select_targets(unet, r"up_blocks\.1\..*to_out\.0$") == [n for n in attn if n.startswith("up_blocks.1.") and n.endswith("to_out.0")]
    assert set(select_targets(unet, ["attention", "proj_in"])) == set(attn) | {n for n, _ in unet.named_modules() if n.endswith("proj_in")}
    locon = select_targets(unet, "all_linear_conv")
    assert any(isinstance(dict(unet.named_modules())[n], nn.Conv2d) for n in locon)
    assert "conv_in" not in locon and "conv_out" not in locon and "time_embedding.linear_1" not in locon


def test_no_match_and_bad_regex_raise():
    with pytest.raises(TrainingError, match="nothing_like_this"):
        select_targets(tree(["a.b"]), "nothing_like_this")
    with pytest.raises(TrainingError, match="attention"):
        select_targets(tree(["time_embed.0", "out.2"]), "attention")
    with pytest.raises(TrainingError, match="bad target regex"):
        select_targets(tree(["a.b"]), "re:(")
