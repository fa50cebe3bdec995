"""The timestep embedding LTX-2 uses everywhere (transformer AdaLN, video VAE decoder):
a 256-channel cos-then-sin sinusoid followed by a two-layer SiLU MLP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TIMESTEP_CHANNELS = 256


def sinusoidal_timestep_embedding(timesteps: torch.Tensor, channels: int = TIMESTEP_CHANNELS) -> torch.Tensor:
    """[N] -> [N, channels] fp32: cosines then sines at frequencies 10000^(-i/half)."""
    half = channels // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) * (-math.log(10000.0) / half)
    angles = timesteps.float().unsqueeze(1) * exponents.exp().unsqueeze(0)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class TimestepMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(TIMESTEP_CHANNELS, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


class TimestepEmbedder(nn.Module):
    """Sinusoid + MLP; checkpoints nest the MLP as ``timestep_embedder``."""

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepMLP(dim)

    def forward(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[N] timesteps -> [N, dim] in ``dtype``."""
        return self.timestep_embedder(sinusoidal_timestep_embedding(timesteps).to(dtype))
