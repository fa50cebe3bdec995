import pytest
import torch

from helpers import golden_model, golden_vectors, random_model, random_text
from omniforcing_core import (
    BlockLayout,
    ModelConfig,
    PromptSwitch,
    StreamingSampler,
    StreamKVCache,
    StreamSettings,
    StreamSettingsError,
    TextConditioning,
    WindowPolicy,
    block_causal_masks,
)
from omniforcing_core.attention import AUDIO_SELF, KINDS, VIDEO_SELF
from omniforcing_core.rope import time_shift_rotation, video_table

GRID = (2, 3)  # 64 x 96 pixels: 6 tokens per video latent frame
HEIGHT, WIDTH = 64, 96


class TeacherForced:
    """The same noisy inputs through the full masked forward and through the cache."""

    def __init__(self, model, layout, num_blocks, sinks, policy, seed=0):
        self.model, self.layout, self.num_blocks, self.sinks, self.policy = model, layout, num_blocks, sinks, policy
        generator = torch.Generator().manual_seed(seed)
        last = layout.block(num_blocks - 1)
        self.video = torch.randn(1, 128, last.video_end, *GRID, generator=generator)
        self.audio = torch.randn(1, last.audio_end, 128, generator=generator)
        self.sigma = torch.rand(num_blocks, generator=generator)
        self.text = random_text(model.config)

    def full(self):
        spans = list(self.layout.iter_blocks(self.num_blocks))
        video_sigma = torch.cat([self.sigma[s.index].expand(s.video_frames) for s in spans])[None]
        audio_sigma = torch.cat([self.sigma[s.index].expand(s.audio_frames) for s in spans])[None]
        masks = block_causal_masks(
            self.layout, self.num_blocks, GRID[0] * GRID[1], self.sinks, visible_blocks=self.policy.visible_blocks
        )
        with torch.no_grad():
            return self.model(self.video, self.audio, video_sigma, audio_sigma, self.text, masks, self.sinks)

    def streamed(self, before_block=None):
        cache = StreamKVCache(self.model.config, self.layout, GRID, self.policy, self.sinks, 1, "cpu", torch.float32)
        cache.text = self.model.encode_text(self.text)
        outputs = []
        with torch.no_grad():
            for span in self.layout.iter_blocks(self.num_blocks):
                if before_block is not None:
                    before_block(cache, span)
                block = cache.begin_block(span)
                video = self.video[:, :, span.video_start:span.video_end]
                audio = self.audio[:, span.audio_start:span.audio_end]
                outputs.append(self.model.forward_block(video, audio, float(self.sigma[span.index]), block, cache.text))
        return outputs


def max_block_error(layout, num_blocks, full, streamed):
    error = 0.0
    for span, (video, audio) in zip(layout.iter_blocks(num_blocks), streamed):
        error = max(
            error,
            (video - full[0][:, :, span.video_start:span.video_end]).abs().max().item(),
            (audio - full[1][:, span.audio_start:span.audio_end]).abs().max().item(),
        )
    return error


@pytest.mark.parametrize("layout", [BlockLayout.released(), BlockLayout.paper()], ids=lambda l: l.name)
@pytest.mark.parametrize("sinks", [0, 4])
def test_cache_reproduces_the_masked_full_forward(layout, sinks):
    model = random_model(ModelConfig.tiny(audio_sink_tokens=sinks))
    num_blocks = 5
    case = TeacherForced(model, layout, num_blocks, sinks, WindowPolicy(1, num_blocks))
    full = case.full()
    assert max_block_error(layout, num_blocks, full, case.streamed()) <= 1e-5

    def corrupt_block_zero(cache, span):
        if span.index == 2:
            cache.buffers[VIDEO_SELF.name][:, 0, :, :, :GRID[0] * GRID[1]] += 1.0

    corrupted = case.streamed(before_block=corrupt_block_zero)
    assert max_block_error(layout, num_blocks, full, corrupted) > 1e-3


@pytest.mark.parametrize("layout", [BlockLayout.released(), BlockLayout.paper()], ids=lambda l: l.name)
@pytest.mark.parametrize("retained, visible", [(1, [0, 5, 6, 7]), (2, [0, 1, 5, 6, 7])])
def test_rolling_window_equals_a_windowed_mask(layout, retained, visible):
    model = random_model(ModelConfig.tiny(audio_sink_tokens=2))
    policy = WindowPolicy(retained_start_blocks=retained, window_blocks=2)
    case = TeacherForced(model, layout, 8, 2, policy)
    assert max_block_error(layout, 8, case.full(), case.streamed()) <= 1e-5
    assert policy.visible_blocks(7) == visible


