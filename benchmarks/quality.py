"""Quality of the built-in demo models on the synthetic world: one JSON line per model.

    python -m benchmarks.quality                     # world, codecs, teacher, Stage II, student, released
    python -m benchmarks.quality --models student --seconds 3 --long 0

Two reference lines come first: ``world``, held-out clips of the world itself (what the detectors
find in the truth), and ``codecs``, the same clips encoded and decoded through the streaming
decoders (the most a model can reach through the demo's codecs). Every model's clip is decoded
through the streaming decoders exactly as users get them and scored
by the world's detectors (``omniforcing_core.world.metrics``): AV sync, pitch, prompt
adherence and seam continuity. ``--long S`` also streams S seconds with a rolling window
in both position modes and scores every 10 s segment (does quality hold past the 3 s the
model was trained on?). Speed on this machine: time to first chunk and frames per second
with decode, beside the teacher's time for the same clip.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from omniforcing_core.checkpoint import load_decoders, load_model, load_prompt_encoder
from omniforcing_core.decoders.av_stream import AVStreamDecoder
from omniforcing_core.demo_model import (
    DEMO_BASE,
    DEMO_FOLDER,
    DEMO_GENERATOR,
    DEMO_HEIGHT,
    DEMO_RELEASED_GENERATOR,
    DEMO_WIDTH,
    demo_path,
)
from omniforcing_core.layout import VIDEO_FPS, BlockLayout, latent_grid
from omniforcing_core.pipeline import StreamPipeline
from omniforcing_core.sampler import StreamSettings
from omniforcing_core.stream_run import DecodeOptions, StreamRequest, StreamRun, decode_latents
from omniforcing_core.train.codecs import EVAL_SEEDS, LoadedCodecs, encode_clip, load_codecs
from omniforcing_core.world import Scene, render_clip
from omniforcing_core.world.detect import audio_onsets
from omniforcing_core.world.grammar import parse
from omniforcing_core.world.metrics import evaluate
from omniforcing_core.world.scene import PITCHES

PROMPTS = (
    "a red ball bounces",
    "a blue cube falls",
    "a green wedge hops around",
    "a yellow disc and a white box bounce",
    "a red triangle and a blue ball bounce off the walls",
    "a white circle , a green square and a yellow wedge hop",
)
SEEDS = (0, 1)
SEGMENT_S = 10
STAGES = DEMO_FOLDER / "stages"


def _to_numpy(frames: torch.Tensor, waveform: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return pixels, waveform.float().cpu().numpy()


def stream_clip(pipeline: StreamPipeline, text, seconds: int, seed: int, settings: StreamSettings,
                overlap: bool = True, video_lookahead: int = 0) -> dict:
    """Frames, sound and timings of one stream, decoded block by block."""
    start = time.perf_counter()
    first = None
    decode = DecodeOptions(overlap=overlap, video_lookahead=video_lookahead)
    run = StreamRun(pipeline, StreamRequest(text, seconds, DEMO_HEIGHT, DEMO_WIDTH, seed, settings,
                                            decode=decode, keep_latents=False))
    with torch.no_grad(), run:
        for _ in run:
            first = first or time.perf_counter() - start
    total = time.perf_counter() - start
    pixels, waveform = _to_numpy(run.outputs.images(), run.outputs.waveform())
    return {"frames": pixels, "audio": waveform, "ttfc_s": first, "fps": pixels.shape[0] / total, "total_s": total}


def teacher_clip(teacher, pipeline: StreamPipeline, encoder, prompt: str, seconds: int, seed: int, steps: int,
                 guidance: float, video_lookahead: int = 0) -> dict:
    """The bidirectional teacher: the whole clip at once, many steps with CFG."""
    from omniforcing_core.train.stages import Guidance, teacher_grid, teacher_sample

    layout = pipeline.layout
    frames, audio_frames = layout.latent_lengths(seconds)
    grid = latent_grid(DEMO_HEIGHT, DEMO_WIDTH)
    c = teacher.config
    generator = torch.Generator().manual_seed(seed)
    noise_video = torch.randn(1, c.video_in_channels, frames, *grid, generator=generator)
    noise_audio = torch.randn(1, audio_frames, c.audio_in_channels, generator=generator)
    start = time.perf_counter()
    with torch.no_grad():
        cond, uncond = encoder(prompt), encoder("")
        (video, audio), _ = teacher_sample(teacher, noise_video, noise_audio, cond, uncond,
                                           Guidance(guidance, guidance), teacher_grid(steps, ()))
        decoder = pipeline.decoder(video_lookahead_latents=video_lookahead)
        decoded = [block.decoded for block in decode_latents(decoder, layout, video, audio)]
    total = time.perf_counter() - start
    pixels, waveform = _to_numpy(torch.cat([d.frames for d in decoded]), torch.cat([d.waveform for d in decoded], -1))
    return {"frames": pixels, "audio": waveform, "ttfc_s": total, "fps": pixels.shape[0] / total, "total_s": total}


WORLD_CLIPS = 12  # held-out scenes (the codecs' evaluation seeds), as many as the models' clips


def world_clips(seconds: int) -> list[tuple[str, dict]]:
    """Rendered held-out scenes, each with its own prompt."""
    clips = []
    for index in range(WORLD_CLIPS):
        clip = render_clip(Scene.sample(EVAL_SEEDS + index, float(seconds), (DEMO_HEIGHT, DEMO_WIDTH)))
        clips.append((clip.prompt, {"frames": clip.frames, "audio": clip.audio_24k, "clip": clip}))
    return clips


def codec_clip(codecs: LoadedCodecs, clip, video_lookahead: int = 0) -> dict:
    """A world clip through the base file's encoders and the streaming decoders (released blocks)."""
    with torch.no_grad():
        video, audio = encode_clip(codecs, clip)
        decoder = AVStreamDecoder(codecs.video_vae, codecs.audio_vae, codecs.vocoder,
                                  video_lookahead_latents=video_lookahead)
        decoded = [block.decoded for block in decode_latents(decoder, BlockLayout.released(), video, audio)]
    pixels, waveform = _to_numpy(torch.cat([d.frames for d in decoded]), torch.cat([d.waveform for d in decoded], -1))
    return {"frames": pixels, "audio": waveform}


