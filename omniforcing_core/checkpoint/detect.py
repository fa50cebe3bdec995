"""The architecture and block layout a set of weights describes.

Everything the weights determine (layers, widths, channels, FFN ratio, sink tokens) is
read from tensor shapes; the metadata ``transformer`` section supplies what shapes
cannot (how a width splits into heads, RoPE and timestep settings) and is cross-checked
against them. Explicit overrides may set what the weights leave open and may restate
what they fix, but never contradict it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ..config import STUDENT_CONVENTIONS, ConfigError, ModelConfig
from ..layout import BlockLayout, LayoutError
from .keys import SINK_KEY, summarize_names
from .reader import CheckpointError

# LTX-2's head sizes, used when no metadata says how a width splits into heads.
LTX2_VIDEO_HEAD_DIM = 128
LTX2_AUDIO_HEAD_DIM = 64

LAYOUT_OVERRIDE = "block_layout"
# Fields the weights' shapes fix; an override may only restate them.
WEIGHT_FIELDS = (
    "num_layers", "caption_channels", "video_in_channels", "video_out_channels",
    "audio_in_channels", "audio_out_channels", "ffn_mult", "audio_sink_tokens",
)
HEAD_FIELDS = ("video_heads", "video_head_dim", "audio_heads", "audio_head_dim")
CONVENTION_FIELDS = tuple(
    f.name for f in dataclasses.fields(ModelConfig) if f.name not in WEIGHT_FIELDS + HEAD_FIELDS
)
OVERRIDE_KEYS = WEIGHT_FIELDS + HEAD_FIELDS + CONVENTION_FIELDS + (LAYOUT_OVERRIDE,)

# Metadata keys describing shapes, and the detected value each must equal.
_METADATA_CHECKS = (
    ("num_layers", "num_layers"),
    ("caption_channels", "caption_channels"),
    ("in_channels", "video_in_channels"),
    ("out_channels", "video_out_channels"),
    ("audio_in_channels", "audio_in_channels"),
    ("audio_out_channels", "audio_out_channels"),
    ("cross_attention_dim", "video_dim"),
    ("audio_cross_attention_dim", "audio_dim"),
    ("audio_sink_tokens", "audio_sink_tokens"),
)

ShapeOf = Callable[[str], tuple[tuple[int, ...], str]]  # bare key -> (shape, file it is read from)

# Keys of the LTX transformer config that change what the transformer computes, with the
# value this model implements (the LTX-2 19B checkpoint's) and what another value asks for.
# Any other value is refused: loading such weights into this model would stream garbage.
COMPUTATION_KEYS: dict[str, tuple[Any, str]] = {
    "apply_gated_attention": (False, "gated attention (per-head output gates, as in LTX-2.3)"),
    "cross_attention_adaln": (False, "AdaLN-modulated text cross-attention (as in LTX-2.3)"),
    "use_prompt_adaln_single": (False, "a prompt-side AdaLN on the text keys and values"),
    "ff_bias": (True, "video feed-forward layers without biases (as in LTX-2.5)"),
    "audio_ff_bias": (True, "audio feed-forward layers without biases (as in LTX-2.5)"),
    "use_keyframes_abs_pos_embedding": (False, "a learned keyframe position embedding"),
    "caption_proj_before_connector": (False, "the caption projection outside the transformer"),
    "activation_fn": ("gelu-approximate", "another feed-forward activation"),
    "attention_bias": (True, "attention projections without biases"),
    "qk_norm": ("rms_norm", "another query/key normalisation"),
    "standardization_norm": ("rms_norm", "another normalisation"),
    "norm_elementwise_affine": (False, "learned affine normalisation weights"),
    "cross_attention_norm": (True, "text cross-attention without its normalisation"),
    "only_cross_attention": (False, "blocks without self-attention"),
    "double_self_attention": (False, "a second self-attention in place of text cross-attention"),
    "upcast_attention": (False, "attention upcast to fp32"),
    "use_linear_projection": (False, "linear in/out projections around each block"),
    "positional_embedding_type": ("rope", "another positional embedding"),
    "use_middle_indices_grid": (True, "RoPE at the start of each latent's interval, not its midpoint"),
    "use_audio_video_cross_attention": (True, "no audio<->video cross-attention"),
    "av_cross_ada_norm": (True, "audio<->video cross-attention without its AdaLN"),
    "share_ff": (False, "one feed-forward shared by both streams"),
}
# Tensor names that only exist for computation this model does not implement.
COMPUTATION_TENSORS = (
    (".to_gate_logits.", "gated attention (apply_gated_attention, as in LTX-2.3)"),
    ("prompt_adaln_single.", "a prompt-side AdaLN (cross_attention_adaln with use_prompt_adaln_single)"),
    ("keyframes_abs_pos_embedding", "a learned keyframe position embedding (use_keyframes_abs_pos_embedding)"),
)
_NOT_IMPLEMENTED = (
    "OmniForcing implements the LTX-2 (19B) transformer only; use a checkpoint distilled from LTX-2"
)


def check_computation(section: Mapping[str, Any] | None, source: str) -> None:
    """Refuse a metadata ``transformer`` section that asks for computation this model lacks."""
    problems = [
        f"{key}={section[key]!r} ({meaning}; this model implements {key}={implemented!r})"
        for key, (implemented, meaning) in COMPUTATION_KEYS.items()
        if section and key in section and not _same(section[key], implemented)
    ]
    if problems:
        raise CheckpointError(
            f"{source}: the metadata asks for computation this model does not implement: "
            + "; ".join(problems) + f". {_NOT_IMPLEMENTED}"
        )


def check_computation_tensors(names: list[str], source: str) -> None:
    """Refuse tensors that belong to computation this model lacks (bare transformer names)."""
    problems = []
    for fragment, meaning in COMPUTATION_TENSORS:
        hits = [name for name in names if fragment in name]
        if hits:
            problems.append(f"{meaning}: {summarize_names(hits, limit=4)}")
    if problems:
        raise CheckpointError(
            f"{source}: holds tensors for computation this model does not implement: "
            + "; ".join(problems) + f". {_NOT_IMPLEMENTED}"
        )


def _same(value: Any, implemented: Any) -> bool:
    # JSON may spell a flag as a string ("false") or a number (0).
    if isinstance(implemented, bool):
        return str(value).lower() in (("true", "1") if implemented else ("false", "0"))
    return value == implemented


def check_override_keys(overrides: Mapping[str, Any]) -> None:
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        raise CheckpointError(
            f"unknown override(s) {unknown}; allowed: {', '.join(OVERRIDE_KEYS)}"
        )


def detect_config(
    shape_of: ShapeOf,
    num_layers: int,
    layers_source: str,
    has_sinks: bool,
    section: Mapping[str, Any] | None,
    section_source: str,
    overrides: Mapping[str, Any],
    conventions: str = "student",
) -> tuple[ModelConfig, list[str]]:
    """The ModelConfig of the weights, and notes on metadata values set aside.

    ``conventions``: see ``ModelConfig.from_metadata``; overrides apply on top.
    """
    def dims(key: str, rank: int) -> tuple[tuple[int, ...], str]:
        shape, where = shape_of(key)
        if len(shape) != rank:
            raise CheckpointError(f"{where}: tensor '{key}' has shape {list(shape)}; expected {rank} dimensions")
        return shape, where

    (video_dim, video_in), video_where = dims("patchify_proj.weight", 2)
    (audio_dim, audio_in), audio_where = dims("audio_patchify_proj.weight", 2)
    (video_out, _), _ = dims("proj_out.weight", 2)
    (audio_out, _), _ = dims("audio_proj_out.weight", 2)
    (_, caption), _ = dims("caption_projection.linear_1.weight", 2)
    (hidden, _), ff_where = dims("transformer_blocks.0.ff.net.0.proj.weight", 2)
    if hidden % video_dim:
        raise CheckpointError(
            f"{ff_where}: feed-forward width {hidden} is not a multiple of the video width {video_dim}"
        )
    sinks = 0
    if has_sinks:
        shape, where = shape_of(SINK_KEY)
        if len(shape) != 3 or shape[0] != 1 or shape[2] != audio_dim:
            raise CheckpointError(
                f"{where}: '{SINK_KEY}' has shape {list(shape)}; expected [1, sinks, {audio_dim}] "
                "(one learned token per row at the audio width)"
            )
        sinks = shape[1]
    detected = {
        "num_layers": num_layers,
        "caption_channels": caption,
        "video_in_channels": video_in,
        "video_out_channels": video_out,
        "audio_in_channels": audio_in,
        "audio_out_channels": audio_out,
        "ffn_mult": hidden // video_dim,
        "audio_sink_tokens": sinks,
        "video_dim": video_dim,
        "audio_dim": audio_dim,
    }
    where_of = {"num_layers": layers_source, "video_dim": video_where, "audio_dim": audio_where}

    section = dict(section or {})
    for metadata_key, name in _METADATA_CHECKS:
        if metadata_key in section and _as_int(section[metadata_key]) != detected[name]:
            raise CheckpointError(
                f"{section_source}: metadata says {metadata_key}={section[metadata_key]!r} but the weights "
                f"have {detected[name]} ({where_of.get(name, 'from tensor shapes')}); the metadata does not "
                "describe these weights"
            )
    for name in WEIGHT_FIELDS:
        if name in overrides and _as_int(overrides[name]) != detected[name]:
            raise CheckpointError(
                f"override {name}={overrides[name]!r} contradicts the weights, which have "
                f"{name}={detected[name]} ({where_of.get(name, 'from tensor shapes')})"
            )

    video_heads, video_head_dim = _heads(
        "video", video_dim, video_where, overrides, "video_heads", "video_head_dim",
        section, section_source, "num_attention_heads", "attention_head_dim", LTX2_VIDEO_HEAD_DIM,
    )
    audio_heads, audio_head_dim = _heads(
        "audio", audio_dim, audio_where, overrides, "audio_heads", "audio_head_dim",
        section, section_source, "audio_num_attention_heads", "audio_attention_head_dim", LTX2_AUDIO_HEAD_DIM,
    )
    merged = dict(section)
    merged.update(
        num_layers=num_layers, caption_channels=caption,
        num_attention_heads=video_heads, attention_head_dim=video_head_dim,
        audio_num_attention_heads=audio_heads, audio_attention_head_dim=audio_head_dim,
        cross_attention_dim=video_dim, audio_cross_attention_dim=audio_dim,
        in_channels=video_in, out_channels=video_out,
        audio_in_channels=audio_in, audio_out_channels=audio_out, audio_sink_tokens=sinks,
    )
    convention_overrides = {name: overrides[name] for name in CONVENTION_FIELDS if name in overrides}
    try:
        config = ModelConfig.from_metadata(merged, conventions=conventions)
        config = dataclasses.replace(config, ffn_mult=detected["ffn_mult"], **convention_overrides)
    except (ConfigError, TypeError, ValueError) as error:
        raise CheckpointError(f"{section_source}: cannot build a model config from these weights: {error}") from None

    notes = []
    for key, student in STUDENT_CONVENTIONS.items():
        if conventions == "student" and key in section and not _matches(section[key], student):
            notes.append(
                f"{section_source}: metadata {key}={section[key]!r} is the teacher's convention; the streaming "
                f"student uses {student!r}"
            )
    return config, notes


def _heads(stream, width, width_source, overrides, heads_field, dim_field, section, section_source,
           heads_key, dim_key, default_head_dim) -> tuple[int, int]:
    """How a stream's width splits into heads: overrides, else metadata, else LTX-2's head size."""
    if heads_field in overrides or dim_field in overrides:
        heads, head_dim, origin = overrides.get(heads_field), overrides.get(dim_field), "override"
        names = (heads_field, dim_field)
    elif heads_key in section or dim_key in section:
        heads, head_dim, origin = section.get(heads_key), section.get(dim_key), f"{section_source}: metadata"
        names = (heads_key, dim_key)
    else:
        heads, head_dim, origin = None, default_head_dim, "LTX-2 default"
        names = (heads_field, dim_field)
    heads = None if heads is None else _as_int(heads)
    head_dim = None if head_dim is None else _as_int(head_dim)
    if heads is not None and head_dim is not None:
        if heads * head_dim != width:
            raise CheckpointError(
                f"{origin} {names[0]}={heads} x {names[1]}={head_dim} = {heads * head_dim} does not equal the "
                f"{stream} width {width} of the weights ({width_source})"
            )
        return heads, head_dim
    known, known_name = (heads, names[0]) if heads is not None else (head_dim, names[1])
    if known is None or known <= 0 or width % known:
        hint = (
            f"no metadata gives the {stream} heads, and the LTX-2 head size {default_head_dim} "
            if origin == "LTX-2 default" else f"{origin} {known_name}={known} "
        )
        raise CheckpointError(
            f"{width_source}: {hint}does not divide the {stream} width {width}; pass "
            f"overrides={{'{heads_field}': ..., '{dim_field}': ...}} with {heads_field} x {dim_field} = {width}"
        )
    other = width // known
    return (known, other) if heads is not None else (other, known)


def _matches(value: Any, expected: str | float) -> bool:
    if isinstance(expected, str):
        return str(value).lower() == expected
    try:
        return float(value) == float(expected)
    except (TypeError, ValueError):
        return False


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def detect_layout(
    sinks: int, sinks_source: str, hint: Any, hint_source: str, override: Any
) -> tuple[BlockLayout, str]:
    """Paper layout for sink tokens, else the file's hint, else released; overrides checked."""
    def named(value: Any, origin: str) -> BlockLayout:
        if isinstance(value, BlockLayout):
            return value
        try:
            return BlockLayout.named(str(value))
        except LayoutError as error:
            raise CheckpointError(f"{origin}: {error}") from None

    hinted = named(hint, f"{hint_source}: metadata block_layout") if hint is not None else None
    if sinks and hinted is not None and hinted.name != "paper":
        raise CheckpointError(
            f"{hint_source}: metadata block_layout={hinted.name!r} contradicts the weights: "
            f"{sinks_source} has {sinks} audio sink tokens, which belong to the paper layout"
        )
    if override is not None:
        layout = named(override, "override block_layout")
        if sinks and layout.name != "paper":
            raise CheckpointError(
                f"override block_layout={layout.name!r} contradicts the weights: {sinks_source} has {sinks} "
                "audio sink tokens, which belong to the paper layout (block_layout='paper')"
            )
        return layout, "set by override"
    if sinks:
        return BlockLayout.paper(), f"{sinks} audio sink tokens (paper design)"
    if hinted is not None:
        return hinted, f"{hint_source}: metadata block_layout"
    return BlockLayout.released(), "no sink tokens and no layout hint (the released checkpoint)"
