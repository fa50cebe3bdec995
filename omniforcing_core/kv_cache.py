"""The modality-independent KV cache and its rolling window with attention sinks.

Per layer there are four streaming caches, each named after the attention that reads
it: ``video_self`` and ``audio_self`` (each stream's own keys), ``audio_to_video``
(audio keys projected for video queries) and ``video_to_audio`` (video keys projected
for audio queries); plus the text keys of both streams, computed once per prompt.

Layout of every streaming buffer along the token axis::

    [ retained start | slot 0 | slot 1 | ... | slot W ]

The retained start (the audio sink tokens, then block 0 and any further retained
blocks) is never evicted. Later blocks go round-robin into W + 1 equal slots: the
current block overwrites the block that fell out of the window. Attention is invariant
to the order of keys, so a block simply reads the filled prefix of the buffer. All
buffers are allocated once; offsets are plain Python ints, so nothing in the block
loop waits for the device.

Positions past the trained horizon (``position_mode``):

- ``absolute``: every block keeps its true stream time, as the reference does. Exact
  for short clips; on long streams the distance from the current block to the
  retained start grows without bound, and the audio sinks (identity rotation) see
  ever larger query angles: both leave the range the model was trained on.
- ``rebased``: once the window is full, the current block always takes the time slot
  right after the window, which sits right after the retained start, so the stream
  never looks longer than ``retained + window + 1`` blocks. The window's cached keys
  move back one block (exactly one second) each time by a fixed rotation, applied
  once per block. The trade-off: a gap in time is closed, so the retained start
  appears closer than it really is, and cached keys pick up a little rounding per
  rotation (at most W rotations before eviction).

Positions are fp32 either way, and rotation angles grow with position: in absolute mode
the highest frequency's angle resolution is about 0.008 rad at 60 s and 0.5 rad after an
hour, another reason to prefer ``rebased`` for streams longer than a few minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import KINDS, AttentionKind, AVRope, av_rope
from .config import ModelConfig
from .layout import BLOCK_SECONDS, BlockLayout, BlockSpan
from .rope import RotaryTable, time_shift_rotation

POSITION_MODES = ("absolute", "rebased")


class CacheError(ValueError):
    """A window or placement the cache cannot hold."""


@dataclass(frozen=True)
class WindowPolicy:
    """Which blocks stay visible: the retained start plus the last ``window_blocks``."""

    retained_start_blocks: int
    window_blocks: int
    position_mode: str = "absolute"

    def __post_init__(self) -> None:
        if not isinstance(self.retained_start_blocks, int) or self.retained_start_blocks < 1:
            raise CacheError(
                f"retained_start_blocks must be >= 1 (block 0 is the stream's anchor), got {self.retained_start_blocks}"
            )
        if self.window_blocks < 0:
            raise CacheError(f"window_blocks must be >= 0, got {self.window_blocks}")
        if self.position_mode not in POSITION_MODES:
            raise CacheError(f"position_mode must be one of {POSITION_MODES}, got {self.position_mode!r}")

    @property
    def ring_slots(self) -> int:
        return self.window_blocks + 1

    def ring_slot(self, block: int) -> int | None:
        """The slot of ``block``; None for the retained start."""
        return None if block < self.retained_start_blocks else (block - self.retained_start_blocks) % self.ring_slots

    def visible_blocks(self, block: int) -> list[int]:
        """Blocks whose keys ``block`` attends to (itself included)."""
        retained = list(range(min(block + 1, self.retained_start_blocks)))
        oldest = max(self.retained_start_blocks, block - self.window_blocks)
        return retained + list(range(oldest, block + 1))

    def logical_block(self, block: int) -> int:
        """The block index whose positions ``block`` takes (see position modes above)."""
        if self.position_mode == "absolute":
            return block
        return min(block, self.retained_start_blocks + self.window_blocks)

    def shifts_window(self, block: int) -> bool:
        """Whether starting ``block`` moves the window's positions back one block."""
        return self.position_mode == "rebased" and block > self.retained_start_blocks + self.window_blocks

    def ring_start(self, layout: BlockLayout, tokens_per_frame: int, sink_tokens: int) -> tuple[int, int]:
        """(video, audio) token where the ring begins: after the retained start (and the sinks)."""
        last_retained = layout.block(self.retained_start_blocks - 1)
        return last_retained.video_end * tokens_per_frame, audio_token(last_retained.audio_end, sink_tokens)

    def placement(self, span: BlockSpan, layout: BlockLayout, tokens_per_frame: int, sink_tokens: int) -> "Placement":
        """Where ``span``'s keys go in the buffers and how many tokens it reads: the retained
        start in stream order (audio sinks first), then the ring of ``ring_slots`` slots."""
        slot = self.ring_slot(span.index)
        if slot is None:
            return Placement(span.video_start * tokens_per_frame, span.video_end * tokens_per_frame,
                             audio_token(span.audio_start, sink_tokens) if span.index else 0,
                             audio_token(span.audio_end, sink_tokens))
        video_start, audio_start = self.ring_start(layout, tokens_per_frame, sink_tokens)
        video_slot, audio_slot = layout.video_frames_per_block * tokens_per_frame, layout.audio_frames_per_block
        filled = min(span.index - self.retained_start_blocks, self.window_blocks) + 1
        return Placement(video_start + slot * video_slot, video_start + filled * video_slot,
                         audio_start + slot * audio_slot, audio_start + filled * audio_slot)


def audio_token(latent: int, sink_tokens: int) -> int:
    """Where audio latent ``latent`` sits among a stream's audio tokens: the sinks come first."""
    return sink_tokens + latent