def boundaries(layout: BlockLayout, num_frames: int) -> list[int]:
    """First pixel frame of every block after the first."""
    starts, index = [], 1
    while (start := layout.block(index).pixel_interval[0]) < num_frames:
        starts.append(start)
        index += 1
    return starts


def blob_scores(frames: np.ndarray, seams: list[int]) -> dict[str, float]:
    """Colour-blind measures that still read a blurry decode: the share of bright (foreground)
    pixels, the foreground's centre of mass as one track, and that track's jump at block
    seams against inside blocks (second difference, px; ~1 for a seamless stream)."""
    luminance = frames.astype(np.float32).mean(axis=-1) / 255.0
    background = np.median(luminance.reshape(luminance.shape[0], -1), axis=1)[:, None, None]
    weight = np.clip(luminance - background - 0.08, 0.0, None)
    mass = weight.sum(axis=(1, 2))
    rows, columns = np.mgrid[: frames.shape[1], : frames.shape[2]]
    centre = np.stack([(weight * columns).sum(axis=(1, 2)), (weight * rows).sum(axis=(1, 2))], 1) / np.maximum(mass, 1e-6)[:, None]
    kink = np.full(frames.shape[0], np.nan)
    kink[2:] = np.linalg.norm(centre[2:] - 2 * centre[1:-1] + centre[:-2], axis=1)
    at_seams = [kink[b] for b in seams if 2 <= b < len(kink)]
    inside = [k for n, k in enumerate(kink) if n >= 2 and n not in set(seams) | {b + 1 for b in seams}]
    seam, within = float(np.median(at_seams)) if at_seams else float("nan"), float(np.median(inside))
    return {"blob.foreground_share": float((weight > 0).mean()), "blob.seam_px": seam, "blob.inside_px": within,
            "blob.seam_ratio": seam / max(within, 0.25)}


