"""The streaming sampler: one finished block at a time, through the rolling KV cache.

Per block: start from noise, run the few-step sigma list (predict x0, re-noise it to
the next sigma with fresh noise), then run the clean block once more at
``context_noise`` to write the keys and values later blocks read. Five forward passes
per block with the released four-step list; no classifier-free guidance.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable, Iterator, Sequence

import torch

from .conditioning import TextConditioning
from .checkpoint.keys import summarize_names
from .decoders.av_stream import AVStreamDecoder, DecodedBlock
from .kv_cache import CacheError, StreamKVCache, WindowPolicy
from .layout import BlockLayout, BlockSpan, LayoutError, check_seconds, latent_grid
from .schedule import ScheduleError, preset_sigmas, validate_sigmas
from .transformer import AVTransformer

# Given a block and a step (0 = the block's starting noise, j >= 1 = the noise that
# re-noises step j-1's x0; the last index, len(sigmas) - 1, is the context noise),
# return (video noise [B, C, f, h, w], audio noise [B, t, C]).
NoiseFn = Callable[[BlockSpan, int], tuple[torch.Tensor, torch.Tensor]]


class StreamSettingsError(ValueError):
    """A stream setting out of its allowed range."""


class NonFiniteBlockError(RuntimeError):
    """A block came out NaN/Inf; the message names the likely cause."""


@dataclass(frozen=True)
class StreamSettings:
    """How a stream is sampled and how much of its past stays visible.

    ``window_blocks``: previous blocks kept beyond the retained start (None keeps the
    whole stream, as the reference does; a finite stream only). ``context_noise``: the
    sigma at which a finished block is written into the cache (0 = clean).
    ``audio_sink_tokens``: how many of the model's learned sinks to use (None = all).
    """

    sigmas: tuple[float, ...] = field(default_factory=lambda: preset_sigmas("quality-4step"))
    window_blocks: int | None = None
    retained_start_blocks: int = 1
    context_noise: float = 0.0
    position_mode: str = "absolute"
    audio_sink_tokens: int | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "sigmas", validate_sigmas(self.sigmas))
        except ScheduleError as exc:
            raise StreamSettingsError(str(exc)) from exc
        if self.window_blocks is not None and (not isinstance(self.window_blocks, int) or self.window_blocks < 1):
            raise StreamSettingsError(
                f"window_blocks must be a whole number of blocks >= 1 (or None to keep everything), got {self.window_blocks!r}"
            )
        if not 0.0 <= float(self.context_noise) < 1.0:
            raise StreamSettingsError(f"context_noise is a sigma in [0, 1), got {self.context_noise}")
        try:
            WindowPolicy(self.retained_start_blocks, 0, self.position_mode)
        except CacheError as exc:
            raise StreamSettingsError(str(exc)) from exc
        if self.audio_sink_tokens is not None and self.audio_sink_tokens < 0:
            raise StreamSettingsError(f"audio_sink_tokens must be >= 0, got {self.audio_sink_tokens}")

    def window_policy(self, num_blocks: int | None) -> WindowPolicy:
        if self.window_blocks is None:
            if num_blocks is None:
                raise StreamSettingsError("an unbounded stream needs a finite window_blocks")
            window = max(num_blocks - 1 - self.retained_start_blocks, 0)
        else:
            window = self.window_blocks
        return WindowPolicy(self.retained_start_blocks, window, self.position_mode)


@dataclass(frozen=True)
class PromptSwitch:
    """From block ``block`` on, condition on ``text``; optionally blend over a few blocks."""

    block: int
    text: TextConditioning
    blend_blocks: int = 0

    def __post_init__(self) -> None:
        if self.block < 1:
            raise StreamSettingsError(f"a prompt switch happens at block 1 or later, got block {self.block}")
        if self.blend_blocks < 0:
            raise StreamSettingsError(f"blend_blocks must be >= 0, got {self.blend_blocks}")


@dataclass(frozen=True)
class BlockTiming:
    """Seconds one block took: waiting for its latents (with an overlapped decode, the part
    of the generation the previous decode did not hide) and decoding it."""

    generate_s: float
    decode_s: float = 0.0


@dataclass(frozen=True)
class StreamBlock:
    """One finished block: latents of both streams, where they sit in the stream, and
    (when the sampler was given a decoder) its frames and sound."""

    span: BlockSpan
    video: torch.Tensor  # [B, C, f, H/32, W/32]
    audio: torch.Tensor  # [B, t, C]
    decoded: DecodedBlock | None = None
    # Whether every latent is finite, on the device: read where the block is handed over,
    # so the generating loop itself never waits for the device.
    finite: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def index(self) -> int:
        return self.span.index

    @property
    def time_span(self) -> tuple[float, float]:
        return self.span.time_span


class StreamingSampler:
    """Streams an :class:`AVTransformer` block by block through a rolling KV cache."""

    def __init__(self, model: AVTransformer, layout: BlockLayout, settings: StreamSettings | None = None):
        self.model = model
        self.layout = layout
        self.settings = settings or StreamSettings()
        self.sink_tokens = model.check_sink_count(self.settings.audio_sink_tokens)
        # The cache of the stream running now (for inspection); each stream owns its own.
        self.cache: StreamKVCache | None = None

    def _geometry(self, num_seconds: int | None, height: int, width: int):
        num_blocks = None if num_seconds is None else self.layout.num_blocks(check_seconds(num_seconds))
        return num_blocks, latent_grid(height, width), self.settings.window_policy(num_blocks)

    def memory_estimate(self, num_seconds: int | None, height: int, width: int, text_tokens: int = 1024) -> int:
        """Bytes a stream needs beyond the weights: its KV cache (sized exactly, on the meta
        device), the prompt's text keys, and a bound on one transformer pass's activations
        (the decoders' working memory is not included)."""
        c = self.model.config
        _, grid_hw, policy = self._geometry(num_seconds, height, width)
        dtype = next(self.model.parameters()).dtype
        cache = StreamKVCache(c, self.layout, grid_hw, policy, self.sink_tokens, 1, "meta", dtype)
        element = torch.finfo(dtype).bits // 8
        text = c.num_layers * 2 * text_tokens * (c.video_dim + c.audio_dim) * element
        video_tokens = self.layout.block(0).video_frames * grid_hw[0] * grid_hw[1]
        activations = 4 * video_tokens * c.video_dim * c.ffn_mult * element
        return cache.nbytes + text + activations

    def stream(
        self,
        text: TextConditioning,
        num_seconds: int | None,
        height: int,
        width: int,
        seed: int = 0,
        prompt_schedule: Sequence[PromptSwitch] = (),
        noise: NoiseFn | None = None,
        batch_size: int = 1,
        decoder: AVStreamDecoder | None = None,
        overlap_decode: bool = False,
        should_stop: Callable[[], bool] | None = None,
        timings: list[BlockTiming] | None = None,
        sync_device: bool = False,
    ) -> Iterator[StreamBlock]:
        """Yield blocks as they finish. ``num_seconds`` None streams until the caller stops.

        With a ``decoder`` each block also carries its decoded frames and waveform; the
        last block of a finite stream ends the decode (nothing stays held back). With
        ``overlap_decode`` the next block is generated on a worker thread (its own CUDA
        stream on a GPU) while this one decodes: each block arrives as soon as before,
        and the stream's pace becomes the slower of the two instead of their sum.
        ``should_stop`` is asked before every forward pass; when it answers True the
        stream ends early (an interrupt then takes effect within one pass). ``timings``
        gets one ``BlockTiming`` per block; ``sync_device`` waits for the device before
        each reading, so that on a GPU they time the work, not its launch.

        Every argument is checked here, before anything is allocated; the cache is freed
        when the stream ends, is closed, or is interrupted.
        """
        num_blocks, grid_hw, policy = self._geometry(num_seconds, height, width)
        channels = self.model.config.caption_channels
        text.validate(channels, batch_size)
        schedule = sorted(prompt_schedule, key=lambda switch: switch.block)
        _check_schedule(text, schedule, num_blocks, channels, batch_size)
        if decoder is not None:
            if batch_size != 1:
                raise StreamSettingsError(
                    f"streaming decode takes one stream at a time (batch 1), got a batch of {batch_size}"
                )
            decoder.check_grid(grid_hw)
        stop = should_stop or (lambda: False)

        def generate(stopped: Callable[[], bool] = stop) -> Iterator[StreamBlock]:
            return self._generate(text, num_blocks, grid_hw, policy, seed, schedule, noise, batch_size, stopped)

        device = next(self.model.parameters()).device
        sync = (lambda: torch.cuda.synchronize(device)) if sync_device and device.type == "cuda" else None
        if decoder is None:
            return _latents(generate(), self.check_finite, timings, sync)
        blocks = _generated_ahead(generate, stop, device) if overlap_decode else generate()
        return decode_blocks(blocks, decoder, num_blocks, timings, sync, self.check_finite, stop)

    def _generate(self, text, num_blocks, grid_hw, policy, seed, schedule, noise, batch_size, stopped) -> Iterator[StreamBlock]:
        param = next(self.model.parameters())
        device, dtype = param.device, param.dtype
        draw = noise or self._seeded_noise(seed, batch_size, grid_hw, device, dtype)
        cache = StreamKVCache(self.model.config, self.layout, grid_hw, policy, self.sink_tokens, batch_size, device, dtype)
        self.cache = cache
        try:
            with torch.no_grad():
                cache.text = self.model.encode_text(text)
            prompts = _PromptTimeline(text, schedule)
            index = 0
            while num_blocks is None or index < num_blocks:
                span = self.layout.block(index)
                switched = prompts.text_at(index)
                if switched is not None:
                    with torch.no_grad():
                        cache.text = self.model.encode_text(switched, into=cache.text)
                # The last block of a finite stream is never read back: no context pass.
                last = num_blocks is not None and index == num_blocks - 1
                block = self._generate_block(cache, span, draw, stopped, write_context=not last)
                if block is None:
                    return
                yield block
                index += 1
        finally:
            cache.release()
            if self.cache is cache:
                self.cache = None

    def _seeded_noise(self, seed, batch_size, grid_hw, device, dtype) -> NoiseFn:
        """Noise drawn in fp32 on the CPU, then cast and moved: torch draws another sequence
        for each dtype and device, so this is what makes a seed one stream everywhere
        (bf16, fp16, fp32; CPU or GPU), within the dtype's rounding."""
        c = self.model.config
        generator = torch.Generator(device="cpu").manual_seed(seed)
        cuda = torch.device(device).type == "cuda"

        def placed(noise: torch.Tensor) -> torch.Tensor:
            if cuda:  # a copy from pinned memory does not make the block loop wait for the GPU
                noise = noise.pin_memory().to(device, non_blocking=True)
            return noise.to(device=device, dtype=dtype)

        def draw(span: BlockSpan, step: int) -> tuple[torch.Tensor, torch.Tensor]:
            video_shape = (batch_size, c.video_in_channels, span.video_frames, *grid_hw)
            audio_shape = (batch_size, span.audio_frames, c.audio_in_channels)
            video = torch.randn(video_shape, generator=generator, dtype=torch.float32)
            audio = torch.randn(audio_shape, generator=generator, dtype=torch.float32)
            return placed(video), placed(audio)

        return draw

    @torch.no_grad()
    def _generate_block(self, cache: StreamKVCache, span: BlockSpan, draw: NoiseFn,
                        stopped: Callable[[], bool], write_context: bool = True) -> StreamBlock | None:
        """The block's denoising steps and (``write_context``) its context pass; None if
        stopped on the way."""
        block = cache.begin_block(span)
        sigmas = self.settings.sigmas
        video, audio = draw(span, 0)
        for step, (sigma, next_sigma) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            if stopped():
                return None
            video_v, audio_v = self.model.forward_block(video, audio, sigma, block, cache.text)
            video_x0, audio_x0 = x0_from_velocity(video, video_v, sigma), x0_from_velocity(audio, audio_v, sigma)
            if next_sigma > 0:
                video_noise, audio_noise = draw(span, step + 1)
                video, audio = renoise(video_x0, video_noise, next_sigma), renoise(audio_x0, audio_noise, next_sigma)
        finite = torch.isfinite(video_x0).all() & torch.isfinite(audio_x0).all()
        if not write_context:
            return StreamBlock(span, video_x0, audio_x0, finite=finite)
        context_sigma = float(self.settings.context_noise)
        context_video, context_audio = video_x0, audio_x0
        if context_sigma > 0:
            # The last step index draws no re-noising noise, so it carries the context noise.
            video_noise, audio_noise = draw(span, len(sigmas) - 1)
            context_video = renoise(video_x0, video_noise, context_sigma)
            context_audio = renoise(audio_x0, audio_noise, context_sigma)
        if stopped():
            return None
        self.model.forward_block(context_video, context_audio, context_sigma, block, cache.text)
        return StreamBlock(span, video_x0, audio_x0, finite=finite)

    def check_finite(self, block: StreamBlock) -> None:
        """Stop a stream whose block came out NaN/Inf, naming the likely cause (one device sync:
        the block is done by the time it is handed over)."""
        if block.finite is not None and not bool(block.finite):
            raise NonFiniteBlockError(_non_finite_cause(self.model, block.index))


def _non_finite_cause(model: AVTransformer, block: int) -> str:
    """Why a block came out NaN/Inf (the text contexts were checked before the stream began)."""
    said = f"block {block} came out NaN/Inf"
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor.float()).all())]
    if bad:
        return (f"{said}: the model's weights hold NaN/Inf values ({summarize_names(bad, limit=6)}); the checkpoint "
                "is damaged: download or export it again")
    dtype = next(model.parameters()).dtype
    if dtype == torch.float16:
        return f"{said} with finite weights: the activations overflowed fp16's range; load the model in bf16 or fp32"
    return (f"{said} with finite weights and text contexts: the transformer diverged in {str(dtype).removeprefix('torch.')}; "
            "try fp32, another schedule or less context noise, or check that the checkpoint is an OmniForcing generator")


