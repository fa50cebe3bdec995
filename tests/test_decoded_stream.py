import pytest
import torch

from helpers import random_model, random_text
from omniforcing_core import BlockLayout, StreamingSampler, StreamSettings, StreamSettingsError
from omniforcing_core.decoders.audio_stream import decode_audio_clip
from omniforcing_core.decoders.av_stream import AVStreamDecoder
from omniforcing_core.decoders.latent_preview import LatentPreview
from omniforcing_core.demo import tiny_decoders


@pytest.fixture(scope="module")
def decoders():
    return tiny_decoders()


def test_each_block_arrives_as_frames_and_sound(decoders):
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released())
    blocks = list(sampler.stream(random_text(model.config), 3, 64, 96, decoder=AVStreamDecoder(*decoders)))
    assert [tuple(b.decoded.frames.shape) for b in blocks] == [(25, 64, 96, 3), (24, 64, 96, 3), (24, 64, 96, 3)]
    assert [tuple(b.decoded.waveform.shape) for b in blocks] == [(2, 24240), (2, 24000), (2, 24000)]
    assert {b.decoded.sample_rate for b in blocks} == {24000}
    for block in blocks:
        frames = block.decoded.frames
        assert frames.dtype == torch.float32 and frames.min() >= 0 and frames.max() <= 1
        assert torch.isfinite(block.decoded.waveform).all()
        assert frames.std() > 1e-3  # something was decoded, not a constant


def test_a_one_block_stream_decodes_like_the_whole_clip(decoders):
    video_vae, audio_vae, vocoder = decoders
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released())
    (block,) = sampler.stream(random_text(model.config), 1, 64, 96, decoder=AVStreamDecoder(*decoders))
    whole_frames = video_vae.decode_frames(block.video)
    whole_audio, _ = decode_audio_clip(audio_vae, vocoder, block.audio).to_waveform()
    assert (block.decoded.frames - whole_frames).abs().max() <= 1e-5
    assert (block.decoded.waveform - whole_audio).abs().max() <= 1e-5


def test_latent_preview_keeps_the_frame_clock(decoders):
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.paper())
    decoder = AVStreamDecoder(*decoders, preview=LatentPreview.sketch())
    blocks = list(sampler.stream(random_text(model.config), 2, 64, 96, decoder=decoder))
    assert [b.decoded.frames.shape[0] for b in blocks] == [1, 24, 24]
    assert [b.decoded.waveform.shape[1] for b in blocks] == [240, 24000, 24000]


def test_streaming_decode_takes_one_stream_at_a_time(decoders):
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released())
    with pytest.raises(StreamSettingsError, match="batch 1"):
        sampler.stream(random_text(model.config, batch=2), 1, 64, 96, batch_size=2, decoder=AVStreamDecoder(*decoders))


def test_overlapped_decode_gives_the_same_blocks(decoders):
    model = random_model()
    text = random_text(model.config)
    sampler = StreamingSampler(model, BlockLayout.released())
    inline = list(sampler.stream(text, 3, 64, 96, decoder=AVStreamDecoder(*decoders)))
    overlapped = list(sampler.stream(text, 3, 64, 96, decoder=AVStreamDecoder(*decoders), overlap_decode=True))
    assert [b.index for b in overlapped] == [0, 1, 2]
    for a, b in zip(inline, overlapped):
        assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
        assert torch.equal(a.decoded.frames, b.decoded.frames)
        assert torch.equal(a.decoded.waveform, b.decoded.waveform)


def test_closing_an_overlapped_stream_stops_the_worker_and_frees_the_cache(decoders):
    import threading

    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released(), StreamSettings(window_blocks=2))
    stream = sampler.stream(random_text(model.config), None, 64, 96, decoder=AVStreamDecoder(*decoders),
                            overlap_decode=True)
    assert next(stream).index == 0 and next(stream).index == 1
    stream.close()
    assert sampler.cache is None
    assert not any(t.name == "omniforcing-generate" for t in threading.enumerate())


def test_an_error_while_generating_reaches_the_consumer(decoders):
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released())

    def failing_noise(span, step):
        if span.index == 1:
            raise RuntimeError("noise source broke at block 1")
        return torch.randn(1, 128, span.video_frames, 2, 3), torch.randn(1, span.audio_frames, 128)

    stream = sampler.stream(random_text(model.config), 3, 64, 96, noise=failing_noise,
                            decoder=AVStreamDecoder(*decoders), overlap_decode=True)
    assert next(stream).index == 0
    with pytest.raises(RuntimeError, match="noise source broke at block 1"):
        next(stream)
    assert sampler.cache is None


def test_a_grid_the_video_decoder_cannot_decode_is_refused_before_streaming(decoders):
    model = random_model()
    sampler = StreamingSampler(model, BlockLayout.released())
    with pytest.raises(ValueError, match="at least 2 x 2 latent cells"):
        sampler.stream(random_text(model.config), 2, 32, 96, decoder=AVStreamDecoder(*decoders))
    assert sampler.cache is None
