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
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Iterator, NoReturn

import torch

from .checkpoint import CheckpointError, load_prompt_encoder, open_checkpoint
from .conditioning import ConditioningError, TextConditioning, load_text_conditioning
from .demo import write_tiny_checkpoints
from .demo_model import DEMO_BASE, DEMO_HEIGHT, DEMO_PROMPT, DEMO_WIDTH, demo_path
from .host import device_problem
from .kv_cache import POSITION_MODES
from .media import MediaError, Mp4StreamWriter, check_output_path
from .layout import LAYOUT_NAMES, check_resolution
from .pipeline import StreamPipeline
from .sampler import StreamSettingsError
from .schedule import PRESETS, ScheduleError, resolve_schedule
from .stream_run import DEFAULT_WINDOW_SECONDS, DecodeOptions, StreamRequest, StreamRun, default_settings
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
    pipeline = StreamPipeline.from_files(args.generator, args.base, device=args.device, dtype=args.dtype,
                                         fp8_weights=args.fp8, layout=args.layout)
    print(pipeline.info.describe(), file=sys.stderr)
    try:
        text = load_text_conditioning(args.context, pipeline.caption_channels)
    except ConditioningError as error:
        raise ConditioningError(f"--context {args.context}: {error}") from error
    return pipeline, text.to(args.device)


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
        raise CheckpointError(f"{error}\n(or pass --random-weights to try the machinery without the demo)") from error
    print(pipeline.info.describe(), f"prompt: {args.prompt!r}", sep="\n", file=sys.stderr)
    return pipeline, text.to(args.device)


