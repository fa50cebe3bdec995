"""What the keys of a checkpoint are: the transformer prefix, known groups, strangers.

The transformer is found by its timestep-embedding key, as ComfyUI does; whatever
precedes that key is the file's prefix (``model.`` for the OmniForcing generator,
``model.diffusion_model.`` for the LTX-2 base file, ``model.velocity_model.`` for older
generators). Everything else is either a known non-transformer group (VAEs, vocoder,
text-encoder side) or unexpected.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from .reader import CheckpointError

TRANSFORMER_MARKER = "adaln_single.emb.timestep_embedder.linear_1.bias"
AUDIO_MARKER = "audio_adaln_single.linear.weight"
SINK_KEY = "audio_sink_tokens"
# The generator's own safetensors metadata entry: JSON {"block_layout": "released" | "paper"}.
LAYOUT_METADATA = "omniforcing"
BLOCK_KEY = re.compile(r"^transformer_blocks\.(\d+)\.")
# The LTX-2 base file's transformer prefix (the teacher; OmniForcing generators use ``model.``).
BASE_PREFIX = "model.diffusion_model."

# fp8 files keep a per-tensor scale beside each quantized weight; ComfyUI's older
# "scaled fp8" files name them the other way round.
WEIGHT_SCALE_SUFFIXES = ("weight_scale", "scale_weight")
INPUT_SCALE_SUFFIXES = ("input_scale", "scale_input")

# Groups outside the transformer prefix.
OUTER_GROUPS = {
    "vae.": "video VAE",
    "audio_vae.": "audio VAE",
    "vocoder.": "vocoder",
    "text_embedding_projection.": "text-encoder projection",
}
# Groups stored under the transformer prefix that are not part of it.
INNER_GROUPS = {
    "video_embeddings_connector.": "text connector (video)",
    "audio_embeddings_connector.": "text connector (audio)",
    "mask_builder.": "reference runtime buffers",
    "vae.": "video VAE",
    "audio_vae.": "audio VAE",
    "vocoder.": "vocoder",
}
# Marker tensors ComfyUI's quantized files carry (a file-level flag, per-layer format
# blobs); they hold no weights.
QUANT_MARKERS = ("scaled_fp8",)
QUANT_MARKER_LEAVES = ("comfy_quant",)

EXPECTED_EXAMPLE = (
    f"model.{TRANSFORMER_MARKER} (OmniForcing generator) or "
    f"model.diffusion_model.{TRANSFORMER_MARKER} (LTX-2 base file)"
)


@dataclass
class KeyClassification:
    """One file's keys sorted into the transformer (by bare name), scales, groups and the rest."""

    prefix: str
    transformer: dict[str, str] = field(default_factory=dict)  # bare name -> file key
    weight_scales: dict[str, str] = field(default_factory=dict)  # bare weight name -> file key
    input_scales: dict[str, str] = field(default_factory=dict)
    groups: Counter = field(default_factory=Counter)  # group description -> tensor count
    unexpected: list[str] = field(default_factory=list)


def find_transformer_prefix(keys: Iterable[str], source: str) -> str:
    """The prefix of the LTX-2 AV transformer in ``keys``, or an error saying what the file is."""
    keys = list(keys)
    # "." before the marker: av_ca_*_adaln_single... ends with the same words.
    prefixes = sorted({
        key[: -len(TRANSFORMER_MARKER)]
        for key in keys
        if key == TRANSFORMER_MARKER or key.endswith("." + TRANSFORMER_MARKER)
    })
    if not prefixes:
        raise_foreign(keys, source)
    if len(prefixes) > 1:
        shown = ", ".join(repr(p) for p in prefixes)
        raise CheckpointError(f"{source}: holds several transformers (key prefixes {shown}); pass a file with one")
    prefix = prefixes[0]
    key_set = set(keys)
    if prefix + AUDIO_MARKER not in key_set:
        raise CheckpointError(
            f"{source}: this looks like an LTX-Video transformer without an audio stream (it has "
            f"'{prefix}{TRANSFORMER_MARKER}' but no '{prefix}{AUDIO_MARKER}'); OmniForcing needs the "
            "LTX-2 audio-video transformer (ltx-2-19b-*.safetensors or the OmniForcing generator)"
        )
    return prefix