@pytest.mark.parametrize("context_noise", [0.0, 0.3])
def test_later_blocks_read_the_context_pass_of_the_re_noised_block(context_noise):
    # One step per block, so block 1's x0 is one pass: the full masked forward over block 0's
    # context input (its x0 re-noised to context_noise with the last noise drawn) and block 1's noise.
    model = random_model()
    layout = BlockLayout.released()
    settings = StreamSettings(sigmas=(1.0, 0.0), context_noise=context_noise, window_blocks=4)
    drawn = {}

    def noise(span, step):
        generator = torch.Generator().manual_seed(100 * span.index + step)
        drawn[(span.index, step)] = (torch.randn(1, 128, span.video_frames, *GRID, generator=generator),
                                     torch.randn(1, span.audio_frames, 128, generator=generator))
        return drawn[(span.index, step)]

    text = random_text(model.config)
    first, second = StreamingSampler(model, layout, settings).stream(text, 2, HEIGHT, WIDTH, noise=noise)
    if context_noise:
        context_video = (1 - context_noise) * first.video + context_noise * drawn[(0, 1)][0]
        context_audio = (1 - context_noise) * first.audio + context_noise * drawn[(0, 1)][1]
    else:
        context_video, context_audio = first.video, first.audio
    b0, b1 = layout.block(0), layout.block(1)
    video = torch.cat([context_video, drawn[(1, 0)][0]], dim=2)
    audio = torch.cat([context_audio, drawn[(1, 0)][1]], dim=1)
    video_sigma = torch.tensor([context_noise] * b0.video_frames + [1.0] * b1.video_frames)[None]
    audio_sigma = torch.tensor([context_noise] * b0.audio_frames + [1.0] * b1.audio_frames)[None]
    with torch.no_grad():
        full_video, full_audio = model(video, audio, video_sigma, audio_sigma, text,
                                       block_causal_masks(layout, 2, GRID[0] * GRID[1]))
    # x0 = x - sigma * velocity, at sigma 1.
    assert (second.video - (drawn[(1, 0)][0] - full_video[:, :, b1.video_start:])).abs().max() <= 1e-5
    assert (second.audio - (drawn[(1, 0)][1] - full_audio[:, b1.audio_start:])).abs().max() <= 1e-5


def test_evicted_block_is_never_read():
    model = random_model()
    layout = BlockLayout.released()
    policy = WindowPolicy(retained_start_blocks=1, window_blocks=2)
    case = TeacherForced(model, layout, 7, 0, policy)
    reference = case.streamed()

    def poison(slot_of_block):
        def hook(cache, span):
            if span.index == 6:
                placement = cache.placement(layout.block(slot_of_block))
                for kind in KINDS:
                    buffer, video_keys = cache.buffers[kind.name], kind.keys == "video"
                    start = placement.video_offset if video_keys else placement.audio_offset
                    width = cache.video_slot_tokens if video_keys else cache.audio_slot_tokens
                    buffer[:, :, :, :, start:start + width] = float("nan")
        return hook

    # Block 3 fell out of block 6's window; its slot is exactly where block 6 goes.
    evicted = case.streamed(before_block=poison(3))
    assert torch.equal(evicted[6][0], reference[6][0]) and torch.equal(evicted[6][1], reference[6][1])
    # Block 5 is still visible: poisoning it reaches the output.
    visible = case.streamed(before_block=poison(5))
    assert torch.isnan(visible[6][0]).any()


def test_sixty_blocks_with_a_four_block_window_keep_the_cache_constant():
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released(), StreamSettings(window_blocks=4, sigmas=(1.0, 0.5, 0.0)))
    text = random_text(model.config)
    snapshots = {}
    for block in sampler.stream(text, 60, HEIGHT, WIDTH, seed=1):
        if block.index in (5, 59):
            cache = sampler.cache
            snapshots[block.index] = (cache.nbytes, [buf.data_ptr() for buf in cache.buffers.values()])
        assert torch.isfinite(block.video).all()
    assert snapshots[5] == snapshots[59]
    video_capacity = sampler_cache_capacity(model.config)
    assert snapshots[5][0] == video_capacity
    assert sampler.cache is None  # freed when the stream ended


