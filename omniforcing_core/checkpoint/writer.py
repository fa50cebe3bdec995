"""Writing checkpoints in the layouts the loader reads: one file or shards plus an index.

Tensors are converted and written one at a time, so saving a loaded model needs no
second copy of it. Every file is written to a temporary name beside its target and
renamed into place only when all of them are complete (the index last); an existing
file is replaced only with ``overwrite=True``. Nothing the user made is lost to a
crash or a full disk half-way.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..layout import BlockLayout, LayoutError
from .fp8 import FP8_DTYPES, dequantize_fp8, fp8_scale, quantize_fp8
from .keys import LAYOUT_METADATA
from .reader import COMPUTE_DTYPES, DTYPE_NAMES, INDEX_SUFFIX, CheckpointError, resolve_dtype

SAVE_DTYPES = COMPUTE_DTYPES | {torch.float8_e4m3fn}
_BLOCK_LINEAR_WEIGHT = re.compile(r"^transformer_blocks\.\d+\..+\.weight$")


def block_linear_weights(name: str, tensor: torch.Tensor) -> bool:
    """The default fp8 selection: the 2-D weights of the transformer blocks' linear layers."""
    return tensor.ndim == 2 and bool(_BLOCK_LINEAR_WEIGHT.match(name))


@dataclass(frozen=True)
class _Entry:
    """One tensor to write: its on-disk name, dtype and shape, and how to produce it."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


def save_checkpoint(
    path: str | os.PathLike,
    weights: nn.Module | Mapping[str, torch.Tensor],
    *,
    prefix: str = "model.",
    config: ModelConfig | None = None,
    block_layout: BlockLayout | str | None = None,
    extra: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    extra_config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | str | None = None,
    fp8_filter: Callable[[str, torch.Tensor], bool] = block_linear_weights,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write transformer ``weights`` (a module or its state dict) as safetensors.

    - ``prefix``: put before every transformer key (``model.`` = OmniForcing generator,
      ``model.diffusion_model.`` = LTX-2 base file, ``model.velocity_model.`` = older).
    - ``config`` (default: the module's) goes to metadata ``config`` as its
      ``transformer`` section, beside ``extra_config`` sections (``vae``, ``audio_vae``...);
      ``block_layout`` is recorded for the loader; ``metadata`` adds raw entries.
    - ``extra``: other groups written under their own prefix, e.g. ``{"vae.": vae.state_dict()}``.
    - ``dtype``: None keeps each tensor's dtype; fp32/bf16/fp16 cast floating tensors (fp8
      weights are dequantized); fp8 stores the weights ``fp8_filter`` selects as
      float8_e4m3fn with a per-tensor fp32 ``weight_scale`` and everything else in bf16.
    - ``max_shard_bytes``: write shards ``name-0000k-of-0000n.safetensors`` and
      ``name.safetensors.index.json`` instead of one file.

    Returns the paths written. Refuses to replace existing files unless ``overwrite``.
    """
    path = Path(path).expanduser()
    if not path.name.endswith(".safetensors"):
        raise CheckpointError(f"{path}: the file name must end with .safetensors")
    target = None if dtype is None else resolve_dtype(dtype, SAVE_DTYPES)
    if isinstance(weights, nn.Module):
        if config is None and isinstance(getattr(weights, "config", None), ModelConfig):
            config = weights.config
        weights = weights.state_dict()
    entries = _transformer_entries(weights, prefix, target, fp8_filter)
    extra_dtype = torch.bfloat16 if target in FP8_DTYPES else target
    for group, tensors in (extra or {}).items():
        entries += [_cast_entry(group + key, tensor, extra_dtype) for key, tensor in tensors.items()]
    _check_unique(entries)
    header_metadata = _metadata(config, extra_config, block_layout, metadata)

    if max_shard_bytes is None:
        plan = [(path, entries)]
        index_path = None
    else:
        if max_shard_bytes <= 0:
            raise CheckpointError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        shards = _split(entries, max_shard_bytes)
        stem = path.name[: -len(".safetensors")]
        plan = [
            (path.with_name(f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"), shard)
            for i, shard in enumerate(shards)
        ]
        index_path = path.with_name(path.name + INDEX_SUFFIX)
    finals = [file for file, _ in plan] + ([index_path] if index_path else [])
    if not overwrite:
        existing = [str(file) for file in finals if file.exists()]
        if existing:
            raise FileExistsError(
                f"{', '.join(existing)} already exist(s); choose another name or pass overwrite=True to replace"
            )
    path.parent.mkdir(parents=True, exist_ok=True)

    temporaries: list[tuple[Path, Path]] = []
    try:
        for file, shard in plan:
            temporary = _temporary_beside(file)
            temporaries.append((temporary, file))
            _write_file(temporary, shard, header_metadata)
        if index_path is not None:
            index = {
                "metadata": {"total_size": sum(entry.nbytes for entry in entries)},
                "weight_map": {entry.key: file.name for file, shard in plan for entry in shard},
            }
            temporary = _temporary_beside(index_path)
            temporaries.append((temporary, index_path))
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(index, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
        if not overwrite:
            existing = [str(final) for _, final in temporaries if final.exists()]
            if existing:
                raise FileExistsError(f"{', '.join(existing)} appeared while writing; nothing was replaced")
        for temporary, final in temporaries:
            os.replace(temporary, final)
    finally:
        for temporary, _ in temporaries:
            temporary.unlink(missing_ok=True)
    return finals


def _transformer_entries(weights: Mapping[str, torch.Tensor], prefix: str, target: torch.dtype | None,
                         fp8_filter: Callable[[str, torch.Tensor], bool]) -> list[_Entry]:
    scales = {
        name.removesuffix("_scale"): tensor for name, tensor in weights.items()
        if name.endswith(".weight_scale") and weights.get(name.removesuffix("_scale")) is not None
        and weights[name.removesuffix("_scale")].dtype in FP8_DTYPES
    }
    entries = []
    for name, tensor in weights.items():
        if name.endswith(".weight_scale") and name.removesuffix("_scale") in scales:
            continue
        key = prefix + name
        if name in scales:
            scale = scales[name]
            if target is None or target in FP8_DTYPES:
                entries += [_cast_entry(key, tensor, None), _cast_entry(key + "_scale", scale, torch.float32)]
            else:
                entries.append(_Entry(key, target, tuple(tensor.shape),
                                      lambda t=tensor, s=scale: dequantize_fp8(t, s, target)))
        elif target in FP8_DTYPES and tensor.is_floating_point() and fp8_filter(name, tensor):
            entries += [
                _Entry(key, target, tuple(tensor.shape), lambda t=tensor: quantize_fp8(t, target)[0]),
                _Entry(key + "_scale", torch.float32, (), lambda t=tensor: fp8_scale(t, target)),
            ]
        else:
            entries.append(_cast_entry(key, tensor, torch.bfloat16 if target in FP8_DTYPES else target))
    return entries


def _cast_entry(key: str, tensor: torch.Tensor, dtype: torch.dtype | None) -> _Entry:
    if dtype is None or not tensor.is_floating_point():
        return _Entry(key, tensor.dtype, tuple(tensor.shape), lambda: tensor)
    return _Entry(key, dtype, tuple(tensor.shape), lambda: tensor.to(dtype))


def _check_unique(entries: list[_Entry]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.key in seen:
            raise CheckpointError(f"two tensors would be saved as '{entry.key}'; check the prefixes of extra groups")
        if entry.dtype not in DTYPE_NAMES:
            raise CheckpointError(f"tensor '{entry.key}' has dtype {entry.dtype}, which safetensors cannot store")
        seen.add(entry.key)


def _metadata(config: ModelConfig | None, extra_config: Mapping[str, Any] | None,
              block_layout: BlockLayout | str | None, metadata: Mapping[str, str] | None) -> dict[str, str]:
    result = {"format": "pt"}
    sections = dict(extra_config or {})
    if config is not None:
        sections["transformer"] = config.to_metadata()
    if sections:
        result["config"] = json.dumps(sections)
    if block_layout is not None:
        name = block_layout.name if isinstance(block_layout, BlockLayout) else str(block_layout)
        try:
            BlockLayout.named(name)
        except LayoutError as error:
            raise CheckpointError(str(error)) from None
        result[LAYOUT_METADATA] = json.dumps({"block_layout": name})
    for key, value in (metadata or {}).items():
        if key in result and key != "format":
            raise CheckpointError(f"metadata '{key}' is given twice (as an argument and in metadata=)")
        if not isinstance(value, str):
            raise CheckpointError(f"metadata '{key}' must be a string (safetensors stores strings only)")
        result[key] = value
    return result


def _split(entries: list[_Entry], max_bytes: int) -> list[list[_Entry]]:
    shards: list[list[_Entry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def _temporary_beside(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _write_file(file: Path, entries: list[_Entry], metadata: Mapping[str, str]) -> None:
    # Widest dtypes first keeps every tensor aligned to its element size on disk.
    ordered = sorted(entries, key=lambda entry: -entry.dtype.itemsize)
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for entry in ordered:
        header[entry.key] = {
            "dtype": DTYPE_NAMES[entry.dtype],
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(file, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for entry in ordered:
            tensor = entry.produce().detach()
            if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
                raise CheckpointError(
                    f"tensor '{entry.key}' came out as {tensor.dtype} {list(tensor.shape)}, "
                    f"expected {entry.dtype} {list(entry.shape)}"
                )
            handle.write(tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
            del tensor
        handle.flush()
        os.fsync(handle.fileno())