def classify_keys(keys: Iterable[str], prefix: str) -> KeyClassification:
    result = KeyClassification(prefix)
    for key in keys:
        outer = _group_of(key, OUTER_GROUPS)
        if outer is not None and not (prefix and key.startswith(prefix)):
            result.groups[outer] += 1
            continue
        if key in QUANT_MARKERS:
            result.groups["fp8 format marker"] += 1
            continue
        if not key.startswith(prefix):
            result.unexpected.append(key)
            continue
        name = key[len(prefix):]
        inner = _group_of(name, INNER_GROUPS)
        if inner is not None:
            result.groups[inner] += 1
            continue
        layer, _, leaf = name.rpartition(".")
        if leaf in QUANT_MARKER_LEAVES:
            result.groups["fp8 format marker"] += 1
        elif leaf in WEIGHT_SCALE_SUFFIXES and layer:
            result.weight_scales[layer + ".weight"] = key
        elif leaf in INPUT_SCALE_SUFFIXES and layer:
            result.input_scales[layer + ".weight"] = key
        else:
            result.transformer[name] = key
    return result


def _group_of(name: str, groups: Mapping[str, str]) -> str | None:
    for group_prefix, description in groups.items():
        if name.startswith(group_prefix):
            return description
    return None


def block_indices(names: Iterable[str]) -> list[int]:
    return sorted({int(match.group(1)) for name in names if (match := BLOCK_KEY.match(name))})


# The transformer the weights must fill ---------------------------------------------


def linear_weight_names(model: torch.nn.Module) -> set[str]:
    """Bare keys of every nn.Linear weight: the tensors an fp8 file may quantize."""
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def block_linear_names(model: torch.nn.Module) -> set[str]:
    """Bare keys of the transformer blocks' nn.Linear weights: what ``fp8_weights`` stores in fp8."""
    return {name for name in linear_weight_names(model) if BLOCK_KEY.match(name)}


# Strangers -------------------------------------------------------------------------

_FINGERPRINTS = (
    (("input_blocks.", "middle_block."), "a Stable Diffusion UNet (SD 1.x/2.x/SDXL)"),
    (("double_blocks.", "single_blocks."), "a Flux-style transformer"),
    (("joint_blocks.",), "a Stable Diffusion 3 MMDiT"),
    (("lora_A.", "lora_B.", "lora_down.", "lora_up.", "lora_unet_"), "a LoRA (adapter weights, not a full model)"),
    (("language_model.", "layers.0.self_attn.", "embed_tokens."), "a language / text-encoder model (e.g. Gemma)"),
    (("encoder.down_blocks.", "decoder.up_blocks.", "encoder.down.", "decoder.up."), "a VAE"),
    (("vocoder.", "ups.0."), "a vocoder"),
)


def describe_keys(keys: list[str]) -> str:
    """A short description of what a key set looks like, for error messages."""
    for needles, what in _FINGERPRINTS:
        hits = [key for key in keys if any(needle in key for needle in needles)]
        if hits:
            return f"it looks like {what} (e.g. '{hits[0]}')"
    groups = Counter(".".join(key.split(".")[:2]) for key in keys)
    common = ", ".join(f"{name}.* ({count})" for name, count in groups.most_common(4))
    return f"its keys are {common}" if common else "it holds no tensors"


def raise_foreign(keys: list[str], source: str) -> None:
    raise CheckpointError(
        f"{source}: not an LTX-2 audio-video transformer checkpoint: {describe_keys(keys)}. "
        f"Expected keys like {EXPECTED_EXAMPLE}"
    )


def summarize_names(names: Iterable[str], limit: int = 12) -> str:
    """Names with block indices folded: ``transformer_blocks.{0-47}.attn1.to_q.weight``."""
    per_suffix: dict[str, list[int]] = {}
    singles: list[str] = []
    for name in names:
        match = BLOCK_KEY.match(name)
        if match:
            per_suffix.setdefault(name[match.end():], []).append(int(match.group(1)))
        else:
            singles.append(name)
    folded = sorted(singles) + [
        f"transformer_blocks.{{{_ranges(sorted(indices))}}}.{suffix}" if len(indices) > 1
        else f"transformer_blocks.{indices[0]}.{suffix}"
        for suffix, indices in sorted(per_suffix.items())
    ]
    shown = ", ".join(folded[:limit])
    return shown if len(folded) <= limit else f"{shown}, ... and {len(folded) - limit} more patterns"


def _ranges(indices: list[int]) -> str:
    parts = []
    start = previous = indices[0]
    for index in indices[1:] + [None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return ",".join(parts)
