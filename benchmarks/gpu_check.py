"""The GPU check: one command that measures the streaming levers on a lent GPU, each on and off.

    python -m benchmarks.gpu_check                     # one H200: the 19B preset, about 6 minutes
    python -m benchmarks.gpu_check --preset mid --blocks 2 --device cpu   # the dry run CI makes

Prints one JSON line per configuration (``benchmarks.stream``'s fields: TTFC, FPS, per-block
times, peak GPU memory, the roofline), then one line per lever comparing it with the
baseline, then the demo's video VAE training speed here against the CPU (what the demo's
codec needs: many more steps than a CPU gives), then the CUDA-only tests (``pytest -m cuda``)
when a GPU is present. Weights are random bf16 (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import stream
from omniforcing_core.train import codecs as C
from omniforcing_core.train.config import load_config

REPO = Path(__file__).resolve().parent.parent

# Each lever: the benchmark flags that turn it on (off is the baseline), and what it changes.
LEVERS = {
    "decode_overlap": ([], "decode overlapped with the next block's generation (the node's way)"),
    "realtime_3step": (["--schedule", "realtime-3step"], "three denoising steps instead of four"),
    "fp8_weights": (["--fp8", "weights"], "block linear weights stored in fp8, upcast per call"),
    "fp8_gemm": (["--fp8", "gemm"], "block linears as fp8 x fp8 GEMMs (torch._scaled_mm)"),
    "two_streams": (["--two-streams"], "each layer's audio part on a second CUDA stream beside the video's"),
    # Last: compiling is the slow part (its time is the config's warmup_s). The CPU dry run
    # checks the plumbing with dynamo alone.
    "capture": (["--compile", "reduce-overhead", "--warmup", "6"],
                "the block loop compiled (inductor) with CUDA graphs, reused by every block"),
}


def stream_args(args: argparse.Namespace, extra: list[str]) -> list[str]:
    base = ["--preset", args.preset, "--blocks", str(args.blocks), "--window", "4",
            "--device", args.device, "--dtype", args.dtype, "--overlap-blocks", str(args.blocks)]
    if args.height:
        base += ["--height", str(args.height), "--width", str(args.width)]
    return base + (extra if "--warmup" in extra else ["--warmup", "1", *extra])


def measure(args: argparse.Namespace, extra: list[str]) -> dict:
    result = stream.run(stream.parse_args(stream_args(args, extra)))
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def summary(result: dict) -> dict:
    steady = result["block_s"]["denoise"][:-1] or result["block_s"]["denoise"]
    return {"ttfc_s": result["ttfc_s"], "fps_inline": result["fps_inline"],
            "fps_overlapped": result.get("levers", {}).get("decode_overlap", {}).get("overlapped_fps"),
            "denoise_block_s": round(sorted(steady)[len(steady) // 2], 4),
            "peak_gpu_bytes": result["peak_mem_bytes"].get("gpu")}


def lever_line(name: str, baseline: dict, result: dict) -> dict:
    before, after = summary(baseline), summary(result)
    if name == "decode_overlap":
        ratio = after["fps_overlapped"] / after["fps_inline"] if after["fps_overlapped"] else None
    else:
        ratio = after["fps_inline"] / before["fps_inline"]
    return {"lever": name, "what": LEVERS[name][1], "off": before, "on": after,
            "fps_ratio": None if ratio is None else round(ratio, 3)}


def run(args: argparse.Namespace) -> list[dict]:
    lines = []
    started = time.perf_counter()
    baseline = measure(args, [])
    lines.append({"config": "baseline", **baseline})
    for name, (extra, _) in LEVERS.items():
        if time.perf_counter() - started > args.budget_s:
            lines.append({"lever": name, "available": False, "why": f"not run: past the {args.budget_s} s budget"})
            continue
        if name == "fp8_gemm" and not fp8_gemm_available(args.device):
            lines.append({"lever": name, "available": False, "why": "this device has no fp8 GEMM"})
            continue
        if name == "two_streams" and not args.device.startswith("cuda"):
            lines.append({"lever": name, "available": False, "why": "CUDA streams need a GPU"})
            continue
        if name == "capture" and not args.device.startswith("cuda"):
            extra = ["--compile", "eager", "--warmup", "6"]
        result = baseline if not extra else measure(args, extra)
        if extra:
            lines.append({"config": name, **result})
        lines.append(lever_line(name, baseline, result))
    if args.codec_steps:
        lines.append(codec_line(args.device, args.codec_steps))
    lines.append({"check": "done", "wall_s": round(time.perf_counter() - started, 1)})
    return lines


def video_vae_steps_per_s(device: str, steps: int) -> float:
    """Training steps per second of the demo's video VAE (demo.toml's recipe) on ``device``,
    after two untimed steps."""
    s = C.codecs_section(load_config(REPO / "omniforcing_core" / "train" / "configs" / "demo.toml"))
    codecs = C.new_codecs(s).to(device)
    module = codecs.part("video")
    optimizer = torch.optim.AdamW(module.parameters(), lr=s.video_lr)
    trainer = C.Trainer(codecs, s)
    for step in range(2 + steps):
        if step == 2:
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = trainer.video(step)
        loss.backward()
        optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - started)


def codec_line(device: str, steps: int) -> dict:
    here, cpu = video_vae_steps_per_s(device, steps), video_vae_steps_per_s("cpu", max(steps // 10, 1))
    return {"check": "video_vae_training", "device": device, "steps_per_s": round(here, 2),
            "cpu_steps_per_s": round(cpu, 2), "ratio": round(here / cpu, 2)}


def fp8_gemm_available(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.get_device_capability(torch.device(device)) >= (8, 9)
    return True  # torch's CPU kernels take fp8 operands


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(stream.PRESETS), default="19b")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--no-tests", dest="tests", action="store_false", help="skip pytest -m cuda")
    parser.add_argument("--codec-steps", type=int, default=50,
                        help="timed steps of the demo's video VAE training (0: skip; the CPU gets a tenth)")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="start no lever after this many seconds (the whole check must fit in 8 minutes)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for line in run(args):
        print(json.dumps(line), flush=True)
    if args.tests and args.device.startswith("cuda"):
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(REPO / "tests")], cwd=REPO)
        print(json.dumps({"check": "pytest -m cuda", "returncode": tests.returncode}), flush=True)
        return tests.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
