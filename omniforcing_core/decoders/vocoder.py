"""LTX-2 19B vocoder: HiFi-GAN v1 (resblock "1"), log-mel -> 24 kHz stereo waveform.

Stereo input is the two 64-bin mel channels concatenated to 128 conv channels (left
bins first). conv_pre (k7) -> for each upsample rate: LeakyReLU(0.1), transposed conv,
mean of the resblocks (kernels 3, 7, 11, dilations 1, 3, 5) -> LeakyReLU(0.01, torch's
default, as the release has it) -> conv_post (k7) -> tanh. Each stage multiplies the
length exactly by its rate, so one mel frame becomes prod(rates) = 240 samples.

Every conv is symmetric (non-causal): a sample depends on mel frames on both sides,
``VocoderConfig.receptive_field_frames`` of them; streaming handles that in
``audio_stream``. Parameter names equal the checkpoint's keys after ``vocoder.``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..layout import MEL_HOP, MEL_SAMPLE_RATE

CHECKPOINT_PREFIX = "vocoder."
MEL_BINS = 64  # per audio channel; conv_pre takes 2 x 64 = 128 channels in stereo
RESBLOCK_SLOPE = 0.1
FINAL_SLOPE = 0.01


@dataclass(frozen=True)
class VocoderConfig:
    """Architecture of the HiFi-GAN vocoder (the ``vocoder`` metadata section)."""

    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (6, 5, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 15, 8, 4, 4)
    upsample_initial_channel: int = 1024
    stereo: bool = True
    output_sample_rate: int = 24_000

    def __post_init__(self) -> None:
        def positive_ints(name: str, values: Sequence[Any]) -> None:
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
                raise ConfigError(f"VocoderConfig.{name} must be positive integers, got {values!r}")

        positive_ints("resblock_kernel_sizes", self.resblock_kernel_sizes)
        positive_ints("upsample_rates", self.upsample_rates)
        positive_ints("upsample_kernel_sizes", self.upsample_kernel_sizes)
        positive_ints("upsample_initial_channel", (self.upsample_initial_channel,))
        positive_ints("output_sample_rate", (self.output_sample_rate,))
        if any(k % 2 == 0 for k in self.resblock_kernel_sizes):
            raise ConfigError(f"resblock kernel sizes must be odd ('same' padding), got {self.resblock_kernel_sizes}")
        if len(self.resblock_dilation_sizes) != len(self.resblock_kernel_sizes):
            raise ConfigError("resblock_dilation_sizes needs one dilation list per resblock kernel size")
        for dilations in self.resblock_dilation_sizes:
            positive_ints("resblock_dilation_sizes", dilations)
            if len(dilations) != 3:
                raise ConfigError(f"resblock '1' has 3 dilated convs, got dilations {dilations}")
        if len(self.upsample_kernel_sizes) != len(self.upsample_rates):
            raise ConfigError("upsample_kernel_sizes needs one kernel per upsample rate")
        for kernel, rate in zip(self.upsample_kernel_sizes, self.upsample_rates):
            # Padding (k - s) / 2 makes each stage's output exactly s times longer.
            if kernel < rate or (kernel - rate) % 2:
                raise ConfigError(
                    f"upsample kernel {kernel} with rate {rate}: the kernel must be >= the rate and "
                    "differ from it by an even number so the stage scales length exactly"
                )
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ConfigError(
                f"upsample_initial_channel={self.upsample_initial_channel} must be divisible by "
                f"2^{len(self.upsample_rates)} (each stage halves the width)"
            )

    @property
    def audio_channels(self) -> int:
        return 2 if self.stereo else 1

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per mel frame: the product of the upsample rates (240)."""
        return math.prod(self.upsample_rates)

    def stage_channels(self, stage: int) -> int:
        return self.upsample_initial_channel // 2 ** (stage + 1)

    @property
    def resblock_radius(self) -> int:
        """Samples on each side a resblock reaches at its stage's rate (the widest kernel)."""
        return max(
            (kernel - 1) // 2 * (sum(dilations) + len(dilations))
            for kernel, dilations in zip(self.resblock_kernel_sizes, self.resblock_dilation_sizes)
        )

    @property
    def receptive_field_frames(self) -> tuple[int, int]:
        """Mel frames before and after a sample's own frame that can change the sample.

        Derived by walking an output index range back through every layer; decoding a
        window with at least this many real frames on each side of a sample reproduces
        the whole-clip value of that sample. LTX-2 19B: (18, 18), 180 ms each way.
        """
        hop = self.samples_per_frame
        far_frame = 1_000_000  # away from any clip edge
        lowest, highest = far_frame, far_frame
        for sample in range(far_frame * hop, (far_frame + 1) * hop):
            low = high = sample
            low, high = low - 3, high + 3  # conv_post
            for stage in reversed(range(len(self.upsample_rates))):
                low, high = low - self.resblock_radius, high + self.resblock_radius
                kernel, rate = self.upsample_kernel_sizes[stage], self.upsample_rates[stage]
                padding = (kernel - rate) // 2
                low = -((kernel - 1 - low - padding) // rate)  # ceil((low + padding - kernel + 1) / rate)
                high = (high + padding) // rate
            low, high = low - 3, high + 3  # conv_pre
            lowest, highest = min(lowest, low), max(highest, high)
        return far_frame - lowest, highest - far_frame

    # Presets ---------------------------------------------------------------------

    @classmethod
    def ltx2_19b(cls, **overrides: Any) -> "VocoderConfig":
        """LTX-2 19B: 1024 initial channels, rates 6-5-2-2-2 (x240), 24 kHz stereo."""
        return replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "VocoderConfig":
        """Same rates, kernels and dilations; 32 initial channels (down to 1 at the end)."""
        return replace(cls(upsample_initial_channel=32), **overrides)

    @classmethod
    def mid(cls, **overrides: Any) -> "VocoderConfig":
        """Same rates and kernels, 128 initial channels: CPU benchmarks."""
        return replace(cls(upsample_initial_channel=128), **overrides)

    # Checkpoint metadata ---------------------------------------------------------

    def to_metadata(self) -> dict[str, Any]:
        """The ``vocoder`` section of the checkpoint's metadata config."""
        return {
            "resblock": "1",
            "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(d) for d in self.resblock_dilation_sizes],
            "upsample_rates": list(self.upsample_rates),
            "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
            "upsample_initial_channel": self.upsample_initial_channel,
            "stereo": self.stereo,
            "output_sample_rate": self.output_sample_rate,
        }

    @classmethod
    def from_metadata(cls, section: Mapping[str, Any]) -> "VocoderConfig":
        """Read the ``vocoder`` section; missing values take the LTX-2 19B defaults."""
        if not isinstance(section, Mapping):
            raise ConfigError(f"vocoder metadata must be a JSON object, got {type(section).__name__}")
        if "bwe" in section:
            raise ConfigError(
                "vocoder metadata describes a vocoder with bandwidth extension (LTX-2.3, 48 kHz); "
                "only the LTX-2 19B HiFi-GAN vocoder is supported"
            )
        resblock = str(section.get("resblock", "1"))
        if resblock != "1":
            raise ConfigError(
                f"vocoder metadata resblock={resblock!r} is not supported; LTX-2 19B uses HiFi-GAN resblock '1'"
            )
        for key in ("use_bias_at_final", "use_tanh_at_final", "apply_final_activation"):
            if section.get(key, True) is not True:
                raise ConfigError(
                    f"vocoder metadata {key}={section[key]!r} is not supported; LTX-2 19B ends with a "
                    "biased conv_post and tanh"
                )
        default = cls()
        try:
            rates = tuple(int(r) for r in section.get("upsample_rates", default.upsample_rates))
            values = dict(
                resblock_kernel_sizes=tuple(
                    int(k) for k in section.get("resblock_kernel_sizes", default.resblock_kernel_sizes)
                ),
                resblock_dilation_sizes=tuple(
                    tuple(int(d) for d in dilations)
                    for dilations in section.get("resblock_dilation_sizes", default.resblock_dilation_sizes)
                ),
                upsample_rates=rates,
                upsample_kernel_sizes=tuple(
                    int(k) for k in section.get("upsample_kernel_sizes", default.upsample_kernel_sizes)
                ),
                upsample_initial_channel=int(
                    section.get("upsample_initial_channel", default.upsample_initial_channel)
                ),
                stereo=bool(section.get("stereo", True)),
                # Recent configs omit the rate; it follows from the mel clock.
                output_sample_rate=int(
                    section.get("output_sample_rate") or MEL_SAMPLE_RATE * math.prod(rates) // MEL_HOP
                ),
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(f"vocoder metadata holds a value of the wrong type: {error}") from error
        return cls(**values)

    def describe(self) -> str:
        return (
            f"HiFi-GAN vocoder {self.upsample_initial_channel} ch, rates {list(self.upsample_rates)} "
            f"(x{self.samples_per_frame}), {self.output_sample_rate} Hz "
            f"{'stereo' if self.stereo else 'mono'}"
        )


class ResBlock1(nn.Module):
    """Three (dilated conv, conv) pairs with LeakyReLU before each conv, each residual."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dilated, plain in zip(self.convs1, self.convs2):
            h = dilated(F.leaky_relu(x, RESBLOCK_SLOPE))
            x = x + plain(F.leaky_relu(h, RESBLOCK_SLOPE))
        return x


class Vocoder(nn.Module):
    """Log-mel [B, audio_channels, frames, 64] -> waveform [B, audio_channels, 240 * frames]."""

    def __init__(self, config: VocoderConfig) -> None:
        super().__init__()
        self.config = config
        self.conv_pre = nn.Conv1d(config.audio_channels * MEL_BINS, config.upsample_initial_channel, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(
                config.upsample_initial_channel // 2**stage, config.stage_channels(stage),
                kernel, rate, padding=(kernel - rate) // 2,
            )
            for stage, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))
        )
        self.resblocks = nn.ModuleList(
            ResBlock1(config.stage_channels(stage), kernel, dilations)
            for stage in range(len(config.upsample_rates))
            for kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
        )
        last_width = config.stage_channels(len(config.upsample_rates) - 1)
        self.conv_post = nn.Conv1d(last_width, config.audio_channels, 7, padding=3)

    @property
    def sample_rate(self) -> int:
        return self.config.output_sample_rate

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        channels = self.config.audio_channels
        if mel.ndim != 4 or mel.shape[1] != channels or mel.shape[3] != MEL_BINS:
            raise ValueError(
                f"vocoder input must be a log-mel spectrogram [B, {channels}, frames, {MEL_BINS}], "
                f"got {tuple(mel.shape)}"
            )
        batch, _, frames, _ = mel.shape
        x = mel.to(self.conv_pre.weight.dtype).permute(0, 1, 3, 2).reshape(batch, channels * MEL_BINS, frames)
        x = self.conv_pre(x)
        per_stage = len(self.config.resblock_kernel_sizes)
        for stage, upsample in enumerate(self.ups):
            x = upsample(F.leaky_relu(x, RESBLOCK_SLOPE))
            blocks = self.resblocks[stage * per_stage:(stage + 1) * per_stage]
            x = sum(block(x) for block in blocks) / per_stage
        return torch.tanh(self.conv_post(F.leaky_relu(x, FINAL_SLOPE)))
