"""A loaded model ready to stream: the transformer, its block layout and the decoders.

One ``nn.Module`` holds everything that has weights, so a host (ComfyUI's model
management, the standalone command) can move or offload it as one piece.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import load_decoders, load_model
from .decoders.audio_vae import AudioVAEDecoder
from .decoders.av_stream import AVStreamDecoder
from .decoders.latent_preview import LatentPreview
from .decoders.video_vae import VideoVAE
from .decoders.vocoder import Vocoder
from .demo import tiny_decoders, tiny_model
from .demo_model import DEMO_BASE, DEMO_GENERATOR, DEMO_PROMPT, demo_path
from .layout import BlockLayout
from .sampler import StreamingSampler, StreamSettings
from .transformer import AVTransformer


def stream_decoder_dtypes(device, model_dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(video VAE, audio VAE and vocoder) dtypes for streaming: on a GPU the model's; on the
    CPU the video VAE in bf16 (1.9x faster than fp32; the demo's frames 63 dB PSNR from
    fp32's) and the audio in fp32 (in bf16 the demo's sound is 8 dB SNR from fp32's, for
    1.2x on a small part of the decode)."""
    if torch.device(device).type != "cpu":
        return model_dtype, model_dtype
    return torch.bfloat16, torch.float32


def load_stream_decoders(base, device, model_dtype: torch.dtype, decoder_dtype=None):
    """The base file's decoders, all in ``decoder_dtype`` or else as ``stream_decoder_dtypes`` says."""
    if decoder_dtype is not None:
        return load_decoders(base, device=device, dtype=decoder_dtype)
    video_dtype, audio_dtype = stream_decoder_dtypes(device, model_dtype)
    decoders = load_decoders(base, device=device, dtype=audio_dtype)
    decoders.video_vae.to(video_dtype)
    return decoders


@dataclass(frozen=True)
class PipelineInfo:
    """What was detected when loading, in words a user can check."""

    layout: str
    sink_tokens: int
    layers: int
    summary: str

    def describe(self) -> str:
        return f"layout: {self.layout}\naudio sink tokens: {self.sink_tokens}\nlayers: {self.layers}\n{self.summary}"


class StreamPipeline(nn.Module):
    def __init__(
        self,
        transformer: AVTransformer,
        layout: BlockLayout,
        video_vae: VideoVAE,
        audio_vae: AudioVAEDecoder,
        vocoder: Vocoder,
        summary: str = "",
    ):
        super().__init__()
        self.transformer = transformer
        self.video_vae = video_vae
        self.audio_vae = audio_vae
        self.vocoder = vocoder
        self.layout = layout
        self.info = PipelineInfo(layout.name, transformer.config.audio_sink_tokens, transformer.config.num_layers, summary)

    @classmethod
    def from_files(
        cls,
        generator: str | os.PathLike,
        base: str | os.PathLike,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.bfloat16,
        fp8_weights: bool = False,
        layout: str | None = None,
        decoder_dtype: torch.dtype | str | None = None,
    ) -> "StreamPipeline":
        """The OmniForcing generator over the LTX-2 base file, with the base file's decoders.

        ``decoder_dtype`` None: see ``load_stream_decoders``; a host that loads on the CPU
        and computes on a GPU passes the GPU's dtype.
        """
        overrides = {"block_layout": layout} if layout else None
        loaded = load_model(generator, base, device=device, dtype=dtype, overrides=overrides, fp8_weights=fp8_weights)
        decoders = load_stream_decoders(base, device, loaded.model.patchify_proj.weight.dtype, decoder_dtype)
        return cls(loaded.model, loaded.layout, decoders.video_vae, decoders.audio_vae, decoders.vocoder,
                   loaded.report.summary())

    @classmethod
    def demo(cls, *, device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32,
             generator: str = DEMO_GENERATOR, folder: str | os.PathLike | None = None,
             fp8_weights: bool = False, decoder_dtype: torch.dtype | str | None = None) -> "StreamPipeline":
        """The built-in demo model (``demo_model``): a complete generator whose base file
        holds only the codecs (and the prompt encoder, see ``load_prompt_encoder``).
        ``fp8_weights`` and ``decoder_dtype`` as in ``from_files``."""
        loaded = load_model(demo_path(generator, folder), device=device, dtype=dtype, fp8_weights=fp8_weights)
        decoders = load_stream_decoders(demo_path(DEMO_BASE, folder), device, dtype, decoder_dtype)
        return cls(loaded.model, loaded.layout, decoders.video_vae, decoders.audio_vae, decoders.vocoder,
                   "built-in demo model (trained on the synthetic world: prompts like "
                   f"'{DEMO_PROMPT}')\n" + loaded.report.summary())

    @classmethod
    def tiny_random(cls, seed: int = 0) -> "StreamPipeline":
        """The tiny preset with random weights: noise out, but every stage runs."""
        return cls(tiny_model(seed), BlockLayout.released(), *tiny_decoders(seed),
                   "tiny preset with random weights (the output is noise)")

    @property
    def caption_channels(self) -> int:
        return self.transformer.config.caption_channels

    def sampler(self, settings: StreamSettings | None = None) -> StreamingSampler:
        return StreamingSampler(self.transformer, self.layout, settings)

    def decoder(self, *, video_lookahead_latents: int = 0, audio_lookahead_frames: int = 0,
                preview: bool = False, seed: int = 0) -> AVStreamDecoder:
        return AVStreamDecoder(
            self.video_vae, self.audio_vae, self.vocoder,
            video_lookahead_latents=video_lookahead_latents,
            audio_lookahead_frames=audio_lookahead_frames,
            preview=LatentPreview.sketch(self.video_vae.config.latent_channels) if preview else None,
            seed=seed,
        )
