"""Stream a preset and print one JSON object of timings, memory and cache size.

    python -m benchmarks.stream --preset mid --blocks 60 --window 4 --recompute-at 20

Weights are random (speed does not depend on their values). Warm-up blocks run first
and are reported apart (``warmup_s``); every steady-state number comes after them.
On a GPU each block's denoise and decode are timed with a device sync at the block
boundary; those syncs are the benchmark's own and are not counted in ``host_syncs``,
which counts what the streaming code itself forces inside the block loop: one per block,
where the block is handed over (its finiteness is read there, after its generation), and
one per text context when the stream starts (their finiteness).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace

import torch

from omniforcing_core import (
    AVTransformer,
    BlockLayout,
    ModelConfig,
    StreamPipeline,
    TextConditioning,
    block_causal_masks,
    preset_sigmas,
)
from omniforcing_core.decoders.audio_vae import AudioVAEConfig, AudioVAEDecoder
from omniforcing_core.decoders.video_vae import VideoVAE, VideoVAEConfig
from omniforcing_core.decoders.vocoder import Vocoder, VocoderConfig
from torch._dynamo.utils import counters as dynamo_counters

from omniforcing_core.capture import capture_block_loop
from omniforcing_core.checkpoint.fp8 import FP8_DTYPES, set_fp8_gemm, swap_in_fp8_linears
from omniforcing_core.checkpoint.keys import block_linear_names
from omniforcing_core.demo import randomize_
from omniforcing_core.kv_cache import POSITION_MODES
from omniforcing_core.pipeline import stream_decoder_dtypes
from omniforcing_core.layout import LAYOUT_NAMES, latent_grid
from omniforcing_core.schedule import PRESETS as SCHEDULES
from omniforcing_core.transformer import use_two_streams
from benchmarks.roofline import block_costs, gemm_peak_flops
from omniforcing_core.stream_run import DEFAULT_WINDOW_SECONDS, DecodeOptions, StreamRequest, StreamRun, default_settings

# --compile: (torch.compile backend, mode)
COMPILE_MODES = {"off": None, "eager": ("eager", None), "inductor": ("inductor", None),
                 "reduce-overhead": ("inductor", "reduce-overhead")}

# name: (transformer, decoder preset name, default height, width)
PRESETS = {
    "tiny": (ModelConfig.tiny, "tiny", 64, 96),
    "mid": (ModelConfig.mid, "mid", 256, 384),
    "19b": (ModelConfig.ltx2_19b, "ltx2_19b", 512, 768),
}


def random_module(build, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """Build on meta, then fill in place on the device: no host copy of a 19B model."""
    with torch.device("meta"):
        module = build()
    return randomize_(module.to_empty(device=device).to(dtype), seed)


def random_transformer(config: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int,
                       fp8: str = "off") -> AVTransformer:
    """``fp8`` "weights": the block linears stored in fp8 as a loaded fp8 model holds them;
    "gemm": also run as fp8 x fp8 GEMMs."""
    if fp8 == "off":
        return random_module(lambda: AVTransformer(config), device, dtype, seed)
    with torch.device("meta"):
        model = AVTransformer(config)
    linears = {name.removesuffix(".weight"): torch.float8_e4m3fn for name in block_linear_names(model)}
    swap_in_fp8_linears(model, linears, dtype)
    model = model.to_empty(device=device)
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point() and tensor.dtype not in FP8_DTYPES and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)
    randomize_(model, seed)
    for name in linears:
        model.get_submodule(name).weight_scale.fill_(1.0)
    set_fp8_gemm(model, fp8 == "gemm")
    return model


def random_pipeline(preset: str, layout: BlockLayout, device: torch.device, dtype: torch.dtype, seed: int,
                    decoder_dtype: torch.dtype | None = None, fp8: str = "off") -> StreamPipeline:
    """Random weights; the decoders in ``decoder_dtype`` or, by default, as a loaded model streams them."""
    make_config, decoder_preset, _, _ = PRESETS[preset]
    video_dtype, audio_dtype = (decoder_dtype, decoder_dtype) if decoder_dtype else stream_decoder_dtypes(device, dtype)
    transformer = random_transformer(make_config(), device, dtype, seed, fp8)
    video = random_module(lambda: VideoVAE(getattr(VideoVAEConfig, decoder_preset)()), device, video_dtype, seed + 1)
    audio = random_module(lambda: AudioVAEDecoder(getattr(AudioVAEConfig, decoder_preset)()), device, audio_dtype, seed + 2)
    vocoder = random_module(lambda: Vocoder(getattr(VocoderConfig, decoder_preset)()), device, audio_dtype, seed + 3)
    return StreamPipeline(transformer, layout, video, audio, vocoder, f"{preset} preset, random weights")


class PeakRSS:
    """The process's peak resident memory while it runs (sampled), unlike ``ru_maxrss``,
    which remembers every peak since start-up, warm-up and model building included."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        self.peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


