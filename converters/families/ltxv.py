"""LTX-Video (0.9.x 2B, 13B): the video half of LTX-2's names, the same on both sides but for the embedders."""

from __future__ import annotations

from .ltx2 import VIDEO, WIDTH_FROM
from .sizes import Variant

RULES = VIDEO
SIZES = (Variant("ltxv 2b", 2048, {"transformer_blocks": 28}), Variant("ltxv 13b", 4096, {"transformer_blocks": 48}))

__all__ = ["RULES", "SIZES", "WIDTH_FROM"]
