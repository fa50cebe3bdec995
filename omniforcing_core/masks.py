"""Four-way block-causal masks for the full-sequence forward (training and tests).

A query in block k sees every key of blocks 0..k of its own stream and of the other
stream, bidirectionally inside a block. Audio sink tokens belong to block 0. The
streaming path needs no masks: the cache simply holds nothing from the future.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .attention import KINDS, AttentionKind
from .layout import BlockLayout


@dataclass(frozen=True)
class AVMasks:
    """Boolean masks per attention kind, True = may attend: [queries, keys]."""

    by_kind: dict[str, torch.Tensor]

    def __getitem__(self, kind: AttentionKind) -> torch.Tensor:
        return self.by_kind[kind.name]


def token_block_ids(
    layout: BlockLayout, num_blocks: int, tokens_per_video_frame: int, audio_sink_tokens: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block index of every video token and every audio token (sinks first)."""
    video_ids, audio_ids = [], [0] * audio_sink_tokens
    for span in layout.iter_blocks(num_blocks):
        video_ids += [span.index] * (span.video_frames * tokens_per_video_frame)
        audio_ids += [span.index] * span.audio_frames
    return torch.tensor(video_ids, device=device), torch.tensor(audio_ids, device=device)


def block_causal_masks(
    layout: BlockLayout,
    num_blocks: int,
    tokens_per_video_frame: int,
    audio_sink_tokens: int = 0,
    device=None,
    visible_blocks: Callable[[int], Iterable[int]] | None = None,
) -> AVMasks:
    """Masks for ``num_blocks`` blocks. ``visible_blocks(k)`` narrows what block k sees
    (a rolling window, see WindowPolicy.visible_blocks); by default it is blocks 0..k."""
    video_ids, audio_ids = token_block_ids(
        layout, num_blocks, tokens_per_video_frame, audio_sink_tokens, device
    )
    visible = torch.zeros(num_blocks, num_blocks, dtype=torch.bool, device=device)
    for query in range(num_blocks):
        keys = range(query + 1) if visible_blocks is None else list(visible_blocks(query))
        visible[query, list(keys)] = True

    def sees(query_ids: torch.Tensor, key_ids: torch.Tensor) -> torch.Tensor:
        return visible[query_ids][:, key_ids]

    ids = {"video": video_ids, "audio": audio_ids}
    return AVMasks({kind.name: sees(ids[kind.queries], ids[kind.keys]) for kind in KINDS})
