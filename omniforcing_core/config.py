"""Model configuration of the LTX-2 audio-video transformer and its presets.

One dataclass describes the architecture; the checkpoint metadata (an LTX-style
``transformer`` section) converts to and from it here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from .rope import FREQUENCY_PRECISIONS, ROPE_MIDPOINTS, ROPE_TYPES, STUDENT_ROPE, RopeConventions


class ConfigError(ValueError):
    """A configuration value is out of range or contradicts another one."""


# The conventions the distilled student was trained with; the LTX-2 teacher's checkpoint
# metadata says split / float64 / x1000, and ltx-core takes time midpoints in seconds.
STUDENT_CONVENTIONS: dict[str, Any] = {
    "rope_type": STUDENT_ROPE.rope_type,
    "frequencies_precision": STUDENT_ROPE.frequencies_precision,
    "rope_midpoint": STUDENT_ROPE.midpoint,
    "av_ca_timestep_scale_multiplier": 1.0,
}
# ``from_metadata(conventions=...)``: force the student's, or read the checkpoint's.
CONVENTIONS = ("student", "checkpoint")
_CHOICES = {"rope_type": ROPE_TYPES, "frequencies_precision": FREQUENCY_PRECISIONS, "rope_midpoint": ROPE_MIDPOINTS}


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
    # The cross-modal gate AdaLNs see sigma x this: 1 for the student, 1000 for the teacher.
    av_ca_timestep_scale_multiplier: float = STUDENT_CONVENTIONS["av_ca_timestep_scale_multiplier"]
    # RoPE conventions (see rope.py); field names are the metadata keys.
    rope_type: str = STUDENT_CONVENTIONS["rope_type"]
    frequencies_precision: str = STUDENT_CONVENTIONS["frequencies_precision"]
    rope_midpoint: str = STUDENT_CONVENTIONS["rope_midpoint"]
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
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        if self.rope_type == "split":
            # Each table is cut into its attention's heads; the video side of the
            # cross-modal table into the video head count (as ltx-core does).
            for name, width, heads in (
                ("video", self.video_dim, self.video_heads), ("audio", self.audio_dim, self.audio_heads),
                ("video cross-modal", self.cross_modal_dim, self.video_heads),
            ):
                if width % (2 * heads):
                    raise ConfigError(f"split RoPE needs an even {name} width per head, got {width} / {heads}")

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

    @property
    def rope_conventions(self) -> RopeConventions:
        return RopeConventions(self.rope_type, self.frequencies_precision, self.rope_midpoint)

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
            "rope_type": self.rope_type,
            "frequencies_precision": self.frequencies_precision,
            "rope_midpoint": self.rope_midpoint,
            "audio_sink_tokens": self.audio_sink_tokens,
        }

    @classmethod
    def from_metadata(cls, section: Mapping[str, Any], *, conventions: str = "student") -> "ModelConfig":
        """Build a config from an LTX-style ``transformer`` metadata section.

        ``conventions``:
        - "student" (the default, what a streaming model needs): the RoPE type, frequency
          precision, time midpoint and cross-modal gate multiplier are the student's
          (``STUDENT_CONVENTIONS``), whatever the metadata says; the distilled student was
          trained with them even though the LTX-2 file it came from says otherwise.
        - "checkpoint" (the teacher): they are read from the metadata, keys
          ``rope_type``, ``frequencies_precision``, ``av_ca_timestep_scale_multiplier`` and
          ``rope_midpoint``, with ltx-core's defaults for absent keys (interleaved, float32,
          1, and "seconds": LTX files do not write ``rope_midpoint``, ltx-core's midpoint is
          in seconds; this project's files write it).

        Either way a value outside the allowed ones is a ConfigError naming the key. The
        ``cross_attention_dim`` widths are not read: the loader takes the widths from the
        tensor shapes and cross-checks the metadata against them (``checkpoint.detect``).
        """
        if conventions not in CONVENTIONS:
            raise ConfigError(f"conventions must be one of {', '.join(map(repr, CONVENTIONS))}, got {conventions!r}")

        def pick(key: str, default: Any) -> Any:
            return section.get(key, default)

        default = cls.ltx2_19b()
        config = cls(
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
            av_ca_timestep_scale_multiplier=float(pick("av_ca_timestep_scale_multiplier", 1.0)),
            rope_type=pick("rope_type", "interleaved"),
            frequencies_precision=pick("frequencies_precision", "float32"),
            rope_midpoint=pick("rope_midpoint", "seconds"),
            audio_sink_tokens=int(pick("audio_sink_tokens", 0)),
        )
        return replace(config, **STUDENT_CONVENTIONS) if conventions == "student" else config

    def describe(self) -> str:
        return (
            f"{self.num_layers} layers, video {self.video_heads}x{self.video_head_dim}, "
            f"audio {self.audio_heads}x{self.audio_head_dim}, text {self.caption_channels}, "
            f"{self.audio_sink_tokens} audio sink tokens"
        )
