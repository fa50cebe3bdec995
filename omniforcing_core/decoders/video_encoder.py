"""The LTX-2 video VAE encoder: config, modules and whole-clip encode.

Pixels [B, 3, 1 + 8k, 32H, 32W] in [-1, 1] become normalized latents [B, 128, 1 + k, H, W],
the space the transformer and the decoder (``video_vae.py``) work in: a 4 x 4 patchify
(3 -> 48 channels), ``conv_in``, the down blocks (``res_x`` groups of residual blocks and
``compress_*_res`` space-to-depth downsamplers that halve time, space or both while
doubling the width), PixelNorm, SiLU, ``conv_out`` to the posterior's moments. The 19B
encoder runs 128 -> 256 -> 512 -> 1024 -> 2048 channels and ``conv_out`` gives 128 means
plus one log-variance shared by all channels (``latent_log_var = "uniform"``).

Time: every temporal convolution is causal (two copies of the first frame in front,
nothing after), and each temporal downsampler duplicates its first input frame, so
latent 0 sees pixel frame 0 alone and latent j >= 1 sees frames up to 8j. The means are
normalized with the same ``per_channel_statistics`` the decoder un-normalizes with.

Parameter names equal the checkpoint's with the ``vae.`` prefix removed: ``encoder.*``
and ``per_channel_statistics.*`` (the file keeps one set of statistics for both halves).
Facts from ltx-core (Lightricks/LTX-2 ``model/video_vae``) and ComfyUI
(``comfy/ldm/lightricks/vae/causal_video_autoencoder.py``, config version 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..layout import SPATIAL_COMPRESSION, VIDEO_TIME_COMPRESSION
from .video_vae import _PADDING_MODES, LatentStatistics, VideoVAEConfig, parse_block_entry, pixel_norm

CHECKPOINT_PREFIX = "vae."

# Per downsampler kind: (time, height, width) strides.
_DOWNSAMPLE_STRIDES = {
    "compress_space_res": (1, 2, 2),
    "compress_time_res": (2, 1, 1),
    "compress_all_res": (2, 2, 2),
}
_UNSUPPORTED_BLOCKS = ("res_x_y", "compress_time", "compress_space", "compress_all", "compress_all_x_y")
# How conv_out gives the log-variance: one channel shared by all means ("uniform"), one per
# mean ("per_channel"), or a channel that is thrown away for a fixed value ("constant").
_LOG_VAR_MODES = ("uniform", "per_channel", "constant")
_CONSTANT_LOG_VAR = -30.0  # ltx-core's stand-in for log(0)


# Config --------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderBlock:
    """One entry of the ``encoder_blocks`` metadata list.

    ``res_x`` uses ``num_layers``; the ``compress_*_res`` downsamplers use ``multiplier``
    (the channel growth, 2 unless the metadata says otherwise).
    """

    kind: str
    num_layers: int = 0
    multiplier: int = 2

    def __post_init__(self) -> None:
        if self.kind in _UNSUPPORTED_BLOCKS:
            raise ConfigError(
                f"encoder block {self.kind!r} is not supported: it belongs to the LTX-Video 0.9 VAEs, "
                "whose decoders this pack does not run (LTX-2 uses res_x and compress_*_res)"
            )
        if self.kind != "res_x" and self.kind not in _DOWNSAMPLE_STRIDES:
            raise ConfigError(
                f"unknown encoder block {self.kind!r}; expected res_x or one of {sorted(_DOWNSAMPLE_STRIDES)}"
            )
        if self.kind == "res_x" and (not isinstance(self.num_layers, int) or self.num_layers < 1):
            raise ConfigError(f"res_x needs num_layers >= 1, got {self.num_layers!r}")
        if isinstance(self.multiplier, bool) or not isinstance(self.multiplier, int) or self.multiplier < 1:
            raise ConfigError(f"{self.kind} needs an integer multiplier >= 1, got {self.multiplier!r}")

    @classmethod
    def res_x(cls, num_layers: int) -> "EncoderBlock":
        return cls("res_x", num_layers=num_layers)

    @property
    def stride(self) -> tuple[int, int, int]:
        return _DOWNSAMPLE_STRIDES.get(self.kind, (1, 1, 1))

    @classmethod
    def from_metadata(cls, entry: Any) -> "EncoderBlock":
        name, params = parse_block_entry(entry, "encoder")
        if name == "res_x":
            return cls.res_x(params["num_layers"])
        return cls(name, multiplier=params.get("multiplier", 2))

    def to_metadata(self) -> list[Any]:
        if self.kind == "res_x":
            return ["res_x", {"num_layers": self.num_layers}]
        return [self.kind, {"multiplier": self.multiplier}]


@dataclass(frozen=True)
class VideoEncoderConfig:
    """Architecture of the LTX-2 video VAE encoder (the encoder keys of the ``vae`` section).

    ``latent_channels`` and ``patch_size`` are shared with the decoder's
    ``VideoVAEConfig``; ``video_vae_metadata`` writes both halves into one section.
    """

    encoder_blocks: tuple[EncoderBlock, ...]
    latent_channels: int = 128
    in_channels: int = 3
    patch_size: int = 4
    encoder_base_channels: int = 128
    latent_log_var: str = "uniform"
    spatial_padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_blocks", tuple(self.encoder_blocks))
        for name in ("latent_channels", "in_channels", "patch_size", "encoder_base_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"VideoEncoderConfig.{name} must be a positive integer, got {value!r}")
        if not self.encoder_blocks or not all(isinstance(b, EncoderBlock) for b in self.encoder_blocks):
            raise ConfigError("VideoEncoderConfig.encoder_blocks must be a non-empty tuple of EncoderBlock")
        if self.latent_log_var not in _LOG_VAR_MODES:
            raise ConfigError(f"latent_log_var {self.latent_log_var!r} is not one of {list(_LOG_VAR_MODES)}")
        if self.spatial_padding_mode not in _PADDING_MODES:
            raise ConfigError(
                f"spatial padding mode {self.spatial_padding_mode!r} is not one of {list(_PADDING_MODES)}"
            )
        compression = (self.temporal_compression, self.spatial_compression)
        if compression != (VIDEO_TIME_COMPRESSION, SPATIAL_COMPRESSION):
            raise ConfigError(
                f"this encoder compresses {compression[0]}x in time and {compression[1]}x in space, but the "
                f"pack's latent clock is {VIDEO_TIME_COMPRESSION}x and {SPATIAL_COMPRESSION}x (LTX-2's "
                "video VAE); check encoder_blocks and patch_size"
            )
        channels = self.encoder_base_channels
        for block in self.encoder_blocks:
            if block.kind == "res_x":
                continue
            volume = math.prod(block.stride)
            grown = channels * block.multiplier
            # The conv feeds space-to-depth (grown / volume channels before it) and the
            # shortcut averages groups of volume / multiplier space-to-depth channels.
            if grown % volume or (channels * volume) % grown:
                raise ConfigError(
                    f"{block.kind} with multiplier {block.multiplier} cannot turn {channels} channels "
                    f"into {grown} through a x{volume} space-to-depth"
                )
            channels = grown

    # Derived shape ---------------------------------------------------------------

    @property
    def temporal_compression(self) -> int:
        return math.prod(b.stride[0] for b in self.encoder_blocks)

    @property
    def spatial_compression(self) -> int:
        return math.prod(b.stride[1] for b in self.encoder_blocks) * self.patch_size

    @property
    def output_width(self) -> int:
        """Width before ``conv_out`` (2048 for LTX-2 19B)."""
        multipliers = (b.multiplier for b in self.encoder_blocks if b.kind != "res_x")
        return self.encoder_base_channels * math.prod(multipliers)

    @property
    def moment_channels(self) -> int:
        """``conv_out``'s channels: the means, then the log-variance's (129 for 19B)."""
        per_channel = self.latent_log_var == "per_channel"
        return self.latent_channels * 2 if per_channel else self.latent_channels + 1

    # Presets ---------------------------------------------------------------------

    @classmethod
    def _ltx2_layout(cls, res_layers: tuple[int, ...], **fields: Any) -> "VideoEncoderConfig":
        """res_x stages around four x2 downsamplers: space, time, then all axes twice."""
        kinds = ("compress_space_res", "compress_time_res", "compress_all_res", "compress_all_res")
        blocks = [EncoderBlock.res_x(res_layers[0])]
        for kind, layers in zip(kinds, res_layers[1:]):
            blocks += [EncoderBlock(kind), EncoderBlock.res_x(layers)]
        return cls(encoder_blocks=tuple(blocks), **fields)

    @classmethod
    def ltx2_19b(cls, **overrides: Any) -> "VideoEncoderConfig":
        """LTX-2 19B: res_x groups of 4, 6, 6, 2, 2 around the four downsamplers, 128 -> 2048."""
        return replace(cls._ltx2_layout((4, 6, 6, 2, 2)), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "VideoEncoderConfig":
        """The 19B layout with one residual block per stage and widths 8 -> 128: CPU tests.

        Its 128 latent channels match ``VideoVAEConfig.tiny()``; pass ``latent_channels``
        to both for a narrower latent.
        """
        return replace(cls._ltx2_layout((1, 1, 1, 1, 1), encoder_base_channels=8), **overrides)

    # Checkpoint metadata (the ``vae`` section of ``__metadata__["config"]``) -------

    @classmethod
    def from_metadata(cls, section: Mapping[str, Any]) -> "VideoEncoderConfig":
        """Build a config from the ``vae`` metadata section, read as ltx-core reads it.

        ltx-core has no ``encoder_base_channels`` key: its encoder is as wide as
        ``latent_channels`` after ``conv_in``, which is the default here; the key (ComfyUI's
        name) lets a narrow-latent tiny VAE say otherwise. The padding mode is
        ``encoder_spatial_padding_mode`` (default zeros); ComfyUI's shared
        ``spatial_padding_mode`` key is the decoder's here.
        """
        if not isinstance(section, Mapping):
            raise ConfigError(f"the vae metadata section must be a JSON object, got {type(section).__name__}")
        if section.get("dims", 3) != 3:
            raise ConfigError(f"only 3D video VAEs are supported, the metadata says dims={section['dims']!r}")
        if section.get("norm_layer", "pixel_norm") != "pixel_norm":
            raise ConfigError(
                f"norm_layer {section['norm_layer']!r} is not supported: LTX-2's VAE uses pixel_norm"
            )
        blocks = section.get("encoder_blocks")
        if not isinstance(blocks, (list, tuple)) or not blocks:
            raise ConfigError("the vae metadata has no encoder_blocks list; does the file hold an encoder?")
        latent_channels = section.get("latent_channels", 128)
        return cls(
            encoder_blocks=tuple(EncoderBlock.from_metadata(entry) for entry in blocks),
            latent_channels=latent_channels,
            in_channels=section.get("in_channels", 3),
            patch_size=section.get("patch_size", 4),
            encoder_base_channels=section.get("encoder_base_channels", latent_channels),
            latent_log_var=section.get("latent_log_var", "uniform"),
            spatial_padding_mode=section.get("encoder_spatial_padding_mode", "zeros"),
        )

    def to_metadata(self) -> dict[str, Any]:
        """The encoder's keys of the ``vae`` section; ``from_metadata`` gives this config back."""
        return {
            "dims": 3,
            "norm_layer": "pixel_norm",
            "in_channels": self.in_channels,
            "latent_channels": self.latent_channels,
            "patch_size": self.patch_size,
            "encoder_blocks": [block.to_metadata() for block in self.encoder_blocks],
            "encoder_base_channels": self.encoder_base_channels,
            "latent_log_var": self.latent_log_var,
            "encoder_spatial_padding_mode": self.spatial_padding_mode,
        }


