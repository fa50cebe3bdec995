"""Standalone command: stream an OmniForcing model to an mp4 with sound, block by block.

    python -m omniforcing_core stream --seconds 5 --out out/demo.mp4      # the built-in demo model
    python -m omniforcing_core stream --prompt "a green wedge and a white box hop around" --out out/demo.mp4
    python -m omniforcing_core stream --generator omniforcing_ltx2_5s_causal.safetensors.index.json \\
        --base ltx-2-19b-dev.safetensors --context prompt.safetensors --seconds 5 --out out/clip.mp4
    python -m omniforcing_core stream --random-weights --out out/tiny.mp4  # tiny random weights: noise
    python -m omniforcing_core write-tiny-checkpoints models/              # tiny files in the real layouts
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import NoReturn

import torch

from .checkpoint import CheckpointError, load_prompt_encoder
from .conditioning import TextConditioning, load_text_conditioning
from .demo import write_tiny_checkpoints
from .demo_model import DEMO_BASE, DEMO_HEIGHT, DEMO_PROMPT, DEMO_WIDTH, demo_path
from .kv_cache import POSITION_MODES
from .media import Mp4StreamWriter, free_path
from .layout import LAYOUT_NAMES
from .pipeline import StreamPipeline
from .sampler import StreamSettings
from .schedule import PRESETS, resolve_schedule
from .world.grammar import VOCABULARY, words


def _build(args: argparse.Namespace) -> tuple[StreamPipeline, TextConditioning]:
    """The pipeline (a real model, the built-in demo or the tiny random preset) and the prompt."""
    if args.random_weights:
        print("--random-weights: using the tiny preset with RANDOM weights. The output is noise; "
              "it shows the machinery (streaming, decoding, muxing), not a picture.", file=sys.stderr)
        pipeline = StreamPipeline.tiny_random(args.seed).to(args.device)
        generator = torch.Generator().manual_seed(args.seed)
        shape = (1, 64, pipeline.caption_channels)
        text = TextConditioning(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
        return pipeline, text.to(args.device)
    if args.generator is None:
        return _build_demo(args)
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


def _build_demo(args: argparse.Namespace) -> tuple[StreamPipeline, TextConditioning]:
    """The built-in demo model and its prompt, encoded by the demo's own prompt encoder."""
    try:
        # The small prompt encoder first: a prompt it refuses stops us before the model loads.
        encoder = load_prompt_encoder(demo_path(DEMO_BASE))
        with torch.no_grad():
            try:
                text = encoder(args.prompt)
            except ValueError as error:  # too many words for this encoder
                _usage_error(str(error))
        pipeline = StreamPipeline.demo(device=args.device, dtype=args.dtype, fp8_weights=args.fp8)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}\n(or pass --random-weights to try the machinery without the demo)")
    print(pipeline.info.describe(), f"prompt: {args.prompt!r}", sep="\n", file=sys.stderr)
    return pipeline, text.to(args.device)


def _usage_error(message: str) -> NoReturn:
    """A mistake in the command line: the message, no traceback, argparse's exit code."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


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
    model = stream.add_mutually_exclusive_group()
    model.add_argument("--generator", help="OmniForcing generator: .safetensors, .index.json or a folder of shards "
                                           "(default: the built-in demo model)")
    model.add_argument("--random-weights", action="store_true",
                       help="the tiny preset with random weights instead of the demo: noise, for testing the machinery")
    stream.add_argument("--base", help="LTX-2 base file (holds the VAE, audio VAE and vocoder)")
    stream.add_argument("--context", help="prompt context .safetensors (video/audio text contexts) of a real model")
    stream.add_argument("--prompt", help=f"the built-in demo's prompt, in its world's words (default: '{DEMO_PROMPT}'; "
                                         f"words: {' '.join(VOCABULARY)})")
    stream.add_argument("--seconds", type=int, default=5)
    stream.add_argument("--height", type=int, help=f"pixels, a multiple of 32 (default 512; {DEMO_HEIGHT} for the "
                                                   "demo and the random preset)")
    stream.add_argument("--width", type=int, help=f"pixels, a multiple of 32 (default 768; {DEMO_WIDTH} for the "
                                                  "demo and the random preset)")
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
    stream.add_argument("--dtype", choices=("bf16", "fp16", "fp32"),
                        help="compute dtype (default bf16; fp32 for the demo, a model of a few MB)")
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
        _check_stream_args(stream, args)
    return args


def _check_stream_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse inputs that do not go with the chosen model, and fill in its defaults."""
    demo = args.generator is None and not args.random_weights
    if args.generator is None:
        for flag, value in (("--base", args.base), ("--context", args.context), ("--layout", args.layout)):
            if value is not None:
                parser.error(f"{flag} goes with --generator (a real model); the built-in demo and "
                             "--random-weights bring their own")
    if args.prompt is not None and not demo:
        parser.error("--prompt is the built-in demo's: a real model's prompt comes from --context (a saved prompt "
                     "context); --random-weights takes none")
    if demo:
        args.prompt = DEMO_PROMPT if args.prompt is None else args.prompt
        try:
            words(args.prompt)  # unknown words are refused before anything loads
        except ValueError as error:
            parser.error(str(error))
    small = args.generator is None
    args.height = args.height or (DEMO_HEIGHT if small else 512)
    args.width = args.width or (DEMO_WIDTH if small else 768)
    args.dtype = args.dtype or ("fp32" if demo else "bf16")


def main(argv=None) -> None:
    args = parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
