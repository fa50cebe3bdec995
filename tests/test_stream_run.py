"""The stream runner: outputs kept once and in order, how a stream ended, the decode
look-ahead, and the memory check that refuses what does not fit before anything runs."""

from __future__ import annotations

import pytest
import torch

from helpers import random_text
from omniforcing_core import AVTransformer, BlockLayout, ModelConfig, StreamPipeline, StreamSettings
from omniforcing_core import stream_run
from omniforcing_core.decoders.video_stream import exact_lookahead_latents
from omniforcing_core.demo import tiny_decoders
from omniforcing_core.sampler import StreamSettingsError
from omniforcing_core.stream_run import DecodeOptions, PromptAt, StreamMemoryError, StreamRequest, StreamRun

HEIGHT, WIDTH = 64, 96


@pytest.fixture(scope="module")
def pipeline():
    return StreamPipeline.tiny_random(seed=0)


def request(pipeline, seconds=3, **changes):
    return StreamRequest(random_text(pipeline.transformer.config), seconds, HEIGHT, WIDTH, seed=2, **changes)


def test_a_finished_stream_keeps_every_frame_sample_and_latent_once(pipeline):
    run = StreamRun(pipeline, request(pipeline, 3, decode=DecodeOptions(overlap=False)))
    blocks = list(run)
    layout = pipeline.layout
    assert run.end.status == "finished" and run.end.blocks_made == 3 and run.end.describe() == "finished: 3 blocks"
    images = run.outputs.images()
    assert images.shape == (layout.frame_count(3), HEIGHT, WIDTH, 3) == (73, 64, 96, 3)
    assert torch.equal(images[:25], blocks[0].decoded.frames) and torch.equal(images[49:], blocks[2].decoded.frames)
    assert run.outputs.waveform().shape == (2, layout.sample_count(3))
    video, audio = run.outputs.latents()
    assert video.shape[2] == layout.latent_lengths(3)[0] and audio.shape[1] == layout.latent_lengths(3)[1]
    assert len(run.timings) == 3


def test_a_stream_stopped_on_the_way_says_so_and_keeps_what_it_made(pipeline):
    asked = []
    run = StreamRun(pipeline, request(pipeline, 4, decode=DecodeOptions(overlap=False)),
                    should_stop=lambda: asked.append(1) or len(asked) > 6)  # block 0's 5 passes, then 1 more
    run.run()
    assert run.end.status == "stopped" and not run.end.finished
    assert run.end.describe() == "stopped after 1 of 4 blocks"
    assert run.outputs.images().shape[0] == 25 and run.outputs.waveform().shape[1] == 24240


def test_a_failure_is_an_end_of_its_own(pipeline, monkeypatch):
    run = StreamRun(pipeline, request(pipeline, 3, decode=DecodeOptions(overlap=False)))
    push = run.decoder.push
    pushes = []

    def failing(*args, **kwargs):
        pushes.append(1)
        if len(pushes) == 2:
            raise RuntimeError("decoder broke")
        return push(*args, **kwargs)

    monkeypatch.setattr(run.decoder, "push", failing)
    with pytest.raises(RuntimeError, match="decoder broke"):
        run.run()
    assert run.end.status == "failed" and run.end.blocks_made == 1
    assert run.end.describe() == "failed after 1 of 3 blocks: RuntimeError: decoder broke"
    assert run.sampler.cache is None  # the cache went at once


@pytest.mark.parametrize("seconds", [1, 3, 6])
def test_every_decode_lookahead_hands_over_the_whole_stream_in_order(pipeline, seconds):
    exact = exact_lookahead_latents(pipeline.video_vae.config)
    frames = {}
    for lookahead in (0, 1, 2, 3, exact):
        run = StreamRun(pipeline, request(pipeline, seconds, decode=DecodeOptions(video_lookahead=lookahead)))
        per_block = [block.decoded.frames.shape[0] for block in run]
        assert sum(per_block) == pipeline.layout.frame_count(seconds), (lookahead, per_block)
        frames[lookahead] = run.outputs.images().clone()
    video, _ = run.outputs.latents()
    whole_clip = pipeline.video_vae.decode_frames(video, seed=2)
    assert (frames[exact] - whole_clip).abs().max() <= 1e-5
    if seconds > 1:
        assert (frames[0] - whole_clip).abs().max() > 1e-3  # look-ahead 0 is the block-end approximation