class SyncCounter:
    """Counts host-device synchronisations forced by Python-level tensor reads, and on
    CUDA every sync the runtime reports (torch's sync debug mode)."""

    _READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")

    def __init__(self) -> None:
        self.count = 0

    @contextmanager
    def counting(self):
        originals = {name: getattr(torch.Tensor, name) for name in self._READS}

        def counted(name):
            original = originals[name]

            def wrapper(tensor, *args, **kwargs):
                self.count += 1
                return original(tensor, *args, **kwargs)

            return wrapper

        for name in self._READS:
            setattr(torch.Tensor, name, counted(name))
        cuda = torch.cuda.is_available()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                yield self
            self.count += sum("synchroniz" in str(w.message) for w in caught)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)


def device_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def recompute_time(model, layout, block_index, visible_blocks, grid_hw, sigmas, text, device, dtype) -> float:
    """One block generated without a cache: each denoising pass re-runs every block the
    cached stream sees at ``block_index`` (``visible_blocks`` of them, itself included),
    so both sides attend to the same number of tokens."""
    num_blocks = min(block_index + 1, visible_blocks)
    spans = list(layout.iter_blocks(num_blocks))
    frames, audio_frames = spans[-1].video_end, spans[-1].audio_end
    video = torch.randn(1, model.config.video_in_channels, frames, *grid_hw, device=device, dtype=dtype)
    audio = torch.randn(1, audio_frames, model.config.audio_in_channels, device=device, dtype=dtype)
    masks = block_causal_masks(layout, len(spans), grid_hw[0] * grid_hw[1], device=device)
    current = spans[-1]
    elapsed = 0.0
    with torch.no_grad():
        text_kv = model.encode_text(text)
        for sigma in sigmas[:-1]:
            video_sigma = torch.zeros(1, frames, device=device)
            audio_sigma = torch.zeros(1, audio_frames, device=device)
            video_sigma[:, current.video_start:] = sigma
            audio_sigma[:, current.audio_start:] = sigma
            device_sync(device)
            start = time.perf_counter()
            model(video, audio, video_sigma, audio_sigma, text_kv, masks)
            device_sync(device)
            elapsed += time.perf_counter() - start
    return elapsed


def seconds_for_blocks(layout: BlockLayout, blocks: int) -> int:
    """The stream length whose block count is ``blocks`` (the paper layout adds a prefix block)."""
    seconds = blocks - 1 if layout.has_prefix_block else blocks
    if seconds < 1:
        raise SystemExit(f"the {layout.name} layout needs at least {blocks - seconds + 1} blocks")
    return seconds


def stream_fps(pipeline, request) -> float:
    start = time.perf_counter()
    run = StreamRun(pipeline, request)
    run.run()
    return run.outputs.frames_written / (time.perf_counter() - start)


def overlap_lever(pipeline, request) -> dict:
    """FPS of the same stream with decode inline and overlapped with the next block's generation."""
    fps = {name: stream_fps(pipeline, replace(request, decode=replace(request.decode, overlap=overlap)))
           for name, overlap in (("inline", False), ("overlapped", True))}
    return {"inline_fps": round(fps["inline"], 3), "overlapped_fps": round(fps["overlapped"], 3),
            "ratio": round(fps["overlapped"] / fps["inline"], 3)}


