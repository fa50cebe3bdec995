"""Loading the OmniForcing generator over the LTX-2 base file into an AVTransformer.

Order of work: open every header; find each file's transformer prefix; overlay the
generator on the base (a tensor in both comes from the generator); refuse metadata or
tensors asking for computation the model lacks; detect the architecture and block
layout; check every needed tensor's presence, shape and dtype, and the decoders' headers
in the base file; check the device has room. Only then is the model built on the meta
device and filled one tensor at a time, straight to the target device and dtype.

fp8: a linear weight of a transformer block stored as float8 stays float8 on the
device (``FP8Linear``, with its ``weight_scale``, computed in the activations' dtype);
any other float8 tensor (upstream keeps the projections in and out, the AdaLN and
caption layers in bf16 anyway) is dequantized to ``dtype`` on load, so the layers that
set the model's working dtype never hold fp8. ``input_scale`` tensors are not needed: activations
are never quantized here. A file whose fp8 weights carry scales for some layers but not
others is refused (the unscaled ones would load at scale 1). With ``fp8_weights`` a
higher-precision block linear weight is quantized as it is read, so the host never holds
more than the fp8 model and one tensor in the file's precision.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import CONVENTIONS, ModelConfig
from ..layout import BlockLayout
from ..transformer import AVTransformer
from .components import check_decoders
from .detect import (
    LAYOUT_OVERRIDE, check_computation, check_computation_tensors, check_override_keys, detect_config, detect_layout,
)
from .fp8 import FP8_DTYPES, swap_in_fp8_linears
from .keys import (
    BASE_PREFIX,
    LAYOUT_METADATA,
    SINK_KEY,
    KeyClassification,
    block_indices,
    block_linear_names,
    classify_keys,
    find_transformer_prefix,
    summarize_names,
)
from .materialize import TensorRead, assign_tensor, materialize, tensor_shapes
from ..host import available_host_memory
from .reader import Checkpoint, CheckpointError, TensorInfo, open_checkpoint, resolve_dtype

GENERATOR = "generator"
BASE = "base"
# What ``fp8_weights`` stores a higher-precision block linear weight as.
QUANTIZED_DTYPE = torch.float8_e4m3fn


@dataclass(frozen=True)
class SourceSummary:
    role: str
    path: Path
    prefix: str


@dataclass
class LoadReport:
    """Where every tensor came from and what was left aside."""

    generator: SourceSummary
    base: SourceSummary | None
    sources: dict[str, str] = field(default_factory=dict)  # transformer key -> "generator" | "base"
    superseded: list[str] = field(default_factory=list)  # base tensors the generator replaced
    fp8_layers: list[str] = field(default_factory=list)  # linear layers kept in fp8
    unexpected: dict[str, list[str]] = field(default_factory=dict)  # role -> file keys
    ignored_groups: dict[str, dict[str, int]] = field(default_factory=dict)  # role -> group -> tensors
    config_source: str = ""
    layout_reason: str = ""
    bytes_loaded: int = 0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # also raised as UserWarnings by load_model

    def count(self, role: str) -> int:
        return sum(1 for source in self.sources.values() if source == role)

    def summary(self) -> str:
        lines = [f"{self.count(GENERATOR)} tensors from the generator {self.generator.path}"]
        if self.base is not None:
            lines.append(
                f"{self.count(BASE)} tensors from the base {self.base.path} "
                f"({len(self.superseded)} base tensors replaced by the generator's)"
            )
        lines.append(f"{self.bytes_loaded / 2**30:.2f} GiB loaded; {len(self.fp8_layers)} linear layers kept in fp8")
        lines.append(f"config from {self.config_source}; layout: {self.layout_reason}")
        for role, groups in self.ignored_groups.items():
            if groups:
                listed = ", ".join(f"{name} ({count})" for name, count in sorted(groups.items()))
                lines.append(f"not part of the transformer, left in the {role} file: {listed}")
        for role, keys in self.unexpected.items():
            if keys:
                lines.append(f"UNEXPECTED in the {role} file ({len(keys)}): {summarize_names(keys)}")
        lines.extend(self.notes)
        lines.extend(f"WARNING: {warning}" for warning in self.warnings)
        return "\n".join(lines)


@dataclass
class LoadedModel:
    model: AVTransformer
    config: ModelConfig
    layout: BlockLayout
    sink_tokens: int
    report: LoadReport


@dataclass
class _Source:
    role: str
    checkpoint: Checkpoint
    keys: KeyClassification

    @property
    def label(self) -> str:
        return f"{self.role} {self.checkpoint.path}"

    def info(self, name: str) -> TensorInfo:
        return self.checkpoint.info(self.keys.transformer[name])

    def summary(self) -> SourceSummary:
        return SourceSummary(self.role, self.checkpoint.path, self.keys.prefix)


def _open_source(role: str, path: str | os.PathLike, stack: ExitStack) -> _Source:
    checkpoint = stack.enter_context(open_checkpoint(path))
    prefix = find_transformer_prefix(checkpoint.keys(), f"{role} {checkpoint.path}")
    return _Source(role, checkpoint, classify_keys(checkpoint.keys(), prefix))


def load_model(
    generator_path: str | os.PathLike,
    base_path: str | os.PathLike | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.bfloat16,
    overrides: Mapping[str, Any] | None = None,
    strict: bool = False,
    fp8_weights: bool = False,
    conventions: str = "student",
) -> LoadedModel:
    """Build the streaming transformer from the generator, filling gaps from the base file.

    ``generator_path`` / ``base_path``: a ``.safetensors``, an ``.index.json`` or a folder.
    ``dtype`` is the compute dtype (fp8 weights stay fp8). ``overrides`` may set any
    ModelConfig field or ``block_layout`` ('released' / 'paper'); one that contradicts
    the weights is an error. Unexpected tensors are reported (and warned about); with
    ``strict`` they are an error. ``fp8_weights`` stores every block linear weight in
    fp8, quantized as it is read (half the memory of bf16; computed in ``dtype``).

    ``conventions``: "student" (default) gives the streaming generator the conventions
    it was distilled with (interleaved fp32 RoPE, time midpoints in frames, cross-modal
    gate multiplier 1), whatever the metadata says. "checkpoint" reads them from the
    metadata (``rope_type``, ``frequencies_precision``, ``rope_midpoint``,
    ``av_ca_timestep_scale_multiplier``, ltx-core's defaults where absent): use it to load
    the LTX-2 teacher, e.g. ``load_model("ltx-2-19b-dev.safetensors", conventions="checkpoint")``,
    and run it without masks. Overrides of those fields apply on top of either. With
    "student", an LTX-2 base file given as the generator is a warning (the teacher would
    run as the student), and so is every transformer tensor filled from the base.

    Every header is checked before the first tensor is read, the base file's decoders
    included when it holds any (``load_decoders`` reads them later).
    """
    if conventions not in CONVENTIONS:
        raise CheckpointError(
            f"conventions must be one of {', '.join(map(repr, CONVENTIONS))}, got {conventions!r}"
        )
    device = torch.device(device)
    dtype = resolve_dtype(dtype)
    overrides = dict(overrides or {})
    check_override_keys(overrides)
    with ExitStack() as stack:
        generator = _open_source(GENERATOR, generator_path, stack)
        base = _open_source(BASE, base_path, stack) if base_path is not None else None
        plan = _plan(generator, base, overrides, dtype, conventions, fp8_weights)
        if base is not None:
            check_decoders(base.checkpoint)
        for warning in plan.report.warnings:
            warnings.warn(warning, stacklevel=2)
        unexpected = {role: keys for role, keys in plan.report.unexpected.items() if keys}
        if unexpected and strict:
            raise CheckpointError(
                "unexpected tensors (strict load): "
                + "; ".join(f"{role}: {summarize_names(keys)}" for role, keys in unexpected.items())
            )
        if unexpected:
            warnings.warn(
                "checkpoint tensors the model does not use (see LoadReport.unexpected): "
                + "; ".join(f"{role}: {summarize_names(keys, limit=4)}" for role, keys in unexpected.items()),
                stacklevel=2,
            )
        _check_room(plan.bytes_needed, device)
        model = plan.model
        swap_in_fp8_linears(model, plan.fp8_dtypes, dtype)
        for layer in plan.unscaled_fp8:
            assign_tensor(model, f"{layer}.weight_scale", torch.ones((), device=device))
        materialize(model, plan.reads, device)
    model.eval()
    plan.report.bytes_loaded = plan.bytes_needed
    return LoadedModel(model, plan.config, plan.layout, plan.config.audio_sink_tokens, plan.report)


@dataclass
class _Plan:
    model: AVTransformer  # on the meta device until materialized
    config: ModelConfig
    layout: BlockLayout
    reads: dict[str, TensorRead]
    fp8_dtypes: dict[str, torch.dtype]  # linear layers stored in fp8 -> their storage dtype
    unscaled_fp8: list[str]  # of those, the ones whose file has no weight_scale at all (scale 1)
    bytes_needed: int
    report: LoadReport


def _plan(
    generator: _Source, base: _Source | None, overrides: dict[str, Any], dtype: torch.dtype, conventions: str,
    fp8_weights: bool,
) -> _Plan:
    """Every check that the headers allow, and the list of tensors to read."""
    sources = [generator] + ([base] if base is not None else [])
    for source in sources:
        check_computation(source.checkpoint.config_section("transformer"), source.label)
        check_computation_tensors(list(source.keys.transformer), source.label)
    owner: dict[str, _Source] = {}
    for source in sources:
        for name in source.keys.transformer:
            owner.setdefault(name, source)
    if base is not None:
        _check_overlay_shapes(generator, base)

    def shape_of(name: str) -> tuple[tuple[int, ...], str]:
        if name not in owner:
            raise CheckpointError(
                f"cannot detect the architecture: transformer tensor '{name}' is in neither "
                + " nor ".join(s.label for s in sources)
            )
        info = owner[name].info(name)
        return info.shape, str(info.file)

    layers_from = generator if block_indices(generator.keys.transformer) else (base or generator)
    indices = block_indices(layers_from.keys.transformer)
    if not indices:
        raise CheckpointError(f"{layers_from.label}: holds no transformer_blocks.* tensors")
    section, section_source = None, "no metadata"
    for source in sources:
        section = source.checkpoint.config_section("transformer")
        if section is not None:
            section_source = f"{source.label}"
            break
    config, notes = detect_config(
        shape_of, indices[-1] + 1, f"{layers_from.label}: transformer_blocks.{{{indices[0]}-{indices[-1]}}}",
        SINK_KEY in owner, section, section_source, overrides, conventions,
    )
    hint = (generator.checkpoint.json_metadata(LAYOUT_METADATA) or {}).get("block_layout")
    sinks_source = owner[SINK_KEY].label if SINK_KEY in owner else ""
    layout, layout_reason = detect_layout(
        config.audio_sink_tokens, sinks_source, hint, generator.label, overrides.get(LAYOUT_OVERRIDE)
    )

    report = LoadReport(generator.summary(), base.summary() if base is not None else None,
                        config_source=f"{section_source} + tensor shapes, {conventions} conventions",
                        layout_reason=layout_reason, notes=notes)
    with torch.device("meta"):
        model = AVTransformer(config)
    expected = tensor_shapes(model)
    block_linears = block_linear_names(model)
    missing = [name for name in expected if name not in owner]
    if missing:
        raise CheckpointError(
            f"{len(missing)} transformer tensor(s) of the detected model ({config.describe()}) are in neither "
            + " nor ".join(s.label for s in sources) + f": {summarize_names(missing)}"
        )

    reads: dict[str, TensorRead] = {}
    fp8_dtypes: dict[str, torch.dtype] = {}
    unscaled_fp8: list[str] = []
    fp8_scaled: dict[str, list[str]] = {source.role: [] for source in sources}  # role -> bare names
    fp8_unscaled: dict[str, list[str]] = {source.role: [] for source in sources}
    bytes_needed = 0
    for name, shape in expected.items():
        source = owner[name]
        info = source.info(name)
        if info.shape != shape:
            raise CheckpointError(
                f"{info.file}: tensor '{info.key}' has shape {list(info.shape)} but the detected model "
                f"({config.describe()}) needs {list(shape)}"
            )
        if not info.is_floating_point:
            raise CheckpointError(
                f"{info.file}: tensor '{info.key}' has dtype {info.dtype_name}; expected a floating-point tensor"
            )
        scale_key = source.keys.weight_scales.get(name)
        if scale_key is not None:
            _check_scale(source.checkpoint.info(scale_key))
        report.sources[name] = source.role
        if info.dtype in FP8_DTYPES:
            (fp8_scaled if scale_key is not None else fp8_unscaled)[source.role].append(name)
        block_linear = name in block_linears
        if info.dtype in FP8_DTYPES and block_linear:
            layer = name.removesuffix(".weight")
            report.fp8_layers.append(layer)
            fp8_dtypes[layer] = info.dtype
            reads[name] = TensorRead(source.checkpoint, info.key, None)
            if scale_key is not None:
                reads[f"{layer}.weight_scale"] = TensorRead(source.checkpoint, scale_key, torch.float32, shape=())
            else:
                unscaled_fp8.append(layer)
                report.notes.append(f"{info.file}: fp8 weight '{info.key}' has no weight_scale; using 1")
            bytes_needed += info.nbytes
        elif fp8_weights and block_linear:
            layer = name.removesuffix(".weight")
            report.fp8_layers.append(layer)
            fp8_dtypes[layer] = QUANTIZED_DTYPE
            reads[name] = TensorRead(source.checkpoint, info.key, torch.float32, scale_key=scale_key,
                                     quantize=QUANTIZED_DTYPE)
            bytes_needed += info.numel * QUANTIZED_DTYPE.itemsize
        else:
            reads[name] = TensorRead(source.checkpoint, info.key, dtype, scale_key=scale_key)
            bytes_needed += info.numel * dtype.itemsize
    for source in sources:
        _check_scales_complete(source, fp8_scaled[source.role], fp8_unscaled[source.role])
    if base is not None:
        report.superseded = sorted(name for name in base.keys.transformer if name in generator.keys.transformer)
    report.warnings.extend(_provenance_warnings(generator, base, report, conventions))

    used_layers = {name.removesuffix(".weight") for name in reads}
    for source in sources:
        strays = [source.keys.transformer[n] for n in source.keys.transformer if n not in expected]
        strays += [key for weight, key in source.keys.weight_scales.items() if weight not in expected]
        strays += [key for weight, key in source.keys.input_scales.items() if weight not in expected]
        report.unexpected[source.role] = sorted(strays + source.keys.unexpected)
        groups = dict(source.keys.groups)
        scales = sum(1 for weight in source.keys.input_scales if weight.removesuffix(".weight") in used_layers)
        if scales:
            groups["fp8 input scales (activations are not quantized)"] = scales
        report.ignored_groups[source.role] = groups
    return _Plan(model, config, layout, reads, fp8_dtypes, unscaled_fp8, bytes_needed, report)


def _check_overlay_shapes(generator: _Source, base: _Source) -> None:
    conflicts = [
        f"'{name}' {list(generator.info(name).shape)} in the generator vs {list(base.info(name).shape)} in the base"
        for name in generator.keys.transformer
        if name in base.keys.transformer and generator.info(name).shape != base.info(name).shape
    ]
    if conflicts:
        raise CheckpointError(
            f"the generator {generator.checkpoint.path} and the base {base.checkpoint.path} are different "
            f"models: {len(conflicts)} tensor(s) differ in shape, e.g. " + "; ".join(conflicts[:4])
            + ". Use the LTX-2 base file the generator was distilled from (ltx-2-19b-*.safetensors)"
        )


def _check_scales_complete(source: _Source, scaled: list[str], unscaled: list[str]) -> None:
    """Scales for some fp8 tensors but not others: an incomplete conversion, not scale 1."""
    if scaled and unscaled:
        raise CheckpointError(
            f"{source.checkpoint.path}: {len(unscaled)} fp8 tensor(s) have no weight_scale although "
            f"{len(scaled)} others in the file do: {summarize_names(unscaled)}. Loaded at scale 1 they would "
            "stream garbage; re-export the file with a weight_scale beside every fp8 weight (or use its "
            "bf16 release)"
        )


def _provenance_warnings(generator: _Source, base: _Source | None, report: LoadReport, conventions: str) -> list[str]:
    """What a user must know about where the weights came from: the teacher loaded as the
    student, and transformer tensors the generator lacks, filled from the base."""
    found = []
    same_file = base is not None and generator.checkpoint.path.resolve() == base.checkpoint.path.resolve()
    if conventions == "student" and (generator.keys.prefix == BASE_PREFIX or same_file):
        found.append(
            f"the generator {generator.checkpoint.path} is an LTX-2 base file (its transformer is under "
            f"'{generator.keys.prefix}'), not an OmniForcing generator: the bidirectional LTX-2 teacher runs as "
            "the block-causal student and will not stream what OmniForcing makes. Pass the distilled "
            "OmniForcing generator (keys 'model.*') as the generator and this file as the base; to run the "
            "teacher on purpose, load it with conventions='checkpoint'"
        )
    from_base = [name for name, role in report.sources.items() if role == BASE]
    if base is not None and from_base:
        found.append(
            f"{len(from_base)} transformer tensor(s) are not in the generator {generator.checkpoint.path} and "
            f"come from the base {base.checkpoint.path} (the teacher's weights): {summarize_names(from_base)}"
        )
    return found


def _check_scale(info: TensorInfo) -> None:
    if info.numel != 1 or not info.is_floating_point:
        raise CheckpointError(
            f"{info.file}: '{info.key}' must be one floating-point number (a per-tensor fp8 scale), "
            f"found shape {list(info.shape)} of {info.dtype_name}"
        )


def _check_room(nbytes: int, device: torch.device) -> None:
    """Refuse a load that cannot fit rather than die half-way (or be killed by the OS)."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        where = f"{device}"
    elif device.type == "cpu":
        free = available_host_memory()
        where = "host memory"
    else:
        return
    if free is not None and nbytes > free:
        raise CheckpointError(
            f"the model needs {nbytes / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB of {where} is free; "
            "free memory, use an fp8 checkpoint, or load to another device"
        )
