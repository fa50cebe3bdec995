"""Shared pieces of the checkpoint tests (no tests here): outputs, rounding, file surgery."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import random_text
from omniforcing_core import AVTransformer, ModelConfig
from omniforcing_core.checkpoint import quantize_fp8
from omniforcing_core.checkpoint.reader import SafetensorsFile
from omniforcing_core.checkpoint.writer import block_linear_weights

VIDEO_FRAMES, GRID, AUDIO_FRAMES = 4, (2, 3), 6


def outputs(model: AVTransformer, dtype: torch.dtype = torch.float32, seed: int = 3) -> tuple[torch.Tensor, ...]:
    """Velocity of a small random clip with per-frame sigmas, as fp32."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(1, config.video_in_channels, VIDEO_FRAMES, *GRID, generator=generator)
    audio = torch.randn(1, AUDIO_FRAMES, config.audio_in_channels, generator=generator)
    video_sigma = torch.rand(1, VIDEO_FRAMES, generator=generator)
    audio_sigma = torch.rand(1, AUDIO_FRAMES, generator=generator)
    text = random_text(config)
    text = type(text)(text.video.to(dtype), text.audio.to(dtype))
    with torch.no_grad():
        video_out, audio_out = model(video.to(dtype), audio.to(dtype), video_sigma, audio_sigma, text)
    return video_out.float(), audio_out.float()


def rounded_like_file(model: AVTransformer, file_dtype: str, compute_dtype: torch.dtype) -> AVTransformer:
    """The saved model with its weights rounded as the file stores them, computing in ``compute_dtype``."""
    state = {}
    for name, tensor in model.state_dict().items():
        if file_dtype == "fp8" and block_linear_weights(name, tensor):
            quantized, scale = quantize_fp8(tensor)
            state[name] = quantized.float() * scale
        elif file_dtype in ("fp8", "bf16"):
            state[name] = tensor.to(torch.bfloat16).float()
        else:
            state[name] = tensor
    copy = AVTransformer(model.config)
    copy.load_state_dict(state)
    return copy.to(compute_dtype).eval()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def write_raw_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict | None = None) -> Path:
    """A real safetensors file with zero tensors of the given shapes (for foreign-model files)."""
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, str(path), metadata=metadata)
    return path


def rewrite_header(path: Path, edit) -> None:
    """Apply ``edit(header_dict)`` to a safetensors header, keeping the data region intact."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    edit(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


@pytest.fixture
def no_data_reads(monkeypatch):
    """Fail the test if any tensor data is touched: errors must come from the headers."""
    def refuse(*args, **kwargs):
        raise AssertionError("tensor data was read before the checkpoint was validated")

    monkeypatch.setattr(SafetensorsFile, "read", refuse)
    monkeypatch.setattr(SafetensorsFile, "view", refuse)


def tiny(**overrides) -> ModelConfig:
    return ModelConfig.tiny(**overrides)
