"""Which modules are linear layers, for targeting, adapters and the frozen-base formulas.

torch's nn.Linear, and layers that are linear without subclassing it: ComfyUI's mixed-precision Linear (the
op set of every model loaded with a quantization config: scaled fp8, fp8/int8/nvfp4 "comfy_quant" files) is
a plain nn.Module with in_features, out_features and a weight of logical shape (out, in), quantized or not.
"""

from __future__ import annotations

import torch
from torch import nn


def is_linear(module: nn.Module) -> bool:
    """nn.Linear, or a module declaring in_features/out_features with a weight of shape (out, in)."""
    if isinstance(module, nn.Linear):
        return True
    weight, n_in, n_out = (getattr(module, a, None) for a in ("weight", "in_features", "out_features"))
    return (isinstance(n_in, int) and isinstance(n_out, int) and isinstance(weight, torch.Tensor)
            and tuple(weight.shape) == (n_out, n_in))
