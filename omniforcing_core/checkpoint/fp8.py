"""fp8 weights: per-tensor scaled float8 storage, computed in the activations' dtype.

An fp8 LTX-2 file stores a linear layer as ``weight`` (float8_e4m3fn) plus a scalar fp32
``weight_scale`` with ``real weight = weight * weight_scale``. ``FP8Linear`` keeps both
as they are on the device (half the memory of bf16) and upcasts the weight per call.
The scale is applied to the output, not the weight: it is a scalar, so the result is
the same and the work is over tokens x outputs instead of inputs x outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


class FP8Linear(nn.Module):
    """A linear layer whose weight stays fp8; its state dict matches an fp8 file's keys."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight_dtype: torch.dtype = torch.float8_e4m3fn,
                 bias_dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None):
        super().__init__()
        if weight_dtype not in FP8_DTYPES:
            raise ValueError(f"FP8Linear stores float8 weights, not {weight_dtype}")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=weight_dtype, device=device), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=bias_dtype, device=device), requires_grad=False)
            if bias else None
        )
        self.register_buffer("weight_scale", torch.ones((), dtype=torch.float32, device=device))

    # Off: the weight is upcast per call (exact to the weight's rounding). On: the input is
    # quantized to fp8 too and one fp8 x fp8 GEMM runs (``set_fp8_gemm``), where the device has one.
    fp8_gemm = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8_gemm and self.weight.dtype == torch.float8_e4m3fn:
            return _scaled_linear(x, self.weight, self.weight_scale, self.bias)
        out = F.linear(x, self.weight.to(x.dtype)) * self.weight_scale.to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_fp8(self.weight, self.weight_scale, dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weight_dtype={self.weight.dtype}"
        )


def _scaled_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T * weight_scale + bias`` as one fp8 GEMM: ``x`` quantized per tensor
    to e4m3 with its own scale, both scales applied by the GEMM, the output in x's dtype."""
    flat = x.reshape(-1, x.shape[-1])
    x_fp8, x_scale = quantize_fp8(flat)
    out = torch._scaled_mm(x_fp8, weight.t(), scale_a=x_scale, scale_b=weight_scale.float(),
                           bias=None if bias is None else bias.to(x.dtype), out_dtype=x.dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def set_fp8_gemm(model: nn.Module, on: bool) -> int:
    """Turn the fp8 x fp8 GEMMs of every ``FP8Linear`` in ``model`` on or off; returns how many."""
    layers = [module for module in model.modules() if isinstance(module, FP8Linear)]
    for layer in layers:
        layer.fp8_gemm = on
    return len(layers)


def fp8_scale(weight: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """The fp32 scalar that maps the weight's largest magnitude to fp8's largest value."""
    low, high = torch.aminmax(weight.detach())  # no |weight| temporary the size of the weight
    amax = torch.maximum(-low, high).float()
    return torch.where(amax > 0, amax / torch.finfo(dtype).max, torch.ones_like(amax)).reshape(())


def quantize_fp8(weight: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn, *,
                 slice_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled fp8: (fp8 weight, fp32 scalar scale) with weight ~= fp8 * scale.

    ``slice_elements``: quantize that many elements at a time through one reused fp32
    buffer, the only temporary (the loader's way: a weight memory-mapped from a file is
    never copied whole, and the heap does not fragment); None does it in one go
    (activations: the fewest kernels).
    """
    scale = fp8_scale(weight, dtype)
    largest = torch.finfo(dtype).max
    source = weight.detach()
    if slice_elements is None:
        return (source.float() / scale).clamp_(-largest, largest).to(dtype), scale
    quantized = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    source, target = source.reshape(-1), quantized.view(-1)
    work = torch.empty(min(slice_elements, source.numel()), dtype=torch.float32, device=weight.device)
    for start in range(0, source.numel(), slice_elements):
        piece = work[:min(slice_elements, source.numel() - start)]
        piece.copy_(source[start:start + piece.numel()]).div_(scale).clamp_(-largest, largest)
        target[start:start + piece.numel()].copy_(piece)  # the copy rounds to fp8
    return quantized, scale


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor:
    """What an fp8 weight stands for, in ``dtype``."""
    scale = scale if isinstance(scale, torch.Tensor) else torch.tensor(scale)
    return (weight.float() * scale.float().to(weight.device)).to(dtype)


def swap_in_fp8_linears(model: nn.Module, weight_dtypes: dict[str, torch.dtype], compute_dtype: torch.dtype) -> None:
    """Replace the named nn.Linear modules (built on meta) by FP8Linear, also on meta."""
    for name in sorted(weight_dtypes):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name} is a {type(linear).__name__}, not a linear layer")
        setattr(parent, child, FP8Linear(
            linear.in_features, linear.out_features, linear.bias is not None,
            weight_dtype=weight_dtypes[name], bias_dtype=compute_dtype, device="meta",
        ))
