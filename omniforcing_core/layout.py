"""The latent clock and the block layouts: pure functions, no tensors.

Video: 24 fps pixels; the VAE compresses 8x in time and 32x in space, and its first
latent covers a single pixel frame, so latent t covers pixel frames
[max(0, 8t - 7), 8t + 1). Audio: 16 kHz mel with hop 160, compressed 4x: latent t
covers mel frames [max(0, 4t - 3), 4t + 1), i.e. 25 latents a second. The vocoder turns
each mel frame into 240 samples at 24 kHz.

A block is one second of both streams (3 video + 25 audio latents). Two layouts differ
only in how the first latent of each stream (the one covering a single frame) is
grouped: the released checkpoint folds it into block 0 (4 + 26), the paper gives it a
block of its own, the global prefix (1 + 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

VIDEO_FPS = 24
VIDEO_TIME_COMPRESSION = 8
SPATIAL_COMPRESSION = 32
AUDIO_TIME_COMPRESSION = 4
MEL_SAMPLE_RATE = 16_000
MEL_HOP = 160
AUDIO_SAMPLE_RATE = 24_000
SAMPLES_PER_MEL_FRAME = AUDIO_SAMPLE_RATE * MEL_HOP // MEL_SAMPLE_RATE  # 240
VIDEO_LATENTS_PER_BLOCK = 3
AUDIO_LATENTS_PER_BLOCK = 25
# Every block after block 0 lasts exactly this long in both streams.
BLOCK_SECONDS = VIDEO_LATENTS_PER_BLOCK * VIDEO_TIME_COMPRESSION / VIDEO_FPS


LAYOUT_NAMES = ("released", "paper")


class LayoutError(ValueError):
    """A request the latent clock cannot represent."""


# Physical intervals of latents ---------------------------------------------------
# These accept ints or tensors so RoPE positions come from this single definition.


def _at_least_zero(value):
    return value.clamp(min=0) if isinstance(value, torch.Tensor) else max(0, value)


def latent_interval(latent_frame, compression: int):
    """Frames [start, end) at ``compression`` frames per latent covered by a latent frame:
    the first latent covers a single frame, every later one ``compression`` frames."""
    start = _at_least_zero(compression * latent_frame + 1 - compression)
    end = _at_least_zero(compression * (latent_frame + 1) + 1 - compression)
    return start, end


def video_pixel_interval(latent_frame):
    """Pixel frames [start, end) covered by a video latent frame."""
    return latent_interval(latent_frame, VIDEO_TIME_COMPRESSION)


def audio_mel_interval(latent_frame):
    """Mel frames [start, end) covered by an audio latent frame."""
    return latent_interval(latent_frame, AUDIO_TIME_COMPRESSION)


def video_latent_time(latent_frame):
    """Middle of a video latent's interval, in seconds (what RoPE sees)."""
    start, end = video_pixel_interval(latent_frame)
    return (start + end) / 2 / VIDEO_FPS


def audio_latent_time(latent_frame):
    """Middle of an audio latent's interval, in seconds (what RoPE sees)."""
    start, end = audio_mel_interval(latent_frame)
    return (start + end) / 2 * MEL_HOP / MEL_SAMPLE_RATE


def latent_grid(height: int, width: int) -> tuple[int, int]:
    """Latent cells (rows, columns) of a pixel resolution; one video token per cell."""
    check_resolution(height, width)
    return height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION


def tokens_per_video_frame(height: int, width: int) -> int:
    """Video tokens per latent frame at a pixel resolution."""
    rows, columns = latent_grid(height, width)
    return rows * columns