def test_a_sketched_stream_is_decoded_in_full_at_the_end(pipeline):
    full = StreamRun(pipeline, request(pipeline, 2))
    full.run()
    sketched = StreamRun(pipeline, request(pipeline, 2, decode=DecodeOptions("sketch", final_full_decode=True)))
    sketches = [block.decoded.frames.clone() for block in sketched]
    assert not torch.allclose(torch.cat(sketches), full.outputs.images())
    assert torch.equal(sketched.outputs.images(), full.outputs.images())
    assert torch.equal(sketched.outputs.waveform(), full.outputs.waveform())


def test_prompts_switch_at_their_second_through_the_layout(pipeline):
    other = random_text(pipeline.transformer.config, seed=9)
    plain = StreamRun(pipeline, request(pipeline, 3, decode=DecodeOptions("none")))
    switched = StreamRun(pipeline, request(pipeline, 3, decode=DecodeOptions("none"), prompts=(PromptAt(2, other),)))
    plain.run(), switched.run()
    (a, _), (b, _) = plain.outputs.latents(), switched.outputs.latents()
    assert torch.equal(a[:, :, :7], b[:, :, :7]) and (a[:, :, 7:] - b[:, :, 7:]).abs().max() > 1e-4
    with pytest.raises(StreamSettingsError, match=r"switches at second 3, but the stream is 3 s long \(seconds 0 to 2\)"):
        StreamRun(pipeline, request(pipeline, 3, prompts=(PromptAt(3, other),)))


def test_a_stream_too_big_for_memory_is_refused_before_anything_is_allocated(pipeline, monkeypatch):
    monkeypatch.setattr(stream_run, "available_host_memory", lambda: 2**20)
    made = []
    monkeypatch.setattr(stream_run.StreamOutputs, "__init__", lambda *a, **k: made.append(1))
    with pytest.raises(StreamMemoryError, match=r"needs 0\.0 GiB of host memory .* keeping 4 s of past.* but only "
                                                r"0\.0 GiB is free: keep a shorter window"):
        StreamRun(pipeline, request(pipeline, 3))
    assert made == []


def test_sixty_seconds_of_the_19b_model_keeping_everything_is_refused(monkeypatch):
    monkeypatch.setattr(stream_run, "available_host_memory", lambda: 16 * 2**30)
    with torch.device("meta"):
        transformer = AVTransformer(ModelConfig.ltx2_19b()).to(torch.bfloat16)
    pipeline = StreamPipeline(transformer, BlockLayout.released(), *tiny_decoders(0))
    text = random_text(transformer.config)
    keep_all = StreamRequest(text, 60, 512, 768, settings=StreamSettings(window_blocks=None), keep_frames=False)
    with pytest.raises(StreamMemoryError, match=r"needs 7\d\.\d GiB of host memory \(KV cache and activations 7\d\.\d "
                                                r"GiB keeping the whole stream"):
        StreamRun(pipeline, keep_all)
    windowed = StreamRun(pipeline, StreamRequest(text, 60, 512, 768, keep_frames=False))
    assert windowed.memory.stream_bytes < 0.2 * 79 * 2**30


def test_one_default_window_for_every_front_end():
    from nodes.settings import NodeStreamSettings

    assert StreamRequest(None).settings.window_blocks == stream_run.DEFAULT_WINDOW_SECONDS == 4
    assert NodeStreamSettings.defaults().stream.window_blocks == stream_run.DEFAULT_WINDOW_SECONDS


def test_a_block_already_generated_is_not_decoded_after_a_stop(pipeline):
    # Asked before each of block 0's 5 passes, before its decode, before block 1's 5 passes,
    # then before block 1's decode: the user's stop lands there, after block 1 was made.
    asked = []
    run = StreamRun(pipeline, request(pipeline, 4, decode=DecodeOptions(overlap=False)),
                    should_stop=lambda: asked.append(1) or len(asked) >= 12)
    push, pushed = run.decoder.push, []
    run.decoder.push = lambda *args, **kwargs: pushed.append(1) or push(*args, **kwargs)
    run.run()
    assert len(asked) == 12 and pushed == [1] and run.end.describe() == "stopped after 1 of 4 blocks"
