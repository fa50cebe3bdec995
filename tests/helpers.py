"""Shared test utilities: tiny random models, golden data, random inputs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from omniforcing_core import AVTransformer, ModelConfig, TextConditioning
from omniforcing_core.checkpoint import load_model

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
    """The reference's tiny weights, through the project's own checkpoint loader."""
    loaded = load_model(GOLDEN / "released_tiny.weights.safetensors", dtype=torch.float32)
    assert loaded.config == ModelConfig.tiny() and loaded.layout.name == "released"
    return loaded.model


def golden_vectors() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "released_tiny.vectors.safetensors")

