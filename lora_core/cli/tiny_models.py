"""Tiny randomly initialised diffusers models (seeded) for the demo and the tests. No downloads."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def tiny_unet(seed: int = 0, cross_attention_dim: int = 32, channels: tuple[int, int] = (32, 64)) -> nn.Module:
    """UNet2DConditionModel with SD's block layout at toy width (4-channel 8x8+ latents)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def tiny_vae(seed: int = 0) -> nn.Module:
    """AutoencoderKL with 4 levels (8x downsampling, 4 latent channels) at toy width."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    ).eval()


class TinyTextEncoder(nn.Module):
    """Tokenizer-free text encoder: words -> hashed ids -> embedding + position -> 1 transformer layer.

    Deterministic (sha256 word hashing, seeded init), so a caption always maps to the same (L, D) tensor.
    """

    def __init__(self, dim: int = 32, vocab: int = 1024, length: int = 16, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.vocab, self.length = vocab, length
        self.token = nn.Parameter(torch.randn(vocab, dim, generator=gen) * 0.5)
        self.position = nn.Parameter(torch.randn(length, dim, generator=gen) * 0.1)
        self.mix = nn.Linear(dim, dim)
        with torch.no_grad():
            self.mix.weight.copy_(torch.randn(dim, dim, generator=gen) / dim**0.5)
            self.mix.bias.zero_()
        self.requires_grad_(False)

    def ids(self, text: str) -> torch.Tensor:
        words = text.lower().replace(",", " ").split()[: self.length - 1]
        ids = [0] + [1 + int.from_bytes(hashlib.sha256(w.encode()).digest()[:4], "little") % (self.vocab - 1) for w in words]
        return torch.tensor(ids + [0] * (self.length - len(ids)))

    @torch.no_grad()
    def forward(self, text: str) -> torch.Tensor:
        """(length, dim) hidden states for one caption."""
        h = self.token[self.ids(text)] + self.position
        attn = torch.softmax(h @ h.T / h.shape[1] ** 0.5, dim=-1)
        return h + torch.tanh(self.mix(attn @ h))
