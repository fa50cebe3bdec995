"""The fp8 x fp8 GEMM lever of FP8Linear: one torch._scaled_mm per call, close to the upcast path."""

import torch

from omniforcing_core.checkpoint.fp8 import FP8Linear, quantize_fp8, set_fp8_gemm


def _layer(inputs, outputs, bias, seed):
    generator = torch.Generator().manual_seed(seed)
    layer = FP8Linear(inputs, outputs, bias=bias, bias_dtype=torch.bfloat16)
    weight, scale = quantize_fp8(torch.randn(outputs, inputs, generator=generator) * 0.1)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.weight_scale.copy_(scale)
        if bias:
            layer.bias.copy_(torch.randn(outputs, generator=generator) * 0.1)
    return layer


def test_the_fp8_gemm_is_one_scaled_mm_close_to_the_upcast_weight(monkeypatch):
    model = torch.nn.Sequential(_layer(64, 48, True, 0), torch.nn.GELU(), _layer(48, 48, False, 1))
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    with torch.no_grad():
        upcast = model(x)
        assert set_fp8_gemm(model, True) == 2
        calls = []
        scaled_mm = torch._scaled_mm
        monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1) or scaled_mm(*a, **k))
        gemm = model(x)
    assert len(calls) == 2 and gemm.shape == upcast.shape == (2, 16, 48) and gemm.dtype == torch.bfloat16
    # The inputs' fp8 rounding (3 mantissa bits) is the only new error: a few percent of the output.
    relative = (gemm.float() - upcast.float()).norm() / upcast.float().norm()
    assert 1e-4 < relative < 0.06
    set_fp8_gemm(model, False)
    with torch.no_grad():
        assert torch.equal(model(x), upcast)
