"""What a streamed block costs against what the device can do: FLOPs per block (denoise and
decode), the device's measured GEMM peak, and aten calls per block (the host-overhead proxy).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``. It has no formula for the
CPU flash-attention kernel and silently counts it as free (half of a transformer block's
work at long sequences); ``register_cpu_attention_flops`` gives it the same formula as the
CUDA kernels.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

from omniforcing_core.stream_run import DecodeOptions, StreamRun

_CPU_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def register_cpu_attention_flops() -> None:
    """Count the CPU flash-attention kernel as FlopCounterMode counts the CUDA ones (once)."""
    if _CPU_FLASH in flop_counter.flop_registry or _CPU_FLASH.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(_CPU_FLASH)
    def _cpu_flash_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


class AtenCalls(TorchDispatchMode):
    """Counts every aten call that reaches the dispatcher (each costs host time)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


class Counted:
    """FLOPs and aten calls of what runs inside it."""

    def __enter__(self) -> "Counted":
        register_cpu_attention_flops()
        self._flops = flop_counter.FlopCounterMode(display=False)
        self._calls = AtenCalls()
        self._flops.__enter__()
        self._calls.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._calls.__exit__(*exc)
        self._flops.__exit__(*exc)
        self.flops = self._flops.get_total_flops()
        self.calls = self._calls.count


def block_costs(pipeline, request) -> dict:
    """FLOPs and aten calls of one steady-state block (the window full): its denoising and
    context passes, and its decode."""
    window = request.settings.window_blocks or 1
    # The block measured fills the window; one more follows it, so it runs its context pass.
    blocks = window + request.settings.retained_start_blocks + 1
    seconds = blocks if pipeline.layout.has_prefix_block else blocks + 1
    latents_only = replace(request, seconds=seconds, decode=DecodeOptions("none"), keep_latents=True)
    run = StreamRun(pipeline, latents_only)
    stream = iter(run)
    with run:
        for _ in range(blocks - 1):
            next(stream)
        with Counted() as denoise:
            next(stream)
    video, audio = run.outputs.latents()
    decoder = pipeline.decoder(video_lookahead_latents=request.decode.video_lookahead, seed=request.seed)
    spans = list(pipeline.layout.iter_blocks(blocks))
    for span in spans[:-1]:
        decoder.push(span, video[:, :, span.video_start:span.video_end], audio[:, span.audio_start:span.audio_end])
    last = spans[-1]
    with torch.no_grad(), Counted() as decode:
        decoder.push(last, video[:, :, last.video_start:last.video_end], audio[:, last.audio_start:last.audio_end])
    return {"denoise_flops": denoise.flops, "decode_flops": decode.flops,
            "denoise_aten_calls": denoise.calls, "decode_aten_calls": decode.calls,
            "measured_block": blocks - 1}


def gemm_peak_flops(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` square matmuls: what the device's GEMM reaches here."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