def sampler_cache_capacity(config):
    """Bytes of a window of 4 blocks at 64x96: retained block 0 + 5 ring slots, fp32."""
    video_tokens = 4 * 6 + 5 * 3 * 6
    audio_tokens = 26 + 5 * 25
    per_layer = 2 * (
        video_tokens * config.video_dim + audio_tokens * config.audio_dim  # self caches
        + audio_tokens * config.audio_dim + video_tokens * config.audio_dim  # cross-modal caches
    )
    text = 2 * 8 * (config.video_dim + config.audio_dim)
    return 4 * config.num_layers * (per_layer + text)


def test_golden_stream_replaying_the_reference_noise():
    vectors = golden_vectors()
    model = golden_model()
    text = TextConditioning(vectors["context.video"], vectors["context.audio"])

    def recorded(span, step):
        prefix = f"stream.block{span.index}.step{step}"
        return vectors[f"{prefix}.video_noise"].permute(0, 2, 1, 3, 4), vectors[f"{prefix}.audio_noise"]

    sampler = StreamingSampler(model, BlockLayout.released(), StreamSettings(sigmas=vectors["stream.sigmas"].tolist()))
    blocks = list(sampler.stream(text, 5, HEIGHT, WIDTH, noise=recorded))
    assert [b.index for b in blocks] == [0, 1, 2, 3, 4]
    video = torch.cat([b.video for b in blocks], dim=2).permute(0, 2, 1, 3, 4)
    audio = torch.cat([b.audio for b in blocks], dim=1)
    assert (video - vectors["stream.video_x0"]).abs().max() <= 1e-4
    assert (audio - vectors["stream.audio_x0"]).abs().max() <= 1e-4


def _collect(sampler, text, seconds=3, **kwargs):
    return [(b.video.clone(), b.audio.clone()) for b in sampler.stream(text, seconds, HEIGHT, WIDTH, **kwargs)]


def test_same_seed_is_bit_identical_and_seeds_differ():
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released())
    text = random_text(model.config)
    first, second = _collect(sampler, text, seed=7), _collect(sampler, text, seed=7)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    other = _collect(sampler, text, seed=8)
    assert not torch.equal(first[0][0], other[0][0])


def test_explicit_noise_replaces_the_seeded_draws():
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.paper())
    text = random_text(model.config)
    generator = torch.Generator().manual_seed(11)
    drawn = {}

    def noise(span, step):
        video = torch.randn(1, 128, span.video_frames, *GRID, generator=generator)
        audio = torch.randn(1, span.audio_frames, 128, generator=generator)
        drawn[(span.index, step)] = (video, audio)
        return video, audio

    explicit = _collect(sampler, text, seconds=2, noise=noise)
    assert len(explicit) == 3 and len(drawn) == 3 * 4
    seeded = _collect(sampler, text, seconds=2, seed=11)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(explicit, seeded))


def test_prompt_switch_at_a_block_boundary():
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released())
    first, second = random_text(model.config, seed=1), random_text(model.config, seed=2)
    plain = _collect(sampler, first, seconds=4, seed=3)
    used_text = {}
    switched = []
    for block in sampler.stream(first, 4, HEIGHT, WIDTH, seed=3, prompt_schedule=[PromptSwitch(2, second)]):
        # The text keys are rewritten in place at a switch: keep a copy of each block's.
        used_text[block.index] = (sampler.cache.text.video.clone(), sampler.cache.text.audio.clone())
        switched.append((block.video, block.audio))
    assert all(torch.equal(plain[k][0], switched[k][0]) for k in (0, 1))
    assert all((plain[k][0] - switched[k][0]).abs().max() > 1e-4 for k in (2, 3))
    expected = model.encode_text(second)
    assert torch.equal(used_text[2][0], expected.video) and torch.equal(used_text[3][1], expected.audio)
    assert torch.equal(used_text[1][0], model.encode_text(first).video)


