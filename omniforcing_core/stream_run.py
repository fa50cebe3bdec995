"""One stream from a request to its outputs: the runner the node, the command line and the
benchmark share.

A ``StreamRequest`` says what to stream; ``StreamRun`` checks all of it, and the memory it
needs, before anything large is allocated, then streams block by block, keeps each output
once (``StreamOutputs``) and says how the stream ended (``StreamEnd``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from .conditioning import TextConditioning
from .host import available_host_memory
from .layout import check_resolution, check_seconds
from .sampler import BlockTiming, PromptSwitch, StreamBlock, StreamSettings, StreamSettingsError, decode_blocks

if TYPE_CHECKING:
    from .pipeline import StreamPipeline

# One table of defaults for every front end.
DEFAULT_SECONDS = 5
# The demo and the released model were trained on 3-5 s clips: a 4 s window keeps what they
# saw in training, and memory and time per block stay flat however long the stream runs.
DEFAULT_WINDOW_SECONDS = 4
DECODE_MODES = ("full", "sketch", "none")


@dataclass(frozen=True)
class DecodeOptions:
    """``mode``: ``full`` VAE-decodes every block as it lands, ``sketch`` shows a cheap
    latent->RGB projection (``final_full_decode`` then VAE-decodes the kept latents at
    the end), ``none`` keeps latents only. ``video_lookahead`` latents are held back for
    exact frames at block seams; ``overlap`` generates the next block while this one
    decodes."""

    mode: str = "full"
    video_lookahead: int = 0
    overlap: bool = True
    final_full_decode: bool = False

    def __post_init__(self) -> None:
        if self.mode not in DECODE_MODES:
            raise StreamSettingsError(f"decode mode must be one of {DECODE_MODES}, got {self.mode!r}")
        if not isinstance(self.video_lookahead, int) or self.video_lookahead < 0:
            raise StreamSettingsError(f"video look-ahead is a whole number of latents >= 0, got {self.video_lookahead!r}")
        if self.final_full_decode and self.mode != "sketch":
            raise StreamSettingsError("final_full_decode re-decodes a sketched stream: it needs mode 'sketch'")


@dataclass(frozen=True)
class PromptAt:
    """From stream second ``second`` on, condition on ``text`` (blending over ``blend_seconds``)."""

    second: int
    text: TextConditioning
    blend_seconds: int = 0


def default_settings(**changes) -> StreamSettings:
    """``StreamSettings`` with the front ends' default window (the core's keeps everything)."""
    return StreamSettings(**{"window_blocks": DEFAULT_WINDOW_SECONDS, **changes})


@dataclass(frozen=True)
class StreamRequest:
    text: TextConditioning
    seconds: int = DEFAULT_SECONDS
    height: int = 512
    width: int = 768
    seed: int = 0
    settings: StreamSettings = field(default_factory=default_settings)
    prompts: tuple[PromptAt, ...] = ()
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    # The node returns every frame (IMAGE); the command line writes them to a file instead.
    keep_frames: bool = True
    keep_latents: bool = True


@dataclass(frozen=True)
class StreamEnd:
    """How a stream ended: ``finished``, ``stopped`` (by the user, after ``blocks_made``
    blocks) or ``failed`` (``error`` says why)."""

    status: str
    blocks_made: int
    blocks_total: int
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def describe(self) -> str:
        if self.status == "finished":
            return f"finished: {self.blocks_made} blocks"
        if self.status == "stopped":
            return f"stopped after {self.blocks_made} of {self.blocks_total} blocks"
        return f"failed after {self.blocks_made} of {self.blocks_total} blocks: {self.error}"


class StreamMemoryError(MemoryError):
    """A stream that would not fit in memory, refused before it starts."""


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes a stream needs beyond the weights, and where."""

    stream_bytes: int  # KV cache, text keys, one pass's activations: on the model's device
    output_bytes: int  # frames, waveform, latents kept for the outputs: on the host
    device: torch.device

    def check(self, request: StreamRequest) -> None:
        gib = 2**30
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            needs = [(self.stream_bytes, free, f"GPU memory on {self.device}"), (self.output_bytes, available_host_memory(), "host memory")]
        else:
            needs = [(self.stream_bytes + self.output_bytes, available_host_memory(), "host memory")]
        for needed, free, where in needs:
            if free is not None and needed > free:
                window = request.settings.window_blocks
                kept = "the whole stream" if window is None else f"{window} s of past"
                raise StreamMemoryError(
                    f"this stream needs {needed / gib:.1f} GiB of {where} (KV cache and activations "
                    f"{self.stream_bytes / gib:.1f} GiB keeping {kept}, outputs {self.output_bytes / gib:.1f} GiB) but "
                    f"only {free / gib:.1f} GiB is free: keep a shorter window, stream a smaller size "
                    f"({request.width}x{request.height}) or fewer seconds ({request.seconds})"
                )


