"""Standalone command: stream an OmniForcing model to an mp4 with sound, block by block.

    python -m omniforcing_core stream --generator omniforcing_ltx2_5s_causal.safetensors.index.json \\
        --base ltx-2-19b-dev.safetensors --context prompt.safetensors --seconds 5 --out out/clip.mp4
    python -m omniforcing_core stream --seconds 5 --out out/tiny.mp4      # tiny random weights: noise
    python -m omniforcing_core write-tiny-checkpoints models/              # tiny files in the real layouts
"""

from __future__ import annotations

import argparse
import sys
import time
import torch

from .conditioning import TextConditioning, load_text_conditioning
from .demo import write_tiny_checkpoints
from .kv_cache import POSITION_MODES
from .media import Mp4StreamWriter, free_path
from .layout import LAYOUT_NAMES
from .pipeline import StreamPipeline
from .sampler import StreamSettings
from .schedule import PRESETS, resolve_schedule


def _build(args: argparse.Namespace) -> tuple[StreamPipeline, TextConditioning]:
    """The pipeline from real checkpoints, or the tiny random preset, and the prompt."""
    if args.generator is None:
        print("No --generator given: using the tiny preset with RANDOM weights. The output is noise; "
              "it shows the machinery (streaming, decoding, muxing), not a picture.", file=sys.stderr)
        pipeline = StreamPipeline.tiny_random(args.seed).to(args.device)
        generator = torch.Generator().manual_seed(args.seed)
        shape = (1, 64, pipeline.caption_channels)
        text = TextConditioning(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
        return pipeline, text.to(args.device)
    if args.base is None:
        raise SystemExit("--base is required with --generator: the LTX-2 base file holds the VAE, audio VAE and vocoder")
    if args.context is None:
        raise SystemExit(
            "--context is required with a real model: a .safetensors prompt context, e.g. saved from ComfyUI "
            "with the 'OmniForcing Save Prompt Context' node after the LTX-2 text encoder"
        )
    pipeline = StreamPipeline.from_files(args.generator, args.base, device=args.device, dtype=args.dtype,
                                         fp8_weights=args.fp8, layout=args.layout)
    print(pipeline.info.describe(), file=sys.stderr)
    return pipeline, load_text_conditioning(args.context, pipeline.caption_channels).to(args.device)


def stream_command(args: argparse.Namespace) -> None:
    pipeline, text = _build(args)
    settings = StreamSettings(
        sigmas=resolve_schedule(args.schedule),
        window_blocks=args.window or None,
        context_noise=args.context_noise,
        position_mode=args.position_mode,
    )
    decoder = pipeline.decoder(video_lookahead_latents=args.video_lookahead, preview=args.preview, seed=args.seed)
    sampler = pipeline.sampler(settings)
    blocks_total = pipeline.layout.num_blocks(args.seconds)
    writer = Mp4StreamWriter(args.out if args.overwrite else free_path(args.out), overwrite=args.overwrite)
    start = time.perf_counter()
    frames_total = 0
    try:
        previous = start
        for block in sampler.stream(text, args.seconds, args.height, args.width, seed=args.seed, decoder=decoder,
                                    overlap_decode=args.overlap):
            writer.write(block.decoded.frames, block.decoded.waveform)
            now = time.perf_counter()
            frames_total += block.decoded.frames.shape[0]
            t0, t1 = block.time_span
            print(
                f"block {block.index + 1}/{blocks_total}  {t0:6.2f}-{t1:6.2f} s  "
                f"{block.decoded.frames.shape[0]:3d} frames  {block.decoded.waveform.shape[1]:6d} samples  "
                f"{now - previous:6.2f} s  ({frames_total / (now - start):.1f} fps so far)",
                flush=True,
            )
            previous = now
    except BaseException:
        writer.abort()
        raise
    path = writer.close()
    print(f"wrote {path}: {frames_total} frames at 24 fps with 24 kHz stereo in {time.perf_counter() - start:.1f} s")


def tiny_command(args: argparse.Namespace) -> None:
    generator, base = write_tiny_checkpoints(args.folder, seed=args.seed, audio_sink_tokens=args.sink_tokens,
                                             overwrite=args.overwrite)
    print(f"wrote {generator}\nwrote {base}\n(random weights in the real key layouts: for trying the pipeline)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m omniforcing_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    stream = commands.add_parser("stream", help="stream a model to an mp4 with audio, printing each block")
    stream.add_argument("--generator", help="OmniForcing generator: .safetensors, .index.json or a folder of shards")
    stream.add_argument("--base", help="LTX-2 base file (holds the VAE, audio VAE and vocoder)")
    stream.add_argument("--context", help="prompt context .safetensors (video/audio text contexts)")
    stream.add_argument("--seconds", type=int, default=5)
    stream.add_argument("--height", type=int, help="pixels, a multiple of 32 (default 512; 128 for the tiny preset)")
    stream.add_argument("--width", type=int, help="pixels, a multiple of 32 (default 768; 192 for the tiny preset)")
    stream.add_argument("--seed", type=int, default=0)
    stream.add_argument("--schedule", default="quality-4step",
                        help=f"{', '.join(PRESETS)}, or a list of sigmas/timesteps like '1000,750,500,0'")
    stream.add_argument("--window", type=int, default=0, help="seconds of past kept in the cache (0: everything)")
    stream.add_argument("--context-noise", type=float, default=0.0)
    stream.add_argument("--position-mode", choices=POSITION_MODES, default="absolute")
    stream.add_argument("--layout", choices=LAYOUT_NAMES, help="override the detected block layout")
    stream.add_argument("--video-lookahead", type=int, default=0, help="latents held back for an exact video decode")
    stream.add_argument("--preview", action="store_true", help="fast latent->RGB frames instead of the VAE decode")
    stream.add_argument("--no-overlap", dest="overlap", action="store_false",
                        help="decode each block before generating the next (default: overlap them)")
    stream.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    stream.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="compute dtype")
    stream.add_argument("--fp8", action="store_true", help="store the transformer's block weights in fp8")
    stream.add_argument("--out", default="out/stream.mp4")
    stream.add_argument("--overwrite", action="store_true", help="replace --out (default: write name_2.mp4 beside it)")
    stream.set_defaults(run=stream_command)

    tiny = commands.add_parser("write-tiny-checkpoints", help="write tiny random checkpoints in the real layouts")
    tiny.add_argument("folder")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--sink-tokens", type=int, default=0)
    tiny.add_argument("--overwrite", action="store_true")
    tiny.set_defaults(run=tiny_command)

    args = parser.parse_args(argv)
    if args.command == "stream":
        tiny_preset = args.generator is None
        args.height = args.height or (128 if tiny_preset else 512)
        args.width = args.width or (192 if tiny_preset else 768)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
