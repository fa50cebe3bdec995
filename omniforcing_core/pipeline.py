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

        ``decoder_dtype`` defaults to fp32 on the CPU and to ``dtype`` elsewhere; a host
        that loads on the CPU and computes on a GPU passes the GPU's dtype.
        """
        overrides = {"block_layout": layout} if layout else None
        loaded = load_model(generator, base, device=device, dtype=dtype, overrides=overrides, fp8_weights=fp8_weights)
        if decoder_dtype is None:
            cpu = torch.device(device).type == "cpu"
            decoder_dtype = torch.float32 if cpu else loaded.model.patchify_proj.weight.dtype
        decoders = load_decoders(base, device=device, dtype=decoder_dtype)
        return cls(loaded.model, loaded.layout, decoders.video_vae, decoders.audio_vae, decoders.vocoder,
                   loaded.report.summary())

    @classmethod
    def demo(cls, *, device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32,
             generator: str = DEMO_GENERATOR, folder: str | os.PathLike | None = None,
             fp8_weights: bool = False, decoder_dtype: torch.dtype | str | None = None) -> "StreamPipeline":
        """The built-in demo model (``demo_model``): a complete generator whose base file
        holds only the codecs (and the prompt encoder, see ``load_prompt_encoder``).
        ``fp8_weights`` and ``decoder_dtype`` as in ``from_files`` (decoders default to ``dtype``)."""
        loaded = load_model(demo_path(generator, folder), device=device, dtype=dtype, fp8_weights=fp8_weights)
        decoders = load_decoders(demo_path(DEMO_BASE, folder), device=device, dtype=decoder_dtype or dtype)
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