class StreamOutputs:
    """Every output of a stream, each kept once: the frames ([F, H, W, 3] float32 in
    [0, 1], allocated up front), the waveform pieces and the latents of each block."""

    def __init__(self, frames: int, height: int, width: int, keep_frames: bool, keep_latents: bool):
        self.frames = torch.empty((frames, height, width, 3), dtype=torch.float32) if keep_frames else None
        self.frames_written = 0
        self.waveforms: list[torch.Tensor] = []
        self.sample_rate: int | None = None
        self.keep_latents = keep_latents
        self.video_latents: list[torch.Tensor] = []
        self.audio_latents: list[torch.Tensor] = []

    @staticmethod
    def bytes_needed(frames: int, samples: int, height: int, width: int, latent_bytes: int, keep_frames: bool,
                     keep_latents: bool) -> int:
        return (frames * height * width * 3 * 4 if keep_frames else 0) + 2 * samples * 4 + (latent_bytes if keep_latents else 0)

    def add(self, block: StreamBlock) -> None:
        if self.keep_latents:
            self.video_latents.append(block.video)
            self.audio_latents.append(block.audio)
        if block.decoded is not None:
            self.add_decoded(block.decoded.frames, block.decoded.waveform, block.decoded.sample_rate)

    def add_decoded(self, frames: torch.Tensor, waveform: torch.Tensor, sample_rate: int) -> None:
        # With a decode look-ahead a block's frames are not its own pixel interval: the
        # first blocks hand over fewer, the last one the rest. Frames follow one another.
        if self.frames is not None:
            end = self.frames_written + frames.shape[0]
            if end > self.frames.shape[0]:
                raise RuntimeError(f"the decoder handed over {end} frames for a stream of {self.frames.shape[0]}")
            self.frames[self.frames_written:end] = frames
        self.frames_written += frames.shape[0]
        self.waveforms.append(waveform)
        self.sample_rate = sample_rate

    def restart_decoded(self) -> None:
        self.frames_written, self.waveforms = 0, []

    def images(self) -> torch.Tensor:
        """The frames made so far (all of them once the stream finished)."""
        if self.frames is None:
            raise RuntimeError("this stream kept no frames (keep_frames=False)")
        return self.frames[:self.frames_written]

    def waveform(self) -> torch.Tensor:
        """[channels, samples] of the blocks made so far."""
        return torch.cat(self.waveforms, dim=1) if self.waveforms else torch.zeros(2, 0)

    def latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(video [B, C, f, h, w], audio tokens [B, t, C]) of the blocks made so far."""
        if not self.video_latents:
            raise RuntimeError("no latents were kept (keep_latents=False, or no block was made)")
        return torch.cat(self.video_latents, dim=2), torch.cat(self.audio_latents, dim=1)


class StreamRun:
    """A checked stream: iterate it (once) for its blocks, inside ``with`` so that an
    exception in the loop's body ends it at once; then ``outputs`` and ``end``.

    Everything is checked when it is made (request, settings, prompt schedule, decoder,
    memory), before anything large is allocated. ``should_stop`` is asked before every
    transformer pass; when it answers True the stream ends as ``stopped``. ``timings``
    collects each block's generation and decode time (``sync_device`` makes them exact on
    a GPU, at the cost of a sync per block: benchmarks only).
    """

    def __init__(self, pipeline: "StreamPipeline", request: StreamRequest, *,
                 should_stop: Callable[[], bool] | None = None, sync_device: bool = False):
        self.request = r = request
        layout = pipeline.layout
        check_seconds(r.seconds)
        check_resolution(r.height, r.width)
        self.blocks_total = layout.num_blocks(r.seconds)
        self.frames_total = layout.frame_count(r.seconds)
        late = [p.second for p in r.prompts if p.second >= r.seconds]
        if late:
            raise StreamSettingsError(
                f"the prompt schedule switches at second {', '.join(map(str, late))}, but the stream is {r.seconds} s "
                f"long (seconds 0 to {r.seconds - 1}): set at_second below {r.seconds} or stream longer")
        switches = [PromptSwitch(layout.block_at_second(p.second), p.text, blend_blocks=p.blend_seconds) for p in r.prompts]
        self.sampler = pipeline.sampler(r.settings)
        self.decoder = None
        if r.decode.mode != "none":
            self.decoder = pipeline.decoder(video_lookahead_latents=r.decode.video_lookahead,
                                            preview=r.decode.mode == "sketch", seed=r.seed)
        self._final_decoder = (pipeline.decoder(video_lookahead_latents=r.decode.video_lookahead, seed=r.seed)
                               if r.decode.final_full_decode else None)
        self.timings: list[BlockTiming] = []
        # sampler.stream checks the text, the schedule and the decoder's grid; it allocates nothing yet.
        self._blocks = self.sampler.stream(
            r.text, r.seconds, r.height, r.width, seed=r.seed, prompt_schedule=switches, decoder=self.decoder,
            overlap_decode=r.decode.overlap, should_stop=should_stop, timings=self.timings,
            sync_device=sync_device)
        keep_frames = r.keep_frames and self.decoder is not None
        keep_latents = r.keep_latents or self._final_decoder is not None
        self.memory = self._memory_plan(pipeline, keep_frames, keep_latents)
        self.memory.check(r)
        self.outputs = StreamOutputs(self.frames_total, r.height, r.width, keep_frames, keep_latents)
        self.blocks_made = 0
        self.end: StreamEnd | None = None
        self._iteration = self._iterate()

    def _memory_plan(self, pipeline: "StreamPipeline", keep_frames: bool, keep_latents: bool) -> MemoryPlan:
        r = self.request
        param = next(pipeline.transformer.parameters())
        c = pipeline.transformer.config
        video_latents, audio_latents = pipeline.layout.latent_lengths(r.seconds)
        grid = (r.height // 32) * (r.width // 32)
        latent_bytes = 4 * (video_latents * grid * c.video_in_channels + audio_latents * c.audio_in_channels)
        output = StreamOutputs.bytes_needed(self.frames_total, pipeline.layout.sample_count(r.seconds), r.height,
                                            r.width, latent_bytes, keep_frames, keep_latents)
        text_tokens = r.text.video.shape[1]
        return MemoryPlan(self.sampler.memory_estimate(r.seconds, r.height, r.width, text_tokens), output, param.device)

    def __iter__(self) -> Iterator[StreamBlock]:
        return self._iteration

    def __enter__(self) -> "StreamRun":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End the stream now (an interrupt in the caller's loop): the cache and the
        generating worker go at once, and ``end`` says how far it got."""
        self._iteration.close()
        self._blocks.close()
        if self.end is None:
            self.end = StreamEnd("stopped", self.blocks_made, self.blocks_total)

    def _iterate(self) -> Iterator[StreamBlock]:
        made = 0
        try:
            for block in self._blocks:
                self.outputs.add(block)
                made = self.blocks_made = made + 1
                yield block
        except BaseException as stopped:
            # ComfyUI's interrupt and Ctrl-C are BaseExceptions: a stop, not a failure.
            failed = isinstance(stopped, Exception)
            self.end = StreamEnd("failed" if failed else "stopped", made, self.blocks_total,
                                 f"{type(stopped).__name__}: {stopped}" if failed else None)
            raise
        finally:
            self._blocks.close()  # frees the KV cache at once, however the loop ended
        self.end = StreamEnd("finished" if made == self.blocks_total else "stopped", made, self.blocks_total)
        if self._final_decoder is not None and made:
            self._decode_again()

    def _decode_again(self) -> None:
        """The sketched stream VAE-decoded from its kept latents, replacing the sketches."""
        video, audio = self.outputs.latents()
        self.outputs.restart_decoded()
        for block in decode_latents(self._final_decoder, self.sampler.layout, video, audio):
            self.outputs.add_decoded(block.decoded.frames, block.decoded.waveform, block.decoded.sample_rate)

    def run(self) -> StreamEnd:
        """Stream to the end without looking at the blocks."""
        for _ in self:
            pass
        return self.end


def decode_latents(decoder, layout, video: torch.Tensor, audio: torch.Tensor) -> Iterator[StreamBlock]:
    """A whole clip's latents (video [1, C, f, h, w], audio tokens [1, t, C]) decoded block by
    block through the streaming decoder, as a stream's blocks are."""
    spans = layout.iter_blocks(layout.blocks_holding(video.shape[2]))
    blocks = [StreamBlock(s, video[:, :, s.video_start:s.video_end], audio[:, s.audio_start:s.audio_end]) for s in spans]
    return decode_blocks(blocks, decoder, len(blocks))
