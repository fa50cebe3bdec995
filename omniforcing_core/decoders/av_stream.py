"""One stream's video and audio decoders together: a block's latents in, its frames and sound out."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import BlockSpan
from .audio_stream import StreamingAudioDecoder
from .audio_vae import AudioVAEDecoder
from .latent_preview import LatentPreview
from .video_stream import VideoStreamDecoder
from .video_vae import VideoVAE
from .vocoder import Vocoder


@dataclass(frozen=True)
class DecodedBlock:
    """A block as pixels and sound: frames float32 [F, H, W, 3] in [0, 1] and a float32
    waveform [channels, samples] at ``sample_rate``, both on the CPU."""

    frames: torch.Tensor
    waveform: torch.Tensor
    sample_rate: int


class AVStreamDecoder:
    """Decodes a single stream (batch of one) block by block with flat memory.

    ``video_lookahead_latents`` and ``audio_lookahead_frames`` trade latency for
    exactness at the seams (see ``video_stream`` and ``audio_stream``); with the
    defaults every block yields exactly its own frames and samples at once.
    ``preview`` replaces the video decode by a cheap latent->RGB projection (same frame
    count per block) for when the full decode cannot keep up; audio is always decoded.
    """

    def __init__(
        self,
        video_vae: VideoVAE,
        audio_vae: AudioVAEDecoder,
        vocoder: Vocoder,
        *,
        video_lookahead_latents: int = 0,
        audio_lookahead_frames: int = 0,
        preview: LatentPreview | None = None,
        seed: int = 0,
    ):
        self.video = VideoStreamDecoder(video_vae, lookahead_latents=video_lookahead_latents, seed=seed)
        self.audio = StreamingAudioDecoder(audio_vae, vocoder, lookahead_frames=audio_lookahead_frames)
        self.preview = preview
        self._video_param = next(video_vae.parameters())
        self._audio_param = next(audio_vae.parameters())

    @property
    def sample_rate(self) -> int:
        return self.audio.sample_rate

    def check_grid(self, grid_hw: tuple[int, int]) -> None:
        """Refuse, before a stream starts, a latent grid the video decoder cannot decode."""
        if self.preview is None:
            self.video.vae.check_grid(grid_hw)

    def reset(self) -> None:
        self.video.reset()
        self.audio.reset()

    def push(self, span: BlockSpan, video: torch.Tensor, audio: torch.Tensor, *, final: bool = False) -> DecodedBlock:
        """Decode block ``span``; ``final`` ends the stream and emits anything held back."""
        if video.shape[0] != 1:
            raise ValueError(f"the streaming decoders take one stream at a time (batch 1), got a batch of {video.shape[0]}")
        if self.preview is not None:
            frames = self.preview.frames(video, first_latent=span.video_start)
        else:
            frames = self.video.push(video.to(self._video_param.dtype))
            if final:
                frames = torch.cat([frames, self.video.flush()])
        chunk = self.audio.push(audio.to(self._audio_param.dtype), span=span, final=final)
        waveform, sample_rate = chunk.to_waveform()
        return DecodedBlock(frames.float().cpu(), waveform, sample_rate)