def _check_schedule(text: TextConditioning, schedule: Sequence[PromptSwitch], num_blocks: int | None,
                    channels: int, batch_size: int) -> None:
    """Prompt switches must land inside the stream, one at a time, and blend between
    contexts of one shape."""
    previous_text, previous_end, previous_block = text, -1, None
    for switch in schedule:
        switch.text.validate(channels, batch_size)
        if num_blocks is not None and switch.block >= num_blocks:
            raise LayoutError(f"prompt switch at block {switch.block} is past the stream's last block {num_blocks - 1}")
        if switch.block <= previous_end:
            raise StreamSettingsError(
                f"prompt switch at block {switch.block} starts before the switch at block {previous_block} has "
                f"finished (it blends until block {previous_end}); start it later or blend over fewer blocks"
            )
        if switch.blend_blocks and previous_text.video.shape != switch.text.video.shape:
            raise StreamSettingsError(
                f"prompt switch at block {switch.block} blends between contexts of different shapes "
                f"{tuple(previous_text.video.shape)} and {tuple(switch.text.video.shape)}; blend_blocks=0 switches at once"
            )
        previous_text, previous_end, previous_block = switch.text, switch.block + switch.blend_blocks, switch.block


def decode_blocks(blocks: Iterable[StreamBlock], decoder: AVStreamDecoder, num_blocks: int | None,
                  timings: list[BlockTiming] | None = None, sync: Callable[[], None] | None = None,
                  check: Callable[[StreamBlock], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Iterator[StreamBlock]:
    """Decode latent blocks in order; the block with index ``num_blocks - 1`` ends the decode.
    ``check`` sees each block before the decoder does; when ``should_stop`` answers True the
    stream ends there (a block generated ahead is not decoded after an interrupt). Closing
    this closes ``blocks`` when it is a stream (freeing its cache)."""
    decoder.reset()
    with contextlib.closing(_handed_over(blocks, check, sync)) as handed:
        for block, waited_s in handed:
            if should_stop is not None and should_stop():
                return
            started = time.perf_counter()
            final = num_blocks is not None and block.index == num_blocks - 1
            decoded = decoder.push(block.span, block.video, block.audio, final=final)
            if timings is not None:
                timings.append(BlockTiming(waited_s, time.perf_counter() - started))
            yield StreamBlock(block.span, block.video, block.audio, decoded)


def _latents(blocks: Iterable[StreamBlock], check: Callable[[StreamBlock], None],
             timings: list[BlockTiming] | None, sync: Callable[[], None] | None) -> Iterator[StreamBlock]:
    """Latent blocks as they are handed over, with no decoder."""
    with contextlib.closing(_handed_over(blocks, check, sync)) as handed:
        for block, waited_s in handed:
            if timings is not None:
                timings.append(BlockTiming(waited_s))
            yield block


def _handed_over(blocks: Iterable[StreamBlock], check: Callable[[StreamBlock], None] | None,
                 sync: Callable[[], None] | None) -> Iterator[tuple[StreamBlock, float]]:
    """Each block as it is handed over, checked, with the seconds spent waiting for it."""
    latents = iter(blocks)
    try:
        while True:
            started = time.perf_counter()
            block = next(latents, None)
            if block is None:
                return
            if sync is not None:
                sync()
            if check is not None:
                check(block)
            yield block, time.perf_counter() - started
    finally:
        if isinstance(blocks, Generator):
            blocks.close()


_DONE = object()


def _generated_ahead(generate: Callable[[Callable[[], bool]], Iterator[StreamBlock]], should_stop: Callable[[], bool],
                     device: torch.device) -> Iterator[StreamBlock]:
    """Run ``generate()`` on a worker thread at most one block ahead of the consumer.

    On a GPU the worker works on its own CUDA stream and hands each block over with an
    event, so the consumer's decode kernels overlap the next block's transformer kernels.
    Closing this generator stops the worker and closes ``generate()`` (freeing its cache).
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    cuda = device.type == "cuda"

    def hand_over(item) -> None:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def produce() -> None:
        side_stream = torch.cuda.Stream(device=device) if cuda else None
        blocks = generate(lambda: stop.is_set() or should_stop())
        try:
            with torch.cuda.stream(side_stream) if cuda else contextlib.nullcontext():
                for block in blocks:
                    ready = None
                    if cuda:
                        ready = torch.cuda.Event()
                        ready.record(side_stream)
                    hand_over((block, ready))
                    if stop.is_set():
                        return
            hand_over(_DONE)
        except BaseException as error:  # handed to the consumer, who raises it
            hand_over(error)
        finally:
            blocks.close()

    worker = threading.Thread(target=produce, name="omniforcing-generate", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            block, ready = item
            if ready is not None:
                consumer = torch.cuda.current_stream(device)
                consumer.wait_event(ready)
                block.video.record_stream(consumer)
                block.audio.record_stream(consumer)
            yield block
    finally:
        stop.set()
        while not handoff.empty():
            handoff.get_nowait()
        worker.join()


def x0_from_velocity(x: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0 = x - sigma * v, in fp32 whatever the model dtype."""
    return (x.float() - velocity.float() * sigma).to(x.dtype)


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The rectified-flow point at ``sigma`` between x0 and fresh noise."""
    return (1 - sigma) * x0 + sigma * noise


class _PromptTimeline:
    """Which text conditions each block, including blends between prompts."""

    def __init__(self, initial: TextConditioning, switches: Sequence[PromptSwitch]):
        self.segments: list[tuple[PromptSwitch, TextConditioning]] = []
        previous = initial
        for switch in switches:
            self.segments.append((switch, previous))
            previous = switch.text

    def text_at(self, block: int) -> TextConditioning | None:
        """The new text for ``block``, or None if it is unchanged since the last block."""
        for switch, previous in self.segments:
            offset = block - switch.block
            if offset == switch.blend_blocks:
                return switch.text
            if 0 <= offset < switch.blend_blocks:
                return previous.lerp(switch.text, (offset + 1) / (switch.blend_blocks + 1))
        return None