def tone_scores(audio: np.ndarray, sample_rate: int = 24_000, prompt: str | None = None) -> dict[str, float]:
    """What the sound holds without the picture: tone onsets per second and the share of
    them at one of the world's pitches (within a semitone; the pitches are 9 apart). With a
    prompt, also how the sound follows it (each kind of shape rings at its own pitch): the
    share of the world-pitch tones at a pitch the prompt names, and the share of the named
    kinds heard at least once."""
    onsets = audio_onsets(audio, sample_rate)
    seconds = audio.shape[-1] / sample_rate
    heard = [_world_kind(onset.pitch) for onset in onsets]
    at_world = [kind for kind in heard if kind is not None]
    scores = {"tones.per_s": len(onsets) / seconds,
              "tones.world_pitch_share": len(at_world) / len(heard) if heard else 0.0}
    if prompt is not None:
        named = {kind for _, kind in parse(prompt)}
        scores["tones.prompt_pitch_share"] = sum(k in named for k in at_world) / len(at_world) if at_world else 0.0
        scores["tones.prompt_recall"] = len(named & set(at_world)) / len(named)
    return scores


def _world_kind(pitch: float) -> str | None:
    """The kind of shape whose pitch is within a semitone of ``pitch``, if any."""
    kind, reference = min(PITCHES.items(), key=lambda item: abs(math.log2(pitch / item[1])))
    return kind if abs(1200.0 * math.log2(pitch / reference)) <= 100.0 else None


def score(clip: dict, prompt: str, layout: BlockLayout) -> dict[str, float]:
    seams = boundaries(layout, clip["frames"].shape[0])
    return {**evaluate(clip["frames"], clip["audio"], 24_000, prompt, boundaries=seams),
            **blob_scores(clip["frames"], seams), **tone_scores(clip["audio"], prompt=prompt),
            "audio.rms": float(np.sqrt(np.mean(clip["audio"] ** 2)))}


def segments(clip: dict, prompt: str, layout: BlockLayout, seconds: int) -> list[dict[str, float]]:
    """Scores of every 10 s segment of a long clip (seams at the stream's own block starts)."""
    results = []
    for first in range(0, seconds, SEGMENT_S):
        f0, f1 = first * VIDEO_FPS, (first + SEGMENT_S) * VIDEO_FPS
        a0, a1 = first * 24_000, (first + SEGMENT_S) * 24_000
        seams = [b - f0 for b in boundaries(layout, f1) if f0 < b < f1]
        frames = clip["frames"][f0:f1]
        results.append({**evaluate(frames, clip["audio"][:, a0:a1], 24_000, prompt, boundaries=seams),
                        **blob_scores(frames, seams), **tone_scores(clip["audio"][:, a0:a1], prompt=prompt)})
    return results


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({key for row in rows for key in row})
    out = {}
    for key in keys:
        values = [row[key] for row in rows if key in row and math.isfinite(row[key])]
        out[key] = round(statistics.fmean(values), 4) if values else float("nan")
    return out


HEADLINE = ("sync.within_frame_share", "sync.median_abs_offset_ms", "sync.p90_abs_offset_ms", "sync.misses",
            "sync.false_alarms", "prompt.f1", "prompt.exact", "pitch.correct_share", "seam.ratio",
            "blob.foreground_share", "blob.seam_px", "blob.inside_px", "blob.seam_ratio", "tones.per_s",
            "tones.world_pitch_share", "tones.prompt_pitch_share", "tones.prompt_recall", "audio.rms")


