"""Shared test utilities: tiny random models, golden data, random inputs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from omniforcing_core import AVTransformer, ModelConfig, TextConditioning

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"


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
    weights = load_file(GOLDEN / "released_tiny.weights.safetensors")
    model = AVTransformer(ModelConfig.tiny())
    model.load_state_dict({key.removeprefix("model."): value for key, value in weights.items()})
    return model.eval()


def golden_vectors() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "released_tiny.vectors.safetensors")


def random_decoders(seed: int = 0):
    """Tiny video VAE, audio VAE and vocoder with fan-in scaled random weights."""
    from omniforcing_core.decoders.audio_vae import AudioVAEConfig, AudioVAEDecoder
    from omniforcing_core.decoders.video_vae import VideoVAE, VideoVAEConfig
    from omniforcing_core.decoders.vocoder import Vocoder, VocoderConfig

    generator = torch.Generator().manual_seed(seed)
    modules = (VideoVAE(VideoVAEConfig.tiny()), AudioVAEDecoder(AudioVAEConfig.tiny()), Vocoder(VocoderConfig.tiny()))
    with torch.no_grad():
        for module in modules:
            for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
                if name.endswith("std-of-means"):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
                elif tensor.is_floating_point():
                    scale = tensor[0].numel() ** -0.5 if tensor.ndim > 1 else 0.05
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
    return tuple(module.eval() for module in modules)
