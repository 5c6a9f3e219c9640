"""Edit models for `lora-lab train`: which diffusers pipelines train on image pairs ([data.controls]), and how a
sample's reference reaches their transformer.

  FluxKontextPipeline (FluxTransformer2DModel, family flux): one reference. Its latent, in the model's latent space
  and packed like the noisy latent, follows the noisy latent's tokens; its position ids have 1 on the first axis
  (the noisy latent's 0) and its own grid on the others, as the pipeline builds them; the transformer's output is
  cut to the noisy latent's tokens, so the loss sees the target alone.

Not here: QwenImageEditPipeline and Flux2Pipeline. lora-lab train has no Qwen-Image or Flux 2 family (their
transformers, VAEs and Qwen2.5-VL / Mistral text encoders are not wired up); train those edit LoRAs with the
Train LoRA node.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import torch

from ..errors import DatasetError, LoraLabError

REFERENCE_PIPELINES = {"FluxKontextPipeline": 1}  # pipeline class -> how many references it takes


def pipeline_class(root) -> str:
    """The pipeline class model_index.json names ("" when the folder has none or it cannot be read)."""
    try:
        return str(json.loads((root / "model_index.json").read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError):
        return ""


def check_takes_references(root, family: str) -> str:
    """The pipeline class of a model folder that takes references, or LoraLabError naming what it is."""
    pipeline = pipeline_class(root)
    if pipeline in REFERENCE_PIPELINES:
        return pipeline
    raise LoraLabError(f"data.controls is on, but {root} holds a {family} model ({pipeline or 'no model_index.json'}) "
                       f"that takes no reference images; lora-lab train trains edit LoRAs for "
                       f"{', '.join(REFERENCE_PIPELINES)} (Qwen-Image edit and Flux 2: the Train LoRA node), or turn "
                       "data.controls off to train on the images alone")


def with_references(make_cond: Callable[[Any, Any], dict], latent_in: Callable[[torch.Tensor], torch.Tensor],
                    pipeline: str) -> Callable[[Any, Any], dict]:
    """make_cond that adds the sample's references, in the model's latent space, as cond["references"]."""
    most = REFERENCE_PIPELINES[pipeline]

    def make(text: Any, info: Any) -> dict:
        cond = make_cond(text, info)
        if len(info.references) > most:
            raise DatasetError(f"{info.item.path.name} has {len(info.references)} control images; {pipeline} takes "
                               f"{most}")
        if info.references:
            cond["references"] = [latent_in(r)[0] for r in info.references]
        return cond

    return make


def packed_flux(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): Flux's 2x2 patches as tokens, row by row."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def flux_ids(h: int, w: int, index: int, device: torch.device) -> torch.Tensor:
    """(h/2 * w/2, 3) position ids: `index` on the first axis, the patch grid on the other two."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device)
    ids[..., 0] = index
    ids[..., 1] += torch.arange(h // 2, device=device)[:, None]
    ids[..., 2] += torch.arange(w // 2, device=device)[None, :]
    return ids.reshape(-1, 3)


def one_reference_shape(conds: list[Any]) -> bool:
    """Whether the rows' references can share a call (references of one shape, or none)."""
    return len({tuple(c["references"][0].shape) for c in conds if isinstance(c, dict) and "references" in c}) <= 1


def flux_reference_tokens(conds: list[Any], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch's references as Kontext's extra tokens and their ids, or None for a batch without references.
    The rows' references must have one shape (one_reference_shape)."""
    refs = [c.get("references") if isinstance(c, dict) else None for c in conds]
    if all(r is None for r in refs):
        return None
    if any(r is None for r in refs):
        raise DatasetError("a batch mixes samples with and without a reference image")
    stacked = torch.stack([r[0] for r in refs]).to(like)
    return packed_flux(stacked), flux_ids(stacked.shape[-2], stacked.shape[-1], 1, like.device)
