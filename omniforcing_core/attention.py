"""The four attention kinds of an LTX-2 audio-video layer, and their geometry.

One table: the transformer routes each attention by its kind, the KV cache sizes its
buffers and rotates its keys from it, the masks pair query and key streams from it.
``av_rope`` builds the RoPE tables one forward's attentions use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig
from .rope import RotaryTable, time_table, video_table


@dataclass(frozen=True)
class AttentionKind:
    """Queries of one stream attending to keys of one stream ("video" or "audio")."""

    name: str
    queries: str
    keys: str

    @property
    def cross_modal(self) -> bool:
        return self.queries != self.keys

    def heads(self, config: ModelConfig) -> int:
        # The cross-modal attentions run at the audio width in every LTX-2 model.
        return config.video_heads if self is VIDEO_SELF else config.audio_heads

    def head_dim(self, config: ModelConfig) -> int:
        return config.video_head_dim if self is VIDEO_SELF else config.audio_head_dim

    def rope_geometry(self, config: ModelConfig) -> tuple[int, int, float]:
        """(position axes, RoPE width, max time position) of the keys' rotation."""
        if self.cross_modal:
            return 1, config.cross_modal_dim, config.cross_modal_max_pos
        if self.keys == "video":
            return 3, config.video_dim, config.video_max_pos[0]
        return 1, config.audio_dim, config.audio_max_pos[0]


VIDEO_SELF = AttentionKind("video_self", queries="video", keys="video")
AUDIO_SELF = AttentionKind("audio_self", queries="audio", keys="audio")
AUDIO_TO_VIDEO = AttentionKind("audio_to_video", queries="video", keys="audio")  # audio flows into video
VIDEO_TO_AUDIO = AttentionKind("video_to_audio", queries="audio", keys="video")
KINDS = (VIDEO_SELF, AUDIO_SELF, AUDIO_TO_VIDEO, VIDEO_TO_AUDIO)


# Per-forward tables of both streams ------------------------------------------------


@dataclass(frozen=True)
class AVRope:
    """RoPE tables of one forward: each stream's own positions and the shared time axis."""

    video_self: RotaryTable
    audio_self: RotaryTable
    video_cross: RotaryTable
    audio_cross: RotaryTable


def av_rope(
    config: ModelConfig,
    video_frame_start: int,
    video_frames: int,
    grid_hw: tuple[int, int],
    audio_frame_start: int,
    audio_frames: int,
    sink_tokens: int,
    device: torch.device,
    dtype: torch.dtype,
) -> AVRope:
    """RoPE tables for a span of latent frames; sinks (if any) lead the audio tables."""
    c = config
    conventions = c.rope_conventions
    video_self = video_table(
        video_frame_start, video_frames, grid_hw, c.video_dim, c.video_max_pos, c.rope_theta, device, dtype,
        conventions, c.video_heads,
    )
    audio_self = time_table(
        audio_frame_start, audio_frames, "audio", c.audio_dim, c.audio_max_pos[0], c.rope_theta, device, dtype,
        conventions, c.audio_heads,
    )
    # Split tables are cut per head; the video side of the cross-modal one into the video
    # head count, as ltx-core does (equal to the audio heads in every LTX-2 model).
    video_cross = time_table(
        video_frame_start, video_frames, "video", c.cross_modal_dim, c.cross_modal_max_pos, c.rope_theta, device, dtype,
        conventions, c.video_heads,
    )
    audio_cross = time_table(
        audio_frame_start, audio_frames, "audio", c.cross_modal_dim, c.cross_modal_max_pos, c.rope_theta, device, dtype,
        conventions, c.audio_heads,
    )
    return AVRope(
        video_self=video_self,
        audio_self=audio_self.with_identity_prefix(sink_tokens),
        video_cross=video_cross.repeat_tokens(grid_hw[0] * grid_hw[1]),
        audio_cross=audio_cross.with_identity_prefix(sink_tokens),
    )
