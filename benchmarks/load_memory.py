"""Peak host memory of load_model, and fp8 vs bf16 forward time on CPU.

    python benchmarks/load_memory.py                 # ~1 GiB fp32 checkpoint, loaded as fp32
    python benchmarks/load_memory.py --file-dtype bf16 --dtype bf16
    python benchmarks/load_memory.py --file-dtype bf16 --dtype bf16 --fp8   # quantised to fp8 on load
    python benchmarks/load_memory.py --skip-timing   # or --skip-memory

Memory: a checkpoint of random weights is written to a temporary folder (deleted
afterwards); a fresh Python process imports torch, notes its resident memory, loads the
checkpoint to the CPU and reports its peak resident memory (VmHWM, which counts mapped
file pages too). The goal is a peak of at most 1.3x the file size; with ``--fp8`` (block
linears quantised to fp8 while loading) a peak of about one copy of the loaded weights.
Linux only (/proc).

Timing: a small model saved as bf16 and as fp8 (per-tensor scales), both loaded to
compute in bf16 on the CPU; median wall time of the full-sequence forward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from omniforcing_core import AVTransformer, ModelConfig, TextConditioning  # noqa: E402
from omniforcing_core.checkpoint import load_model, save_checkpoint  # noqa: E402

# About 265M parameters: 0.99 GiB in fp32 (the import of torch alone is ~0.2 GiB of it).
MEMORY_CONFIG = dict(num_layers=10, video_heads=16, video_head_dim=64, audio_heads=8, audio_head_dim=64,
                     caption_channels=1024)


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(path: str, dtype: str, fp8: bool) -> None:
    """Runs in a fresh process: load once, report memory as JSON."""
    baseline = status_bytes("VmRSS")
    # torch's meta-device machinery costs a fixed ~70 MiB the first time it runs; measured
    # apart so the part that grows with the weights shows.
    with torch.device("meta"):
        AVTransformer(ModelConfig.tiny())
    warm = status_bytes("VmRSS")
    start = time.perf_counter()
    loaded = load_model(path, device="cpu", dtype=dtype, fp8_weights=fp8)
    seconds = time.perf_counter() - start
    weights = sum(t.nbytes for t in loaded.model.state_dict().values())
    print(json.dumps({"baseline": baseline, "warm": warm, "peak": status_bytes("VmHWM"), "weights": weights,
                      "seconds": seconds}))


def measure_memory(file_dtype: str, dtype: str, fp8: bool) -> None:
    config = ModelConfig(**MEMORY_CONFIG)
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        path = Path(folder) / "memory_benchmark.safetensors"
        model = AVTransformer(config)
        save_checkpoint(path, model, dtype=file_dtype)
        del model
        size = path.stat().st_size
        result = subprocess.run(
            [sys.executable, __file__, "--child", str(path), "--dtype", dtype] + (["--fp8"] if fp8 else []),
            check=True, capture_output=True, text=True,
        )
        numbers = json.loads(result.stdout.strip().splitlines()[-1])
    gib = 2**30
    weights = "block linears quantised to fp8" if fp8 else "weights"
    print(f"checkpoint {size / gib:.3f} GiB ({file_dtype}, {config.describe()}), loaded as {dtype}, {weights}")
    print(f"  loaded weights       {numbers['weights'] / gib:.3f} GiB in {numbers['seconds']:.2f} s")
    print(f"  process before load  {numbers['baseline'] / gib:.3f} GiB (python + torch), "
          f"{numbers['warm'] / gib:.3f} GiB after the meta-device warm-up")
    print(f"  peak during load     {numbers['peak'] / gib:.3f} GiB")
    print(f"  peak / file size     {numbers['peak'] / size:.3f}   (goal <= 1.3)")
    print(f"  (peak - warm process) / loaded weights  {(numbers['peak'] - numbers['warm']) / numbers['weights']:.3f}")


def measure_fp8_timing(repeats: int) -> None:
    torch.manual_seed(0)
    config = ModelConfig.mid()
    model = AVTransformer(config)
    frames, grid, audio_frames = 4, (8, 12), 101
    video = torch.randn(1, config.video_in_channels, frames, *grid, dtype=torch.bfloat16)
    audio = torch.randn(1, audio_frames, config.audio_in_channels, dtype=torch.bfloat16)
    text = TextConditioning(torch.randn(1, 64, config.caption_channels, dtype=torch.bfloat16),
                            torch.randn(1, 64, config.caption_channels, dtype=torch.bfloat16))
    video_sigma, audio_sigma = torch.rand(1, frames), torch.rand(1, audio_frames)
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        timings = {}
        for file_dtype in ("bf16", "fp8"):
            path = save_checkpoint(Path(folder) / f"{file_dtype}.safetensors", model, dtype=file_dtype)[0]
            loaded = load_model(path, dtype="bf16").model
            with torch.no_grad():
                loaded(video, audio, video_sigma, audio_sigma, text)  # warm-up
                runs = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    loaded(video, audio, video_sigma, audio_sigma, text)
                    runs.append(time.perf_counter() - start)
            weights = sum(t.nbytes for t in loaded.state_dict().values())
            timings[file_dtype] = statistics.median(runs)
            print(f"{file_dtype:>4} weights {weights / 2**20:6.1f} MiB, "
                  f"forward median {timings[file_dtype] * 1e3:7.1f} ms "
                  f"({repeats} runs, {frames * grid[0] * grid[1]} video + {audio_frames} audio tokens, "
                  f"{torch.get_num_threads()} threads)")
    print(f"fp8 / bf16 forward time: {timings['fp8'] / timings['bf16']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file-dtype", default="fp32", choices=["fp32", "bf16", "fp8"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--fp8", action="store_true", help="load with fp8_weights=True")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dtype, args.fp8)
        return
    if not args.skip_memory:
        measure_memory(args.file_dtype, args.dtype, args.fp8)
    if not args.skip_timing:
        measure_fp8_timing(args.repeats)


if __name__ == "__main__":
    main()