def test_prompt_blend_over_blocks():
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released())
    first, second = random_text(model.config, seed=1), random_text(model.config, seed=2)
    used = {}
    for block in sampler.stream(first, 5, HEIGHT, WIDTH, prompt_schedule=[PromptSwitch(1, second, blend_blocks=2)]):
        used[block.index] = sampler.cache.text.video.clone()
    assert torch.allclose(used[1], model.encode_text(first.lerp(second, 1 / 3)).video)
    assert torch.allclose(used[2], model.encode_text(first.lerp(second, 2 / 3)).video)
    assert torch.equal(used[3], model.encode_text(second).video)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (dict(sigmas=(1.0, 0.5)), "must end at sigma 0"),
        (dict(sigmas=(0.5, 1.0, 0.0)), "strictly decrease"),
        (dict(window_blocks=0), "window_blocks must be"),
        (dict(retained_start_blocks=0), "retained_start_blocks must be"),
        (dict(context_noise=1.0), r"context_noise is a sigma in \[0, 1\)"),
        (dict(position_mode="relative"), "position_mode must be one of"),
    ],
)
def test_bad_settings_are_refused(settings, fragment):
    with pytest.raises(StreamSettingsError, match=fragment):
        StreamSettings(**settings)


def test_bad_stream_requests_are_refused_before_anything_runs():
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released())
    text = random_text(model.config)
    with pytest.raises(ValueError, match="multiple of 32"):
        sampler.stream(text, 2, 100, WIDTH)
    with pytest.raises(ValueError, match="whole number of seconds"):
        sampler.stream(text, 1.5, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match="finite window_blocks"):
        sampler.stream(text, None, HEIGHT, WIDTH)
    wrong_width = TextConditioning(torch.zeros(1, 8, 16), torch.zeros(1, 8, 16))
    with pytest.raises(ValueError, match=r"\[batch, tokens, 32\]"):
        sampler.stream(wrong_width, 2, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match="past the stream's last block"):
        sampler.stream(text, 2, HEIGHT, WIDTH, prompt_schedule=[PromptSwitch(5, text)])
    assert sampler.cache is None


def test_closing_a_stream_frees_the_cache_and_the_next_stream_works():
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released(), StreamSettings(window_blocks=2))
    text = random_text(model.config)
    stream = sampler.stream(text, None, HEIGHT, WIDTH)
    assert next(stream).index == 0 and next(stream).index == 1
    assert sampler.cache is not None
    stream.close()
    assert sampler.cache is None
    assert [b.index for b in sampler.stream(text, 2, HEIGHT, WIDTH)] == [0, 1]


def test_time_shift_rotation_moves_keys_by_one_second():
    config = ModelConfig.tiny()
    keys = torch.randn(1, 3 * 6, config.video_dim, generator=torch.Generator().manual_seed(0))
    later = video_table(7, 3, GRID, config.video_dim, config.video_max_pos, config.rope_theta, "cpu", torch.float32)
    earlier = video_table(4, 3, GRID, config.video_dim, config.video_max_pos, config.rope_theta, "cpu", torch.float32)
    shift = time_shift_rotation(-1.0, 3, config.video_dim, config.video_max_pos[0], config.rope_theta, "cpu")
    moved, direct = shift.apply(later.apply(keys)), earlier.apply(keys)
    # The highest fp32 frequencies reach 1.6e4 rad, where both tables round by ~1e-3 rad.
    assert (moved - direct).abs().max() <= 2e-3
    assert (moved[..., :32] - direct[..., :32]).abs().max() <= 5e-5  # low frequencies: near exact
    assert (later.apply(keys) - direct).abs().max() > 0.1


def test_rebased_positions_stay_inside_the_window_and_equal_absolute_until_it_fills():
    policy = WindowPolicy(retained_start_blocks=1, window_blocks=3, position_mode="rebased")
    assert [policy.logical_block(k) for k in range(7)] == [0, 1, 2, 3, 4, 4, 4]
    assert [policy.shifts_window(k) for k in range(7)] == [False] * 5 + [True] * 2
    model = random_model()
    text = random_text(model.config)
    absolute = StreamingSampler(model, BlockLayout.released(), StreamSettings(window_blocks=3))
    rebased = StreamingSampler(model, BlockLayout.released(), StreamSettings(window_blocks=3, position_mode="rebased"))
    a, r = _collect(absolute, text, seconds=6), _collect(rebased, text, seconds=6)
    assert all(torch.equal(a[k][0], r[k][0]) for k in range(5))
    assert (a[5][0] - r[5][0]).abs().max() > 1e-5
    assert all(torch.isfinite(video).all() for video, _ in r)


