"""The LTX-2 audio VAE encoder: stereo log-mel spectrogram -> normalized audio latents.

The decoder (``audio_vae.py``) run backwards: ``conv_in``, one level per channel
multiplier (``num_res_blocks`` residual blocks, then a stride-2 downsample of time and
mel bins on every level but the last), the mid block, PixelNorm, SiLU and ``conv_out``
to the posterior's moments: ``2 x z_channels`` with ``double_z`` (mean, log-variance).
It uses the decoder's layers, configured by the same ``AudioVAEConfig``.

Time is the spectrogram's height and every convolution is causal along it: the 3x3
convs pad two past rows (zeros), and each downsample pads two past rows and one mel bin
above the top band before its stride-2 conv. So M mel frames give (M - 1) // 4 + 1
latents and latent i sees mel frames up to 4i: 1 + 100 s frames (s seconds of 16 kHz
audio, hop 160, centred) give 1 + 25 s latents of 8 channels x 16 bins (19B).

Parameter names equal the checkpoint's after ``audio_vae.``: ``encoder.*`` and the
``per_channel_statistics.*`` the decoder shares. Facts from ltx-core
(Lightricks/LTX-2 ``model/audio_vae/audio_vae.py``, ``downsample.py``) and ComfyUI
(``comfy/ldm/lightricks/vae/causal_audio_autoencoder.py``, ``audio_vae.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .audio_vae import (
    PIXEL_NORM_EPS,
    AudioVAEConfig,
    CausalConv2d,
    CausalDecodeState,
    PerChannelStatistics,
    PixelNorm,
    ResnetBlock,
    _MidBlock,
)
from .mel import log_mel_spectrogram

CHECKPOINT_PREFIX = "audio_vae."


class CausalDownsample(nn.Module):
    """Stride-2 3x3 conv over (time, mel): two past rows and one upper mel bin of zero padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.pad's order: (mel low, mel high, time past, time future).
        return self.conv(F.pad(x, (0, 1, 2, 0)))


class _DownLevel(nn.Module):
    """One encoder level: ``num_res_blocks`` res blocks, then (except the last level) a downsample."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, downsample: bool) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(ResnetBlock(a, b, PIXEL_NORM_EPS) for a, b in zip(widths[:-1], widths[1:]))
        self.downsample = CausalDownsample(out_channels) if downsample else None

    def forward(self, x: torch.Tensor, state: CausalDecodeState) -> torch.Tensor:
        for block in self.block:
            x = block(x, state)
        return x if self.downsample is None else self.downsample(x)


class AudioEncoderNet(nn.Module):
    """The convolutional encoder (checkpoint ``audio_vae.encoder.*``): mel -> raw moments."""

    def __init__(self, config: AudioVAEConfig) -> None:
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_multipliers]
        self.conv_in = CausalConv2d(config.in_channels, config.base_channels, 3)
        inputs = [config.base_channels] + widths[:-1]
        last = len(widths) - 1
        self.down = nn.ModuleList(
            _DownLevel(inputs[level], widths[level], config.num_res_blocks, level != last)
            for level in range(len(widths))
        )
        self.mid = _MidBlock(widths[-1], PIXEL_NORM_EPS)
        self.norm_out = PixelNorm(PIXEL_NORM_EPS)
        moments = 2 * config.latent_channels if config.double_z else config.latent_channels
        self.conv_out = CausalConv2d(widths[-1], moments, 3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # The shared layers carry causal context between calls; a whole clip starts afresh.
        state = CausalDecodeState()
        h = self.conv_in(mel, state)
        for level in self.down:
            h = level(h, state)
        h = self.mid(h, state)
        return self.conv_out(F.silu(self.norm_out(h)), state)


class AudioVAEEncoder(nn.Module):
    """Log-mel [B, in_channels, frames, mel_bins] -> normalized latents [B, C, T, latent_mel_bins].

    The latents are in ComfyUI's audio LATENT layout, which ``AudioVAEDecoder`` takes as
    is (``AudioVAEDecoder.tokens_from_latents`` gives the transformer's tokens).
    """

    def __init__(self, config: AudioVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = AudioEncoderNet(config)
        self.per_channel_statistics = PerChannelStatistics(config.token_width)

    def latent_frames(self, mel_frames: int) -> int:
        """Latents from ``mel_frames`` frames: each downsample maps n -> (n - 1) // 2 + 1."""
        for _ in range(len(self.config.channel_multipliers) - 1):
            mel_frames = (mel_frames - 1) // 2 + 1
        return mel_frames

    def waveform_to_mel(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Waveform [B, channels, samples] at the VAE's rate -> log-mel [B, in_channels, frames, mel_bins].

        Mono is repeated to every input channel (as ComfyUI does); there is no resampler
        here, so other rates are refused.
        """
        cfg = self.config
        if sample_rate != cfg.sampling_rate:
            raise ValueError(
                f"the audio VAE encodes {cfg.sampling_rate} Hz audio, got {sample_rate} Hz; resample first"
            )
        if waveform.dim() != 3 or waveform.shape[1] not in (1, cfg.in_channels):
            raise ValueError(
                f"waveform must be [B, 1 or {cfg.in_channels}, samples], got {tuple(waveform.shape)}"
            )
        waveform = waveform.expand(-1, cfg.in_channels, -1)
        return log_mel_spectrogram(
            waveform, sample_rate=cfg.sampling_rate, n_fft=cfg.n_fft, hop_length=cfg.mel_hop_length,
            n_mels=cfg.mel_bins,
        )

    def posterior(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-mel -> (mean, log-variance) [B, C, T, latent_mel_bins] before normalization;
        the log-variance is None without ``double_z``."""
        cfg = self.config
        if mel.dim() != 4 or mel.shape[1] != cfg.in_channels or mel.shape[3] != cfg.mel_bins:
            raise ValueError(
                f"log-mel input must be [B, {cfg.in_channels}, frames, {cfg.mel_bins}], got {tuple(mel.shape)}"
            )
        weight = self.encoder.conv_in.conv.weight
        moments = self.encoder(mel.to(device=weight.device, dtype=weight.dtype))
        if not cfg.double_z:
            return moments, None
        mean, log_var = moments.chunk(2, dim=1)
        return mean, log_var

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel -> normalized latents (the posterior mean), normalized per token feature."""
        with torch.no_grad():
            mean, _ = self.posterior(mel)
            batch, channels, frames, bins = mean.shape
            tokens = mean.permute(0, 2, 1, 3).reshape(batch, frames, channels * bins)
            normalized = self.per_channel_statistics.normalize(tokens)
            return normalized.reshape(batch, frames, channels, bins).permute(0, 2, 1, 3)

    def encode_waveform(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Waveform [B, 1 or 2, samples] -> normalized latents [B, C, 1 + samples // 640, bins] (19B)."""
        return self.encode(self.waveform_to_mel(waveform, sample_rate))
