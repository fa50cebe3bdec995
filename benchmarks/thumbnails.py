"""Template thumbnails from real frames of the built-in demo model.

    python -m benchmarks.thumbnails                  # writes workflows/omniforcing_demo.jpg
    python -m benchmarks.thumbnails --out /tmp/thumbs --seconds 2

ComfyUI's template browser shows ``<template>.jpg`` beside ``<template>.json``. This streams
the demo template as it is saved (its prompt, size, length and seed, read from the JSON),
takes frames spread over the stream and tiles them into one JPEG. Run it again whenever
the demo's files change. The real-model templates get no thumbnail from here: their
pictures would have to come from LTX-2 itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from omniforcing_core.checkpoint import load_prompt_encoder
from omniforcing_core.demo_model import DEMO_BASE, demo_path
from omniforcing_core.pipeline import StreamPipeline
from omniforcing_core.stream_run import StreamRequest, StreamRun

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
DEMO_TEMPLATE = "omniforcing_demo"
TILES = (2, 2)  # columns, rows


def template_stream(template: dict) -> dict:
    """The prompt and stream the template asks for (widget values by position, as saved)."""
    by_type = {node["type"]: node["widgets_values"] for node in template["nodes"]}
    width, height, seconds, seed = by_type["OmniForcingStreamingSampler"][:4]
    return {"prompt": by_type["OmniForcingDemoPrompt"][0], "width": width, "height": height,
            "seconds": seconds, "seed": seed}


def stream_frames(prompt: str, width: int, height: int, seconds: int, seed: int) -> torch.Tensor:
    """Every frame [N, H, W, 3] in 0..1 of a demo stream, decoded as users get it."""
    encoder = load_prompt_encoder(demo_path(DEMO_BASE))
    pipeline = StreamPipeline.demo()
    with torch.no_grad():
        run = StreamRun(pipeline, StreamRequest(encoder(prompt), seconds, height, width, seed, keep_latents=False))
        run.run()
    return run.outputs.images()


def tile(frames: torch.Tensor, columns: int = TILES[0], rows: int = TILES[1]) -> Image.Image:
    """Frames spread evenly over the stream (the first, alone in its block, left out), in a grid."""
    picks = np.linspace(1, frames.shape[0] - 1, columns * rows).round().astype(int)
    chosen = (frames[picks].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    _, height, width, _ = chosen.shape
    grid = chosen.reshape(rows, columns, height, width, 3).transpose(0, 2, 1, 3, 4).reshape(rows * height, columns * width, 3)
    return Image.fromarray(grid)


def render_thumbnail(out_dir: Path = WORKFLOWS, seconds: int | None = None) -> Path:
    template = json.loads((WORKFLOWS / f"{DEMO_TEMPLATE}.json").read_text(encoding="utf-8"))
    settings = template_stream(template)
    if seconds is not None:
        settings["seconds"] = seconds
    frames = stream_frames(**settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{DEMO_TEMPLATE}.jpg"
    tile(frames).save(path, quality=90)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=WORKFLOWS, help="folder for the .jpg (default: workflows/)")
    parser.add_argument("--seconds", type=int, help="stream length (default: the template's)")
    args = parser.parse_args(argv)
    print(f"wrote {render_thumbnail(args.out, args.seconds)}")


if __name__ == "__main__":
    main()
