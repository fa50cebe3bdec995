"""One training step of each stage: the teacher, Stage I, ODE pairs, Stage II, Stage III.

Each function computes a loss (or, for ODE pairs, a trajectory) for one rank's batch;
the loop around them (optimisers, accumulation, logging, checkpoints) is in ``runner``.
Models predict velocity; every loss here follows ``losses`` (CFG in the LTX convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..conditioning import TextConditioning
from ..layout import BlockLayout
from ..masks import block_causal_masks
from ..sampler import renoise, x0_from_velocity
from ..transformer import AVTransformer
from .data import sample_generator, synced_generator
from .flow import add_noise, per_frame_sigmas, x0_of
from .losses import (
    critic_flow_matching_loss,
    dmd_loss,
    flow_matching_loss,
    guided,
    ode_regression_loss,
    sample_sigma,
    weighted_sum,
)
from .rollout import self_forcing_rollout


@dataclass(frozen=True)
class StreamWeights:
    """Loss weight of each stream; both required, so no stream is silently switched off."""

    video: float
    audio: float

    def combine(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return weighted_sum({"video": video, "audio": audio}, {"video": self.video, "audio": self.audio})


@dataclass(frozen=True)
class Guidance:
    """CFG scales per stream (LTX convention: 1 = none)."""

    video: float
    audio: float


class Draws:
    """Per-sample random tensors of one step (see ``data``: seeded by sample, not rank)."""

    def __init__(self, seed: int, step: int, indices: Sequence[int], device):
        self.seed, self.step, self.indices, self.device = seed, step, list(indices), device

    def normal(self, shape: Sequence[int], purpose: str, draw: int = 0) -> torch.Tensor:
        parts = [
            torch.randn(tuple(shape), generator=sample_generator(self.seed, self.step, i, purpose, draw))
            for i in self.indices
        ]
        return torch.stack(parts).to(self.device)

    def uniform(self, purpose: str, count: int = 1, draw: int = 0) -> torch.Tensor:
        parts = [
            torch.rand(count, generator=sample_generator(self.seed, self.step, i, purpose, draw))
            for i in self.indices
        ]
        return torch.stack(parts).to(self.device)

    def sigma(self, purpose: str, low: float, high: float, shift: float, draw: int = 0) -> torch.Tensor:
        parts = [
            sample_sigma(1, sample_generator(self.seed, self.step, i, purpose, draw), low=low, high=high, shift=shift)
            for i in self.indices
        ]
        return torch.cat(parts).float().to(self.device)

    def latent_noise(self, video: torch.Tensor, audio: torch.Tensor, purpose: str = "noise", draw: int = 0):
        return self.normal(video.shape[1:], purpose, draw), self.normal(audio.shape[1:], purpose, draw + 32)

    def choice(self, high: int, count: int = 1) -> list[int]:
        """Integers in [0, high) shared by every rank at this step."""
        return torch.randint(0, high, (count,), generator=synced_generator(self.seed, self.step)).tolist()


def _shared(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.reshape(-1, 1).float()


def velocity(model: AVTransformer, video, audio, sigma: torch.Tensor, text: TextConditioning, masks=None, sinks=0):
    """A bidirectional (or masked) full-clip velocity; ``sigma`` [B] shared or [B, F] pairs."""
    if isinstance(sigma, tuple):
        video_sigma, audio_sigma = sigma
    else:
        video_sigma = audio_sigma = _shared(sigma)
    return model(video, audio, video_sigma, audio_sigma, text, masks, sinks)


def guided_x0(teacher: AVTransformer, video, audio, sigma: torch.Tensor, cond: TextConditioning,
              uncond: TextConditioning, guidance: Guidance):
    """Teacher x0 with CFG, cond and uncond in one batched forward (half the all-gathers);
    without guidance the unconditional half is not computed at all."""
    if guidance.video == 1 and guidance.audio == 1:
        v_video, v_audio = velocity(teacher, video, audio, sigma, cond)
        return x0_of(video, audio, v_video, v_audio, _shared(sigma), _shared(sigma))
    both = TextConditioning(torch.cat([cond.video, uncond.video]), torch.cat([cond.audio, uncond.audio]))
    v_video, v_audio = velocity(teacher, torch.cat([video, video]), torch.cat([audio, audio]), torch.cat([sigma, sigma]), both)
    x0_video, x0_audio = x0_of(torch.cat([video, video]), torch.cat([audio, audio]), v_video, v_audio,
                               _shared(torch.cat([sigma, sigma])), _shared(torch.cat([sigma, sigma])))
    batch = video.shape[0]
    return (
        guided(x0_video[:batch], x0_video[batch:], guidance.video),
        guided(x0_audio[:batch], x0_audio[batch:], guidance.audio),
    )


# Teacher: bidirectional flow matching -------------------------------------------------


def teacher_loss(teacher: AVTransformer, conditioner: nn.Module, batch: dict[str, torch.Tensor], draws: Draws,
                 weights: StreamWeights, text_dropout: float, sigma_shift: float):
    prompt = batch["prompt"].clone()
    dropped = draws.uniform("dropout")[:, 0] < text_dropout
    prompt[dropped] = 0
    text = conditioner(prompt)
    sigma = draws.sigma("sigma", 0.0, 1.0, sigma_shift)
    video, audio = batch["video"], batch["audio"]
    noise_video, noise_audio = draws.latent_noise(video, audio)
    x_video, x_audio = add_noise(video, audio, noise_video, noise_audio, _shared(sigma), _shared(sigma))
    v_video, v_audio = velocity(teacher, x_video, x_audio, sigma, text)
    video_loss = flow_matching_loss(v_video, video, noise_video)
    audio_loss = flow_matching_loss(v_audio, audio, noise_audio)
    return weights.combine(video_loss, audio_loss), {"video": video_loss.item(), "audio": audio_loss.item()}


@torch.no_grad()
def teacher_sample(teacher: AVTransformer, noise_video, noise_audio, cond, uncond, guidance: Guidance,
                   sigmas: Sequence[float], keep: Sequence[float] = ()):
    """Euler integration of the teacher's guided velocity from ``sigmas[0]`` to 0.

    Returns the clean sample and the states at each sigma in ``keep`` (which must lie on
    the grid): the ODE trajectory sub-sampled at the student's sigmas."""
    missing = [s for s in keep if not any(abs(s - g) < 1e-9 for g in sigmas)]
    if missing:
        raise ValueError(f"sigmas to keep {missing} are not on the teacher's grid")
    video, audio = noise_video, noise_audio
    kept = []
    for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:]):
        if any(abs(sigma - s) < 1e-9 for s in keep):
            kept.append((video.clone(), audio.clone()))
        shared = torch.full((video.shape[0],), float(sigma), device=video.device)
        x0_video, x0_audio = guided_x0(teacher, video, audio, shared, cond, uncond, guidance)
        # Euler on the velocity (x - x0) / sigma, written through x0 so CFG is applied once.
        video = x0_video + (next_sigma / sigma) * (video - x0_video)
        audio = x0_audio + (next_sigma / sigma) * (audio - x0_audio)
    return (video, audio), kept


