"""Tiny random models of the real architecture, to try the whole pipeline without weights.

Everything here runs end to end (stream, decode, mp4, ComfyUI) in seconds on a CPU, and
its checkpoints use the real key layouts, so they load through the real loaders. Random
weights produce noise, not pictures: these are for trying and testing the machinery.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import save_checkpoint
from .config import ModelConfig
from .decoders.audio_encoder import AudioVAEEncoder
from .decoders.audio_vae import AudioVAEConfig, AudioVAEDecoder
from .decoders.video_encoder import VideoEncoderConfig, VideoVAEEncoder, video_vae_metadata
from .decoders.video_vae import VideoVAE, VideoVAEConfig
from .decoders.vocoder import Vocoder, VocoderConfig
from .layout import BlockLayout
from .transformer import AVTransformer

TINY_GENERATOR_FILE = "omniforcing_tiny_random.safetensors"
TINY_BASE_FILE = "ltx2_tiny_random_base.safetensors"


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Fan-in scaled random weights, so activations stay of order one through any depth.

    Drawn on each tensor's own device (a 19B model on a GPU never passes through the host).
    """
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            if tensor.device not in generators:
                generators[tensor.device] = torch.Generator(device=tensor.device).manual_seed(seed)
            draw = {"generator": generators[tensor.device], "device": tensor.device}
            if name.endswith("std-of-means"):
                tensor.copy_(torch.rand(tensor.shape, **draw) + 0.5)
            else:
                scale = tensor[0].numel() ** -0.5 if tensor.ndim > 1 else 0.05
                tensor.copy_(torch.randn(tensor.shape, **draw) * scale)
    return module.eval()


def tiny_model(seed: int = 0, audio_sink_tokens: int = 0) -> AVTransformer:
    return randomize_(AVTransformer(ModelConfig.tiny(audio_sink_tokens=audio_sink_tokens)), seed)


def tiny_decoders(seed: int = 0) -> tuple[VideoVAE, AudioVAEDecoder, Vocoder]:
    return (
        randomize_(VideoVAE(VideoVAEConfig.tiny()), seed + 1),
        randomize_(AudioVAEDecoder(AudioVAEConfig.tiny()), seed + 2),
        randomize_(Vocoder(VocoderConfig.tiny()), seed + 3),
    )


def tiny_encoders(
    video_vae: VideoVAE, audio_vae: AudioVAEDecoder, seed: int = 0
) -> tuple[VideoVAEEncoder, AudioVAEEncoder]:
    """Random tiny VAE encoders for these decoders, with their latent statistics: a VAE
    has one set, which the encoder normalizes with and the decoder undoes."""
    video_config = VideoEncoderConfig.tiny(latent_channels=video_vae.config.latent_channels)
    video = randomize_(VideoVAEEncoder(video_config), seed + 4)
    audio = randomize_(AudioVAEEncoder(audio_vae.config), seed + 5)
    video.per_channel_statistics.load_state_dict(video_vae.per_channel_statistics.state_dict())
    audio.per_channel_statistics.load_state_dict(audio_vae.per_channel_statistics.state_dict())
    return video, audio


def write_tiny_checkpoints(
    folder: str | Path, seed: int = 0, audio_sink_tokens: int = 0, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write a tiny generator (``model.*``) and a tiny LTX-2 base file (transformer under
    ``model.diffusion_model.``, plus ``vae.``, ``audio_vae.`` (encoders and decoders),
    ``vocoder.`` and their metadata sections). Returns (generator path, base path)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model(seed, audio_sink_tokens)
    layout = BlockLayout.paper() if audio_sink_tokens else BlockLayout.released()
    video_vae, audio_vae, vocoder = tiny_decoders(seed)
    video_encoder, audio_encoder = tiny_encoders(video_vae, audio_vae, seed)
    generator_path = folder / TINY_GENERATOR_FILE
    base_path = folder / TINY_BASE_FILE
    save_checkpoint(generator_path, model, prefix="model.", config=model.config, block_layout=layout, overwrite=overwrite)
    base_transformer = tiny_model(seed + 100)
    save_checkpoint(
        base_path,
        base_transformer,
        prefix="model.diffusion_model.",
        config=base_transformer.config,
        extra={
            "vae.": {**video_encoder.state_dict(), **video_vae.state_dict()},
            "audio_vae.": {**audio_encoder.state_dict(), **audio_vae.state_dict()},
            "vocoder.": vocoder.state_dict(),
        },
        extra_config={
            "vae": video_vae_metadata(video_vae.config, video_encoder.config),
            "audio_vae": audio_vae.config.to_metadata(),
            "vocoder": vocoder.config.to_metadata(),
        },
        overwrite=overwrite,
    )
    return generator_path, base_path