def video_vae_metadata(decoder: VideoVAEConfig, encoder: VideoEncoderConfig) -> dict[str, Any]:
    """One ``vae`` section describing both halves, as a base file stores it."""
    shared = ("latent_channels", "patch_size")
    differ = [f"{name} {getattr(decoder, name)} vs {getattr(encoder, name)}" for name in shared
              if getattr(decoder, name) != getattr(encoder, name)]
    if differ:
        raise ConfigError("the video VAE's decoder and encoder disagree: " + ", ".join(differ))
    return {**decoder.to_metadata(), **encoder.to_metadata()}


# Modules -------------------------------------------------------------------------


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, F, H*p, W*p] -> [B, C*p*p, F, H, W]; the decoder's ``unpatchify`` undone
    (within a patch the width offset is major)."""
    b, c, f, hp, wp = x.shape
    x = x.reshape(b, c, f, hp // patch_size, patch_size, wp // patch_size, patch_size)
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * patch_size**2, f, hp // patch_size, wp // patch_size)


def space_to_depth(x: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """[B, C, F*t, H*h, W*w] -> [B, C*t*h*w, F, H, W]; the decoder's ``depth_to_space`` undone."""
    st, sh, sw = stride
    b, c, ft, hh, ww = x.shape
    x = x.reshape(b, c, ft // st, st, hh // sh, sh, ww // sw, sw)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * st * sh * sw, ft // st, hh // sh, ww // sw)


class CausalConv3d(nn.Module):
    """3x3x3 conv, causal in time: two copies of the first frame in front, none behind."""

    def __init__(self, in_channels: int, out_channels: int, spatial_padding_mode: str) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel_size=3, padding=(0, 1, 1), padding_mode=spatial_padding_mode
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((x[:, :, :1].expand(-1, -1, 2, -1, -1), x), dim=2))