def check_resolution(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % SPATIAL_COMPRESSION:
            raise LayoutError(
                f"{name} must be a positive multiple of {SPATIAL_COMPRESSION} pixels "
                f"(the VAE's spatial compression), got {value!r}; try {_nearest_multiple(value)}"
            )


def check_seconds(num_seconds: object) -> int:
    """Whole seconds >= 1: one block per second is the only clock the model knows."""
    if isinstance(num_seconds, bool) or not isinstance(num_seconds, (int, float)):
        raise LayoutError(f"duration must be a whole number of seconds, got {num_seconds!r}")
    if float(num_seconds) != int(num_seconds):
        raise LayoutError(
            f"duration must be a whole number of seconds (one block per second), got {num_seconds}"
        )
    if int(num_seconds) < 1:
        raise LayoutError(f"duration must be at least 1 second (a stream of zero blocks), got {num_seconds}")
    return int(num_seconds)


def _nearest_multiple(value: object) -> int:
    try:
        return max(SPATIAL_COMPRESSION, round(float(value) / SPATIAL_COMPRESSION) * SPATIAL_COMPRESSION)
    except (TypeError, ValueError):
        return 512


# Blocks ------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockSpan:
    """One block: latent frame ranges [start, end) of both streams."""

    index: int
    video_start: int
    video_end: int
    audio_start: int
    audio_end: int

    @property
    def video_frames(self) -> int:
        return self.video_end - self.video_start

    @property
    def audio_frames(self) -> int:
        return self.audio_end - self.audio_start

    @property
    def pixel_interval(self) -> tuple[int, int]:
        """Pixel frames [start, end) this block decodes to."""
        return video_pixel_interval(self.video_start)[0], video_pixel_interval(self.video_end - 1)[1]

    @property
    def sample_interval(self) -> tuple[int, int]:
        """24 kHz waveform samples [start, end) this block decodes to."""
        mel_start = audio_mel_interval(self.audio_start)[0]
        mel_end = audio_mel_interval(self.audio_end - 1)[1]
        return mel_start * SAMPLES_PER_MEL_FRAME, mel_end * SAMPLES_PER_MEL_FRAME

    @property
    def pixel_count(self) -> int:
        start, end = self.pixel_interval
        return end - start

    @property
    def sample_count(self) -> int:
        start, end = self.sample_interval
        return end - start

    @property
    def time_span(self) -> tuple[float, float]:
        """Seconds [start, end) of the block's pixel frames."""
        start, end = self.pixel_interval
        return start / VIDEO_FPS, end / VIDEO_FPS


@dataclass(frozen=True)
class BlockLayout:
    """How latent frames group into blocks; block k >= 1 is always 3 + 25 latents."""

    name: str
    first_video_frames: int
    first_audio_frames: int
    video_frames_per_block: int = VIDEO_LATENTS_PER_BLOCK
    audio_frames_per_block: int = AUDIO_LATENTS_PER_BLOCK

    @classmethod
    def released(cls) -> "BlockLayout":
        """The public checkpoint: block 0 = 4 video + 26 audio latents."""
        return cls("released", 4, 26)

    @classmethod
    def paper(cls) -> "BlockLayout":
        """The paper: a global prefix block of 1 video + 1 audio latent, then 3 + 25."""
        return cls("paper", 1, 1)

    @classmethod
    def named(cls, name: str) -> "BlockLayout":
        if name not in LAYOUT_NAMES:
            raise LayoutError(f"unknown block layout {name!r}; choose one of {list(LAYOUT_NAMES)}")
        return getattr(cls, name)()

    @property
    def has_prefix_block(self) -> bool:
        """Whether block 0 is a global prefix holding no full second."""
        return self.first_video_frames < self.video_frames_per_block

    def num_blocks(self, num_seconds: int) -> int:
        seconds = check_seconds(num_seconds)
        return seconds + 1 if self.has_prefix_block else seconds

    def latent_lengths(self, num_seconds: int) -> tuple[int, int]:
        """(video, audio) latent frames for a duration: 3n + 1 and 25n + 1 in both layouts."""
        last = self.block(self.num_blocks(num_seconds) - 1)
        return last.video_end, last.audio_end

    def block_at_second(self, second: int) -> int:
        """The block that holds stream second ``second`` (0-based): where a change "from
        second k on" takes effect."""
        if second < 0:
            raise LayoutError(f"a stream second is >= 0, got {second}")
        return second + 1 if self.has_prefix_block else second

    def blocks_holding(self, video_latents: int) -> int:
        """How many whole blocks ``video_latents`` video latent frames make."""
        rest = video_latents - self.first_video_frames
        if rest < 0 or rest % self.video_frames_per_block:
            raise LayoutError(f"{video_latents} video latents are not whole blocks of the {self.name} layout "
                              f"({self.first_video_frames} + {self.video_frames_per_block} per block)")
        return 1 + rest // self.video_frames_per_block

    def window_blocks(self, seconds: int) -> int:
        """Blocks a window of ``seconds`` of past keeps: every block after block 0 is one second."""
        if seconds < 1:
            raise LayoutError(f"a window keeps at least 1 second, got {seconds}")
        return int(seconds)

    def frame_count(self, num_seconds: int) -> int:
        """Pixel frames of a stream of ``num_seconds``."""
        return self.block(self.num_blocks(num_seconds) - 1).pixel_interval[1]

    def sample_count(self, num_seconds: int) -> int:
        """24 kHz waveform samples of a stream of ``num_seconds``."""
        return self.block(self.num_blocks(num_seconds) - 1).sample_interval[1]

    def block(self, index: int) -> BlockSpan:
        """Block ``index`` of an unbounded stream."""
        if index < 0:
            raise LayoutError(f"block index must be >= 0, got {index}")
        if index == 0:
            return BlockSpan(0, 0, self.first_video_frames, 0, self.first_audio_frames)
        video_start = self.first_video_frames + (index - 1) * self.video_frames_per_block
        audio_start = self.first_audio_frames + (index - 1) * self.audio_frames_per_block
        return BlockSpan(
            index,
            video_start, video_start + self.video_frames_per_block,
            audio_start, audio_start + self.audio_frames_per_block,
        )

    def blocks(self, num_seconds: int) -> list[BlockSpan]:
        return [self.block(i) for i in range(self.num_blocks(num_seconds))]

    def iter_blocks(self, num_blocks: int) -> Iterator[BlockSpan]:
        if num_blocks < 1:
            raise LayoutError(f"a stream needs at least one block, got {num_blocks}")
        return (self.block(i) for i in range(num_blocks))

    def block_tokens(self, index: int, height: int, width: int) -> tuple[int, int]:
        """(video, audio) tokens of block ``index`` at a resolution, sink tokens excluded."""
        span = self.block(index)
        return span.video_frames * tokens_per_video_frame(height, width), span.audio_frames
