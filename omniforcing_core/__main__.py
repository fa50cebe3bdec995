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

from .checkpoint import load_decoders, load_model
from .conditioning import TextConditioning, load_text_conditioning
from .decoders.av_stream import AVStreamDecoder
from .decoders.latent_preview import LatentPreview
from .demo import tiny_decoders, tiny_model, write_tiny_checkpoints
from .layout import BlockLayout
from .media import Mp4StreamWriter
from .sampler import StreamingSampler, StreamSettings
from .schedule import PRESETS, parse_sigma_list, preset_sigmas


def _schedule(text: str) -> tuple[float, ...]:
    return tuple(preset_sigmas(text)) if text in PRESETS else parse_sigma_list(text)


def _build(args: argparse.Namespace):
    """(model, layout, decoders, text) from real checkpoints, or the tiny random preset."""
    device = torch.device(args.device)
    if args.generator is None:
        print("No --generator given: using the tiny preset with RANDOM weights. The output is noise; "
              "it shows the machinery (streaming, decoding, muxing), not a picture.", file=sys.stderr)
        model = tiny_model(args.seed).to(device)
        layout = BlockLayout.released()
        decoders = tuple(module.to(device) for module in tiny_decoders(args.seed))
        generator = torch.Generator().manual_seed(args.seed)
        shape = (1, 64, model.config.caption_channels)
        text = TextConditioning(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
        return model, layout, decoders, text.to(device)
    if args.base is None:
        raise SystemExit("--base is required with --generator: the LTX-2 base file holds the VAE, audio VAE and vocoder")
    loaded = load_model(args.generator, args.base, device=device, dtype=args.dtype)
    print(loaded.report.summary(), file=sys.stderr)
    decoders = load_decoders(args.base, device=device)
    if args.context is None:
        raise SystemExit(
            "--context is required with a real model: a .safetensors prompt context, e.g. saved from ComfyUI "
            "with the 'OmniForcing Save Prompt Context' node after the LTX-2 text encoder"
        )
    text = load_text_conditioning(args.context, loaded.config.caption_channels).to(device)
    layout = BlockLayout.named(args.layout) if args.layout else loaded.layout
    return loaded.model, layout, (decoders.video_vae, decoders.audio_vae, decoders.vocoder), text


def stream_command(args: argparse.Namespace) -> None:
    model, layout, decoders, text = _build(args)
    settings = StreamSettings(
        sigmas=_schedule(args.schedule),
        window_blocks=args.window,
        context_noise=args.context_noise,
        position_mode=args.position_mode,
    )
    decoder = AVStreamDecoder(
        *decoders,
        video_lookahead_latents=args.video_lookahead,
        preview=LatentPreview.sketch() if args.preview else None,
        seed=args.seed,
    )
    sampler = StreamingSampler(model, layout, settings)
    height, width = args.height, args.width
    blocks_total = layout.num_blocks(args.seconds)
    writer = Mp4StreamWriter(args.out, overwrite=args.overwrite)
    start = time.perf_counter()
    frames_total = 0
    try:
        previous = start
        for block in sampler.stream(text, args.seconds, height, width, seed=args.seed, decoder=decoder):
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
                        help="quality-4step, realtime-3step, or a list of sigmas/timesteps like '1000,750,500,0'")
    stream.add_argument("--window", type=int, help="seconds of past kept in the cache (default: everything)")
    stream.add_argument("--context-noise", type=float, default=0.0)
    stream.add_argument("--position-mode", choices=("absolute", "rebased"), default="absolute")
    stream.add_argument("--layout", choices=("released", "paper"), help="override the detected block layout")
    stream.add_argument("--video-lookahead", type=int, default=0, help="latents held back for an exact video decode")
    stream.add_argument("--preview", action="store_true", help="fast latent->RGB frames instead of the VAE decode")
    stream.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    stream.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    stream.add_argument("--out", default="out/stream.mp4")
    stream.add_argument("--overwrite", action="store_true")
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