def test_a_switch_inside_another_switchs_blend_is_refused():
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released())
    first, second, third = (random_text(model.config, seed=s) for s in (1, 2, 3))
    with pytest.raises(StreamSettingsError, match="starts before the switch at block 2 has finished"):
        sampler.stream(first, 8, HEIGHT, WIDTH, prompt_schedule=[PromptSwitch(2, second, 3), PromptSwitch(4, third)])
    longer = random_text(model.config, tokens=12, seed=4)
    with pytest.raises(StreamSettingsError, match="blends between contexts of different shapes"):
        sampler.stream(first, 8, HEIGHT, WIDTH, prompt_schedule=[PromptSwitch(2, longer, 2)])
    assert [b.index for b in sampler.stream(first, 3, HEIGHT, WIDTH, prompt_schedule=[PromptSwitch(1, longer)])] == [0, 1, 2]


def test_two_streams_on_one_sampler_keep_their_own_caches():
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released())
    text = random_text(model.config)
    solo = _collect(sampler, text, seconds=3, seed=1)
    a = sampler.stream(text, 3, HEIGHT, WIDTH, seed=1)
    b = sampler.stream(text, 3, HEIGHT, WIDTH, seed=2)
    interleaved = [next(a), next(b), next(a)]
    a.close()
    assert next(b).index == 1  # closing one stream leaves the other running
    assert torch.equal(interleaved[0].video, solo[0][0]) and torch.equal(interleaved[2].video, solo[1][0])


def test_should_stop_ends_the_stream_within_a_pass():
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released())
    calls = []

    def stop_during_block_one():
        calls.append(1)
        return len(calls) > 7  # block 0 asks 5 times, block 1 stops on its third pass

    blocks = list(sampler.stream(random_text(model.config), 5, HEIGHT, WIDTH, should_stop=stop_during_block_one))
    assert [b.index for b in blocks] == [0] and len(calls) == 8
    assert sampler.cache is None


def test_blending_keeps_tokens_either_prompt_uses():
    config = ModelConfig.tiny()
    short = TextConditioning(torch.zeros(1, 4, 32), torch.zeros(1, 4, 32), torch.tensor([[1, 1, 0, 0]]))
    long = TextConditioning(torch.ones(1, 4, 32), torch.ones(1, 4, 32), torch.tensor([[1, 1, 1, 0]]))
    blended = short.lerp(long, 0.25)
    assert blended.mask.tolist() == [[True, True, True, False]]
    assert torch.allclose(blended.video, torch.full((1, 4, 32), 0.25))
    assert TextConditioning(torch.zeros(1, 4, 32), torch.zeros(1, 4, 32)).lerp(long, 0.5).mask is None
    short.validate(config.caption_channels)


def test_the_last_block_of_a_finite_stream_skips_its_context_pass(monkeypatch):
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released(), StreamSettings(window_blocks=8))
    text = random_text(model.config)
    passes = []
    forward_block = model.forward_block
    monkeypatch.setattr(model, "forward_block", lambda *a, **k: passes.append(a[2]) or forward_block(*a, **k))
    three = _collect(sampler, text, seconds=3, seed=5)
    denoising = len(sampler.settings.sigmas) - 1
    # Blocks 0 and 1 write their clean context (sigma 0) for the blocks after them; block 2 does not.
    assert len(passes) == 3 * denoising + 2 and passes[-1] != 0.0
    unbounded = sampler.stream(text, None, HEIGHT, WIDTH, seed=5)
    passes.clear()
    [next(unbounded) for _ in range(3)]
    unbounded.close()
    assert len(passes) == 3 * (denoising + 1)
    four = _collect(sampler, text, seconds=4, seed=5)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(three, four))


def _block_keys(cache, kind, span):
    """Block ``span``'s cached keys of one self-attention kind: [layers, batch, heads, tokens, dim]."""
    placement = cache.placement(span)
    if kind is VIDEO_SELF:
        offset, count = placement.video_offset, span.video_frames * cache.tokens_per_frame
    else:
        offset, count = placement.audio_offset, span.audio_frames
    return cache.buffers[kind.name][:, 0, :, :, offset:offset + count]


