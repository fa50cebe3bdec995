"""Training configuration: one TOML file, one section per stage.

```toml
[model]            # the student's architecture; the teacher is the same without sinks
preset = "tiny"
audio_sink_tokens = 4
layout = "paper"

[data]             # "synthetic" latents (smoke runs) or pre-encoded "shards"
kind = "synthetic"
seconds = 2
height = 64
width = 64

[run]
seed = 0
dtype = "float32"  # compute dtype; weights and optimiser state stay fp32

[teacher]          # one table per stage: teacher, stage1, ode_pairs, stage2, stage3
steps = 200
batch = 4
lr = 1e-3
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..config import ModelConfig
from ..layout import BlockLayout

STAGES = ("teacher", "stage1", "ode_pairs", "stage2", "stage3")
# Sections owned by the codec trainer and the world renderer (``codecs``, ``encode-world``).
OTHER_SECTIONS = ("codecs", "world")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TrainConfigError(ValueError):
    """A training configuration that is malformed or out of range."""


@dataclass(frozen=True)
class ModelSection:
    """A preset, optionally reshaped (0 keeps the preset's value); the latent widths follow
    the codecs the model is trained on."""

    preset: str = "tiny"
    audio_sink_tokens: int = 0
    layout: str = "released"
    num_layers: int = 0
    video_heads: int = 0
    video_head_dim: int = 0
    audio_heads: int = 0
    audio_head_dim: int = 0
    caption_channels: int = 0
    video_channels: int = 0
    audio_channels: int = 0

    def student_config(self) -> ModelConfig:
        presets = {"tiny": ModelConfig.tiny, "mid": ModelConfig.mid, "ltx2_19b": ModelConfig.ltx2_19b}
        if self.preset not in presets:
            raise TrainConfigError(f"[model] preset must be one of {sorted(presets)}, got {self.preset!r}")
        shape = {name: getattr(self, name) for name in (
            "num_layers", "video_heads", "video_head_dim", "audio_heads", "audio_head_dim", "caption_channels")}
        channels = {"video_channels": ("video_in_channels", "video_out_channels"),
                    "audio_channels": ("audio_in_channels", "audio_out_channels")}
        for name, fields_ in channels.items():
            shape.update({field_: getattr(self, name) for field_ in fields_})
        overrides = {key: value for key, value in shape.items() if value}
        return presets[self.preset](audio_sink_tokens=self.audio_sink_tokens, **overrides)

    def teacher_config(self) -> ModelConfig:
        return replace(self.student_config(), audio_sink_tokens=0)

    def block_layout(self) -> BlockLayout:
        return BlockLayout.named(self.layout)


@dataclass(frozen=True)
class DataSection:
    kind: str = "synthetic"
    path: str = ""
    seconds: int = 2
    height: int = 64
    width: int = 64
    prompts: int = 4
    size: int = 256


@dataclass(frozen=True)
class TextSection:
    """The world prompt encoder trained with the teacher (its caption width is the model's)."""

    width: int = 64
    num_layers: int = 2
    heads: int = 4
    max_tokens: int = 16


@dataclass(frozen=True)
class RunSection:
    seed: int = 0
    dtype: str = "float32"
    activation_checkpointing: bool = False
    log_every: int = 10
    checkpoint_every: int = 100
    device: str = ""

    @property
    def compute_dtype(self) -> torch.dtype:
        if self.dtype not in DTYPES:
            raise TrainConfigError(f"[run] dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class StageSection:
    """Hyper-parameters of one stage (each stage reads the ones it uses)."""

    steps: int = 100
    batch: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    video_weight: float = 1.0
    audio_weight: float = 1.0
    # Teacher
    text_dropout: float = 0.1
    sigma_shift: float = 1.0
    # DMD stages
    critic_lr: float = 1e-4
    critic_updates: int = 5
    guidance_video: float = 3.0
    guidance_audio: float = 3.0
    dmd_sigma_low: float = 0.02
    dmd_sigma_high: float = 0.98
    # Stage III
    ema_decay: float = 0.99
    ema_start: int = 0
    context_noise: float = 0.0
    # ODE pairs
    count: int = 32
    teacher_steps: int = 20
    shard_size: int = 16

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "grad_accum", "critic_updates", "count", "teacher_steps", "shard_size"):
            value, least = getattr(self, name), 0 if name == "steps" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise TrainConfigError(f"{name} must be an integer >= {least}, got {value!r}")
        if not 0 <= self.text_dropout < 1:
            raise TrainConfigError(f"text_dropout must be in [0, 1), got {self.text_dropout}")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    text: TextSection = field(default_factory=TextSection)
    run: RunSection = field(default_factory=RunSection)
    stages: dict[str, StageSection] = field(default_factory=dict)
    sigmas: tuple[float, ...] = (1.0, 0.906229, 0.726524, 0.420719, 0.0)
    # Tables of other trainers sharing the file (the codecs, the world), read by them.
    other: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stage(self, name: str) -> StageSection:
        return self.stages.get(name, StageSection())


def parse_section(cls, table: Mapping[str, Any], where: str):
    """One TOML table into its dataclass; unknown keys are refused with the allowed ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise TrainConfigError(f"[{where}] has unknown keys {unknown}; allowed: {sorted(known)}")
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in table.items()}
    return cls(**values)


def _stage_section(table: Mapping[str, Any], name: str) -> StageSection:
    try:
        return parse_section(StageSection, table, name)
    except TrainConfigError as exc:
        message = str(exc)
        raise TrainConfigError(message if message.startswith("[") else f"[{name}] {message}") from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a TOML config; ``overrides`` like ``"stage2.steps=50"`` replace single values
    (the value is a TOML literal: ``run.dtype="bfloat16"``, ``stage3.betas=[0.0, 0.999]``)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TrainConfigError(f"cannot read training config {path}: {exc}") from exc
    for override in overrides:
        name, _, literal = override.partition("=")
        section, _, key = name.strip().partition(".")
        if not (section and key and literal):
            raise TrainConfigError(f"an override is section.key=value (e.g. stage2.steps=50), got {override!r}")
        try:
            value = tomllib.loads(f"value = {literal.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            value = literal.strip()
        raw.setdefault(section, {})[key] = value
    sections = {"model": ModelSection, "data": DataSection, "text": TextSection, "run": RunSection}
    allowed = {*sections, *STAGES, *OTHER_SECTIONS, "sigmas"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise TrainConfigError(f"{path}: unknown sections {unknown}; allowed: {sorted(allowed)}")
    parsed = {name: parse_section(cls, raw.get(name, {}), name) for name, cls in sections.items()}
    stages = {name: _stage_section(raw[name], name) for name in STAGES if name in raw}
    extra = {"sigmas": tuple(float(s) for s in raw["sigmas"])} if "sigmas" in raw else {}
    other = {name: raw[name] for name in OTHER_SECTIONS if name in raw}
    return TrainConfig(**parsed, stages=stages, other=other, **extra)
