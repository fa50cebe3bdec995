"""Filling a module built on the meta device, one tensor at a time.

A module built under ``torch.device("meta")`` costs no memory. Each of its tensors is
then read from the checkpoint straight to the target device and dtype and put in place
(``assign``, not copied into a preallocated tensor), so at no point do two copies of
the weights exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .fp8 import quantize_fp8
from .keys import summarize_names
from .reader import Checkpoint, CheckpointError


# Elements quantized at once while loading: a 4 MiB fp32 temporary.
QUANTIZE_SLICE = 1 << 20


@dataclass(frozen=True)
class TensorRead:
    """Where one module tensor comes from and how it arrives."""

    checkpoint: Checkpoint
    key: str
    dtype: torch.dtype | None  # None keeps the file's dtype (fp8 weights)
    scale_key: str | None = None  # multiply by this scalar on load (a dequantized fp8 tensor)
    shape: tuple[int, ...] | None = None  # reshape to this (a scalar stored as [1])
    quantize: torch.dtype | None = None  # store a linear weight as scaled fp8 of this dtype

    def read(self, device: torch.device) -> torch.Tensor:
        if self.scale_key is None:
            tensor = self.checkpoint.read(self.key, device=device, dtype=self.dtype)
        else:
            tensor = self.checkpoint.read(self.key, device=device, dtype=torch.float32)
            tensor.mul_(self.checkpoint.read(self.scale_key, device=device, dtype=torch.float32).reshape(()))
            tensor = tensor.to(self.dtype)
        return tensor.reshape(self.shape) if self.shape is not None else tensor

    def tensors(self, name: str, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
        """``name`` and its tensor; a quantized weight also gives its ``weight_scale``.

        A quantized weight is read from the file's mapped bytes (no copy on the CPU; one
        in the file's dtype on another device), so the host never holds it in full
        precision; a weight with its own scale is dequantized first.
        """
        if self.quantize is None:
            yield name, self.read(device)
            return
        source = self.read(device) if self.scale_key is not None else self.checkpoint.view(self.key).to(device)
        weight, scale = quantize_fp8(source, self.quantize, slice_elements=QUANTIZE_SLICE)
        del source  # unmaps the file's bytes before the next tensor is read
        yield name, weight
        yield f"{name}_scale", scale

    def file_order(self) -> tuple[str, int]:
        info = self.checkpoint.info(self.key)
        return str(info.file), info.begin


def tensor_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every tensor of ``module``'s state dict, by name, with its shape."""
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def expected_tensors(module_type: Callable[[Any], nn.Module], config: Any) -> dict[str, tuple[int, ...]]:
    """The tensors ``module_type(config)`` loads, by state-dict name (without a file prefix),
    with their shapes; the module is built on the meta device, so this costs no memory."""
    with torch.device("meta"):
        return tensor_shapes(module_type(config))


def assign_tensor(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` in place of parameter or buffer ``name`` (inference: no gradients)."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = tensor
    else:
        raise KeyError(f"{type(module).__name__} has no parameter or buffer named '{name}'")


def materialize(module: nn.Module, reads: Mapping[str, TensorRead], device: torch.device | str) -> None:
    """Read every planned tensor into ``module``, in file order (sequential disk access)."""
    device = torch.device(device)
    for name, plan in sorted(reads.items(), key=lambda item: item[1].file_order()):
        for key, tensor in plan.tensors(name, device):
            assign_tensor(module, key, tensor)
    left = [name for name, tensor in _tensors(module) if tensor.is_meta]
    if left:
        raise CheckpointError(
            f"{len(left)} tensor(s) of {type(module).__name__} were never loaded: {summarize_names(left)}"
        )


def _tensors(module: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    yield from module.named_parameters()
    yield from module.named_buffers()


@dataclass(frozen=True)
class ModuleWeights:
    """The checked reads that fill one module, and the tensors under its prefix it does not have."""

    module: nn.Module
    reads: Mapping[str, TensorRead]
    unexpected: list[str]

    def load(self, device: torch.device | str = "cpu") -> list[str]:
        """Read every tensor into the module; returns ``unexpected``."""
        materialize(self.module, self.reads, device)
        return self.unexpected


def check_module_weights(
    module: nn.Module,
    checkpoint: Checkpoint,
    prefix: str = "",
    *,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    ignore: tuple[str, ...] = (),
) -> ModuleWeights:
    """Match ``module``'s state dict to the tensors under ``prefix``, from the headers alone.

    Every tensor of the state dict must be present with its exact shape. Tensors under
    ``prefix`` the module does not have are an error with ``strict``, else reported in
    ``unexpected``; those under an ``ignore`` sub-prefix (e.g. ``"encoder."``: parts of
    the component that are not built) are skipped either way. Every problem is named
    in one error. Nothing is read: that is ``load``.
    """
    expected = tensor_shapes(module)
    available = {
        key[len(prefix):]: key for key in checkpoint.group(prefix)
        if key[len(prefix):] in expected or not key[len(prefix):].startswith(ignore)
    }
    owner = type(module).__name__
    problems = []
    missing = [prefix + name for name in expected if name not in available]
    if missing:
        problems.append(f"{len(missing)} tensor(s) of {owner} missing under '{prefix}': {summarize_names(missing)}")
    wrong = [
        f"'{available[name]}' {list(checkpoint.info(available[name]).shape)} (expected {list(shape)})"
        for name, shape in expected.items()
        if name in available and checkpoint.info(available[name]).shape != shape
    ]
    if wrong:
        problems.append(
            f"{len(wrong)} tensor(s) under '{prefix}' have the wrong shape: "
            + ", ".join(wrong[:8]) + (" ..." if len(wrong) > 8 else "")
        )
    unexpected = sorted(available[name] for name in available if name not in expected)
    if unexpected and strict:
        problems.append(
            f"{len(unexpected)} tensor(s) under '{prefix}' that {owner} does not have: {summarize_names(unexpected)}"
        )
    if problems:
        raise CheckpointError(f"{checkpoint.path}: " + "; ".join(problems))
    reads = {name: TensorRead(checkpoint, available[name], dtype) for name in expected}
    return ModuleWeights(module, reads, unexpected)


def load_module_weights(
    module: nn.Module,
    checkpoint: Checkpoint,
    prefix: str = "",
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    strict: bool = True,
    ignore: tuple[str, ...] = (),
) -> list[str]:
    """Fill ``module`` (built on meta, or not) from the tensors under ``prefix``.

    Checks everything ``check_module_weights`` does before anything is read, then reads
    each tensor straight to ``device`` and ``dtype`` (None keeps the file's). Returns the
    unexpected tensors (only ever non-empty without ``strict``). Buffers the state dict
    does not hold (non-persistent ones) must not be on meta: build them for real.
    """
    return check_module_weights(module, checkpoint, prefix, dtype=dtype, strict=strict, ignore=ignore).load(device)
