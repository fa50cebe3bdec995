"""The training forward: history router == masked full forward, gradients stop at block
boundaries, and the rollout without gradient is the streaming sampler's stream."""

import pytest
import torch

from helpers import random_model, random_text
from omniforcing_core import BlockLayout, ModelConfig, StreamingSampler, StreamSettings, block_causal_masks
from omniforcing_core.train.flow import per_frame_sigmas
from omniforcing_core.train.rollout import HistoryAttention, self_forcing_rollout

GRID = (2, 2)
LAYOUTS = [("released", 0), ("paper", 0), ("paper", 4)]


def _inputs(layout, num_blocks, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    last = layout.block(num_blocks - 1)
    video = torch.randn(1, 128, last.video_end, *GRID, generator=generator, requires_grad=requires_grad)
    audio = torch.randn(1, last.audio_end, 128, generator=generator, requires_grad=requires_grad)
    sigma = torch.rand(1, num_blocks, generator=generator)
    return video, audio, sigma


def _teacher_forced_history(model, layout, num_blocks, video, audio, block_sigma, sinks):
    """Each block once, at its own sigma, writing its keys for the next (grad kept on it)."""
    router = HistoryAttention()
    text = model.project_text(random_text(model.config))
    outputs = []
    for span in layout.iter_blocks(num_blocks):
        with router.writing():
            outputs.append(
                model.forward_span(
                    video[:, :, span.video_start:span.video_end], audio[:, span.audio_start:span.audio_end],
                    block_sigma[:, span.index:span.index + 1], span, text, router, sinks,
                )
            )
    return outputs


@pytest.mark.parametrize("layout_name,sinks", LAYOUTS)
def test_history_forward_equals_masked_full_forward(layout_name, sinks):
    layout = BlockLayout.named(layout_name)
    model = random_model(ModelConfig.tiny(audio_sink_tokens=sinks))
    num_blocks = 3
    video, audio, block_sigma = _inputs(layout, num_blocks)
    video_sigma, audio_sigma = per_frame_sigmas(layout, block_sigma)
    masks = block_causal_masks(layout, num_blocks, GRID[0] * GRID[1], sinks)
    with torch.no_grad():
        full_video, full_audio = model(video, audio, video_sigma, audio_sigma, random_text(model.config), masks, sinks)
        blocks = _teacher_forced_history(model, layout, num_blocks, video, audio, block_sigma, sinks)
    errors = []
    for span, (block_video, block_audio) in zip(layout.iter_blocks(num_blocks), blocks):
        errors.append((full_video[:, :, span.video_start:span.video_end] - block_video).abs().max())
        errors.append((full_audio[:, span.audio_start:span.audio_end] - block_audio).abs().max())
    assert max(errors) <= 1e-5


def test_history_gradients_stop_at_block_boundaries():
    layout = BlockLayout.paper()
    model = random_model(ModelConfig.tiny(audio_sink_tokens=4))
    num_blocks = 3
    video, audio, block_sigma = _inputs(layout, num_blocks, requires_grad=True)
    blocks = _teacher_forced_history(model, layout, num_blocks, video, audio, block_sigma, 4)
    last = layout.block(num_blocks - 1)
    loss = blocks[-1][0].square().sum() + blocks[-1][1].square().sum()
    loss.backward()
    earlier_video = video.grad[:, :, : last.video_start]
    earlier_audio = audio.grad[:, : last.audio_start]
    assert torch.count_nonzero(earlier_video) == 0 and torch.count_nonzero(earlier_audio) == 0
    assert video.grad[:, :, last.video_start:].abs().sum() > 0 and audio.grad[:, last.audio_start:].abs().sum() > 0
    # The masked full forward, by contrast, lets the last block's loss reach earlier blocks.
    video.grad = audio.grad = None
    video_sigma, audio_sigma = per_frame_sigmas(layout, block_sigma)
    masks = block_causal_masks(layout, num_blocks, GRID[0] * GRID[1], 4)
    full_video, _ = model(video, audio, video_sigma, audio_sigma, random_text(model.config), masks, 4)
    full_video[:, :, last.video_start:].square().sum().backward()
    assert video.grad[:, :, : last.video_start].abs().sum() > 0


def _recorded_noise(layout, num_blocks, steps, seed=3):
    generator = torch.Generator().manual_seed(seed)
    table = {}
    for span in layout.iter_blocks(num_blocks):
        for step in range(steps + 1):
            table[(span.index, step)] = (
                torch.randn(1, 128, span.video_frames, *GRID, generator=generator),
                torch.randn(1, span.audio_frames, 128, generator=generator),
            )
    return lambda span, step: table[(span.index, step)]


@pytest.mark.parametrize("layout_name,sinks", LAYOUTS)
@pytest.mark.parametrize("context_noise", [0.0, 0.2])
def test_rollout_without_gradient_equals_the_streaming_sampler(layout_name, sinks, context_noise):
    layout = BlockLayout.named(layout_name)
    model = random_model(ModelConfig.tiny(audio_sink_tokens=sinks))
    settings = StreamSettings(context_noise=context_noise)
    num_seconds = 3
    num_blocks = layout.num_blocks(num_seconds)
    noise = _recorded_noise(layout, num_blocks, len(settings.sigmas) - 1)
    text = random_text(model.config)
    sampler = StreamingSampler(model, layout, settings)
    streamed = list(sampler.stream(text, num_seconds, GRID[0] * 32, GRID[1] * 32, noise=noise))
    with torch.no_grad():
        rollout = self_forcing_rollout(
            model, layout, num_blocks, model.project_text(text), settings.sigmas, noise,
            context_noise=context_noise, sink_tokens=sinks,
        )
    stream_video = torch.cat([block.video for block in streamed], dim=2)
    stream_audio = torch.cat([block.audio for block in streamed], dim=1)
    assert (rollout.video - stream_video).abs().max() <= 1e-6
    assert (rollout.audio - stream_audio).abs().max() <= 1e-6


def test_rollout_exit_steps_carry_gradient_only_through_their_block():
    layout = BlockLayout.paper()
    model = random_model(ModelConfig.tiny(audio_sink_tokens=4))
    num_blocks, sigmas = 3, StreamSettings().sigmas
    noise = _recorded_noise(layout, num_blocks, len(sigmas) - 1)
    text = model.project_text(random_text(model.config))
    rollout = self_forcing_rollout(model, layout, num_blocks, text, sigmas, noise, exit_steps=[2, 0, 3], sink_tokens=4)
    assert rollout.video.requires_grad and rollout.exit_steps == (2, 0, 3)
    rollout.video.square().mean().backward()
    with_grad = [name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert "transformer_blocks.0.attn1.to_q.weight" in with_grad
    with pytest.raises(ValueError, match="exit_steps needs one step"):
        self_forcing_rollout(model, layout, num_blocks, text, sigmas, noise, exit_steps=[4, 0, 0])


def test_per_frame_sigmas_follow_the_block_spans():
    block_sigma = torch.tensor([[0.1, 0.5, 0.9]], dtype=torch.float64)
    video, audio = per_frame_sigmas(BlockLayout.released(), block_sigma)
    assert video.tolist() == [[0.1] * 4 + [0.5] * 3 + [0.9] * 3]
    assert audio[0, :26].eq(0.1).all() and audio[0, 26:51].eq(0.5).all() and audio[0, 51:].eq(0.9).all()
    assert audio.shape == (1, 76)


def test_rollout_runs_each_step_once_and_skips_the_last_blocks_context_pass(monkeypatch):
    layout = BlockLayout.released()
    model = random_model(ModelConfig.tiny())
    sigmas = StreamSettings().sigmas
    noise = _recorded_noise(layout, 3, len(sigmas) - 1)
    calls = []
    original = model.forward_span

    def counted(video, audio, sigma, span, *rest):
        calls.append((span.index, round(float(sigma[0, 0]), 6)))
        return original(video, audio, sigma, span, *rest)

    monkeypatch.setattr(model, "forward_span", counted)
    with torch.no_grad():
        self_forcing_rollout(model, layout, 3, random_text(model.config), sigmas, noise)
    steps = [round(s, 6) for s in sigmas[:-1]]
    assert calls == [(0, s) for s in steps] + [(0, 0.0)] + [(1, s) for s in steps] + [(1, 0.0)] + [(2, s) for s in steps]
    calls.clear()
    self_forcing_rollout(model, layout, 3, random_text(model.config), sigmas, noise, exit_steps=[1, 0, 2])
    assert [index for index, _ in calls] == [0, 0, 0, 1, 1, 2, 2, 2]