class EncoderResnetBlock(nn.Module):
    """norm -> SiLU -> conv, twice, plus the identity shortcut."""

    def __init__(self, channels: int, spatial_padding_mode: str) -> None:
        super().__init__()
        self.conv1 = CausalConv3d(channels, channels, spatial_padding_mode)
        self.conv2 = CausalConv3d(channels, channels, spatial_padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(pixel_norm(x)))
        return x + self.conv2(F.silu(pixel_norm(h)))


class EncoderResidualGroup(nn.Module):
    """A ``res_x`` block."""

    def __init__(self, channels: int, block: EncoderBlock, spatial_padding_mode: str) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(
            EncoderResnetBlock(channels, spatial_padding_mode) for _ in range(block.num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for res_block in self.res_blocks:
            x = res_block(x)
        return x


class SpaceToDepthDownsample(nn.Module):
    """conv to (width x multiplier / stride volume) channels, space-to-depth, plus a shortcut
    that averages the input's space-to-depth channels in groups to the same width.

    A temporal x2 first duplicates frame 0, so it pairs with itself: latent 0 stays a
    single frame at every rate (the decoder drops the matching frame).
    """

    def __init__(self, channels: int, block: EncoderBlock, spatial_padding_mode: str) -> None:
        super().__init__()
        self.stride = block.stride
        volume = math.prod(self.stride)
        self.group_size = volume // block.multiplier
        self.conv = CausalConv3d(channels, channels * block.multiplier // volume, spatial_padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 2:
            x = torch.cat((x[:, :, :1], x), dim=2)
        shortcut = space_to_depth(x, self.stride).unflatten(1, (-1, self.group_size)).mean(dim=2)
        return space_to_depth(self.conv(x), self.stride) + shortcut


class VideoEncoder(nn.Module):
    """``vae.encoder``: pixels in [-1, 1] -> the posterior's raw moments (``conv_out``'s output)."""

    def __init__(self, config: VideoEncoderConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        padding = config.spatial_padding_mode
        channels = config.encoder_base_channels
        self.conv_in = CausalConv3d(config.in_channels * config.patch_size**2, channels, padding)
        self.down_blocks = nn.ModuleList()
        for block in config.encoder_blocks:
            if block.kind == "res_x":
                self.down_blocks.append(EncoderResidualGroup(channels, block, padding))
            else:
                self.down_blocks.append(SpaceToDepthDownsample(channels, block, padding))
                channels *= block.multiplier
        self.conv_out = CausalConv3d(channels, config.moment_channels, padding)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(patchify(pixels, self.patch_size))
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(pixel_norm(x)))


class VideoVAEEncoder(nn.Module):
    """The encoding half of the LTX-2 video VAE; its state dict is the ``vae.`` slice of a
    checkpoint less ``decoder.*``.

    ``omniforcing_core.checkpoint.components.load_encoders`` builds it on the meta device
    and fills it tensor by tensor, like the decoders.
    """

    def __init__(self, config: VideoEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = VideoEncoder(config)
        self.per_channel_statistics = LatentStatistics(config.latent_channels)

    def posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels [B, 3, 1 + 8k, 32H, 32W] -> (mean, log-variance), each [B, C, 1 + k, H, W],
        before normalization (what a VAE's KL term and its samples use)."""
        self._check_pixels(pixels)
        weight = self.encoder.conv_in.conv.weight
        moments = self.encoder(pixels.to(device=weight.device, dtype=weight.dtype))
        channels = self.config.latent_channels
        mean = moments[:, :channels]
        if self.config.latent_log_var == "per_channel":
            return mean, moments[:, channels:]
        if self.config.latent_log_var == "uniform":
            return mean, moments[:, channels:].expand_as(mean)
        return mean, torch.full_like(mean, _CONSTANT_LOG_VAR)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, 1 + 8k, 32H, 32W] in [-1, 1] -> normalized latents [B, C, 1 + k, H, W]
        (the posterior mean, as the transformer and ``VideoVAE.decode`` take them)."""
        with torch.no_grad():
            mean, _ = self.posterior(pixels)
            return self.per_channel_statistics.normalize(mean)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """One clip's frames [1 + 8k, 32H, 32W, 3] in [0, 1] (ComfyUI's IMAGE) -> latents
        [1, C, 1 + k, H, W]; ``pixels_to_frames`` undone."""
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames [F, H, W, 3], got {tuple(frames.shape)}")
        return self.encode(frames.permute(3, 0, 1, 2)[None] * 2.0 - 1.0)

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        channels = self.config.in_channels
        if pixels.dim() != 5 or pixels.shape[1] != channels:
            raise ValueError(f"video pixels must be [B, {channels}, F, H, W], got {tuple(pixels.shape)}")
        frames, height, width = pixels.shape[2:]
        if frames < 1 or (frames - 1) % VIDEO_TIME_COMPRESSION:
            raise ValueError(
                f"the encoder takes 1 + {VIDEO_TIME_COMPRESSION}k frames (1, 9, 17, ...), got {frames}; "
                "crop the clip"
            )
        if height % SPATIAL_COMPRESSION or width % SPATIAL_COMPRESSION:
            raise ValueError(
                f"frame size {height} x {width} is not a multiple of {SPATIAL_COMPRESSION} pixels"
            )
