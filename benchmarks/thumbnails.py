"""The templates' thumbnails: the demo's from real frames of the built-in demo model, title
cards for the templates that need the LTX-2 files.

    python -m benchmarks.thumbnails                  # writes workflows/<template>.jpg
    python -m benchmarks.thumbnails --out /tmp/thumbs --seconds 2
    python -m benchmarks.thumbnails --still docs/demo_still.png   # the README's still

ComfyUI's template browser asks for ``<template>.jpg`` beside ``<template>.json``. This streams
the demo template as it is saved (its prompt, size, length and seed, read from the JSON),
takes frames spread over the stream and tiles them into one JPEG; run it again whenever the
demo's files change. The real-model templates' pictures would need the 19B model: they get a
title card that says what the template makes. The README's still is the README command's
stream: a frame every half second above the sound's spectrogram, so its impacts show too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from omniforcing_core.checkpoint import load_prompt_encoder
from omniforcing_core.decoders.mel import log_mel_spectrogram
from omniforcing_core.demo_model import DEMO_BASE, DEMO_HEIGHT, DEMO_PROMPT, DEMO_WIDTH, demo_path
from omniforcing_core.layout import VIDEO_FPS
from omniforcing_core.pipeline import StreamPipeline
from omniforcing_core.stream_run import StreamRequest, StreamRun

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
DEMO_TEMPLATE = "omniforcing_demo"
TILES = (2, 2)  # columns, rows
SPECTROGRAM_FLOOR, SPECTROGRAM_TOP = -6.0, 1.0
SPECTROGRAM_TOP_HZ = 5000.0  # the world's tones (523-1480 Hz) and their first harmonics
STRIP_HEIGHT = 96


def template_stream(template: dict) -> dict:
    """The prompt and stream the template asks for (widget values by position, as saved)."""
    by_type = {node["type"]: node["widgets_values"] for node in template["nodes"]}
    width, height, seconds, seed = by_type["OmniForcingStreamingSampler"][:4]
    return {"prompt": by_type["OmniForcingDemoPrompt"][0], "width": width, "height": height,
            "seconds": seconds, "seed": seed}


def stream_media(prompt: str, width: int, height: int, seconds: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every frame [N, H, W, 3] in 0..1 and the 24 kHz waveform [2, T] of a demo stream,
    decoded as users get them."""
    encoder = load_prompt_encoder(demo_path(DEMO_BASE))
    pipeline = StreamPipeline.demo()
    with torch.no_grad():
        run = StreamRun(pipeline, StreamRequest(encoder(prompt), seconds, height, width, seed, keep_latents=False))
        run.run()
    return run.outputs.images(), run.outputs.waveform()