def run(args: argparse.Namespace) -> dict:
    _, _, default_height, default_width = PRESETS[args.preset]
    height, width = args.height or default_height, args.width or default_width
    grid_hw = latent_grid(height, width)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    layout = BlockLayout.named(args.layout)
    seconds = seconds_for_blocks(layout, args.blocks)
    decoder_dtype = getattr(torch, args.decoder_dtype) if args.decoder_dtype else None
    pipeline = random_pipeline(args.preset, layout, device, dtype, args.seed, decoder_dtype, args.fp8)
    if args.two_streams:
        use_two_streams(pipeline.transformer, True)
    if args.compile != "off":
        backend, mode = COMPILE_MODES[args.compile]
        capture_block_loop(pipeline.transformer, backend, mode)
    model = pipeline.transformer
    config = model.config
    sigmas = preset_sigmas(args.schedule)
    settings = default_settings(sigmas=sigmas, window_blocks=args.window, position_mode=args.position_mode)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    shape = (1, args.text_tokens, config.caption_channels)
    text = TextConditioning(
        torch.randn(shape, generator=generator, device=device, dtype=dtype),
        torch.randn(shape, generator=generator, device=device, dtype=dtype),
    )
    # Inline decode, so that each block's generation and decode are timed apart.
    decode = DecodeOptions("full" if args.decode else "none", overlap=False)
    request = StreamRequest(text, seconds, height, width, args.seed, settings, decode=decode, keep_frames=False,
                            keep_latents=False)

    compiled = dynamo_counters["frames"]["total"]
    warmup_start = time.perf_counter()
    StreamRun(pipeline, replace(request, seconds=seconds_for_blocks(layout, max(args.warmup, 1 + layout.has_prefix_block)))).run()
    device_sync(device)
    warmup_s = time.perf_counter() - warmup_start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    warmup_compiled = dynamo_counters["frames"]["total"]
    counter, decode_counter = SyncCounter(), SyncCounter()
    stream = StreamRun(pipeline, request, sync_device=True)
    if stream.decoder is not None:
        push = stream.decoder.push

        def counted_push(*push_args, **kwargs):
            # Counted as the decode's own: the outer counter would see every read a second time.
            outer = counter.count
            with decode_counter.counting():
                decoded = push(*push_args, **kwargs)
            counter.count = outer
            return decoded

        stream.decoder.push = counted_push
    cache_bytes = []
    run_start = time.perf_counter()
    ttfc_s = None
    with PeakRSS() as rss, counter.counting():
        for block in stream:
            cache_bytes.append(stream.sampler.cache.nbytes)
            if ttfc_s is None:
                ttfc_s = time.perf_counter() - run_start
    device_sync(device)
    wall_s = time.perf_counter() - run_start
    timed_compiled = dynamo_counters["frames"]["total"]
    denoise_s = [t.generate_s for t in stream.timings]
    decode_s = [t.decode_s for t in stream.timings]
    frames = stream.outputs.frames_written if args.decode else layout.frame_count(seconds)
    media_s = layout.block(args.blocks - 1).time_span[1]

    result = {
        "preset": args.preset,
        "device": str(device),
        "dtype": args.dtype,
        "fp8": args.fp8,
        "two_streams": args.two_streams,
        "resolution": [height, width],
        "layout": layout.name,
        "blocks": args.blocks,
        "window_blocks": args.window,
        "sigmas": [round(s, 6) for s in sigmas],
        "passes_per_block": len(sigmas),
        "warmup_blocks": args.warmup,
        "warmup_s": round(warmup_s, 4),
        "ttfc_s": round(ttfc_s, 4),
        "block_s": {
            "denoise": [round(t, 4) for t in denoise_s],
            "decode": [round(t, 4) for t in decode_s],
        },
        "decoded": bool(args.decode),
        # Decode inline, after each block: the node overlaps it (see levers.decode_overlap).
        "fps_inline": round(frames / wall_s, 3),
        "realtime_factor": round(media_s / wall_s, 4),
        "cache_bytes": cache_bytes,
        "peak_mem_bytes": {"host_after_warmup": rss.peak},
        "host_syncs": counter.count,
        # Handing frames and sound to the host is the decode's one intended sync point.
        "host_syncs_decode": decode_counter.count,
    }
    if device.type == "cuda":
        result["peak_mem_bytes"]["gpu"] = torch.cuda.max_memory_allocated(device)
    # Compiling happens in the warm-up (its time is in warmup_s); the timed stream must reuse it.
    result["compile"] = {"mode": args.compile, "graphs_in_warmup": warmup_compiled - compiled,
                         "recompiles_in_timed_stream": timed_compiled - warmup_compiled}
    if args.decode:
        result["decode_fraction"] = round(median(decode_s[1:] or decode_s) / median(denoise_s[1:] or denoise_s), 4)
    totals = [a + b for a, b in zip(denoise_s, decode_s)]
    if args.blocks >= 60:
        early, late = median(totals[5:11]), median(totals[50:61])
        result["flatness"] = {"blocks_5_10_median_s": early, "blocks_50_60_median_s": late, "ratio": round(late / early, 4)}
    if args.overlap_blocks and args.decode:
        overlapped = replace(request, seconds=seconds_for_blocks(layout, args.overlap_blocks))
        result["levers"] = {"decode_overlap": overlap_lever(pipeline, overlapped)}
    if args.roofline:
        result["roofline"] = roofline(pipeline, request, denoise_s, decode_s, device, dtype)
    if args.recompute_at is not None and args.recompute_at < args.blocks:
        visible = len(settings.window_policy(args.blocks).visible_blocks(args.recompute_at))
        recompute_s = median([recompute_time(model, layout, args.recompute_at, visible, grid_hw, sigmas, text,
                                             device, dtype) for _ in range(args.repeats)])
        cached_s = denoise_s[args.recompute_at]
        result["recompute_ratio"] = round(recompute_s / cached_s, 3)
        result["recompute"] = {"block": args.recompute_at, "visible_blocks": visible, "repeats": args.repeats,
                               "recompute_s": round(recompute_s, 4), "cached_s": round(cached_s, 4)}
    return result


