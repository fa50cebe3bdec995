"""The LTX-2 video VAE decoder: config, modules and whole-clip decode.

The decoder turns the transformer's normalized latents [B, 128, F, H, W] into pixels
[B, 3, 8(F-1)+1, 32H, 32W] in [-1, 1]: un-normalize with the per-channel statistics,
``conv_in``, then the up blocks (``res_x`` groups of residual blocks; depth-to-space
upsamplers that double time and space), PixelNorm, SiLU, ``conv_out`` to 3 x 4 x 4
channels and a 4 x 4 unpatchify. The 19B decoder runs 1024 -> 512 -> 256 -> 128 channels.

Time is the only axis that needs care. Every temporal convolution has kernel 3 and the
LTX-2 decoder is non-causal: at each end of the clip it pads one replicated frame, so
every conv looks one frame ahead at its own frame rate. All temporal bookkeeping goes
through :class:`TemporalChunk`: a whole clip is one chunk that starts and ends the
stream, while the streaming decoder (``video_stream.py``) runs consecutive chunks that
hand each conv's last input frame on to the next chunk.

Parameter names equal the checkpoint's with the ``vae.`` prefix (``CHECKPOINT_PREFIX``)
removed: ``decoder.*`` and ``per_channel_statistics.*`` (the encoder is ``video_encoder.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..layout import SPATIAL_COMPRESSION, VIDEO_TIME_COMPRESSION, latent_interval
from ..timestep import TimestepEmbedder

CHECKPOINT_PREFIX = "vae."
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_PIXEL_NORM_EPS = 1e-8

# Per upsampler kind: (time, height, width) strides.
_UPSAMPLE_STRIDES = {
    "compress_time": (2, 1, 1),
    "compress_space": (1, 2, 2),
    "compress_all": (2, 2, 2),
}
_UNSTREAMABLE_BLOCKS = {
    "res_x_y": "its shortcut GroupNorm normalizes over the whole clip in time",
    "attn_res_x": "its attention spans the whole clip in time",
    "attn": "its attention spans the whole clip in time",
}


# Config --------------------------------------------------------------------------


def parse_block_entry(entry: Any, side: str) -> tuple[str, Mapping[str, Any]]:
    """One ``[name, params]`` entry of the VAE's ``{side}_blocks`` metadata; params is a dict
    or, in older files, a bare layer count. Shared by the encoder's and decoder's block lists."""
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], str):
        raise ConfigError(f"each {side}_blocks entry must be [name, params], got {entry!r}")
    name, params = entry
    if isinstance(params, int) and not isinstance(params, bool):
        params = {"num_layers": params}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{side} block {name!r} has params {params!r}; expected a dict or an int")
    if name == "res_x" and "num_layers" not in params:
        raise ConfigError(f"res_x block {dict(params)!r} has no num_layers")
    return name, params


@dataclass(frozen=True)
class DecoderBlock:
    """One entry of the ``decoder_blocks`` metadata list.

    ``res_x`` uses ``num_layers`` and ``inject_noise``; the ``compress_*`` upsamplers use
    ``multiplier`` (the channel reduction) and, for ``compress_all`` only, ``residual``.
    """

    kind: str
    num_layers: int = 0
    inject_noise: bool = False
    multiplier: int = 1
    residual: bool = False

    def __post_init__(self) -> None:
        if self.kind in _UNSTREAMABLE_BLOCKS:
            raise ConfigError(
                f"decoder block {self.kind!r} is not supported: {_UNSTREAMABLE_BLOCKS[self.kind]}, "
                "so it cannot decode block by block (LTX-2 does not use it)"
            )
        if self.kind != "res_x" and self.kind not in _UPSAMPLE_STRIDES:
            raise ConfigError(
                f"unknown decoder block {self.kind!r}; expected res_x or one of {sorted(_UPSAMPLE_STRIDES)}"
            )
        if self.kind == "res_x" and (not isinstance(self.num_layers, int) or self.num_layers < 1):
            raise ConfigError(f"res_x needs num_layers >= 1, got {self.num_layers!r}")
        if not isinstance(self.multiplier, int) or self.multiplier < 1:
            raise ConfigError(f"{self.kind} needs an integer multiplier >= 1, got {self.multiplier!r}")
        if self.residual and self.kind != "compress_all":
            raise ConfigError(f"only compress_all has a residual path (LTX-2 ignores it on {self.kind})")

    @classmethod
    def res_x(cls, num_layers: int, inject_noise: bool = False) -> "DecoderBlock":
        return cls("res_x", num_layers=num_layers, inject_noise=inject_noise)

    @classmethod
    def compress_all(cls, multiplier: int = 1, residual: bool = False) -> "DecoderBlock":
        return cls("compress_all", multiplier=multiplier, residual=residual)

    @property
    def stride(self) -> tuple[int, int, int]:
        return _UPSAMPLE_STRIDES.get(self.kind, (1, 1, 1))

    @classmethod
    def from_metadata(cls, entry: Any) -> "DecoderBlock":
        name, params = parse_block_entry(entry, "decoder")
        if name == "res_x":
            return cls.res_x(params["num_layers"], bool(params.get("inject_noise", False)))
        return cls(
            name,
            multiplier=params.get("multiplier", 1),
            residual=bool(params.get("residual", False)) if name == "compress_all" else False,
        )

    def to_metadata(self) -> list[Any]:
        if self.kind == "res_x":
            return ["res_x", {"num_layers": self.num_layers, "inject_noise": self.inject_noise}]
        if self.kind == "compress_all":
            return ["compress_all", {"residual": self.residual, "multiplier": self.multiplier}]
        return [self.kind, {"multiplier": self.multiplier}]


# Keys of the ``vae`` metadata section that this config reads. Everything else (the
# encoder description, scaling_factor, ...) is carried through ``extra_metadata``.
_CONSUMED_KEYS = frozenset({
    "dims", "norm_layer", "latent_channels", "out_channels", "decoder_blocks",
    "decoder_base_channels", "patch_size", "causal_decoder", "timestep_conditioning",
    "decoder_spatial_padding_mode", "spatial_padding_mode", "decode_noise_scale", "decode_timestep",
})
_TIMESTEP_MARKER = "decoder.last_scale_shift_table"


@dataclass(frozen=True)
class VideoVAEConfig:
    """Architecture of the LTX-2 video VAE decoder.

    ``decoder_blocks`` is in the checkpoint's order (encoder side first, as the metadata
    lists it); the decoder applies it last to first. Channels start at
    ``decoder_base_channels`` times the product of the upsamplers' multipliers.
    """

    decoder_blocks: tuple[DecoderBlock, ...]
    timestep_conditioning: bool
    latent_channels: int = 128
    out_channels: int = 3
    decoder_base_channels: int = 128
    patch_size: int = 4
    causal_decoder: bool = False
    spatial_padding_mode: str = "reflect"
    decode_noise_scale: float = 0.025
    decode_timestep: float = 0.05
    # Left out of the hash so configs stay usable as cache keys.
    extra_metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Accept any sequence of blocks (dataclasses.replace with a list) but store a tuple.
        object.__setattr__(self, "decoder_blocks", tuple(self.decoder_blocks))
        for name in ("latent_channels", "out_channels", "decoder_base_channels", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"VideoVAEConfig.{name} must be a positive integer, got {value!r}")
        if not self.decoder_blocks or not all(isinstance(b, DecoderBlock) for b in self.decoder_blocks):
            raise ConfigError("VideoVAEConfig.decoder_blocks must be a non-empty tuple of DecoderBlock")
        if self.spatial_padding_mode not in _PADDING_MODES:
            raise ConfigError(
                f"spatial padding mode {self.spatial_padding_mode!r} is not one of {list(_PADDING_MODES)}"
            )
        if not 0.0 <= self.decode_noise_scale < 1.0:
            raise ConfigError(f"decode_noise_scale must be in [0, 1), got {self.decode_noise_scale}")
        upsampling = (self.temporal_upsampling, self.spatial_upsampling)
        if upsampling != (VIDEO_TIME_COMPRESSION, SPATIAL_COMPRESSION):
            raise ConfigError(
                f"this decoder upsamples {upsampling[0]}x in time and {upsampling[1]}x in space, but the "
                f"pack's latent clock is {VIDEO_TIME_COMPRESSION}x and {SPATIAL_COMPRESSION}x (LTX-2's "
                "video VAE); check decoder_blocks and patch_size"
            )
        channels = self.bottleneck_channels
        for block in reversed(self.decoder_blocks):
            if block.kind == "res_x":
                continue
            expansion = math.prod(block.stride)
            uneven_residual = block.residual and (channels % expansion or expansion % block.multiplier)
            if channels % block.multiplier or uneven_residual:
                raise ConfigError(
                    f"{block.kind} with multiplier {block.multiplier} cannot split {channels} channels evenly"
                )
            channels //= block.multiplier

    # Derived shape ---------------------------------------------------------------

    @property
    def bottleneck_channels(self) -> int:
        """Width after ``conv_in`` (1024 for LTX-2 19B)."""
        multipliers = (b.multiplier for b in self.decoder_blocks if b.kind != "res_x")
        return self.decoder_base_channels * math.prod(multipliers)

    @property
    def temporal_upsampling(self) -> int:
        return math.prod(b.stride[0] for b in self.decoder_blocks)

    @property
    def spatial_upsampling(self) -> int:
        return math.prod(b.stride[1] for b in self.decoder_blocks) * self.patch_size

    # Presets ---------------------------------------------------------------------

    @classmethod
    def _ltx2_layout(cls, res_blocks: int, **fields: Any) -> "VideoVAEConfig":
        """Four res_x stages of ``res_blocks`` around three residual x2 upsamplers."""
        stage = DecoderBlock.res_x(res_blocks)
        upsample = DecoderBlock.compress_all(multiplier=2, residual=True)
        return cls(decoder_blocks=(stage, upsample, stage, upsample, stage, upsample, stage), **fields)

    @classmethod
    def ltx2_19b(cls, **overrides: Any) -> "VideoVAEConfig":
        """LTX-2 19B: four res_x groups of 5 around three residual x2 upsamplers, 1024 -> 128.

        No timestep conditioning: the Lightricks/LTX-2 diffusers conversion of this VAE
        loads strictly with ``timestep_conditioning`` false. A file's metadata overrides it.
        """
        return replace(cls._ltx2_layout(5, timestep_conditioning=False), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "VideoVAEConfig":
        """The 19B layout with one residual block per stage and widths 64 -> 8: CPU tests."""
        return replace(cls._ltx2_layout(1, timestep_conditioning=False, decoder_base_channels=8), **overrides)

    @classmethod
    def mid(cls, **overrides: Any) -> "VideoVAEConfig":
        """The 19B layout with two residual blocks per stage and widths 256 -> 32: CPU benchmarks."""
        return replace(cls._ltx2_layout(2, timestep_conditioning=False, decoder_base_channels=32), **overrides)

    # Checkpoint metadata (the ``vae`` section of ``__metadata__["config"]``) -------

    @classmethod
    def from_metadata(
        cls, section: Mapping[str, Any], *, tensor_names: Iterable[str] | None = None
    ) -> "VideoVAEConfig":
        """Build a config from the ``vae`` metadata section, read as ltx-core reads it.

        Older files have no ``timestep_conditioning`` key; then ``tensor_names`` (the
        file's tensor names, with or without the ``vae.`` prefix) decide by whether
        ``decoder.last_scale_shift_table`` exists, and without them ltx-core's default
        (conditioned) applies. The base width defaults, as in ltx-core, to
        ``latent_channels``; ComfyUI's ``spatial_padding_mode`` is honoured when the
        decoder-specific key is absent.
        """
        if not isinstance(section, Mapping):
            raise ConfigError(f"the vae metadata section must be a JSON object, got {type(section).__name__}")
        if section.get("dims", 3) != 3:
            raise ConfigError(f"only 3D video VAEs are supported, the metadata says dims={section['dims']!r}")
        if section.get("norm_layer", "pixel_norm") != "pixel_norm":
            raise ConfigError(
                f"norm_layer {section['norm_layer']!r} is not supported: only pixel_norm decodes block by "
                "block (group norm spans the whole clip in time)"
            )
        blocks = section.get("decoder_blocks", section.get("blocks"))
        if not isinstance(blocks, (list, tuple)) or not blocks:
            raise ConfigError("the vae metadata has no decoder_blocks list; is this an LTX video VAE?")
        if section.get("causal_decoder", False) not in (True, False):
            raise ConfigError(f"causal_decoder must be true or false, got {section['causal_decoder']!r}")
        timestep_conditioning = section.get("timestep_conditioning")
        if timestep_conditioning is None:
            if tensor_names is None:
                timestep_conditioning = True
            else:
                timestep_conditioning = any(name.endswith(_TIMESTEP_MARKER) for name in tensor_names)
        latent_channels = section.get("latent_channels", 128)
        return cls(
            decoder_blocks=tuple(DecoderBlock.from_metadata(entry) for entry in blocks),
            timestep_conditioning=bool(timestep_conditioning),
            latent_channels=latent_channels,
            out_channels=section.get("out_channels", 3),
            decoder_base_channels=section.get("decoder_base_channels", latent_channels),
            patch_size=section.get("patch_size", 4),
            causal_decoder=bool(section.get("causal_decoder", False)),
            spatial_padding_mode=section.get(
                "decoder_spatial_padding_mode", section.get("spatial_padding_mode", "reflect")
            ),
            decode_noise_scale=float(section.get("decode_noise_scale", 0.025)),
            decode_timestep=float(section.get("decode_timestep", 0.05)),
            extra_metadata={k: v for k, v in section.items() if k not in _CONSUMED_KEYS},
        )

    def to_metadata(self) -> dict[str, Any]:
        """The ``vae`` metadata section; ``from_metadata`` gives this config back."""
        return {
            **self.extra_metadata,
            "dims": 3,
            "norm_layer": "pixel_norm",
            "latent_channels": self.latent_channels,
            "out_channels": self.out_channels,
            "decoder_blocks": [block.to_metadata() for block in self.decoder_blocks],
            "decoder_base_channels": self.decoder_base_channels,
            "patch_size": self.patch_size,
            "causal_decoder": self.causal_decoder,
            "timestep_conditioning": self.timestep_conditioning,
            "decoder_spatial_padding_mode": self.spatial_padding_mode,
            # ComfyUI's decoder reads this name for the same setting.
            "spatial_padding_mode": self.spatial_padding_mode,
            "decode_noise_scale": self.decode_noise_scale,
            "decode_timestep": self.decode_timestep,
        }


# Temporal chunks -----------------------------------------------------------------


class TemporalChunk:
    """The stretch of the stream one decoder call covers, and the past it continues.

    The call sees latents [first_latent, first_latent + num_latents); the first
    ``committed_latents`` of them are final, the rest are look-ahead context. After the
    stream start, each temporal conv reads the input frames it needs from before the
    chunk in ``past`` (conv site -> frames); with ``keep_state`` it stores its last
    committed input frames in ``kept``, the next chunk's past. A whole clip keeps
    nothing. ``seed`` drives all decode noise, keyed by absolute frame or conv site so
    that any split of the stream draws the same numbers.
    """

    def __init__(
        self,
        first_latent: int,
        num_latents: int,
        committed_latents: int,
        *,
        past: Mapping[int, torch.Tensor] | None = None,
        keep_state: bool = False,
        seed: int = 0,
    ) -> None:
        if first_latent < 0 or not 0 < committed_latents <= num_latents:
            raise ValueError(
                f"invalid chunk: first latent {first_latent}, {num_latents} latents, "
                f"{committed_latents} committed"
            )
        if first_latent > 0 and past is None:
            raise ValueError("a chunk after the start of the stream needs the carried past frames")
        self.first_latent = first_latent
        self.num_latents = num_latents
        self.committed_latents = committed_latents
        self._past = past
        self.kept: dict[int, torch.Tensor] | None = {} if keep_state else None
        self.seed = seed

    @classmethod
    def whole_clip(cls, num_latents: int, *, seed: int = 0) -> "TemporalChunk":
        return cls(0, num_latents, num_latents, seed=seed)

    @property
    def starts_stream(self) -> bool:
        return self.first_latent == 0

    def committed_frames(self, time_scale: int) -> int:
        """Frames of the committed latents at ``time_scale`` frames per latent.

        Each temporal upsample drops its first frame at the stream start, so every
        layer runs the latent clock of layout.py at its own rate.
        """
        start = latent_interval(self.first_latent, time_scale)[0]
        end = latent_interval(self.first_latent + self.committed_latents - 1, time_scale)[1]
        return end - start

    def past(self, site: int) -> torch.Tensor | None:
        if self.starts_stream:
            return None
        if site not in self._past:
            raise RuntimeError(f"no carried frames for temporal conv {site}; is this the same decoder?")
        return self._past[site]

    def keep(self, site: int, frames: torch.Tensor) -> None:
        if self.kept is not None:
            # A copy: a view would keep the whole padded activation alive between blocks.
            self.kept[site] = frames.detach().clone()


def _noise_generator(seed: int, purpose: int, index: int, device: torch.device) -> torch.Generator:
    """A generator private to one (purpose, frame or site), so chunking cannot shift draws."""
    mixed = seed * 0x9E3779B97F4A7C15 + purpose * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB
    mixed %= 1 << 63
    generator = torch.Generator(device=device)
    generator.manual_seed(mixed)
    return generator


_LATENT_NOISE = 0
_SPATIAL_NOISE = 1


# Modules -------------------------------------------------------------------------


def pixel_norm(x: torch.Tensor) -> torch.Tensor:
    """RMS over channels at every position (the VAE's only normalization)."""
    return x / torch.sqrt(torch.mean(x * x, dim=1, keepdim=True) + _PIXEL_NORM_EPS)


def depth_to_space(x: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """[B, C*t*h*w, F, H, W] -> [B, C, F*t, H*h, W*w], channel index (c, t, h, w) major to minor."""
    st, sh, sw = stride
    b, c, f, h, w = x.shape
    x = x.reshape(b, c // (st * sh * sw), st, sh, sw, f, h, w)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, -1, f * st, h * sh, w * sw)


def unpatchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C*p*p, F, H, W] -> [B, C, F, H*p, W*p]; within a patch the width offset is major."""
    b, c, f, h, w = x.shape
    x = x.reshape(b, c // (patch_size * patch_size), patch_size, patch_size, f, h, w)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, -1, f, h * patch_size, w * patch_size)


def conv3d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, on oneDNN for fp32 inference on the CPU: PyTorch's heuristic sends the
    decoder's small single-batch fp32 convs (128 channels at 8x18, say) to ``slow_conv3d``,
    2.2x slower than oneDNN on the same shapes (measured here)."""
    if (x.device.type != "cpu" or x.dtype != torch.float32
            or (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))):
        return conv(x)
    padding = conv.padding
    if conv.padding_mode != "zeros":  # as nn.Conv3d does it: pad first, then a conv without padding
        x, padding = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), (0, 0, 0)
    return torch.mkldnn_convolution(x, conv.weight, conv.bias, padding, conv.stride, conv.dilation, conv.groups)


class TemporalConv3d(nn.Module):
    """3x3x3 conv padded in time by replicated edge frames, or by the chunk's past.

    Non-causal (LTX-2): one frame before and one after; causal: two before. ``site``
    numbers the conv within the decoder so a stream can carry its past frames.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, time_scale: int, causal: bool, spatial_padding_mode: str
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel_size=3, padding=(0, 1, 1), padding_mode=spatial_padding_mode
        )
        self.time_scale = time_scale
        self.past_frames = 2 if causal else 1
        self.future_frames = 0 if causal else 1
        self.site = -1

    def forward(self, x: torch.Tensor, chunk: TemporalChunk) -> torch.Tensor:
        past = chunk.past(self.site)
        if past is None:
            past = x[:, :, :1].expand(-1, -1, self.past_frames, -1, -1)
        # The future beyond the chunk is unknown: treat it like the end of a clip.
        future = x[:, :, -1:].expand(-1, -1, self.future_frames, -1, -1)
        padded = torch.cat((past, x, future), dim=2)
        committed_end = past.shape[2] + chunk.committed_frames(self.time_scale)
        chunk.keep(self.site, padded[:, :, committed_end - self.past_frames:committed_end])
        return conv3d(self.conv, padded)


def _spatial_noise(chunk: TemporalChunk, site: int, like: torch.Tensor) -> torch.Tensor:
    """[H, W] noise shared by all frames of a conv's output (StyleGAN-style noise inputs)."""
    generator = _noise_generator(chunk.seed, _SPATIAL_NOISE, site, like.device)
    noise = torch.randn(like.shape[-2:], generator=generator, device=like.device, dtype=torch.float32)
    return noise.to(like.dtype)


class ResnetBlock3D(nn.Module):
    """norm -> (modulate) -> SiLU -> conv, twice, plus the identity shortcut."""

    def __init__(
        self,
        channels: int,
        *,
        time_scale: int,
        causal: bool,
        spatial_padding_mode: str,
        inject_noise: bool,
        timestep_conditioning: bool,
    ) -> None:
        super().__init__()
        conv = dict(time_scale=time_scale, causal=causal, spatial_padding_mode=spatial_padding_mode)
        self.conv1 = TemporalConv3d(channels, channels, **conv)
        self.conv2 = TemporalConv3d(channels, channels, **conv)
        self.inject_noise = inject_noise
        if inject_noise:
            self.per_channel_scale1 = nn.Parameter(torch.zeros(channels, 1, 1))
            self.per_channel_scale2 = nn.Parameter(torch.zeros(channels, 1, 1))
        if timestep_conditioning:
            self.scale_shift_table = nn.Parameter(torch.zeros(4, channels))

    def _add_noise(
        self, x: torch.Tensor, scale: torch.Tensor, site: int, chunk: TemporalChunk
    ) -> torch.Tensor:
        noise = _spatial_noise(chunk, site, x)
        return x + (noise[None] * scale.to(x.dtype))[None, :, None]

    def forward(self, x: torch.Tensor, chunk: TemporalChunk, embedding: torch.Tensor | None) -> torch.Tensor:
        h = pixel_norm(x)
        if embedding is not None:
            batch, channels = x.shape[:2]
            ada = self.scale_shift_table.to(x.dtype)[None] + embedding.reshape(batch, 4, channels)
            shift1, scale1, shift2, scale2 = (v[:, :, None, None, None] for v in ada.unbind(dim=1))
            h = h * (1 + scale1) + shift1
        h = self.conv1(F.silu(h), chunk)
        if self.inject_noise:
            h = self._add_noise(h, self.per_channel_scale1, self.conv1.site, chunk)
        h = pixel_norm(h)
        if embedding is not None:
            h = h * (1 + scale2) + shift2
        h = self.conv2(F.silu(h), chunk)
        if self.inject_noise:
            h = self._add_noise(h, self.per_channel_scale2, self.conv2.site, chunk)
        return x + h


class ResidualGroup(nn.Module):
    """A ``res_x`` block: residual blocks sharing one timestep embedding."""

    def __init__(
        self, channels: int, block: DecoderBlock, *, timestep_conditioning: bool, **conv: Any
    ) -> None:
        super().__init__()
        if timestep_conditioning:
            self.time_embedder = TimestepEmbedder(4 * channels)
        self.res_blocks = nn.ModuleList(
            ResnetBlock3D(
                channels, inject_noise=block.inject_noise, timestep_conditioning=timestep_conditioning, **conv
            )
            for _ in range(block.num_layers)
        )

    def forward(self, x: torch.Tensor, chunk: TemporalChunk, timestep: torch.Tensor | None) -> torch.Tensor:
        embedding = None if timestep is None else self.time_embedder(timestep, x.dtype)
        for res_block in self.res_blocks:
            x = res_block(x, chunk, embedding)
        return x


class DepthToSpaceUpsample(nn.Module):
    """conv to (stride volume / multiplier) x channels, depth-to-space, optional residual.

    A temporal x2 drops the first output frame at the start of the stream, which keeps
    latent 0 a single frame at every rate.
    """

    def __init__(self, channels: int, block: DecoderBlock, *, time_scale: int, **conv: Any) -> None:
        super().__init__()
        self.stride = block.stride
        self.residual = block.residual
        self.repeats = math.prod(self.stride) // block.multiplier
        self.conv = TemporalConv3d(
            channels, math.prod(self.stride) * channels // block.multiplier, time_scale=time_scale, **conv
        )

    def forward(self, x: torch.Tensor, chunk: TemporalChunk) -> torch.Tensor:
        y = depth_to_space(self.conv(x, chunk), self.stride)
        if self.residual:
            y = y + depth_to_space(x, self.stride).repeat(1, self.repeats, 1, 1, 1)
        if self.stride[0] == 2 and chunk.starts_stream:
            y = y[:, :, 1:]
        return y


class VideoDecoder(nn.Module):
    """``vae.decoder``: un-normalized latents -> pixels in [-1, 1] (before any clamp)."""

    def __init__(self, config: VideoVAEConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.decode_timestep = config.decode_timestep
        conv = dict(causal=config.causal_decoder, spatial_padding_mode=config.spatial_padding_mode)
        channels, time_scale = config.bottleneck_channels, 1
        self.conv_in = TemporalConv3d(config.latent_channels, channels, time_scale=time_scale, **conv)
        self.up_blocks = nn.ModuleList()
        for block in reversed(config.decoder_blocks):
            if block.kind == "res_x":
                self.up_blocks.append(
                    ResidualGroup(
                        channels, block, timestep_conditioning=config.timestep_conditioning,
                        time_scale=time_scale, **conv,
                    )
                )
            else:
                self.up_blocks.append(DepthToSpaceUpsample(channels, block, time_scale=time_scale, **conv))
                channels //= block.multiplier
                time_scale *= block.stride[0]
        self.conv_out = TemporalConv3d(
            channels, config.out_channels * config.patch_size**2, time_scale=time_scale, **conv
        )
        self.timestep_conditioning = config.timestep_conditioning
        if config.timestep_conditioning:
            self.timestep_scale_multiplier = nn.Parameter(torch.tensor(1000.0))
            self.last_time_embedder = TimestepEmbedder(2 * channels)
            self.last_scale_shift_table = nn.Parameter(torch.zeros(2, channels))
        for site, module in enumerate(m for m in self.modules() if isinstance(m, TemporalConv3d)):
            module.site = site

    @property
    def temporal_convs(self) -> list[TemporalConv3d]:
        return [m for m in self.modules() if isinstance(m, TemporalConv3d)]

    def forward(self, latents: torch.Tensor, chunk: TemporalChunk) -> torch.Tensor:
        batch = latents.shape[0]
        timestep = None
        if self.timestep_conditioning:
            multiplier = self.timestep_scale_multiplier.float()
            timestep = torch.full((batch,), self.decode_timestep, device=latents.device) * multiplier
        x = self.conv_in(latents, chunk)
        for block in self.up_blocks:
            x = block(x, chunk, timestep) if isinstance(block, ResidualGroup) else block(x, chunk)
        x = pixel_norm(x)
        if timestep is not None:
            embedding = self.last_time_embedder(timestep, x.dtype).reshape(batch, 2, -1)
            ada = self.last_scale_shift_table.to(x.dtype)[None] + embedding
            shift, scale = (v[:, :, None, None, None] for v in ada.unbind(dim=1))
            x = x * (1 + scale) + shift
        x = self.conv_out(F.silu(x), chunk)
        return unpatchify(x, self.patch_size)


class LatentStatistics(nn.Module):
    """``vae.per_channel_statistics``: dataset statistics of the encoder's means.

    The encoder normalizes with mean-of-means and std-of-means and the decoder undoes
    it with the same two; the other three buffers exist because the checkpoint stores them.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean-of-means", torch.zeros(channels))
        self.register_buffer("std-of-means", torch.ones(channels))
        self.register_buffer("mean-of-stds", torch.zeros(channels))
        self.register_buffer("mean-of-stds_over_std-of-means", torch.zeros(channels))
        self.register_buffer("channel", torch.zeros(channels))

    def _mean_std(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.get_buffer("mean-of-means").to(like).view(1, -1, 1, 1, 1)
        std = self.get_buffer("std-of-means").to(like).view(1, -1, 1, 1, 1)
        return mean, std

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._mean_std(latents)
        return (latents - mean) / std

    def un_normalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._mean_std(latents)
        return latents * std + mean


class VideoVAE(nn.Module):
    """The decoding half of the LTX-2 video VAE; its state dict is the ``vae.`` slice of a checkpoint.

    ``omniforcing_core.checkpoint.load_decoders`` builds it on ``torch.device("meta")`` and
    fills it tensor by tensor, so the weights are never allocated twice.
    """

    def __init__(self, config: VideoVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = VideoDecoder(config)
        self.per_channel_statistics = LatentStatistics(config.latent_channels)

    def decode_chunk(self, latents: torch.Tensor, chunk: TemporalChunk) -> torch.Tensor:
        """Normalized latents [B, C, f, H, W] of one chunk -> pixels [B, 3, frames, 32H, 32W].

        The chunk's frames at the output rate: all of them, the caller keeps the committed ones.
        """
        self._check_latents(latents, chunk)
        weight = self.decoder.conv_in.conv.weight
        latents = latents.to(device=weight.device, dtype=weight.dtype)
        if self.config.timestep_conditioning and self.config.decode_noise_scale > 0:
            scale = self.config.decode_noise_scale
            latents = scale * self._latent_noise(latents, chunk) + (1.0 - scale) * latents
        return self.decoder(self.per_channel_statistics.un_normalize(latents), chunk)

    def decode(self, latents: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """Whole clip: [B, C, F, H, W] -> pixels [B, 3, 8(F-1)+1, 32H, 32W], nominally in [-1, 1]."""
        with torch.no_grad():
            return self.decode_chunk(latents, TemporalChunk.whole_clip(latents.shape[2], seed=seed))

    def decode_frames(self, latents: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """One clip's latents [1, C, F, H, W] -> float frames [8(F-1)+1, 32H, 32W, 3] in [0, 1]."""
        return pixels_to_frames(self.decode(latents, seed=seed))

    def _latent_noise(self, latents: torch.Tensor, chunk: TemporalChunk) -> torch.Tensor:
        """Decode noise drawn per absolute latent frame, so any chunking adds the same noise."""
        batch, channels, frames, height, width = latents.shape
        noise = [
            torch.randn(
                (batch, channels, height, width),
                generator=_noise_generator(chunk.seed, _LATENT_NOISE, chunk.first_latent + t, latents.device),
                device=latents.device,
                dtype=torch.float32,
            )
            for t in range(frames)
        ]
        return torch.stack(noise, dim=2).to(latents.dtype)

    def _check_latents(self, latents: torch.Tensor, chunk: TemporalChunk) -> None:
        if latents.dim() != 5 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"video latents must be [B, {self.config.latent_channels}, F, H, W], "
                f"got {tuple(latents.shape)}"
            )
        if latents.shape[2] != chunk.num_latents:
            raise ValueError(f"the chunk covers {chunk.num_latents} latent frames but got {latents.shape[2]}")
        self.check_grid(tuple(latents.shape[-2:]))

    def check_grid(self, grid_hw: tuple[int, int]) -> None:
        """Refuse a latent grid (rows, columns) this decoder cannot decode."""
        if self.config.spatial_padding_mode == "reflect" and min(grid_hw) < 2:
            raise ValueError(
                f"reflect padding needs at least 2 x 2 latent cells ({2 * SPATIAL_COMPRESSION} px), "
                f"got {tuple(grid_hw)}"
            )


def pixels_to_frames(pixels: torch.Tensor) -> torch.Tensor:
    """Decoder pixels [1, 3, F, H, W] in [-1, 1] -> float32 frames [F, H, W, 3] in [0, 1]."""
    if pixels.dim() != 5 or pixels.shape[0] != 1:
        raise ValueError(f"expected the pixels of one clip, [1, 3, F, H, W], got {tuple(pixels.shape)}")
    return ((pixels[0].float().clamp(-1.0, 1.0) + 1.0) / 2.0).permute(1, 2, 3, 0)