def tile(frames: torch.Tensor, columns: int = TILES[0], rows: int = TILES[1]) -> Image.Image:
    """Frames spread evenly over the stream (the first, alone in its block, left out), in a grid."""
    picks = np.linspace(1, frames.shape[0] - 1, columns * rows).round().astype(int)
    chosen = (frames[picks].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    _, height, width, _ = chosen.shape
    grid = chosen.reshape(rows, columns, height, width, 3).transpose(0, 2, 1, 3, 4).reshape(rows * height, columns * width, 3)
    return Image.fromarray(grid)


# The templates that need LTX-2 files get title cards: without the 19B model there is no frame
# of their stream to show, so the card says what the template makes.
CARD_SIZE = (384, 256)  # as the demo's thumbnail
CARDS = {
    "omniforcing_t2av_5s": ("Text to audio + video", ["LTX-2 19B, streamed", "5 s at 512x768, quality 4-step",
                                                      "needs the LTX-2 files (see the note)"]),
    "omniforcing_realtime_3step": ("Real-time preset", ["LTX-2 19B, 3 steps per block", "faster, a little less quality",
                                                        "needs the LTX-2 files (see the note)"]),
    "omniforcing_long_stream_60s": ("60 s stream", ["8 s rolling window, rebased positions",
                                                   "prompt switch at 30 s, blended over 2 s",
                                                   "needs the LTX-2 files (see the note)"]),
}


def font(size: int, bold: bool = False):
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return ImageFont.load_default(size)


def card(title: str, lines: list[str]) -> Image.Image:
    image = Image.new("RGB", CARD_SIZE, (18, 20, 28))
    draw = ImageDraw.Draw(image)
    # A strip of one-second blocks, the way the stream arrives.
    for n in range(6):
        shade = 60 + 25 * n
        draw.rounded_rectangle((24 + n * 57, 28, 24 + n * 57 + 50, 78), radius=6, fill=(shade // 2, shade // 2, shade))
    draw.text((24, 100), "OmniForcing", font=font(15), fill=(150, 160, 190))
    draw.text((24, 122), title, font=font(26, bold=True), fill=(240, 240, 245))
    for n, line in enumerate(lines):
        draw.text((24, 166 + 22 * n), line, font=font(15), fill=(190, 195, 210))
    return image


def render_title_cards(out_dir: Path = WORKFLOWS) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (title, lines) in CARDS.items():
        card(title, lines).save(out_dir / f"{name}.jpg", quality=90)
        paths.append(out_dir / f"{name}.jpg")
    return paths


def render_thumbnail(out_dir: Path = WORKFLOWS, seconds: int | None = None) -> Path:
    template = json.loads((WORKFLOWS / f"{DEMO_TEMPLATE}.json").read_text(encoding="utf-8"))
    settings = template_stream(template)
    if seconds is not None:
        settings["seconds"] = seconds
    frames, _ = stream_media(**settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{DEMO_TEMPLATE}.jpg"
    tile(frames).save(path, quality=90)
    return path


def spectrogram_strip(waveform: torch.Tensor, width: int, height: int = STRIP_HEIGHT) -> Image.Image:
    """The sound's log-mel up to 5 kHz (low pitches at the bottom) stretched to ``width`` x ``height``."""
    mel = log_mel_spectrogram(waveform.float().mean(dim=0), sample_rate=24_000, n_fft=1024, hop_length=240, n_mels=64,
                              f_max=SPECTROGRAM_TOP_HZ)
    # Fixed levels, so a quiet stream looks quiet: the world's noise floor (-6.4 natural-log
    # units at this mel's settings) is black, its loudest tones (about +1) white.
    level = ((mel.T.flip(0) - SPECTROGRAM_FLOOR) / (SPECTROGRAM_TOP - SPECTROGRAM_FLOOR)).clamp(0, 1)
    shades = (255 * level.sqrt()).to(torch.uint8).numpy()
    return Image.fromarray(shades).resize((width, height), Image.NEAREST).convert("RGB")


def render_still(path: Path, seconds: int = 5) -> Path:
    """The README command's stream (its default prompt and seed): frames every half second
    in one row above the spectrogram of the same seconds."""
    frames, waveform = stream_media(DEMO_PROMPT, DEMO_WIDTH, DEMO_HEIGHT, seconds, seed=0)
    picks = [min(n * VIDEO_FPS // 2, frames.shape[0] - 1) for n in range(1, 2 * seconds + 1)]
    row = (frames[picks].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    row = np.concatenate(list(row), axis=1)
    still = Image.new("RGB", (row.shape[1], row.shape[0] + STRIP_HEIGHT))
    still.paste(Image.fromarray(row), (0, 0))
    still.paste(spectrogram_strip(waveform, row.shape[1]), (0, row.shape[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    still.save(path)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=WORKFLOWS, help="folder for the .jpg (default: workflows/)")
    parser.add_argument("--seconds", type=int, help="stream length (default: the template's)")
    parser.add_argument("--still", type=Path, help="write the README's still here instead (5 s, the command's stream)")
    args = parser.parse_args(argv)
    if args.still:
        print(f"wrote {render_still(args.still)}")
        return
    for path in (render_thumbnail(args.out, args.seconds), *render_title_cards(args.out)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