def roofline(pipeline, request, denoise_s: list[float], decode_s: list[float], device, dtype) -> dict:
    """FLOPs per block against the measured GEMM peak, and aten calls per block."""
    costs = block_costs(pipeline, request)
    peak = gemm_peak_flops(device, dtype)
    # The last block skips its context pass: steady-state blocks are the others.
    steady_denoise = median(denoise_s[:-1] or denoise_s)
    out = {**costs, "gemm_peak_gflops": round(peak / 1e9, 2),
           "denoise_gflops": round(costs["denoise_flops"] / steady_denoise / 1e9, 2)}
    out["denoise_peak_fraction"] = round(out["denoise_gflops"] * 1e9 / peak, 4)
    if request.decode.mode != "none":
        # The video VAE holds nearly all of the decode's FLOPs: its dtype's peak is the one to reach.
        decoder_dtype = next(pipeline.video_vae.parameters()).dtype
        decode_peak = peak if decoder_dtype == dtype else gemm_peak_flops(device, decoder_dtype)
        steady_decode = median(decode_s[:-1] or decode_s)
        out["decode_dtype"] = str(decoder_dtype).removeprefix("torch.")
        out["decode_gemm_peak_gflops"] = round(decode_peak / 1e9, 2)
        out["decode_gflops"] = round(costs["decode_flops"] / steady_decode / 1e9, 2)
        out["decode_peak_fraction"] = round(out["decode_gflops"] * 1e9 / decode_peak, 4)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW_SECONDS, help="previous blocks kept in the cache")
    parser.add_argument("--layout", choices=LAYOUT_NAMES, default="released")
    parser.add_argument("--schedule", choices=list(SCHEDULES), default="quality-4step")
    parser.add_argument("--position-mode", choices=POSITION_MODES, default="absolute")
    parser.add_argument("--recompute-at", type=int, help="measure recompute_ratio at this block")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the no-cache baseline (their median)")
    parser.add_argument("--warmup", type=int, default=2, help="blocks streamed before timing")
    parser.add_argument("--no-decode", dest="decode", action="store_false", help="time the transformer alone")
    parser.add_argument("--no-roofline", dest="roofline", action="store_false",
                        help="skip counting FLOPs and aten calls per block and the GEMM peak probe")
    parser.add_argument("--overlap-blocks", type=int, default=0,
                        help="also stream this many blocks with decode inline and overlapped, and compare")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--decoder-dtype", choices=("float32", "bfloat16", "float16"),
                        help="all decoders in this dtype (default: as a loaded model streams them, see "
                             "omniforcing_core.pipeline.stream_decoder_dtypes)")
    parser.add_argument("--compile", choices=list(COMPILE_MODES), default="off",
                        help="capture the block loop: dynamo only (eager), inductor, or inductor with CUDA graphs")
    parser.add_argument("--two-streams", action="store_true",
                        help="each layer's audio part on a second CUDA stream beside the video's (GPU only)")
    parser.add_argument("--fp8", choices=("off", "weights", "gemm"), default="off",
                        help="block linears in fp8: stored and upcast per call, or as fp8 x fp8 GEMMs")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.blocks < 1:
        parser.error("--blocks must be >= 1")
    return args


def main(argv=None) -> None:
    print(json.dumps(run(parse_args(argv))))


if __name__ == "__main__":
    main()