def headline(scores: dict[str, float]) -> dict[str, float]:
    return {key: scores[key] for key in HEADLINE if key in scores}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="world,codecs,teacher,stage2,student,released")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--long", type=int, default=60, help="seconds of the long streams (0: skip them)")
    parser.add_argument("--window", type=int, default=4, help="blocks kept in the long streams' window")
    parser.add_argument("--stages", type=Path, default=STAGES, help="folder of the published stage outputs")
    parser.add_argument("--teacher-steps", type=int, default=24)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--video-lookahead", type=int, default=0,
                        help="latents the video decode holds back, as --video-lookahead streams (7: seamless)")
    args = parser.parse_args(argv)
    lookahead = args.video_lookahead
    torch.set_num_threads(args.threads)
    base = demo_path(DEMO_BASE)
    encoder = load_prompt_encoder(base)
    decoders = load_decoders(base, dtype=torch.float32)
    teacher_total = None
    for name in args.models.split(","):
        if name in ("world", "codecs"):
            clips = world_clips(args.seconds)
            if name == "codecs":
                codecs = load_codecs(base)
                clips = [(p, codec_clip(codecs, c["clip"], lookahead)) for p, c in clips]
            layout = BlockLayout.released()
            print(json.dumps({"model": name, "layout": layout.name, "clips": len(clips), "seconds": args.seconds,
                              **({"video_lookahead": lookahead} if name == "codecs" else {}),
                              **headline(mean_scores([score(c, p, layout) for p, c in clips]))}), flush=True)
            continue
        if name == "teacher":
            teacher = load_model(args.stages / "teacher.safetensors", dtype=torch.float32)
            pipeline = StreamPipeline(teacher.model, BlockLayout.released(), decoders.video_vae, decoders.audio_vae,
                                      decoders.vocoder)
            clips = [(p, teacher_clip(teacher.model, pipeline, encoder, p, args.seconds, s, args.teacher_steps,
                                      args.guidance, lookahead)) for p in PROMPTS for s in SEEDS]
            teacher_total = statistics.fmean(c["total_s"] for _, c in clips)
        else:
            files = {"student": demo_path(DEMO_GENERATOR), "released": demo_path(DEMO_RELEASED_GENERATOR),
                     "stage2": args.stages / "stage2.safetensors"}
            loaded = load_model(files[name], dtype=torch.float32)
            pipeline = StreamPipeline(loaded.model, loaded.layout, decoders.video_vae, decoders.audio_vae,
                                      decoders.vocoder)
            clips = [(p, stream_clip(pipeline, encoder(p), args.seconds, s, StreamSettings(),
                                     video_lookahead=lookahead)) for p in PROMPTS for s in SEEDS]
        line = {
            "model": name,
            "layout": pipeline.layout.name,
            "sink_tokens": pipeline.transformer.config.audio_sink_tokens,
            "clips": len(clips),
            "seconds": args.seconds,
            "video_lookahead": lookahead,
            **headline(mean_scores([score(c, p, pipeline.layout) for p, c in clips])),
            "ttfc_s": round(statistics.fmean(c["ttfc_s"] for _, c in clips), 3),
            "fps": round(statistics.fmean(c["fps"] for _, c in clips), 1),
            "clip_s": round(statistics.fmean(c["total_s"] for _, c in clips), 2),
        }
        if teacher_total is not None and name != "teacher":
            line["teacher_clip_s"] = round(teacher_total, 2)
        if args.long and name != "teacher":
            for mode in ("absolute", "rebased"):
                settings = StreamSettings(window_blocks=args.window, position_mode=mode)
                prompt = PROMPTS[3]
                clip = stream_clip(pipeline, encoder(prompt), args.long, SEEDS[0], settings, video_lookahead=lookahead)
                line[f"long_{mode}"] = [headline(s) for s in segments(clip, prompt, pipeline.layout, args.long)]
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