def _usage_error(message: str) -> NoReturn:
    """An error in words: the message, no traceback, argparse's exit code."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def stream_command(args: argparse.Namespace) -> None:
    # The output's own temporary file first: an unwritable folder is refused before any load.
    writer = Mp4StreamWriter(args.out, overwrite=args.overwrite)
    run = None
    try:
        pipeline, text = _build(args)
        request = StreamRequest(
            text, args.seconds, args.height, args.width, args.seed, args.settings,
            decode=DecodeOptions("sketch" if args.preview else "full", args.video_lookahead, overlap=args.overlap),
            keep_frames=False, keep_latents=False,
        )
        run = StreamRun(pipeline, request)
        start = previous = time.perf_counter()
        with run:  # an interrupt stops the generating worker and frees the cache at once
            for block in run:
                writer.write(block.decoded.frames, block.decoded.waveform)
                now = time.perf_counter()
                t0, t1 = block.time_span
                print(
                    f"block {block.index + 1}/{run.blocks_total}  {t0:6.2f}-{t1:6.2f} s  "
                    f"{block.decoded.frames.shape[0]:3d} frames  {block.decoded.waveform.shape[1]:6d} samples  "
                    f"{now - previous:6.2f} s  ({run.outputs.frames_written / (now - start):.1f} fps so far)",
                    flush=True,
                )
                previous = now
    except BaseException as stop:
        writer.abort()
        if isinstance(stop, KeyboardInterrupt):
            progress = "before the first block" if run is None else f"after {run.blocks_made} of {run.blocks_total} blocks"
            print(f"stopped {progress}; the unfinished file was removed, nothing was written to {writer.target}",
                  file=sys.stderr)
        raise
    planned = writer.target
    path = writer.close()
    if path != planned:
        print(f"note: {planned} appeared while the stream ran; it was kept and this stream went to {path}",
              file=sys.stderr)
    print(f"wrote {path}: {run.outputs.frames_written} frames at 24 fps with 24 kHz stereo in "
          f"{time.perf_counter() - start:.1f} s")


def tiny_command(args: argparse.Namespace) -> None:
    generator, base = write_tiny_checkpoints(args.folder, seed=args.seed, audio_sink_tokens=args.sink_tokens,
                                             overwrite=args.overwrite)
    print(f"wrote {generator}\nwrote {base}\n(random weights in the real key layouts: for trying the pipeline)")


# torch takes seeds up to 2**64 - 1; the tiny preset derives seed + 1, seed + 100... from ours.
SEED_MAX = 2**63 - 1


def _whole_number(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number in [minimum, maximum], refused in words otherwise."""
    allowed = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number {allowed}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be a whole number {allowed}, got {value}")
        return value

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m omniforcing_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the Python traceback of an error")

    stream = commands.add_parser("stream", parents=[common],
                                 help="stream a model to a video file with audio, printing each block")
    model = stream.add_mutually_exclusive_group()
    model.add_argument("--generator", help="OmniForcing generator: .safetensors, .index.json or a folder of shards "
                                           "(default: the built-in demo model)")
    model.add_argument("--random-weights", action="store_true",
                       help="the tiny preset with random weights instead of the demo: noise, for testing the machinery")
    stream.add_argument("--base", help="LTX-2 base file (holds the VAE, audio VAE and vocoder)")
    stream.add_argument("--context", help="prompt context .safetensors (video/audio text contexts) of a real model")
    stream.add_argument("--prompt", help=f"the built-in demo's prompt, in its world's words (default: '{DEMO_PROMPT}'; "
                                         f"words: {' '.join(VOCABULARY)})")
    stream.add_argument("--seconds", type=_whole_number(1), default=5)
    stream.add_argument("--height", type=int, help=f"pixels, a multiple of 32 (default 512; {DEMO_HEIGHT} for the "
                                                   "demo and the random preset)")
    stream.add_argument("--width", type=int, help=f"pixels, a multiple of 32 (default 768; {DEMO_WIDTH} for the "
                                                  "demo and the random preset)")
    stream.add_argument("--seed", type=_whole_number(0, SEED_MAX), default=0)
    stream.add_argument("--schedule", default="quality-4step",
                        help=f"{', '.join(PRESETS)}, or a list of sigmas/timesteps like '1000,750,500,0'")
    stream.add_argument("--window", type=_whole_number(0), default=DEFAULT_WINDOW_SECONDS,
                        help=f"seconds of past kept in the cache (default {DEFAULT_WINDOW_SECONDS}; 0: everything)")
    stream.add_argument("--context-noise", type=float, default=0.0)
    stream.add_argument("--position-mode", choices=POSITION_MODES, default="absolute")
    stream.add_argument("--layout", choices=LAYOUT_NAMES, help="override the detected block layout")
    stream.add_argument("--video-lookahead", type=_whole_number(0), default=0,
                        help="latents held back for an exact video decode")
    stream.add_argument("--preview", action="store_true", help="fast latent->RGB frames instead of the VAE decode")
    stream.add_argument("--no-overlap", dest="overlap", action="store_false",
                        help="decode each block before generating the next (default: overlap them)")
    stream.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    stream.add_argument("--dtype", choices=("bf16", "fp16", "fp32"),
                        help="compute dtype (default bf16; fp32 for the demo, a model of a few MB)")
    stream.add_argument("--fp8", action="store_true", help="store the transformer's block weights in fp8")
    stream.add_argument("--out", default="out/stream.mp4", help="the video file: .mp4, .mkv or .mov")
    stream.add_argument("--overwrite", action="store_true",
                        help="replace --out (default: a file of that name is kept and this one is name_2.mp4)")
    stream.set_defaults(run=stream_command)

    tiny = commands.add_parser("write-tiny-checkpoints", parents=[common],
                               help="write tiny random checkpoints in the real layouts")
    tiny.add_argument("folder")
    tiny.add_argument("--seed", type=_whole_number(0, SEED_MAX), default=0)
    tiny.add_argument("--sink-tokens", type=_whole_number(0), default=0)
    tiny.add_argument("--overwrite", action="store_true")
    tiny.set_defaults(run=tiny_command)

    args = parser.parse_args(argv)
    if args.command == "stream":
        _check_stream_args(stream, args)
    return args


