"""Audio VAE decoder, HiFi-GAN vocoder and the per-block streaming audio decode."""

from __future__ import annotations

import json
import math

import pytest
import torch

from omniforcing_core.checkpoint import expected_tensors
from omniforcing_core.config import ConfigError
from omniforcing_core.decoders.audio_stream import (
    DEFAULT_CROSSFADE_SAMPLES,
    AudioStreamError,
    StreamingAudioDecoder,
    StreamingVocoder,
    decode_audio_clip,
)
from omniforcing_core.decoders.audio_vae import AudioVAEConfig, AudioVAEDecoder
from omniforcing_core.decoders.vocoder import Vocoder, VocoderConfig
from omniforcing_core.layout import SAMPLES_PER_MEL_FRAME, BlockLayout, audio_mel_interval

# Measured on these fixtures (seed 0, random weights, white-noise tokens, clip peak 0.198):
# the stream differs from the whole-clip decode only in the 18 mel frames before a seam
# and the crossfade after it, by at most 0.0711 (2, 3 and 6 blocks); an unflagged last
# block adds the clip end, 0.0796. Random weights and white-noise latents are the worst
# case for guessing the next block. The bound is that measurement plus a little margin.
SEAM_ERROR_BOUND = 0.08
EXACT = 1e-5


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fan-in-scaled random weights so activations stay O(1) through the tiny nets."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            fan_in = param[0].numel() if param.ndim > 1 else 1
            scale = fan_in**-0.5 if param.ndim > 1 else 0.02
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return module.eval()


def random_audio_vae() -> AudioVAEDecoder:
    decoder = _randomize(AudioVAEDecoder(AudioVAEConfig.tiny()), seed=0)
    generator = torch.Generator().manual_seed(1)
    stats = decoder.per_channel_statistics
    stats.get_buffer("mean-of-means").copy_(torch.randn(128, generator=generator) * 0.1)
    stats.get_buffer("std-of-means").copy_(torch.rand(128, generator=generator) + 0.5)
    return decoder


def random_vocoder() -> Vocoder:
    return _randomize(Vocoder(VocoderConfig.tiny()), seed=2)


@pytest.fixture(scope="module")
def audio_vae() -> AudioVAEDecoder:
    return random_audio_vae()


@pytest.fixture(scope="module")
def vocoder() -> Vocoder:
    return random_vocoder()


