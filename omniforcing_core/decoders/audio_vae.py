"""LTX-2 audio VAE decoder: normalized audio latents -> stereo log-mel spectrogram.

The decoder is causal in time (the spectrogram's height axis): every convolution pads
only on the past side, so it can decode a stream chunk by chunk. A chunk's result
depends on the chunk and on the last ``kernel - 1`` input rows of each causal conv,
which ``CausalDecodeState`` carries between chunks; its size does not grow with the
stream.

Shapes (LTX-2 19B): the transformer yields audio tokens [B, T, 128] = 8 latent
channels x 16 mel bins (channel-major), normalized per feature by
``per_channel_statistics``. The decoder maps T latents to 4T - 3 mel frames (the first
latent covers a single frame) of 2 channels x 64 mel bins.

Parameter names equal the checkpoint's keys after its ``audio_vae.`` prefix:
``decoder.*`` and ``per_channel_statistics.{mean-of-means,std-of-means}``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..layout import MEL_HOP, MEL_SAMPLE_RATE, latent_interval

CHECKPOINT_PREFIX = "audio_vae."
_STATISTICS_NAMES = ("mean-of-means", "std-of-means")
PIXEL_NORM_EPS = 1e-6  # both reference decoders use this, and no metadata key sets it


# Configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class AudioVAEConfig:
    """Architecture of the LTX-2 audio VAE (``audio_vae`` metadata section).

    The decoder (here) and the encoder (``audio_encoder.py``) share one ``ddconfig``;
    ``in_channels``, ``double_z`` and the mel front-end values are the encoder's.
    """

    base_channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    latent_channels: int = 8
    out_channels: int = 2
    mel_bins: int = 64
    resolution: int = 256
    attn_resolutions: tuple[int, ...] = ()
    in_channels: int = 2
    double_z: bool = True
    sampling_rate: int = MEL_SAMPLE_RATE
    mel_hop_length: int = MEL_HOP
    n_fft: int = 1024

    def __post_init__(self) -> None:
        positive = (
            "base_channels", "num_res_blocks", "latent_channels", "out_channels", "mel_bins",
            "resolution", "in_channels", "sampling_rate", "mel_hop_length", "n_fft",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"AudioVAEConfig.{name} must be a positive integer, got {value!r}")
        if not self.channel_multipliers or any(
            isinstance(m, bool) or not isinstance(m, int) or m <= 0 for m in self.channel_multipliers
        ):
            raise ConfigError(
                f"AudioVAEConfig.channel_multipliers must be positive integers, got {self.channel_multipliers!r}"
            )
        if self.mel_bins % self.time_compression:
            raise ConfigError(
                f"mel_bins={self.mel_bins} must be divisible by the decoder's compression "
                f"{self.time_compression} (it upsamples mel bins and time alike)"
            )
        attended = sorted(set(self.attn_resolutions) & set(self.decoder_resolutions))
        if attended:
            raise ConfigError(
                f"audio VAE attention at resolutions {attended} is not supported: attention over "
                "time would break the causal streaming decode (LTX-2 19B has none)"
            )

    @property
    def time_compression(self) -> int:
        """Latent -> mel upsampling factor (one causal x2 upsampler per extra level)."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def latent_mel_bins(self) -> int:
        return self.mel_bins // self.time_compression

    @property
    def token_width(self) -> int:
        """Features per audio token: latent channels x latent mel bins (128 for 19B)."""
        return self.latent_channels * self.latent_mel_bins

    @property
    def decoder_resolutions(self) -> tuple[int, ...]:
        """Nominal resolution of each decoder level, lowest first (what attn_resolutions names)."""
        lowest = self.resolution // self.time_compression
        return tuple(lowest * 2**level for level in range(len(self.channel_multipliers)))

    def mel_frames(self, latent_frames: int) -> int:
        """Mel frames decoded from ``latent_frames`` latents at the start of a stream."""
        return latent_interval(latent_frames - 1, self.time_compression)[1]

    # Presets ---------------------------------------------------------------------

    @classmethod
    def ltx2_19b(cls, **overrides: Any) -> "AudioVAEConfig":
        """LTX-2 19B: ch 128, multipliers (1, 2, 4), 2 res blocks, 8 x 16 latents, 64 mel bins."""
        return replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "AudioVAEConfig":
        """Same architecture and latent geometry (tokens of 128), 8 base channels."""
        return replace(cls(base_channels=8), **overrides)

    @classmethod
    def mid(cls, **overrides: Any) -> "AudioVAEConfig":
        """Same architecture, 32 base channels: CPU benchmarks."""
        return replace(cls(base_channels=32), **overrides)

    # Checkpoint metadata (nested LTX form) -----------------------------------------

    def to_metadata(self) -> dict[str, Any]:
        """The ``audio_vae`` section of the checkpoint's metadata config."""
        ddconfig = {
            "ch": self.base_channels,
            "out_ch": self.out_channels,
            "ch_mult": list(self.channel_multipliers),
            "num_res_blocks": self.num_res_blocks,
            "attn_resolutions": list(self.attn_resolutions),
            "resolution": self.resolution,
            "z_channels": self.latent_channels,
            "in_channels": self.in_channels,
            "double_z": self.double_z,
            "mel_bins": self.mel_bins,
            "dropout": 0.0,
            "mid_block_add_attention": False,
            "norm_type": "pixel",
            "causality_axis": "height",
        }
        return {
            "model": {"params": {"ddconfig": ddconfig, "sampling_rate": self.sampling_rate}},
            "preprocessing": {
                "stft": {"filter_length": self.n_fft, "hop_length": self.mel_hop_length, "causal": True},
                "mel": {"n_mel_channels": self.mel_bins},
            },
        }

    @classmethod
    def from_metadata(cls, section: Mapping[str, Any]) -> "AudioVAEConfig":
        """Read the nested ``audio_vae`` section: model.params.{ddconfig|decoder}, preprocessing.

        Missing values take the LTX-2 reference loaders' defaults; values describing a
        decoder this module cannot run (GroupNorm, attention, a non-causal axis) raise.
        """
        if not isinstance(section, Mapping):
            raise ConfigError(f"audio_vae metadata must be a JSON object, got {type(section).__name__}")
        params = _child(section, "model", "audio_vae").get("params", {})
        if not isinstance(params, Mapping):
            raise ConfigError("audio_vae metadata: model.params must be a JSON object")
        ddconfig = params.get("decoder") or params.get("ddconfig")
        if not isinstance(ddconfig, Mapping):
            raise ConfigError(
                "audio_vae metadata has no model.params.ddconfig (or .decoder) object; "
                f"top-level keys are {sorted(section)}"
            )
        preprocessing = _child(section, "preprocessing", "audio_vae")
        stft = _child(preprocessing, "stft", "audio_vae.preprocessing")
        mel = _child(preprocessing, "mel", "audio_vae.preprocessing")
        variables = _child(section, "variables", "audio_vae")

        for key, supported in (("norm_type", "pixel"), ("causality_axis", "height")):
            value = ddconfig.get(key, supported)
            if value != supported:
                raise ConfigError(
                    f"audio_vae metadata {key}={value!r} is not supported; the streaming decoder "
                    f"needs {key}={supported!r} (per-position norm, causal along time) as in LTX-2 19B"
                )
        # The reference loaders build mid-block attention unless told otherwise.
        if ddconfig.get("mid_block_add_attention", True):
            raise ConfigError(
                "audio_vae metadata asks for mid-block attention (mid_block_add_attention is true or "
                "absent); attention over time breaks the causal decode and LTX-2 19B has none"
            )
        if stft.get("causal", True) is not True:
            raise ConfigError("audio_vae metadata preprocessing.stft.causal must be true (LTX-2 latent clock)")

        mel_bins = ddconfig.get("mel_bins") or mel.get("n_mel_channels") or variables.get("mel_bins") or 64
        try:
            values = dict(
                base_channels=int(ddconfig.get("ch", 128)),
                channel_multipliers=tuple(int(m) for m in ddconfig.get("ch_mult", (1, 2, 4))),
                num_res_blocks=int(ddconfig.get("num_res_blocks", 2)),
                latent_channels=int(ddconfig.get("z_channels", 8)),
                out_channels=int(ddconfig.get("out_ch", 2)),
                mel_bins=int(mel_bins),
                resolution=int(ddconfig.get("resolution", 256)),
                attn_resolutions=tuple(int(r) for r in (ddconfig.get("attn_resolutions") or ())),
                in_channels=int(ddconfig.get("in_channels", 2)),
                double_z=bool(ddconfig.get("double_z", True)),
                sampling_rate=int(params.get("sampling_rate", MEL_SAMPLE_RATE)),
                mel_hop_length=int(stft.get("hop_length", MEL_HOP)),
                n_fft=int(stft.get("filter_length", 1024)),
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(f"audio_vae metadata holds a value of the wrong type: {error}") from error
        return cls(**values)

    def describe(self) -> str:
        return (
            f"audio VAE decoder ch {self.base_channels} x {list(self.channel_multipliers)}, "
            f"{self.num_res_blocks} res blocks, latents {self.latent_channels} x {self.latent_mel_bins}, "
            f"{self.out_channels} x {self.mel_bins} mel"
        )


def _child(section: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = section.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} metadata: {key} must be a JSON object, got {type(value).__name__}")
    return value


# Streaming state -----------------------------------------------------------------


class CausalDecodeState:
    """What a causal decode carries from one chunk to the next.

    For every causal conv, the last ``kernel - 1`` time rows of its input; plus whether
    the first chunk has passed (the causal upsamplers drop their first output row only
    at the very start of the stream). The size is fixed once the first chunk is decoded.
    """

    def __init__(self) -> None:
        self.past_rows: dict[nn.Module, torch.Tensor] = {}
        self.latent_frames_seen = 0
        self._signature: tuple[int, torch.device, torch.dtype] | None = None

    @property
    def at_stream_start(self) -> bool:
        return self.latent_frames_seen == 0

    def numel(self) -> int:
        """Elements held between chunks (independent of how long the stream is)."""
        return sum(t.numel() for t in self.past_rows.values())

    def check_compatible(self, latents: torch.Tensor) -> None:
        signature = (latents.shape[0], latents.device, latents.dtype)
        if self._signature is None:
            self._signature = signature
        elif signature != self._signature:
            raise ValueError(
                f"audio stream chunk has batch/device/dtype {signature}, but the stream started with "
                f"{self._signature}; start a new stream (reset) to change them"
            )


# Layers --------------------------------------------------------------------------


class PixelNorm(nn.Module):
    """RMS norm over channels at each (time, mel) position: no statistics across time."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


class CausalConv2d(nn.Module):
    """Conv over (time, mel): past-only zero padding in time, centred zero padding in mel.

    The past rows come from ``state`` (zeros at the start of a stream), so decoding a
    stream in chunks equals decoding it at once.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.time_context = kernel_size - 1
        self.mel_padding = ((kernel_size - 1) // 2, kernel_size - 1 - (kernel_size - 1) // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor, state: CausalDecodeState) -> torch.Tensor:
        if self.time_context:
            past = state.past_rows.get(self)
            if past is None:
                past = x.new_zeros(x.shape[0], x.shape[1], self.time_context, x.shape[3])
            x = torch.cat([past, x], dim=2)
            # A copy, so the state does not pin the whole chunk's activation in memory.
            state.past_rows[self] = x[:, :, -self.time_context:].clone()
        return self.conv(F.pad(x, (*self.mel_padding, 0, 0)))


class CausalUpsample(nn.Module):
    """x2 nearest upsampling of time and mel, then a causal conv.

    n rows become 2n - 1 over a stream: the first output row of the stream only sees
    the zero padding and is dropped (the encoder's causal padding, undone).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv2d(channels, channels, 3)

    def forward(self, x: torch.Tensor, state: CausalDecodeState) -> torch.Tensor:
        x = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"), state)
        return x[:, :, 1:] if state.at_stream_start else x


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, eps: float) -> None:
        super().__init__()
        self.norm1 = PixelNorm(eps)
        self.conv1 = CausalConv2d(in_channels, out_channels, 3)
        self.norm2 = PixelNorm(eps)
        self.conv2 = CausalConv2d(out_channels, out_channels, 3)
        self.nin_shortcut = CausalConv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, state: CausalDecodeState) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), state)
        h = self.conv2(F.silu(self.norm2(h)), state)
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x, state)
        return shortcut + h


class _MidBlock(nn.Module):
    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, eps)
        self.block_2 = ResnetBlock(channels, channels, eps)

    def forward(self, x: torch.Tensor, state: CausalDecodeState) -> torch.Tensor:
        return self.block_2(self.block_1(x, state), state)


class _UpLevel(nn.Module):
    """One decoder level: ``num_res_blocks + 1`` res blocks, then (except level 0) an upsampler."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, upsample: bool, eps: float):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(ResnetBlock(a, b, eps) for a, b in zip(widths[:-1], widths[1:]))
        self.upsample = CausalUpsample(out_channels) if upsample else None

    def forward(self, x: torch.Tensor, state: CausalDecodeState) -> torch.Tensor:
        for block in self.block:
            x = block(x, state)
        return x if self.upsample is None else self.upsample(x, state)


class AudioDecoderNet(nn.Module):
    """The convolutional decoder (checkpoint ``audio_vae.decoder.*``).

    ``up`` is indexed by level as in the checkpoint (``up.0`` is the widest-resolution
    level, run last); the levels run from the highest index down.
    """

    def __init__(self, config: AudioVAEConfig) -> None:
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_multipliers]
        eps = PIXEL_NORM_EPS
        self.conv_in = CausalConv2d(config.latent_channels, widths[-1], 3)
        self.mid = _MidBlock(widths[-1], eps)
        levels = {}
        block_in = widths[-1]
        for level in reversed(range(len(widths))):
            levels[level] = _UpLevel(block_in, widths[level], config.num_res_blocks + 1, level != 0, eps)
            block_in = widths[level]
        self.up = nn.ModuleList(levels[level] for level in range(len(widths)))
        self.norm_out = PixelNorm(eps)
        self.conv_out = CausalConv2d(widths[0], config.out_channels, 3)

    def forward(self, latents: torch.Tensor, state: CausalDecodeState) -> torch.Tensor:
        h = self.mid(self.conv_in(latents, state), state)
        for level in reversed(range(len(self.up))):
            h = self.up[level](h, state)
        return self.conv_out(F.silu(self.norm_out(h)), state)


class PerChannelStatistics(nn.Module):
    """Latent normalization statistics, one per token feature (channel-major, then bin)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        for name in _STATISTICS_NAMES:
            self.register_buffer(name, torch.empty(width))

    def normalize(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the encoder applies to its means; ``un_normalize`` undoes it."""
        std = self.get_buffer("std-of-means").to(tokens)
        mean = self.get_buffer("mean-of-means").to(tokens)
        return (tokens - mean) / std

    def un_normalize(self, tokens: torch.Tensor) -> torch.Tensor:
        std = self.get_buffer("std-of-means").to(tokens)
        mean = self.get_buffer("mean-of-means").to(tokens)
        return tokens * std + mean


# The decoder -----------------------------------------------------------------------


class AudioVAEDecoder(nn.Module):
    """Normalized audio latents -> log-mel spectrogram [B, out_channels, frames, mel_bins].

    Accepts tokens [B, T, token_width] (what the transformer yields) or latent grids
    [B, latent_channels, T, latent_mel_bins] (ComfyUI's audio LATENT). Pass one
    ``CausalDecodeState`` to successive calls to decode a stream chunk by chunk.
    """

    def __init__(self, config: AudioVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = AudioDecoderNet(config)
        self.per_channel_statistics = PerChannelStatistics(config.token_width)

    def tokens_from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, T, F] latent grid -> [B, T, C*F] tokens (channel-major)."""
        batch, channels, frames, bins = latents.shape
        return latents.permute(0, 2, 1, 3).reshape(batch, frames, channels * bins)

    def latents_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, T, C*F] tokens -> [B, C, T, F] latent grid."""
        batch, frames, _ = tokens.shape
        cfg = self.config
        return tokens.reshape(batch, frames, cfg.latent_channels, cfg.latent_mel_bins).permute(0, 2, 1, 3)

    def as_tokens(self, normalized: torch.Tensor) -> torch.Tensor:
        """Tokens [B, T, token_width] from tokens or a latent grid; anything else raises."""
        cfg = self.config
        if normalized.ndim == 3 and normalized.shape[2] == cfg.token_width:
            return normalized
        if normalized.ndim == 4 and tuple(normalized.shape[1::2]) == (cfg.latent_channels, cfg.latent_mel_bins):
            return self.tokens_from_latents(normalized)
        raise ValueError(
            f"audio latents must be tokens [B, T, {cfg.token_width}] or a grid "
            f"[B, {cfg.latent_channels}, T, {cfg.latent_mel_bins}], got {tuple(normalized.shape)}"
        )

    def forward(self, normalized: torch.Tensor, state: CausalDecodeState | None = None) -> torch.Tensor:
        """Decode normalized latents; with ``state``, continue the stream it holds.

        T latents give 4T - 3 mel frames at the start of a stream and 4T afterwards.
        """
        tokens = self.as_tokens(normalized)
        if tokens.shape[1] == 0:
            raise ValueError("cannot decode zero audio latents")
        state = CausalDecodeState() if state is None else state
        weight_dtype = self.decoder.conv_in.conv.weight.dtype
        tokens = self.per_channel_statistics.un_normalize(tokens.to(weight_dtype))
        latents = self.latents_from_tokens(tokens)
        state.check_compatible(latents)
        mel = self.decoder(latents, state)
        state.latent_frames_seen += latents.shape[2]
        return mel