def teacher_grid(steps: int, must_include: Sequence[float]) -> list[float]:
    """``steps`` uniform sigmas from 1 to 0 merged with the student's own sigmas."""
    grid = {round(1 - i / steps, 9) for i in range(steps + 1)} | {round(float(s), 9) for s in must_include}
    return sorted(grid, reverse=True)


# Stage I and III: distribution matching --------------------------------------------------


@dataclass(frozen=True)
class DMDSettings:
    guidance: Guidance
    weights: StreamWeights
    sigma_low: float = 0.02
    sigma_high: float = 0.98
    sigma_shift: float = 1.0


def dmd_generator_loss(teacher, critic, video, audio, cond, uncond, draws: Draws, settings: DMDSettings):
    """DMD on a generated clip: re-noise it, compare critic (fake) and teacher (real, CFG)."""
    t = draws.sigma("sigma", settings.sigma_low, settings.sigma_high, settings.sigma_shift)
    noise_video, noise_audio = draws.latent_noise(video, audio)
    x_video, x_audio = add_noise(video.detach(), audio.detach(), noise_video, noise_audio, _shared(t), _shared(t))
    with torch.no_grad():
        real_video, real_audio = guided_x0(teacher, x_video, x_audio, t, cond, uncond, settings.guidance)
        fv, fa = velocity(critic, x_video, x_audio, t, cond)
        fake_video, fake_audio = x0_of(x_video, x_audio, fv, fa, _shared(t), _shared(t))
    video_loss = dmd_loss(video, fake_video, real_video)
    audio_loss = dmd_loss(audio, fake_audio, real_audio)
    return settings.weights.combine(video_loss, audio_loss), {"dmd_video": video_loss.item(), "dmd_audio": audio_loss.item()}


def critic_loss(critic, video, audio, cond, draws: Draws, settings: DMDSettings, draw: int):
    """Flow matching of the fake score on a detached generator sample."""
    t = draws.sigma("critic", 0.0, 1.0, settings.sigma_shift, draw)
    noise_video, noise_audio = draws.latent_noise(video, audio, "critic", draw + 1)
    x_video, x_audio = add_noise(video, audio, noise_video, noise_audio, _shared(t), _shared(t))
    v_video, v_audio = velocity(critic, x_video, x_audio, t, cond)
    video_loss = critic_flow_matching_loss(v_video, video, noise_video)
    audio_loss = critic_flow_matching_loss(v_audio, audio, noise_audio)
    return settings.weights.combine(video_loss, audio_loss), {"critic_video": video_loss.item(), "critic_audio": audio_loss.item()}


