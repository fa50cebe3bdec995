"""Rotary position embeddings with the student's conventions.

Interleaved RoPE (adjacent dimension pairs rotate together) over a stream's whole
inner width, an fp32 frequency grid theta^linspace(0, 1) * pi/2, and positions in
physical units taken at the middle of each latent's interval (seconds for time, pixels
for space), divided by max_pos and mapped to [-1, 1]. Because every angle is linear in
position, the logit between a rotated query and key depends only on their position
difference: that is what lets the rolling cache re-base positions by rotating keys.

Audio sink tokens get the identity rotation (cos 1, sin 0): they have no position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .layout import SPATIAL_COMPRESSION, audio_latent_time, video_latent_time


def frequency_grid(theta: float, num_axes: int, inner_dim: int, device: torch.device | str) -> torch.Tensor:
    """Frequencies per axis: inner_dim // (2 * num_axes) values, fp32."""
    count = inner_dim // (2 * num_axes)
    exponents = torch.linspace(0.0, 1.0, count, dtype=torch.float32, device=device)
    return theta**exponents * (math.pi / 2)


@dataclass(frozen=True)
class RotaryTable:
    """cos/sin per token over the full inner width: [1, tokens, inner_dim]."""

    cos: torch.Tensor
    sin: torch.Tensor

    @property
    def tokens(self) -> int:
        return self.cos.shape[1]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x [B, tokens, inner_dim]; adjacent pairs (2i, 2i+1) rotate together.

        A pair never straddles two heads (head widths are even), so a table reshaped to
        [heads, 1, head_dim] rotates keys already split into heads the same way.
        """
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * self.cos + rotated * self.sin

    def with_identity_prefix(self, count: int) -> "RotaryTable":
        """Prepend ``count`` positionless rows (the audio sink tokens)."""
        if count == 0:
            return self
        ones = self.cos.new_ones(1, count, self.cos.shape[-1])
        zeros = self.sin.new_zeros(1, count, self.sin.shape[-1])
        return RotaryTable(torch.cat([ones, self.cos], dim=1), torch.cat([zeros, self.sin], dim=1))

    def repeat_tokens(self, repeats: int) -> "RotaryTable":
        """Repeat each row ``repeats`` times (a video frame's time for all its tokens)."""
        if repeats == 1:
            return self
        return RotaryTable(
            self.cos.repeat_interleave(repeats, dim=1), self.sin.repeat_interleave(repeats, dim=1)
        )

    def to(self, dtype: torch.dtype) -> "RotaryTable":
        return RotaryTable(self.cos.to(dtype), self.sin.to(dtype))


def _angles(fractions: torch.Tensor, theta: float, inner_dim: int) -> torch.Tensor:
    """Angles [tokens, n_freq * axes], frequency-major with the axes interleaved."""
    num_axes = fractions.shape[-1]
    grid = frequency_grid(theta, num_axes, inner_dim, fractions.device)
    angles = grid * (fractions.unsqueeze(-1) * 2 - 1)
    return angles.transpose(-1, -2).flatten(-2)


def _table_from_angles(angles: torch.Tensor, inner_dim: int, dtype: torch.dtype) -> RotaryTable:
    cos = angles.cos().repeat_interleave(2, dim=-1)
    sin = angles.sin().repeat_interleave(2, dim=-1)
    # Dimensions the grid does not cover (inner_dim % (2 * axes)) come first, unrotated.
    pad = inner_dim - cos.shape[-1]
    if pad:
        cos = torch.cat([cos.new_ones(cos.shape[0], pad), cos], dim=-1)
        sin = torch.cat([sin.new_zeros(sin.shape[0], pad), sin], dim=-1)
    return RotaryTable(cos.unsqueeze(0).to(dtype), sin.unsqueeze(0).to(dtype))


def video_table(
    frame_start: int,
    frames: int,
    grid_hw: tuple[int, int],
    inner_dim: int,
    max_pos: tuple[float, float, float],
    theta: float,
    device: torch.device | str,
    dtype: torch.dtype,
) -> RotaryTable:
    """3-D positions (time, height, width) of video tokens, frame-major then h then w."""
    height, width = grid_hw
    latent = torch.arange(frame_start, frame_start + frames, device=device, dtype=torch.float32)
    time = video_latent_time(latent) / max_pos[0]
    half_cell = SPATIAL_COMPRESSION / 2
    rows = (torch.arange(height, device=device, dtype=torch.float32) * SPATIAL_COMPRESSION + half_cell) / max_pos[1]
    cols = (torch.arange(width, device=device, dtype=torch.float32) * SPATIAL_COMPRESSION + half_cell) / max_pos[2]
    grid = torch.stack(torch.meshgrid(time, rows, cols, indexing="ij"), dim=-1).reshape(-1, 3)
    return _table_from_angles(_angles(grid, theta, inner_dim), inner_dim, dtype)


def time_table(
    frame_start: int,
    frames: int,
    modality: str,
    inner_dim: int,
    max_pos: float,
    theta: float,
    device: torch.device | str,
    dtype: torch.dtype,
) -> RotaryTable:
    """1-D time positions of video or audio latent frames (one row per frame)."""
    latent = torch.arange(frame_start, frame_start + frames, device=device, dtype=torch.float32)
    seconds = video_latent_time(latent) if modality == "video" else audio_latent_time(latent)
    fractions = (seconds / max_pos).unsqueeze(-1)
    return _table_from_angles(_angles(fractions, theta, inner_dim), inner_dim, dtype)


def time_shift_rotation(
    seconds: float,
    num_axes: int,
    inner_dim: int,
    max_pos_time: float,
    theta: float,
    device: torch.device | str,
) -> RotaryTable:
    """The rotation that moves an already-rotated key by ``seconds`` along time only.

    Angles are f * (2p/max - 1), so a shift of dt in time adds 2 f dt / max_t on the
    time-axis dimensions and nothing elsewhere; composing this with a key's rotation
    equals rotating the key at its shifted position.
    """
    grid = frequency_grid(theta, num_axes, inner_dim, device)
    delta = torch.zeros(num_axes, grid.shape[0], device=device, dtype=torch.float32)
    delta[0] = grid * (2 * seconds / max_pos_time)
    angles = delta.transpose(0, 1).flatten().unsqueeze(0)
    return _table_from_angles(angles, inner_dim, torch.float32)
