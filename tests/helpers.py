"""Shared test utilities: tiny random models, golden data, random inputs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from omniforcing_core import AVTransformer, ModelConfig, TextConditioning
from omniforcing_core.checkpoint import load_model

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
# Codecs that train in a few seconds of CPU: 64 x 64 frames (2 x 2 latent cells), 1 s clips,
# narrow models (the ``[codecs]`` fields).
SMALL_CODECS = dict(height=64, width=64, clip_seconds=1.0, video_latent_channels=8, video_encoder_channels=4,
                    video_decoder_channels=4, audio_latent_channels=4, audio_channels=4, vocoder_channels=32,
                    video_frames=9, video_crop=(64, 64), clip_reuse=2, video_batch=1, audio_batch=1,
                    vocoder_batch=1, vocoder_frames=24, warmup=1, stats_clips=2, eval_clips=0,
                    checkpoint_every=1000, log_every=1000)


def random_model(config: ModelConfig | None = None, seed: int = 0, std: float = 0.1) -> AVTransformer:
    """A model with every parameter drawn N(0, std): outputs of order 1-5, like a trained model."""
    torch.manual_seed(seed)
    model = AVTransformer(config or ModelConfig.tiny())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, std)
    return model.eval()


def random_text(config: ModelConfig, tokens: int = 8, seed: int = 1, batch: int = 1) -> TextConditioning:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, tokens, config.caption_channels)
    return TextConditioning(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))


def golden_model() -> AVTransformer:
    """The reference's tiny weights, through the project's own checkpoint loader."""
    loaded = load_model(GOLDEN / "released_tiny.weights.safetensors", dtype=torch.float32)
    assert loaded.config == ModelConfig.tiny() and loaded.layout.name == "released"
    return loaded.model


def golden_vectors() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "released_tiny.vectors.safetensors")