def _tokens(num_latents: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(1, num_latents, 128, generator=torch.Generator().manual_seed(seed))


# Keys, shapes, configs --------------------------------------------------------------


def test_19b_audio_vae_keys_on_meta() -> None:
    config = AudioVAEConfig.ltx2_19b()
    with torch.device("meta"):
        decoder = AudioVAEDecoder(config)
    assert all(t.is_meta for t in decoder.state_dict().values())
    expected = {"audio_vae." + name: shape for name, shape in expected_tensors(AudioVAEDecoder, config).items()}
    assert set(expected) == {"audio_vae." + name for name in decoder.state_dict()}
    # conv_in 2 + mid 2 x 4 + up.2 (3 blocks x 4 + upsample 2) + up.1 (3 x 4 + shortcut 2 + upsample 2)
    # + up.0 (3 x 4 + shortcut 2) + conv_out 2 = 56 decoder tensors, + 2 statistics.
    assert len(expected) == 58
    assert sum(name.startswith("audio_vae.decoder.") for name in expected) == 56
    assert expected["audio_vae.decoder.conv_in.conv.weight"] == (512, 8, 3, 3)
    assert expected["audio_vae.decoder.mid.block_2.conv2.conv.weight"] == (512, 512, 3, 3)
    assert expected["audio_vae.decoder.up.2.upsample.conv.conv.weight"] == (512, 512, 3, 3)
    assert expected["audio_vae.decoder.up.1.block.0.conv1.conv.weight"] == (256, 512, 3, 3)
    assert expected["audio_vae.decoder.up.1.block.0.nin_shortcut.conv.weight"] == (256, 512, 1, 1)
    assert expected["audio_vae.decoder.up.0.block.2.conv2.conv.bias"] == (128,)
    assert expected["audio_vae.decoder.conv_out.conv.weight"] == (2, 128, 3, 3)
    assert expected["audio_vae.per_channel_statistics.mean-of-means"] == (128,)
    assert expected["audio_vae.per_channel_statistics.std-of-means"] == (128,)
    assert "audio_vae.decoder.up.0.upsample.conv.conv.weight" not in expected
    assert not any("attn" in name or "norm" in name for name in expected)


def test_19b_vocoder_keys_on_meta() -> None:
    config = VocoderConfig.ltx2_19b()
    with torch.device("meta"):
        vocoder = Vocoder(config)
    assert all(t.is_meta for t in vocoder.state_dict().values())
    expected = {"vocoder." + name: shape for name, shape in expected_tensors(Vocoder, config).items()}
    assert set(expected) == {"vocoder." + name for name in vocoder.state_dict()}
    # conv_pre 2 + 5 upsamplers x 2 + 15 resblocks x 6 convs x 2 + conv_post 2
    assert len(expected) == 194
    assert expected["vocoder.conv_pre.weight"] == (1024, 128, 7)
    assert expected["vocoder.ups.0.weight"] == (1024, 512, 16)
    assert expected["vocoder.ups.1.weight"] == (512, 256, 15)
    assert expected["vocoder.ups.4.weight"] == (64, 32, 4)
    assert expected["vocoder.ups.4.bias"] == (32,)
    assert expected["vocoder.resblocks.0.convs1.0.weight"] == (512, 512, 3)
    assert expected["vocoder.resblocks.2.convs1.2.weight"] == (512, 512, 11)
    assert expected["vocoder.resblocks.14.convs2.1.weight"] == (32, 32, 11)
    assert expected["vocoder.conv_post.weight"] == (2, 32, 7)
    assert expected["vocoder.conv_post.bias"] == (2,)
    assert "vocoder.resblocks.15.convs1.0.weight" not in expected
    assert config.samples_per_frame == SAMPLES_PER_MEL_FRAME == 240
    assert config.receptive_field_frames == (18, 18)


@pytest.mark.parametrize("preset", ["ltx2_19b", "tiny"])
def test_config_metadata_round_trip(preset: str) -> None:
    vae = getattr(AudioVAEConfig, preset)()
    voc = getattr(VocoderConfig, preset)()
    vae_section = json.loads(json.dumps(vae.to_metadata()))
    voc_section = json.loads(json.dumps(voc.to_metadata()))
    assert AudioVAEConfig.from_metadata(vae_section) == vae
    assert VocoderConfig.from_metadata(voc_section) == voc
    assert AudioVAEConfig.from_metadata(vae_section).to_metadata() == vae_section
    assert vae_section["model"]["params"]["ddconfig"]["ch_mult"] == [1, 2, 4]


def test_metadata_in_the_reference_loaders_form() -> None:
    """The nested form ComfyUI and ltx-core read, with keys this decoder does not use."""
    section = {
        "model": {
            "params": {
                "ddconfig": {
                    "double_z": True, "mel_bins": 64, "z_channels": 8, "resolution": 256,
                    "downsample_time": False, "in_channels": 2, "out_ch": 2, "ch": 128,
                    "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [],
                    "dropout": 0.0, "mid_block_add_attention": False, "norm_type": "pixel",
                    "causality_axis": "height",
                },
                "sampling_rate": 16000,
            }
        },
        "preprocessing": {"stft": {"filter_length": 1024, "hop_length": 160, "causal": True}},
    }
    assert AudioVAEConfig.from_metadata(section) == AudioVAEConfig.ltx2_19b()
    # Recent vocoder sections omit the output rate: 16 kHz / hop 160 x 240 = 24 kHz.
    vocoder_section = {"upsample_rates": [6, 5, 2, 2, 2], "upsample_kernel_sizes": [16, 15, 8, 4, 4]}
    assert VocoderConfig.from_metadata(vocoder_section).output_sample_rate == 24_000

    for key, value, message in (
        ("mid_block_add_attention", True, "mid-block attention"),
        ("norm_type", "group", "norm_type"),
        ("attn_resolutions", [64], "attention at resolutions"),
    ):
        broken = json.loads(json.dumps(section))
        broken["model"]["params"]["ddconfig"][key] = value
        with pytest.raises(ConfigError, match=message):
            AudioVAEConfig.from_metadata(broken)
    with pytest.raises(ConfigError, match="bandwidth extension"):
        VocoderConfig.from_metadata({"bwe": {}, "vocoder": {}})
    with pytest.raises(ConfigError, match="resblock"):
        VocoderConfig.from_metadata({"resblock": "AMP1"})


# Shapes and layout ------------------------------------------------------------------


@pytest.mark.parametrize("num_latents", [1, 2, 26])
def test_latents_to_mel_to_samples(audio_vae: AudioVAEDecoder, vocoder: Vocoder, num_latents: int) -> None:
    tokens = torch.randn(2, num_latents, 128)
    clip = decode_audio_clip(audio_vae, vocoder, tokens)
    mel_frames = 4 * num_latents - 3
    assert tuple(clip.mel.shape) == (2, 2, mel_frames, 64)
    assert tuple(clip.waveform.shape) == (2, 2, 240 * mel_frames)
    assert clip.sample_rate == 24_000
    assert audio_vae.config.mel_frames(num_latents) == mel_frames
    # A latent grid [B, 8, T, 16] decodes like its tokens (channel-major, then bin).
    grid = tokens.reshape(2, num_latents, 8, 16).permute(0, 2, 1, 3)
    assert torch.equal(audio_vae.tokens_from_latents(grid), tokens)
    assert torch.allclose(audio_vae(grid), clip.mel, atol=EXACT)


def test_tokens_are_un_normalized_per_feature(audio_vae: AudioVAEDecoder) -> None:
    tokens = _tokens(3)
    stats = audio_vae.per_channel_statistics
    mean, std = stats.get_buffer("mean-of-means"), stats.get_buffer("std-of-means")
    identity = AudioVAEDecoder(audio_vae.config).eval()
    identity.load_state_dict(audio_vae.state_dict())
    identity.per_channel_statistics.get_buffer("mean-of-means").zero_()
    identity.per_channel_statistics.get_buffer("std-of-means").fill_(1.0)
    with torch.no_grad():
        assert torch.allclose(audio_vae(tokens), identity(tokens * std + mean), atol=EXACT)


def test_waveform_for_a_block(audio_vae: AudioVAEDecoder, vocoder: Vocoder) -> None:
    chunk = decode_audio_clip(audio_vae, vocoder, torch.randn(2, 2, 128))
    stereo, rate = chunk.to_waveform()
    assert rate == 24_000
    assert stereo.dtype == torch.float32 and tuple(stereo.shape) == (2, 1200)
    assert torch.equal(stereo, chunk.waveform[0])
    assert chunk.duration_seconds == pytest.approx(0.05)


# Streaming vs whole-clip ------------------------------------------------------------


def _stream(decoder: StreamingAudioDecoder, tokens: torch.Tensor, spans, *, final_flag: bool = True):
    chunks, state_sizes = [], []
    for span in spans:
        last = final_flag and span.index == spans[-1].index
        chunks.append(decoder.push(tokens[:, span.audio_start:span.audio_end], span=span, final=last))
        state_sizes.append(decoder.state_numel())
    if not final_flag:
        chunks.append(decoder.finish())
    return chunks, state_sizes


def _seam_zone_mask(num_samples: int, seams: list[int], right_frames: int) -> torch.Tensor:
    """Samples the unknown future may touch: ``right`` frames before a seam, the crossfade after."""
    mask = torch.zeros(num_samples, dtype=torch.bool)
    for seam in seams:
        mask[max(0, seam - right_frames * SAMPLES_PER_MEL_FRAME):seam + DEFAULT_CROSSFADE_SAMPLES] = True
    return mask


@pytest.mark.parametrize(
    "layout_name, num_blocks",
    [("released", 1), ("released", 2), ("released", 6), ("paper", 1), ("paper", 3)],
)
def test_stream_matches_whole_clip(audio_vae, vocoder, layout_name: str, num_blocks: int) -> None:
    spans = list(BlockLayout.named(layout_name).iter_blocks(num_blocks))
    tokens = _tokens(spans[-1].audio_end)
    whole = decode_audio_clip(audio_vae, vocoder, tokens)
    stream = StreamingAudioDecoder(audio_vae, vocoder)
    chunks, _ = _stream(stream, tokens, spans)

    # Each block yields exactly its own samples, at once.
    assert [(c.start_sample, c.end_sample) for c in chunks] == [s.sample_interval for s in spans]
    if layout_name == "released":
        assert [c.num_samples for c in chunks] == [24240] + [24000] * (num_blocks - 1)
    else:
        assert [c.num_samples for c in chunks] == [240] + [24000] * (num_blocks - 1)

    # The causal audio VAE streams exactly.
    mel = torch.cat([c.mel for c in chunks], dim=2)
    assert mel.shape == whole.mel.shape
    assert (mel - whole.mel).abs().max().item() <= EXACT

    # The vocoder differs only around seams, and there by at most the measured bound.
    waveform = torch.cat([c.waveform for c in chunks], dim=-1)
    assert waveform.shape == whole.waveform.shape
    difference = (waveform - whole.waveform).abs().amax(dim=(0, 1))
    seams = [c.start_sample for c in chunks[1:]]
    right = vocoder.config.receptive_field_frames[1]
    in_seam_zone = _seam_zone_mask(difference.shape[0], seams, right)
    assert difference[~in_seam_zone].max().item() <= EXACT
    assert difference.max().item() <= SEAM_ERROR_BOUND
    if num_blocks == 1:
        assert difference.max().item() <= EXACT  # no seam, and final=True ends like the whole clip



def test_stream_state_size_is_fixed(audio_vae, vocoder) -> None:
    spans = list(BlockLayout.released().iter_blocks(6))
    stream = StreamingAudioDecoder(audio_vae, vocoder)
    _, state_sizes = _stream(stream, _tokens(spans[-1].audio_end), spans, final_flag=False)
    assert state_sizes[1] == state_sizes[5]
    assert len(set(state_sizes)) == 1
    # The vocoder keeps 18 mel frames of context and the 480-sample predicted continuation.
    history, carry = 18 * 2 * 64, 2 * DEFAULT_CROSSFADE_SAMPLES
    assert stream.vocoder_stream.state_numel() == history + carry


@pytest.mark.parametrize("lookahead, bound", [(18, EXACT), (8, 0.004)])
def test_lookahead_trades_latency_for_accuracy(audio_vae, vocoder, lookahead: int, bound: float) -> None:
    """Holding back L frames delays the audio by L x 10 ms; L >= 18 is exact (measured for L = 8: 0.0027)."""
    spans = list(BlockLayout.released().iter_blocks(3))
    tokens = _tokens(spans[-1].audio_end)
    whole = decode_audio_clip(audio_vae, vocoder, tokens)
    stream = StreamingAudioDecoder(audio_vae, vocoder, lookahead_frames=lookahead)
    held = lookahead * 240
    assert stream.latency_samples == held
    assert stream.vocoder_stream.exact == (lookahead >= vocoder.config.receptive_field_frames[1])
    chunks, _ = _stream(stream, tokens, spans, final_flag=False)
    assert [c.num_samples for c in chunks] == [24240 - held, 24000, 24000, held]
    waveform = torch.cat([c.waveform for c in chunks], dim=-1)
    assert (waveform - whole.waveform).abs().max().item() <= bound


def test_unflagged_last_block_differs_only_at_the_clip_end(audio_vae, vocoder) -> None:
    spans = list(BlockLayout.released().iter_blocks(2))
    tokens = _tokens(spans[-1].audio_end)
    whole = decode_audio_clip(audio_vae, vocoder, tokens)
    chunks, _ = _stream(StreamingAudioDecoder(audio_vae, vocoder), tokens, spans, final_flag=False)
    assert chunks[-1].num_samples == 0  # nothing held back without lookahead
    waveform = torch.cat([c.waveform for c in chunks], dim=-1)
    difference = (waveform - whole.waveform).abs().amax(dim=(0, 1))
    zones = _seam_zone_mask(difference.shape[0], [24240, difference.shape[0]], 18)
    assert difference[~zones].max().item() <= EXACT
    assert difference.max().item() <= SEAM_ERROR_BOUND


# Seams --------------------------------------------------------------------------------


def _smooth_vocoder() -> Vocoder:
    """Averaging (Hann) kernels: a smooth mel gives a smooth waveform, so a click would show."""
    vocoder = Vocoder(VocoderConfig.tiny()).eval()
    with torch.no_grad():
        for name, layer in vocoder.named_modules():
            if not isinstance(layer, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                continue
            transposed = isinstance(layer, torch.nn.ConvTranspose1d)
            kernel = torch.hann_window(layer.kernel_size[0] + 2, periodic=False)[1:-1]
            fan_in = layer.weight.shape[0] if transposed else layer.weight.shape[1]
            kernel = kernel / kernel.sum() * (layer.stride[0] if transposed else 1) / fan_in
            if name.startswith("resblocks"):
                kernel = kernel * 0.1  # keep the residual sums from saturating tanh
            layer.weight.copy_(kernel.expand_as(layer.weight))
            layer.bias.zero_()
    return vocoder


def _jumps(chunks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample-to-sample jumps at block boundaries, and the largest one inside blocks.

    The clip's first and last two mel frames are left out of the inside: there both
    decodes meet the zero padding of the clip's edges.
    """
    waveform = torch.cat(chunks, dim=-1)[0, 0]
    jumps = (waveform[1:] - waveform[:-1]).abs()
    boundaries = torch.tensor([c.shape[-1] for c in chunks]).cumsum(0)[:-1] - 1
    inside = torch.ones_like(jumps, dtype=torch.bool)
    inside[boundaries] = False
    inside[:480] = False
    inside[-480:] = False
    return jumps[boundaries], jumps[inside].max()


@pytest.mark.parametrize("signal", ["ramp", "sine"])
def test_no_clicks_at_block_seams(signal: str) -> None:
    vocoder = _smooth_vocoder()
    spans = list(BlockLayout.released().iter_blocks(4))
    mel_ranges = [(audio_mel_interval(s.audio_start)[0], audio_mel_interval(s.audio_end - 1)[1]) for s in spans]
    frames = torch.arange(mel_ranges[-1][1], dtype=torch.float32)
    curve = -0.8 + 1.6 * frames / frames.numel() if signal == "ramp" else 0.6 * torch.sin(2 * math.pi * frames / 37)
    mel = curve.view(1, 1, -1, 1).expand(1, 2, -1, 64).contiguous()

    def streamed(crossfade_samples: int) -> list[torch.Tensor]:
        stream = StreamingVocoder(vocoder, crossfade_samples=crossfade_samples)
        last = len(mel_ranges) - 1
        return [stream.push(mel[:, :, a:b], final=i == last) for i, (a, b) in enumerate(mel_ranges)]

    seam_jumps, inside_max = _jumps(streamed(DEFAULT_CROSSFADE_SAMPLES))
    assert seam_jumps.numel() == 3
    assert seam_jumps.max() <= inside_max
    # Without the crossfade, the guess of the next block (this block's last frame held)
    # meets the real next block in a step: a click (measured: ramp 5x, sine 100x).
    hard_jumps, _ = _jumps(streamed(0))
    assert hard_jumps.max() > 3 * inside_max


# Misuse (loading from a checkpoint: test_decoder_loading.py) ------------------------------


def test_blocks_must_come_in_order(audio_vae, vocoder) -> None:
    layout = BlockLayout.released()
    tokens = _tokens(layout.block(2).audio_end)
    stream = StreamingAudioDecoder(audio_vae, vocoder)
    stream.push(tokens[:, :26], span=layout.block(0))
    with pytest.raises(AudioStreamError, match="starts at audio latent 51"):
        stream.push(tokens[:, 51:76], span=layout.block(2))
    with pytest.raises(ValueError, match="spans 25 audio latents but 24 were given"):
        stream.push(tokens[:, 26:50], span=layout.block(1))
    stream.push(tokens[:, 26:51], span=layout.block(1), final=True)
    with pytest.raises(AudioStreamError, match="finished"):
        stream.push(tokens[:, 51:76], span=layout.block(2))
    stream.reset()
    assert stream.push(tokens[:, :26], span=layout.block(0)).num_samples == 24240
