"""Streaming audio decode: one block of audio latent tokens in, that block's waveform out.

Audio VAE decoder: causal, so each block is decoded with the past rows every causal
conv needs (``CausalDecodeState``); the result equals a whole-clip decode to float
rounding, and the carried state has a fixed size however long the stream runs.

Vocoder: non-causal. A sample depends on ``receptive_field_frames`` = (left, right)
mel frames around its own frame ((18, 18) for LTX-2 19B, 180 ms each way). Each push
runs the vocoder once on a window

    [left context: last ``left`` emitted frames | held-back frames | new frames | extension]

and emits the samples of the frames it owns:

* the past is exact: with ``left`` real frames of context (or the true clip start) the
  first samples of a block equal the whole-clip decode;
* the future is unknown: the last ``right`` frames of a block would need the next
  block. By default (``lookahead_frames=0``) the window is extended with copies of the
  block's last mel frame (a steady sound is the best guess of what follows), the
  block's samples are emitted at once, and the extension's first ``crossfade_samples``
  are kept as the predicted continuation. The next block's first ``crossfade_samples``
  fade (raised cosine, weights summing to 1) from that prediction into the exact
  decode, so the waveform is continuous at the seam: no click, no gap, no overlap in
  the sample count. Samples differ from the whole-clip decode only in the last
  ``right`` frames before a seam and the crossfade after it; ``final=True`` decodes
  the end of the clip as the whole-clip decode does.
* ``lookahead_frames=L`` holds back the last L frames of every block (L x 10 ms of
  latency) and emits them with the next one; with L >= ``right`` the stream equals the
  whole-clip decode everywhere and no crossfade is used.

Per-block sample counts with ``lookahead_frames=0`` are exactly ``BlockSpan.sample_interval``:
released layout 24240 for block 0 (26 latents -> 101 mel frames) and 24000 for every later
block (25 latents -> 100 frames); paper layout 240 for the 1-latent prefix block. Nothing
is held back, so the algorithmic latency is zero. With lookahead L, every push emits
240 x L fewer samples at its end, the next push emits them first, and ``finish()`` (or
``final=True``) emits the last 240 x L.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..layout import (
    AUDIO_TIME_COMPRESSION,
    MEL_HOP,
    MEL_SAMPLE_RATE,
    SAMPLES_PER_MEL_FRAME,
    BlockSpan,
)
from .audio_vae import AudioVAEDecoder, CausalDecodeState
from .vocoder import MEL_BINS, Vocoder

DEFAULT_CROSSFADE_SAMPLES = 480  # 20 ms at 24 kHz: long enough to hide a low-frequency step


class AudioStreamError(RuntimeError):
    """The audio stream was used out of order (after it finished, or with a gap)."""


@dataclass(frozen=True)
class AudioChunk:
    """Waveform samples [start_sample, start_sample + num_samples) of a stream.

    ``waveform`` is float32 [B, channels, samples] in [-1, 1]; ``mel`` is the pushed
    block's decoded log-mel [B, channels, frames, 64] in the audio VAE's dtype (None for
    a flush; with a lookahead the samples lag the mel by the held-back frames).
    """

    waveform: torch.Tensor
    sample_rate: int
    start_sample: int
    mel: torch.Tensor | None

    @property
    def num_samples(self) -> int:
        return self.waveform.shape[-1]

    @property
    def end_sample(self) -> int:
        return self.start_sample + self.num_samples

    @property
    def duration_seconds(self) -> float:
        return self.num_samples / self.sample_rate

    def to_waveform(self) -> tuple[torch.Tensor, int]:
        """(float32 CPU waveform [channels, samples], sample rate) of the first batch item."""
        return self.waveform[0].float().detach().cpu().contiguous(), self.sample_rate


def _raised_cosine_fade_out(length: int, like: torch.Tensor) -> torch.Tensor:
    """Weights from ~1 down to ~0 over ``length`` samples; (w, 1 - w) sum to one."""
    positions = (torch.arange(length, device=like.device, dtype=torch.float64) + 0.5) / length
    return (0.5 * (1.0 + torch.cos(math.pi * positions))).to(like.dtype)


class StreamingVocoder:
    """Log-mel blocks in, waveform samples out, with exact past context and a seam crossfade."""

    def __init__(
        self,
        vocoder: Vocoder,
        *,
        lookahead_frames: int = 0,
        crossfade_samples: int = DEFAULT_CROSSFADE_SAMPLES,
    ) -> None:
        for name, value in (("lookahead_frames", lookahead_frames), ("crossfade_samples", crossfade_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.vocoder = vocoder
        self.hop = vocoder.config.samples_per_frame
        self.context_frames, right = vocoder.config.receptive_field_frames
        self.lookahead_frames = lookahead_frames
        self.exact = lookahead_frames >= right
        self.crossfade_samples = 0 if self.exact else crossfade_samples
        # Enough copied frames that neither the block's samples nor the predicted
        # continuation see the window's own end.
        self.extension_frames = 0 if self.exact else right - lookahead_frames + math.ceil(crossfade_samples / self.hop)
        self.reset()

    def reset(self) -> None:
        self._history: torch.Tensor | None = None  # emitted frames kept as left context
        self._pending: torch.Tensor | None = None  # received frames not yet emitted
        self._carry: torch.Tensor | None = None  # predicted continuation of the last emission
        self._shape: tuple[int, int] | None = None
        self._device: torch.device | None = None
        self.samples_emitted = 0
        self.finished = False

    @property
    def latency_samples(self) -> int:
        """Samples held back at the end of each push (0 by default)."""
        return self.lookahead_frames * self.hop

    def state_numel(self) -> int:
        return sum(t.numel() for t in (self._history, self._pending, self._carry) if t is not None)

    @torch.no_grad()
    def push(self, mel: torch.Tensor | None, *, final: bool = False) -> torch.Tensor:
        """Vocode the next mel frames [B, C, frames, 64]; returns float32 [B, C, samples].

        ``final`` marks the end of the clip: everything held back is emitted and the
        clip's end is decoded like the whole-clip decode; the stream then needs ``reset``.
        """
        if self.finished:
            raise AudioStreamError("the audio stream has finished; call reset() to start a new one")
        parts = [t for t in (self._history, self._pending, mel) if t is not None and t.shape[2]]
        if mel is not None:
            shape = (mel.shape[0], mel.shape[1])
            if self._shape is not None and shape != self._shape:
                raise AudioStreamError(
                    f"mel block has batch x channels {shape}, but the stream started with {self._shape}; "
                    "call reset() to change them"
                )
            self._shape, self._device = shape, mel.device
        if self._shape is None:
            raise AudioStreamError("nothing to decode: push at least one block of mel frames first")
        window = torch.cat(parts, dim=2) if parts else None
        start = 0 if self._history is None else self._history.shape[2]
        available = start if window is None else window.shape[2]
        end = available if final else max(start, available - self.lookahead_frames)
        if end == start:  # nothing new to emit: keep the frames, skip the vocoder
            self._pending = None if window is None else window[:, :, start:]
            self.finished = final
            return torch.zeros(*self._shape, 0, device=self._device)

        extension = 0 if final else self.extension_frames
        if extension:
            window_in = torch.cat([window, window[:, :, -1:].expand(-1, -1, extension, -1)], dim=2)
        else:
            window_in = window
        wave = self.vocoder(window_in).float()
        emitted = self._fade_in_from_carry(wave[..., start * self.hop:end * self.hop])
        if self.crossfade_samples and not final:
            self._carry = wave[..., end * self.hop:end * self.hop + self.crossfade_samples].clone()
        self._history = window[:, :, max(0, end - self.context_frames):end].clone()
        self._pending = window[:, :, end:].clone()
        self.samples_emitted += emitted.shape[-1]
        self.finished = final
        return emitted

    def finish(self) -> torch.Tensor:
        """Emit the held-back samples as the end of the clip (empty without lookahead)."""
        return self.push(None, final=True)

    def _fade_in_from_carry(self, emitted: torch.Tensor) -> torch.Tensor:
        if self._carry is None or emitted.shape[-1] == 0:
            return emitted
        length = min(self._carry.shape[-1], emitted.shape[-1])
        fade_out = _raised_cosine_fade_out(length, emitted)
        emitted = emitted.clone()
        emitted[..., :length] = fade_out * self._carry[..., :length] + (1 - fade_out) * emitted[..., :length]
        self._carry = None
        return emitted


class StreamingAudioDecoder:
    """Audio tokens of one block in, that block's waveform out (an ``AudioChunk``).

    Push blocks in order, each as normalized tokens [B, T, 128] (or latent grids
    [B, 8, T, 16]); pass the block's ``BlockSpan`` to have the order checked.
    """

    def __init__(
        self,
        audio_vae: AudioVAEDecoder,
        vocoder: Vocoder,
        *,
        lookahead_frames: int = 0,
        crossfade_samples: int = DEFAULT_CROSSFADE_SAMPLES,
    ) -> None:
        _check_latent_clock(audio_vae, vocoder)
        self.audio_vae = audio_vae
        self.vocoder_stream = StreamingVocoder(
            vocoder, lookahead_frames=lookahead_frames, crossfade_samples=crossfade_samples
        )
        self.reset()

    def reset(self) -> None:
        self._vae_state = CausalDecodeState()
        self.vocoder_stream.reset()

    @property
    def sample_rate(self) -> int:
        return self.vocoder_stream.vocoder.sample_rate

    @property
    def latency_samples(self) -> int:
        return self.vocoder_stream.latency_samples

    @property
    def latent_frames_seen(self) -> int:
        return self._vae_state.latent_frames_seen

    def state_numel(self) -> int:
        """Elements carried between blocks: fixed once the stream is past its first blocks."""
        return self._vae_state.numel() + self.vocoder_stream.state_numel()

    @torch.no_grad()
    def push(self, tokens: torch.Tensor, *, span: BlockSpan | None = None, final: bool = False) -> AudioChunk:
        """Decode the next block; returns its samples (see the module doc for the counts)."""
        tokens = self.audio_vae.as_tokens(tokens)
        frames = tokens.shape[1]
        if span is not None:
            if span.audio_frames != frames:
                raise ValueError(
                    f"block {span.index} spans {span.audio_frames} audio latents but {frames} were given"
                )
            if span.audio_start != self.latent_frames_seen:
                raise AudioStreamError(
                    f"block {span.index} starts at audio latent {span.audio_start}, but the stream has "
                    f"decoded {self.latent_frames_seen}; push blocks in order (or reset() for a new clip)"
                )
        if self.vocoder_stream.finished:
            raise AudioStreamError("the audio stream has finished; call reset() to start a new one")
        mel = self.audio_vae(tokens, self._vae_state)
        start = self.vocoder_stream.samples_emitted
        waveform = self.vocoder_stream.push(mel, final=final)
        return AudioChunk(waveform, self.sample_rate, start, mel)

    def finish(self) -> AudioChunk:
        """The samples still held back (empty with ``lookahead_frames=0``); ends the stream."""
        start = self.vocoder_stream.samples_emitted
        return AudioChunk(self.vocoder_stream.finish(), self.sample_rate, start, None)


@torch.no_grad()
def decode_audio_clip(audio_vae: AudioVAEDecoder, vocoder: Vocoder, tokens: torch.Tensor) -> AudioChunk:
    """Decode a whole clip at once (the reference the stream is measured against)."""
    mel = audio_vae(tokens)
    return AudioChunk(vocoder(mel).float(), vocoder.sample_rate, 0, mel)


def _check_latent_clock(audio_vae: AudioVAEDecoder, vocoder: Vocoder) -> None:
    """The block layout assumes 25 latents/s, 4 mel frames per latent, 240 samples per frame."""
    vae, voc = audio_vae.config, vocoder.config
    checks = (
        ("audio VAE time compression", vae.time_compression, AUDIO_TIME_COMPRESSION),
        ("mel hop length", vae.mel_hop_length, MEL_HOP),
        ("mel sample rate", vae.sampling_rate, MEL_SAMPLE_RATE),
        ("vocoder samples per mel frame", voc.samples_per_frame, SAMPLES_PER_MEL_FRAME),
        ("mel bins", vae.mel_bins, MEL_BINS),
        ("vocoder channels (stereo)", voc.audio_channels, vae.out_channels),
    )
    for what, value, expected in checks:
        if value != expected:
            raise ValueError(
                f"{what} is {value} but the latent clock (omniforcing_core.layout) needs {expected}; "
                "the audio VAE and vocoder must be LTX-2 19B's (or a preset of the same clock)"
            )