@dataclass(frozen=True)
class TextKV:
    """Text keys/values of every layer, computed once per prompt: [layers, 2, B, H, tokens, d]."""

    video: torch.Tensor
    audio: torch.Tensor
    mask: torch.Tensor | None  # [B, 1, 1, tokens], True = attend

    @property
    def nbytes(self) -> int:
        return self.video.nbytes + self.audio.nbytes

    def keys_values(self, stream: str, layer: int, attention: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's stored keys/values (``attention`` is unused: the text's own projection ran once)."""
        stored = (self.video if stream == "video" else self.audio)[layer]
        return stored[0], stored[1]


@dataclass(frozen=True)
class Placement:
    """Where one block's keys go and how much of each buffer it reads."""

    video_offset: int
    video_valid: int
    audio_offset: int
    audio_valid: int


@dataclass(frozen=True)
class CachedBlock:
    """Everything a block's forward passes share: its cache router, RoPE and sinks."""

    span: BlockSpan
    router: "CachedAttention"
    rope: AVRope
    sink_tokens: int


class CachedAttention:
    """Writes a block's keys/values into its slot, then attends over the visible prefix."""

    def __init__(self, cache: "StreamKVCache", placement: Placement):
        self.cache = cache
        self.placement = placement

    def attend(self, kind: AttentionKind, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.placement
        offset, valid = (p.video_offset, p.video_valid) if kind.keys == "video" else (p.audio_offset, p.audio_valid)
        keys, values = self.cache.buffers[kind.name][layer]
        end = offset + k.shape[2]
        keys[:, :, offset:end].copy_(k)
        values[:, :, offset:end].copy_(v)
        return F.scaled_dot_product_attention(q, keys[:, :, :valid], values[:, :, :valid])


class StreamKVCache:
    """Preallocated per-layer caches for one stream at one resolution."""

    def __init__(
        self,
        config: ModelConfig,
        layout: BlockLayout,
        grid_hw: tuple[int, int],
        policy: WindowPolicy,
        sink_tokens: int,
        batch_size: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        self.config = config
        self.layout = layout
        self.policy = policy
        self.grid_hw = grid_hw
        self.device = torch.device(device)
        self.dtype = dtype
        self.sink_tokens = sink_tokens
        self.tokens_per_frame = grid_hw[0] * grid_hw[1]
        self.video_start_tokens, self.audio_start_tokens = policy.ring_start(layout, self.tokens_per_frame, sink_tokens)
        self.video_slot_tokens = layout.video_frames_per_block * self.tokens_per_frame
        self.audio_slot_tokens = layout.audio_frames_per_block
        video_capacity = self.video_start_tokens + policy.ring_slots * self.video_slot_tokens
        audio_capacity = self.audio_start_tokens + policy.ring_slots * self.audio_slot_tokens

        def buffer(heads: int, head_dim: int, capacity: int) -> torch.Tensor:
            shape = (config.num_layers, 2, batch_size, heads, capacity, head_dim)
            return torch.zeros(shape, device=device, dtype=dtype)

        capacity = {"video": video_capacity, "audio": audio_capacity}
        self.buffers: dict[str, torch.Tensor] = {
            kind.name: buffer(kind.heads(config), kind.head_dim(config), capacity[kind.keys]) for kind in KINDS
        }
        self.text: TextKV | None = None
        self._window_shift = self._shift_rotations(config, device, dtype) if policy.position_mode == "rebased" else {}

    @staticmethod
    def _shift_rotations(config: ModelConfig, device, dtype: torch.dtype) -> dict[AttentionKind, RotaryTable]:
        """Per kind, the rotation [heads, 1, head_dim] moving keys back one block (1 s)."""
        rotations = {}
        for kind in KINDS:
            axes, dim, max_time = kind.rope_geometry(config)
            table = time_shift_rotation(-BLOCK_SECONDS, axes, dim, max_time, config.rope_theta, device)
            heads = kind.heads(config)
            per_head = (heads, 1, dim // heads)
            rotations[kind] = RotaryTable(table.cos.view(per_head), table.sin.view(per_head)).to(dtype)
        return rotations

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache, text keys included."""
        text = self.text.nbytes if self.text is not None else 0
        return sum(b.nbytes for b in self.buffers.values()) + text

    def placement(self, span: BlockSpan) -> Placement:
        return self.policy.placement(span, self.layout, self.tokens_per_frame, self.sink_tokens)

    def begin_block(self, span: BlockSpan) -> CachedBlock:
        """Prepare the cache for ``span``: re-base positions if needed, place its keys."""
        if self.policy.shifts_window(span.index):
            self._move_window_back_one_block()
        logical = self.layout.block(self.policy.logical_block(span.index))
        sinks = self.sink_tokens if span.index == 0 else 0
        rope = av_rope(
            self.config, logical.video_start, span.video_frames, self.grid_hw,
            logical.audio_start, span.audio_frames, sinks, self.device, self.dtype,
        )
        return CachedBlock(span, CachedAttention(self, self.placement(span)), rope, sinks)

    def _move_window_back_one_block(self) -> None:
        for kind, rotation in self._window_shift.items():
            start = self.video_start_tokens if kind.keys == "video" else self.audio_start_tokens
            # One layer at a time: the rotation's temporaries stay one layer's window in size.
            for layer_keys in self.buffers[kind.name][:, 0, :, :, start:]:
                layer_keys.copy_(rotation.apply(layer_keys))

    def release(self) -> None:
        """Drop every buffer (end of stream, interrupt): the memory goes back at once."""
        self.buffers = {}
        self.text = None