def _rebased_errors(model, dtype):
    """Per block of a rebased stream (window 2), against the blocks it sees laid out as a
    fresh stream (so at their logical positions) through the masked full forward and an
    absolute cache: max |difference| of its output, and of every self-attention key it reads."""
    layout = BlockLayout.released()
    policy = WindowPolicy(retained_start_blocks=1, window_blocks=2, position_mode="rebased")
    model = model.to(dtype)
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(1, 128, layout.block(5).video_end, *GRID, generator=generator).to(dtype)
    audio = torch.randn(1, layout.block(5).audio_end, 128, generator=generator).to(dtype)
    sigma = torch.rand(6, generator=generator)
    text = random_text(model.config)
    text = TextConditioning(text.video.to(dtype), text.audio.to(dtype))

    def stream(policy, order):
        cache = StreamKVCache(model.config, layout, GRID, policy, 0, 1, "cpu", dtype)
        cache.text = model.encode_text(text)
        for index, source in enumerate(order):
            s = layout.block(source)
            block = cache.begin_block(layout.block(index))
            out = model.forward_block(video[:, :, s.video_start:s.video_end], audio[:, s.audio_start:s.audio_end],
                                      float(sigma[source]), block, cache.text)
        return cache, out

    outputs, keys = {}, {}
    with torch.no_grad():
        for k in range(6):
            rebased, (video_out, audio_out) = stream(policy, range(k + 1))
            visible = policy.visible_blocks(k)
            fresh, _ = stream(WindowPolicy(1, len(visible)), visible)
            spans = [layout.block(j) for j in visible]
            full_video, full_audio = model(
                torch.cat([video[:, :, s.video_start:s.video_end] for s in spans], dim=2),
                torch.cat([audio[:, s.audio_start:s.audio_end] for s in spans], dim=1),
                torch.cat([sigma[s.index].expand(s.video_frames) for s in spans])[None],
                torch.cat([sigma[s.index].expand(s.audio_frames) for s in spans])[None],
                text, block_causal_masks(layout, len(spans), GRID[0] * GRID[1]))
            last = layout.block(len(spans) - 1)
            outputs[k] = max((video_out.float() - full_video[:, :, last.video_start:].float()).abs().max().item(),
                             (audio_out.float() - full_audio[:, last.audio_start:].float()).abs().max().item())
            keys[k] = max((_block_keys(rebased, kind, span).float()
                           - _block_keys(fresh, kind, layout.block(i)).float()).abs().max().item()
                          for kind in (VIDEO_SELF, AUDIO_SELF) for i, span in enumerate(spans))
    return outputs, keys


def _history_free_model():
    """One layer whose self-attentions add nothing: what a block's cross-modal keys and
    values hold then depends on its own inputs only, not on the blocks it saw."""
    model = random_model(ModelConfig.tiny(num_layers=1), std=0.5)
    for attention in (model.transformer_blocks[0].attn1, model.transformer_blocks[0].audio_attn1):
        torch.nn.init.zeros_(attention.to_out[0].weight)
        torch.nn.init.zeros_(attention.to_out[0].bias)
    return model


# Measured (max |difference|). Keys: 0 before the window shifts; after, fp32 1.1e-3 and bf16
# 0.031, the angle tables' own rounding at the highest frequencies (the rotation test above)
# and in bf16 the rotation's. Outputs (values ~300): fp32 2.5e-4 before, 1.6e-3 after;
# bf16 0 before, 2.25 after (one bf16 step at 256-512 is 2).
@pytest.mark.parametrize("dtype, keys_tolerance, outputs_tolerance",
                         [(torch.float32, 2e-3, 5e-3), (torch.bfloat16, 0.1, 4.0)])
def test_rebased_cache_equals_the_visible_blocks_at_their_logical_positions(monkeypatch, dtype, keys_tolerance,
                                                                            outputs_tolerance):
    model = _history_free_model()
    outputs, keys = _rebased_errors(model, dtype)
    assert max(keys.values()) <= keys_tolerance and max(outputs.values()) <= outputs_tolerance
    # Keys moved back by two seconds instead of one are far off: the test sees the rotation.
    from omniforcing_core import kv_cache

    rotation = kv_cache.time_shift_rotation
    monkeypatch.setattr(kv_cache, "time_shift_rotation", lambda seconds, *a: rotation(2 * seconds, *a))
    outputs, keys = _rebased_errors(model, dtype)
    assert min(keys[4], keys[5]) > 10 * keys_tolerance and max(outputs[4], outputs[5]) > 2 * outputs_tolerance
