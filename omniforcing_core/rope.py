"""Rotary position embeddings, with the student's conventions or the LTX-2 teacher's.

Positions are physical (seconds for time, pixels for space), taken at the middle of each
latent's interval, divided by max_pos and mapped to [-1, 1]; each axis gets
theta^linspace(0, 1) * pi/2 frequencies, frequency-major with the axes interleaved.
Because every angle is linear in position, the logit between a rotated query and key
depends only on their position difference: that is what lets the rolling cache re-base
positions by rotating keys.

Where the two models differ (:class:`RopeConventions`):
- which dimensions rotate together: adjacent pairs over the whole inner width
  ("interleaved", the student) or the first half of each head against its second half
  ("split", the teacher);
- the frequency grid: fp32 (student) or computed in float64 and rounded once (teacher);
- the middle of a latent's time interval: taken in frames, then converted to seconds
  (student), or between bounds already in seconds (teacher). The two round differently in
  fp32, which moves the highest-frequency angles by up to ~1e-3 rad.

Audio sink tokens get the identity rotation (cos 1, sin 0): they have no position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .layout import (
    MEL_HOP,
    MEL_SAMPLE_RATE,
    SPATIAL_COMPRESSION,
    VIDEO_FPS,
    audio_latent_time,
    audio_mel_interval,
    video_latent_time,
    video_pixel_interval,
)

ROPE_TYPES = ("interleaved", "split")
FREQUENCY_PRECISIONS = ("float32", "float64")
ROPE_MIDPOINTS = ("frames", "seconds")


@dataclass(frozen=True)
class RopeConventions:
    """How positions become rotations: one of each of the tuples above."""

    rope_type: str
    frequencies_precision: str
    midpoint: str


# What the distilled student was trained with (the LTX-2 teacher: split, float64, seconds).
STUDENT_ROPE = RopeConventions("interleaved", "float32", "frames")


def frequency_grid(
    theta: float, num_axes: int, inner_dim: int, device: torch.device | str, precision: str = "float32"
) -> torch.Tensor:
    """Frequencies per axis: inner_dim // (2 * num_axes) values, returned in fp32.

    Built on the CPU (float64 is not available on every device) and moved.
    """
    count = inner_dim // (2 * num_axes)
    compute = torch.float64 if precision == "float64" else torch.float32
    exponents = torch.linspace(0.0, 1.0, count, dtype=compute)
    return (theta**exponents * (math.pi / 2)).to(device=device, dtype=torch.float32)


@dataclass(frozen=True)
class RotaryTable:
    """cos/sin per token over the full inner width: [1, tokens, inner_dim].

    ``split_width`` None: adjacent pairs (2i, 2i+1) rotate together (interleaved). Else the
    width is cut into chunks of ``split_width`` (a head) and in each chunk dimension i
    rotates with i + split_width/2; both halves of a chunk hold the same cos/sin.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    split_width: int | None = None

    @property
    def tokens(self) -> int:
        return self.cos.shape[1]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x [B, tokens, inner_dim].

        A rotation never straddles two heads, so a table reshaped to [heads, 1, head_dim]
        rotates keys already split into heads the same way.
        """
        if self.split_width is None:
            pairs = x.unflatten(-1, (-1, 2))
            rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        else:
            halves = x.unflatten(-1, (-1, 2, self.split_width // 2))
            rotated = torch.cat((-halves[..., 1:, :], halves[..., :1, :]), dim=-2).flatten(-3)
        return x * self.cos + rotated * self.sin

    def with_identity_prefix(self, count: int) -> "RotaryTable":
        """Prepend ``count`` positionless rows (the audio sink tokens)."""
        if count == 0:
            return self
        ones = self.cos.new_ones(1, count, self.cos.shape[-1])
        zeros = self.sin.new_zeros(1, count, self.sin.shape[-1])
        return replace(self, cos=torch.cat([ones, self.cos], dim=1), sin=torch.cat([zeros, self.sin], dim=1))

    def repeat_tokens(self, repeats: int) -> "RotaryTable":
        """Repeat each row ``repeats`` times (a video frame's time for all its tokens)."""
        if repeats == 1:
            return self
        return replace(
            self, cos=self.cos.repeat_interleave(repeats, dim=1), sin=self.sin.repeat_interleave(repeats, dim=1)
        )

    def to(self, dtype: torch.dtype) -> "RotaryTable":
        return replace(self, cos=self.cos.to(dtype), sin=self.sin.to(dtype))


def _angles(fractions: torch.Tensor, theta: float, inner_dim: int, precision: str) -> torch.Tensor:
    """Angles [tokens, n_freq * axes], frequency-major with the axes interleaved."""
    num_axes = fractions.shape[-1]
    grid = frequency_grid(theta, num_axes, inner_dim, fractions.device, precision)
    angles = grid * (fractions.unsqueeze(-1) * 2 - 1)
    return angles.transpose(-1, -2).flatten(-2)


def _table_from_angles(
    angles: torch.Tensor, inner_dim: int, dtype: torch.dtype, conventions: RopeConventions, heads: int | None
) -> RotaryTable:
    # Dimensions the grid does not cover come first, unrotated (angle 0: cos 1, sin 0);
    # in split tables that pad lands in the first head only.
    angles = F.pad(angles, (inner_dim // 2 - angles.shape[-1], 0))
    cos, sin = angles.cos(), angles.sin()
    if conventions.rope_type == "interleaved":
        cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        split_width = None
    else:
        if heads is None:
            raise ValueError("split RoPE needs the head count its table is cut into")
        split_width = inner_dim // heads
        per_head = (-1, 1, split_width // 2)
        cos = cos.unflatten(-1, per_head).expand(-1, -1, 2, -1).flatten(-3)
        sin = sin.unflatten(-1, per_head).expand(-1, -1, 2, -1).flatten(-3)
    return RotaryTable(cos.unsqueeze(0).to(dtype), sin.unsqueeze(0).to(dtype), split_width)


def latent_seconds(latent: torch.Tensor, modality: str, midpoint: str) -> torch.Tensor:
    """The time RoPE sees for latent frames: the middle of each one's interval, in seconds."""
    if midpoint == "frames":
        return video_latent_time(latent) if modality == "video" else audio_latent_time(latent)
    if modality == "video":
        start, end = video_pixel_interval(latent)
        return (start / VIDEO_FPS + end / VIDEO_FPS) / 2
    start, end = audio_mel_interval(latent)
    return (start * MEL_HOP / MEL_SAMPLE_RATE + end * MEL_HOP / MEL_SAMPLE_RATE) / 2


def video_table(
    frame_start: int,
    frames: int,
    grid_hw: tuple[int, int],
    inner_dim: int,
    max_pos: tuple[float, float, float],
    theta: float,
    device: torch.device | str,
    dtype: torch.dtype,
    conventions: RopeConventions = STUDENT_ROPE,
    heads: int | None = None,
) -> RotaryTable:
    """3-D positions (time, height, width) of video tokens, frame-major then h then w.

    ``heads``: how many chunks a split table is cut into (unused when interleaved).
    """
    height, width = grid_hw
    latent = torch.arange(frame_start, frame_start + frames, device=device, dtype=torch.float32)
    time = latent_seconds(latent, "video", conventions.midpoint) / max_pos[0]
    half_cell = SPATIAL_COMPRESSION / 2
    rows = (torch.arange(height, device=device, dtype=torch.float32) * SPATIAL_COMPRESSION + half_cell) / max_pos[1]
    cols = (torch.arange(width, device=device, dtype=torch.float32) * SPATIAL_COMPRESSION + half_cell) / max_pos[2]
    grid = torch.stack(torch.meshgrid(time, rows, cols, indexing="ij"), dim=-1).reshape(-1, 3)
    angles = _angles(grid, theta, inner_dim, conventions.frequencies_precision)
    return _table_from_angles(angles, inner_dim, dtype, conventions, heads)


def time_table(
    frame_start: int,
    frames: int,
    modality: str,
    inner_dim: int,
    max_pos: float,
    theta: float,
    device: torch.device | str,
    dtype: torch.dtype,
    conventions: RopeConventions = STUDENT_ROPE,
    heads: int | None = None,
) -> RotaryTable:
    """1-D time positions of video or audio latent frames (one row per frame)."""
    latent = torch.arange(frame_start, frame_start + frames, device=device, dtype=torch.float32)
    fractions = (latent_seconds(latent, modality, conventions.midpoint) / max_pos).unsqueeze(-1)
    angles = _angles(fractions, theta, inner_dim, conventions.frequencies_precision)
    return _table_from_angles(angles, inner_dim, dtype, conventions, heads)


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
    equals rotating the key at its shifted position. Student conventions only: the
    streaming cache is the one user, and it re-bases the student's keys.
    """
    grid = frequency_grid(theta, num_axes, inner_dim, device)
    delta = torch.zeros(num_axes, grid.shape[0], device=device, dtype=torch.float32)
    delta[0] = grid * (2 * seconds / max_pos_time)
    angles = delta.transpose(0, 1).flatten().unsqueeze(0)
    return _table_from_angles(angles, inner_dim, torch.float32, STUDENT_ROPE, None)