def _check_stream_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before anything loads, every input that is out of range or does not go with
    the chosen model, and fill in its defaults."""
    demo = args.generator is None and not args.random_weights
    if args.prompt is not None and not demo:
        parser.error("--prompt is the built-in demo's: a real model's prompt comes from --context (a saved prompt "
                     "context); --random-weights takes none")
    if args.generator is None:
        for flag, value in (("--base", args.base), ("--context", args.context), ("--layout", args.layout)):
            if value is not None:
                parser.error(f"{flag} goes with --generator (a real model); the built-in demo and "
                             "--random-weights bring their own")
    else:
        if args.base is None:
            parser.error("--base is required with --generator: the LTX-2 base file holds the VAE, audio VAE and vocoder")
        if args.context is None:
            parser.error("--context is required with --generator: a .safetensors prompt context, e.g. saved from "
                         "ComfyUI with the 'OmniForcing Save Prompt Context' node after the LTX-2 text encoder")
    if args.random_weights:
        for flag, given in (("--dtype", args.dtype is not None), ("--fp8", args.fp8)):
            if given:
                parser.error(f"{flag} goes with a loaded model (--generator or the built-in demo); "
                             "--random-weights builds the tiny preset in fp32")
    if demo:
        args.prompt = DEMO_PROMPT if args.prompt is None else args.prompt
        try:
            words(args.prompt)  # unknown words are refused before anything loads
        except ValueError as error:
            parser.error(str(error))
    small = args.generator is None
    args.height = (DEMO_HEIGHT if small else 512) if args.height is None else args.height
    args.width = (DEMO_WIDTH if small else 768) if args.width is None else args.width
    args.dtype = args.dtype or ("fp32" if demo else "bf16")
    try:
        check_resolution(args.height, args.width)
    except ValueError as error:
        parser.error(f"--height/--width: {error}")
    try:
        sigmas = resolve_schedule(args.schedule)
    except ScheduleError as error:
        parser.error(f"--schedule: {error}")
    try:
        args.settings = default_settings(sigmas=sigmas, window_blocks=args.window or None,
                                         context_noise=args.context_noise, position_mode=args.position_mode)
    except StreamSettingsError as error:  # the other settings are checked above or by their choices
        parser.error(f"--context-noise: {error}")
    try:
        check_output_path(args.out)
    except MediaError as error:
        parser.error(f"--out: {error}")
    _check_device(parser, args.device)
    if args.context is not None:
        _check_context_file(parser, args.context)


def _check_device(parser: argparse.ArgumentParser, name: str) -> None:
    problem = device_problem(name)
    if problem:
        parser.error(problem)


def _check_context_file(parser: argparse.ArgumentParser, path: str) -> None:
    """The prompt context file from its header alone: a model file passed by mistake is
    named as one, not read (it may be many GB)."""
    if not Path(path).is_file():
        problem = "not a file" if Path(path).exists() else "no such file"
        parser.error(f"--context {path}: {problem}; give a prompt context .safetensors")
    try:
        with open_checkpoint(path) as checkpoint:
            names = set(checkpoint.keys())
            ranks = {name: len(checkpoint.info(name).shape) for name in names & {"video", "audio", "context"}}
    except CheckpointError as error:
        parser.error(f"--context: {error}")
    if not ({"video", "audio"} <= names or "context" in names):
        examples = ", ".join(sorted(names)[:3]) or "nothing"
        parser.error(
            f"--context {path} is not a prompt context: it holds {len(names)} tensor(s) ({examples}"
            f"{', ...' if len(names) > 3 else ''}){', like a model file' if len(names) > 3 else ''}; a prompt context "
            "holds 'video' and 'audio' tensors (or one joint 'context'), as the 'OmniForcing Save Prompt Context' "
            "node saves them"
        )
    flat = sorted(name for name, rank in ranks.items() if rank != 3)
    if flat:
        parser.error(f"--context {path}: tensor(s) {', '.join(flat)} must be [batch, tokens, width], got "
                     + ", ".join(f"{ranks[name]} dimension(s)" for name in flat))


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so the stream stops as on Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_stop_like_ctrl_c() -> Iterator[None]:
    def stop(signum, frame):
        raise Stopped(signum)

    # No SIGHUP on Windows; a signal already ignored (SIGHUP under nohup) stays ignored.
    names = [name for name in ("SIGTERM", "SIGHUP")
             if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN]
    previous = {name: signal.signal(getattr(signal, name), stop) for name in names}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


# Errors whose message says what to fix; anything else is a bug, shown with its type.
_USER_ERRORS = (ValueError, OSError, MediaError)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        with _signals_stop_like_ctrl_c():
            args.run(args)
    except KeyboardInterrupt as stop:
        signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
        print(f"stopped by {signal.Signals(signum).name}", file=sys.stderr)
        raise SystemExit(128 + signum) from None  # the shell's convention for a signal
    except Exception as error:
        if args.debug:
            raise
        if isinstance(error, _USER_ERRORS):
            _usage_error(str(error))
        _usage_error(f"{type(error).__name__}: {error}\n(unexpected: run again with --debug for the traceback)")


if __name__ == "__main__":
    main()
