"""Model configuration of the LTX-2 audio-video transformer and its presets.

One dataclass describes the architecture; the checkpoint metadata (an LTX-style
``transformer`` section) converts to and from it here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration value is out of range or contradicts another one."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape and conventions of the block-causal LTX-2 AV transformer.

    Widths follow LTX-2: each stream's width is heads x head_dim; the audio<->video
    attention uses the audio heads (its inner width is the audio width); text enters
    each stream after a caption projection from ``caption_channels``.
    """

    num_layers: int
    video_heads: int
    video_head_dim: int
    audio_heads: int
    audio_head_dim: int
    caption_channels: int
    video_in_channels: int = 128
    video_out_channels: int = 128
    audio_in_channels: int = 128
    audio_out_channels: int = 128
    ffn_mult: int = 4
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # RoPE positions are physical (seconds, pixels) divided by these maxima.
    video_max_pos: tuple[float, float, float] = (20.0, 2048.0, 2048.0)
    audio_max_pos: tuple[float] = (20.0,)
    timestep_scale_multiplier: float = 1000.0
    # The student was trained with the cross-modal gate seeing sigma itself (x1),
    # unlike the teacher checkpoint's metadata (x1000).
    av_ca_timestep_scale_multiplier: float = 1.0
    # Learnable audio sink tokens (paper design); 0 = the released model.
    audio_sink_tokens: int = 0

    def __post_init__(self) -> None:
        positive = (
            "num_layers", "video_heads", "video_head_dim", "audio_heads", "audio_head_dim",
            "caption_channels", "video_in_channels", "video_out_channels",
            "audio_in_channels", "audio_out_channels", "ffn_mult",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.audio_sink_tokens, int) or self.audio_sink_tokens < 0:
            raise ConfigError(
                f"ModelConfig.audio_sink_tokens must be an integer >= 0, got {self.audio_sink_tokens!r}"
            )
        if self.video_dim % 2 or self.audio_dim % 2:
            raise ConfigError("stream widths must be even for rotary embeddings")
        if len(self.video_max_pos) != 3 or len(self.audio_max_pos) != 1:
            raise ConfigError("video_max_pos needs 3 values (t, h, w), audio_max_pos needs 1 (t)")

    @property
    def video_dim(self) -> int:
        return self.video_heads * self.video_head_dim

    @property
    def audio_dim(self) -> int:
        return self.audio_heads * self.audio_head_dim

    @property
    def cross_modal_dim(self) -> int:
        """Inner width of audio<->video attention (it uses the audio heads)."""
        return self.audio_dim

    @property
    def cross_modal_max_pos(self) -> float:
        return max(self.video_max_pos[0], self.audio_max_pos[0])

    # Presets -----------------------------------------------------------------

    @classmethod
    def tiny(cls, **overrides: Any) -> "ModelConfig":
        """Two layers, small widths: the shape of the golden reference vectors."""
        base = cls(
            num_layers=2, video_heads=4, video_head_dim=16, audio_heads=4, audio_head_dim=8,
            caption_channels=32,
        )
        return replace(base, **overrides)

    @classmethod
    def mid(cls, **overrides: Any) -> "ModelConfig":
        """A CPU-benchmark size: big enough that matrix work dominates Python overhead."""
        base = cls(
            num_layers=4, video_heads=8, video_head_dim=32, audio_heads=8, audio_head_dim=16,
            caption_channels=128,
        )
        return replace(base, **overrides)

    @classmethod
    def ltx2_19b(cls, **overrides: Any) -> "ModelConfig":
        """LTX-2 19B: 48 layers, video 32 x 128 (4096), audio 32 x 64 (2048), Gemma 3840."""
        base = cls(
            num_layers=48, video_heads=32, video_head_dim=128, audio_heads=32, audio_head_dim=64,
            caption_channels=3840,
        )
        return replace(base, **overrides)

    # Checkpoint metadata (LTX-style ``transformer`` section) ---------------------

    def to_metadata(self) -> dict[str, Any]:
        """The ``transformer`` section written into safetensors metadata."""
        return {
            "num_layers": self.num_layers,
            "num_attention_heads": self.video_heads,
            "attention_head_dim": self.video_head_dim,
            "cross_attention_dim": self.video_dim,
            "caption_channels": self.caption_channels,
            "audio_num_attention_heads": self.audio_heads,
            "audio_attention_head_dim": self.audio_head_dim,
            "audio_cross_attention_dim": self.audio_dim,
            "in_channels": self.video_in_channels,
            "out_channels": self.video_out_channels,
            "audio_in_channels": self.audio_in_channels,
            "audio_out_channels": self.audio_out_channels,
            "norm_eps": self.norm_eps,
            "positional_embedding_theta": self.rope_theta,
            "positional_embedding_max_pos": list(self.video_max_pos),
            "audio_positional_embedding_max_pos": list(self.audio_max_pos),
            "timestep_scale_multiplier": self.timestep_scale_multiplier,
            "av_ca_timestep_scale_multiplier": self.av_ca_timestep_scale_multiplier,
            "rope_type": "interleaved",
            "frequencies_precision": "float32",
            "audio_sink_tokens": self.audio_sink_tokens,
        }

    @classmethod
    def from_metadata(cls, section: Mapping[str, Any], *, student_conventions: bool = True) -> "ModelConfig":
        """Build a config from an LTX-style ``transformer`` metadata section.

        With ``student_conventions`` (the default, what a streaming model needs) the
        RoPE type, frequency precision and cross-modal gate multiplier of the teacher's
        metadata are ignored: the distilled student was trained with interleaved fp32
        RoPE and a gate multiplier of 1. The ``cross_attention_dim`` widths are not read:
        the loader takes the widths from the tensor shapes and cross-checks the metadata
        against them (``checkpoint.detect``).
        """
        def pick(key: str, default: Any) -> Any:
            return section.get(key, default)

        default = cls.ltx2_19b()
        return cls(
            num_layers=int(pick("num_layers", default.num_layers)),
            video_heads=int(pick("num_attention_heads", default.video_heads)),
            video_head_dim=int(pick("attention_head_dim", default.video_head_dim)),
            audio_heads=int(pick("audio_num_attention_heads", default.audio_heads)),
            audio_head_dim=int(pick("audio_attention_head_dim", default.audio_head_dim)),
            caption_channels=int(pick("caption_channels", default.caption_channels)),
            video_in_channels=int(pick("in_channels", 128)),
            video_out_channels=int(pick("out_channels", 128)),
            audio_in_channels=int(pick("audio_in_channels", 128)),
            audio_out_channels=int(pick("audio_out_channels", 128)),
            norm_eps=float(pick("norm_eps", 1e-6)),
            rope_theta=float(pick("positional_embedding_theta", 10000.0)),
            video_max_pos=tuple(float(v) for v in pick("positional_embedding_max_pos", (20, 2048, 2048))),
            audio_max_pos=tuple(float(v) for v in pick("audio_positional_embedding_max_pos", (20,))),
            timestep_scale_multiplier=float(pick("timestep_scale_multiplier", 1000.0)),
            av_ca_timestep_scale_multiplier=(
                1.0 if student_conventions else float(pick("av_ca_timestep_scale_multiplier", 1.0))
            ),
            audio_sink_tokens=int(pick("audio_sink_tokens", 0)),
        )

    def describe(self) -> str:
        return (
            f"{self.num_layers} layers, video {self.video_heads}x{self.video_head_dim}, "
            f"audio {self.audio_heads}x{self.audio_head_dim}, text {self.caption_channels}, "
            f"{self.audio_sink_tokens} audio sink tokens"
        )