def backward_simulation(generator: AVTransformer, noise_video, noise_audio, cond, sigmas: Sequence[float],
                        exit_step: int, draws: Draws, with_grad: bool = True):
    """Stage I's few-step bidirectional sampler from noise: steps before ``exit_step``
    without gradient, the exit step with it (its x0 is the generated sample)."""
    video, audio = noise_video, noise_audio
    for step in range(exit_step + 1):
        sigma = sigmas[step]
        graded = with_grad and step == exit_step
        with torch.enable_grad() if graded else torch.no_grad():
            shared = torch.full((video.shape[0],), float(sigma), device=video.device)
            v_video, v_audio = velocity(generator, video, audio, shared, cond)
            x0_video, x0_audio = x0_from_velocity(video, v_video, sigma), x0_from_velocity(audio, v_audio, sigma)
        if step < exit_step:
            fresh_video, fresh_audio = draws.latent_noise(video, audio, "noise", 2 * step + 3)
            video, audio = renoise(x0_video, fresh_video, sigmas[step + 1]), renoise(x0_audio, fresh_audio, sigmas[step + 1])
    return x0_video, x0_audio


def rollout_noise(draws: Draws, layout: BlockLayout, grid_hw, channels: tuple[int, int]):
    """The sampler's noise protocol (block, step) for a rollout, drawn per sample."""

    def draw(span, step):
        purpose_draw = 100 + span.index * 8 + step
        video = draws.normal((channels[0], span.video_frames, *grid_hw), "noise", purpose_draw)
        audio = draws.normal((span.audio_frames, channels[1]), "noise", purpose_draw + 32)
        return video, audio

    return draw


def stage3_sample(generator: AVTransformer, layout: BlockLayout, num_blocks: int, grid_hw, cond,
                  sigmas: Sequence[float], draws: Draws, sinks: int, context_noise: float, with_grad: bool = True):
    """A self-forcing rollout with one exit step per block, the same on every rank."""
    steps = len(sigmas) - 1
    exit_steps = draws.choice(steps, num_blocks) if with_grad else None
    config = generator.config
    noise = rollout_noise(draws, layout, grid_hw, (config.video_in_channels, config.audio_in_channels))
    with torch.enable_grad() if with_grad else torch.no_grad():
        rollout = self_forcing_rollout(
            generator, layout, num_blocks, cond, sigmas, noise,
            exit_steps=exit_steps, context_noise=context_noise, sink_tokens=sinks,
        )
    return rollout.video, rollout.audio


# Stage II: causal ODE regression -------------------------------------------------------


def stage2_loss(student: AVTransformer, layout: BlockLayout, trajectory_video, trajectory_audio, target_video,
                target_audio, trajectory_sigmas: torch.Tensor, cond, draws: Draws, weights: StreamWeights,
                sinks: int, masks=None, block_indices: torch.Tensor | None = None):
    """Every block at its own point of the teacher's trajectory, the student's x0 against
    the trajectory's clean end under the block-causal mask.

    trajectory_*: [B, S, ...] states at ``trajectory_sigmas`` [S] (all > 0)."""
    batch, states = trajectory_video.shape[:2]
    num_blocks = _blocks_of(layout, target_video.shape[2])
    if block_indices is None:
        block_indices = (draws.uniform("sigma", num_blocks) * states).long().clamp(max=states - 1)
    block_sigma = trajectory_sigmas.to(target_video.device)[block_indices]
    video_sigma, audio_sigma = per_frame_sigmas(layout, block_sigma)
    rows = torch.arange(batch, device=target_video.device)
    spans = list(layout.iter_blocks(num_blocks))
    states_video = [trajectory_video[rows, block_indices[:, k]] for k in range(num_blocks)]
    states_audio = [trajectory_audio[rows, block_indices[:, k]] for k in range(num_blocks)]
    video_in = torch.cat([v[:, :, s.video_start:s.video_end] for v, s in zip(states_video, spans)], dim=2)
    audio_in = torch.cat([a[:, s.audio_start:s.audio_end] for a, s in zip(states_audio, spans)], dim=1)
    if masks is None:
        grid = target_video.shape[-2] * target_video.shape[-1]
        masks = block_causal_masks(layout, num_blocks, grid, sinks, device=target_video.device)
    v_video, v_audio = velocity(student, video_in, audio_in, (video_sigma, audio_sigma), cond, masks, sinks)
    x0_video, x0_audio = x0_of(video_in, audio_in, v_video, v_audio, video_sigma, audio_sigma)
    video_loss = ode_regression_loss(x0_video, target_video)
    audio_loss = ode_regression_loss(x0_audio, target_audio)
    return weights.combine(video_loss, audio_loss), {"video": video_loss.item(), "audio": audio_loss.item()}


def _blocks_of(layout: BlockLayout, video_frames: int) -> int:
    count = 1
    while layout.block(count - 1).video_end < video_frames:
        count += 1
    if layout.block(count - 1).video_end != video_frames:
        raise ValueError(f"{video_frames} video latent frames do not end on a block of the {layout.name} layout")
    return count
