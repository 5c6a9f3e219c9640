"""SD1.5 / SDXL UNet: SGM/LDM names (input_blocks.4.1...) <-> diffusers names (down_blocks.1.attentions.0...).

The mapping is generated from the UNet layout (levels, res blocks per level, transformer depth per level).
"""

from __future__ import annotations

from dataclasses import dataclass

from .rule import Rule

RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
          "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
ATTN_TOP = ("norm", "proj_in", "proj_out")
ATTN_BLOCK = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
              "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
              "ff.net.0.proj", "ff.net.2", "norm1", "norm2", "norm3")


@dataclass(frozen=True)
class UNetLayout:
    depths: tuple[int, ...]  # transformer depth per level (0 = no attention)
    mid_depth: int
    res_blocks: int = 2
    label_emb: bool = False


SD15 = UNetLayout(depths=(1, 1, 1, 0), mid_depth=1)
SDXL = UNetLayout(depths=(0, 2, 10), mid_depth=10, label_emb=True)


def _resnet(sgm: str, diff: str) -> list[Rule]:
    return [Rule(f"{sgm}.{a}", (f"{diff}.{b}",)) for a, b in RESNET.items()]


def _attention(sgm: str, diff: str, depth: int) -> list[Rule]:
    rules = [Rule(f"{sgm}.{n}", (f"{diff}.{n}",)) for n in ATTN_TOP]
    for k in range(depth):
        rules += [Rule(f"{sgm}.transformer_blocks.{k}.{n}", (f"{diff}.transformer_blocks.{k}.{n}",)) for n in ATTN_BLOCK]
    return rules


def rules_for(layout: UNetLayout) -> list[Rule]:
    levels, nres = len(layout.depths), layout.res_blocks
    rules = [Rule("input_blocks.0.0", ("conv_in",)), Rule("time_embed.0", ("time_embedding.linear_1",)),
             Rule("time_embed.2", ("time_embedding.linear_2",)), Rule("out.0", ("conv_norm_out",)),
             Rule("out.2", ("conv_out",))]
    if layout.label_emb:
        rules += [Rule("label_emb.0.0", ("add_embedding.linear_1",)), Rule("label_emb.0.2", ("add_embedding.linear_2",))]
        # ComfyUI's own diffusers map (comfy.utils.unet_to_diffusers) calls label_emb "class_embedding", so it loads
        # kohya keys lora_unet_class_embedding_linear_1; read them too (the rules above come first, so writing
        # diffusers names still gives add_embedding).
        rules += [Rule("label_emb.0.0", ("class_embedding.linear_1",)), Rule("label_emb.0.2", ("class_embedding.linear_2",))]
    for level, depth in enumerate(layout.depths):
        for i in range(nres):
            n = 1 + level * (nres + 1) + i
            rules += _resnet(f"input_blocks.{n}.0", f"down_blocks.{level}.resnets.{i}")
            if depth:
                rules += _attention(f"input_blocks.{n}.1", f"down_blocks.{level}.attentions.{i}", depth)
        if level < levels - 1:
            n = (level + 1) * (nres + 1)
            rules.append(Rule(f"input_blocks.{n}.0.op", (f"down_blocks.{level}.downsamplers.0.conv",)))
    rules += _resnet("middle_block.0", "mid_block.resnets.0") + _resnet("middle_block.2", "mid_block.resnets.1")
    rules += _attention("middle_block.1", "mid_block.attentions.0", layout.mid_depth)
    for j in range(levels):
        depth = layout.depths[levels - 1 - j]
        for i in range(nres + 1):
            n = j * (nres + 1) + i
            rules += _resnet(f"output_blocks.{n}.0", f"up_blocks.{j}.resnets.{i}")
            if depth:
                rules += _attention(f"output_blocks.{n}.1", f"up_blocks.{j}.attentions.{i}", depth)
            if i == nres and j < levels - 1:
                rules.append(Rule(f"output_blocks.{n}.{2 if depth else 1}.conv", (f"up_blocks.{j}.upsamplers.0.conv",)))
    return rules
