"""The training forward through detached history, and the self-forcing rollout.

The inference cache writes into preallocated buffers and cannot carry gradients; training
keeps its own history instead: per layer and attention kind, the keys and values of the
finished blocks, detached. A block attends to ``cat(history, its own keys)``, so gradients
reach only the block being generated and stop at block boundaries, as in the references.

The rollout is the streaming sampler's loop step for step (same sigmas, same re-noising,
same clean context pass, same noise protocol), so Stage III trains exactly what ships.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention import AttentionKind
from ..layout import BlockLayout, BlockSpan
from ..sampler import NoiseFn, renoise, x0_from_velocity
from ..conditioning import TextConditioning
from ..transformer import AVTransformer, TextContext


class HistoryAttention:
    """Router of the training forward: detached keys of finished blocks + the current block.

    Only a pass inside :meth:`writing` appends its keys to the history (the context pass);
    denoising passes read it and leave it as it was.
    """

    def __init__(self) -> None:
        self.history: dict[tuple[AttentionKind, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._writing = False

    @contextlib.contextmanager
    def writing(self):
        self._writing = True
        try:
            yield
        finally:
            self._writing = False

    def attend(self, kind: AttentionKind, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        past = self.history.get((kind, layer))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if self._writing:
            self.history[(kind, layer)] = (k.detach(), v.detach())
        return F.scaled_dot_product_attention(q, k, v)


@dataclass(frozen=True)
class Rollout:
    """A generated clip: latents of every block, concatenated, and how they were made."""

    video: torch.Tensor  # [B, C, F, h, w]
    audio: torch.Tensor  # [B, T, C]
    exit_steps: tuple[int, ...]


def self_forcing_rollout(
    model: AVTransformer,
    layout: BlockLayout,
    num_blocks: int,
    text: TextConditioning | TextContext,
    sigmas: Sequence[float],
    noise: NoiseFn,
    *,
    exit_steps: Sequence[int] | None = None,
    context_noise: float = 0.0,
    sink_tokens: int = 0,
) -> Rollout:
    """Generate ``num_blocks`` blocks autoregressively, as :class:`StreamingSampler` does.

    ``exit_steps[k]``: the denoising step at which block k stops, with gradient; every
    other pass runs without gradient. None runs every step of every block without
    gradient (then the result equals the sampler's stream for the same ``noise``).
    Cached history is detached, so gradients stop at block boundaries. The caller makes
    ``exit_steps`` identical on every rank (it fixes the number of forward passes).
    """
    steps = len(sigmas) - 1
    if exit_steps is not None and (len(exit_steps) != num_blocks or not all(0 <= s < steps for s in exit_steps)):
        raise ValueError(f"exit_steps needs one step in [0, {steps}) per block ({num_blocks}), got {list(exit_steps)}")
    router = HistoryAttention()
    videos, audios = [], []
    for index in range(num_blocks):
        span = layout.block(index)
        exit_step = steps - 1 if exit_steps is None else exit_steps[index]
        video_x0, audio_x0 = _denoise_block(
            model, span, text, sigmas, noise, router, sink_tokens, exit_step, with_grad=exit_steps is not None
        )
        videos.append(video_x0)
        audios.append(audio_x0)
        context_video, context_audio = video_x0.detach(), audio_x0.detach()
        if context_noise > 0:
            video_noise, audio_noise = noise(span, steps)
            context_video = renoise(context_video, video_noise, context_noise)
            context_audio = renoise(context_audio, audio_noise, context_noise)
        if index < num_blocks - 1:
            # The last block's keys are never read: its context pass is skipped.
            with torch.no_grad(), router.writing():
                _velocity(model, context_video, context_audio, context_noise, span, text, router, sink_tokens)
    return Rollout(torch.cat(videos, dim=2), torch.cat(audios, dim=1), tuple(exit_steps or ()))


def _denoise_block(model, span: BlockSpan, text, sigmas, noise, router, sink_tokens, exit_step, with_grad):
    video, audio = noise(span, 0)
    for step in range(exit_step + 1):
        sigma, next_sigma = sigmas[step], sigmas[step + 1]
        graded = with_grad and step == exit_step
        with contextlib.nullcontext() if graded else torch.no_grad():
            video_v, audio_v = _velocity(model, video, audio, sigma, span, text, router, sink_tokens)
            video_x0, audio_x0 = x0_from_velocity(video, video_v, sigma), x0_from_velocity(audio, audio_v, sigma)
        if step < exit_step and next_sigma > 0:
            video_noise, audio_noise = noise(span, step + 1)
            video, audio = renoise(video_x0, video_noise, next_sigma), renoise(audio_x0, audio_noise, next_sigma)
    return video_x0, audio_x0


def _velocity(model, video, audio, sigma: float, span, text, router, sink_tokens):
    shared = torch.full((video.shape[0], 1), float(sigma), device=video.device, dtype=torch.float32)
    return model.forward_span(video, audio, shared, span, text, router, sink_tokens)
