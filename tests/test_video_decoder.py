"""LTX-2 video VAE decoder: checkpoint layout, config metadata, whole-clip and streamed decode, preview."""

from __future__ import annotations

import json

import pytest
import torch

from omniforcing_core.checkpoint import expected_tensors
from omniforcing_core.config import ConfigError
from omniforcing_core.decoders.latent_preview import LatentPreview
from omniforcing_core.decoders.video_stream import VideoStreamDecoder, exact_lookahead_latents
from omniforcing_core.decoders.video_vae import DecoderBlock, VideoVAE, VideoVAEConfig
from omniforcing_core.layout import BlockLayout

GRID = (2, 3)  # latent cells: 64 x 96 pixels
# Bounds on |streamed - whole-clip| frames in [0, 1] for the tiny preset's L=0 stream: the
# table in video_stream's docstring (worst mean 0.107, worst p99 0.47), with margin.
STREAMING_MEAN_ABS = 0.12
STREAMING_P99_ABS = 0.5


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # The tiny decoder's tensors are too small for threads to pay; on a shared
    # 2-core machine extra threads only contend.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_vae(config: VideoVAEConfig, seed: int) -> VideoVAE:
    """Random weights everywhere, including the tables the reference initializes to zero."""
    torch.manual_seed(seed)
    vae = VideoVAE(config)
    generator = torch.Generator().manual_seed(seed + 1000)
    state = vae.state_dict()
    for name, tensor in state.items():
        if name.endswith("std-of-means"):
            state[name] = torch.rand(tensor.shape, generator=generator) + 0.5
        elif name.endswith("mean-of-means"):
            state[name] = torch.randn(tensor.shape, generator=generator) * 0.1
        elif "scale_shift_table" in name or "per_channel_scale" in name:
            state[name] = torch.randn(tensor.shape, generator=generator) * 0.3
    vae.load_state_dict(state)
    return vae


def stream_blocks(vae, latents, layout, num_blocks, lookahead=0, seed=0):
    decoder = VideoStreamDecoder(vae, lookahead_latents=lookahead, seed=seed)
    pieces = [decoder.push(latents[:, :, s.video_start:s.video_end]) for s in layout.iter_blocks(num_blocks)]
    pieces.append(decoder.flush())
    return pieces


# Checkpoint layout -------------------------------------------------------------------


def expected_19b_tensors(timestep_conditioning: bool) -> dict[str, tuple[int, ...]]:
    """The 19B ``vae.decoder.*`` / ``vae.per_channel_statistics.*`` layout, written out from
    ltx-core's VideoDecoder (release era): conv_in 128 -> 1024; up_blocks 0/2/4/6 are res_x
    groups of 5 at 1024/512/256/128; 1/3/5 are residual compress_all convs to 8 * C / 2;
    conv_out to 3 * 4 * 4; CausalConv3d wraps its nn.Conv3d as ``.conv``."""
    tensors: dict[str, tuple[int, ...]] = {}

    def conv(name, cin, cout):
        tensors[f"decoder.{name}.conv.weight"] = (cout, cin, 3, 3, 3)
        tensors[f"decoder.{name}.conv.bias"] = (cout,)

    def embedder(name, dim):
        tensors[f"decoder.{name}.timestep_embedder.linear_1.weight"] = (dim, 256)
        tensors[f"decoder.{name}.timestep_embedder.linear_1.bias"] = (dim,)
        tensors[f"decoder.{name}.timestep_embedder.linear_2.weight"] = (dim, dim)
        tensors[f"decoder.{name}.timestep_embedder.linear_2.bias"] = (dim,)

    conv("conv_in", 128, 1024)
    for index, width in zip((0, 2, 4, 6), (1024, 512, 256, 128)):
        for layer in range(5):
            conv(f"up_blocks.{index}.res_blocks.{layer}.conv1", width, width)
            conv(f"up_blocks.{index}.res_blocks.{layer}.conv2", width, width)
            if timestep_conditioning:
                tensors[f"decoder.up_blocks.{index}.res_blocks.{layer}.scale_shift_table"] = (4, width)
        if timestep_conditioning:
            embedder(f"up_blocks.{index}.time_embedder", 4 * width)
    for index, width in zip((1, 3, 5), (1024, 512, 256)):
        conv(f"up_blocks.{index}.conv", width, 8 * width // 2)
    conv("conv_out", 128, 48)
    if timestep_conditioning:
        tensors["decoder.timestep_scale_multiplier"] = ()
        embedder("last_time_embedder", 256)
        tensors["decoder.last_scale_shift_table"] = (2, 128)
    statistics = (
        "mean-of-means", "std-of-means", "mean-of-stds", "mean-of-stds_over_std-of-means", "channel",
    )
    for statistic in statistics:
        tensors[f"per_channel_statistics.{statistic}"] = (128,)
    return tensors


@pytest.mark.parametrize("conditioned, count", [(False, 95), (True, 137)])
def test_19b_preset_has_the_checkpoint_tensor_names_and_shapes(conditioned, count):
    config = VideoVAEConfig.ltx2_19b(timestep_conditioning=conditioned)
    shapes = expected_tensors(VideoVAE, config)
    assert len(shapes) == count
    assert shapes == expected_19b_tensors(conditioned)
    assert shapes["decoder.conv_in.conv.weight"] == (1024, 128, 3, 3, 3)
    assert shapes["decoder.up_blocks.1.conv.conv.weight"] == (4096, 1024, 3, 3, 3)
    assert shapes["decoder.up_blocks.5.conv.conv.bias"] == (1024,)
    assert shapes["decoder.up_blocks.6.res_blocks.4.conv2.conv.weight"] == (128, 128, 3, 3, 3)
    assert shapes["decoder.conv_out.conv.weight"] == (48, 128, 3, 3, 3)
    with torch.device("meta"):
        vae = VideoVAE(config)
    assert all(t.is_meta for t in vae.state_dict().values())
    assert sum(t.numel() for t in vae.parameters()) > 300_000_000  # built without allocating


def test_19b_preset_defaults():
    config = VideoVAEConfig.ltx2_19b()
    assert config.bottleneck_channels == 1024
    assert (config.temporal_upsampling, config.spatial_upsampling) == (8, 32)
    assert config.spatial_padding_mode == "reflect" and not config.causal_decoder
    assert not config.timestep_conditioning


# Config metadata ---------------------------------------------------------------------


def comfy_v2_section() -> dict:
    """A ``vae`` section in the format ltx-core and ComfyUI read (LTX-2 layout, encoder included)."""
    return {
        "_class_name": "CausalVideoAutoencoder",
        "dims": 3,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 128,
        "encoder_blocks": [["res_x", {"num_layers": 4}], ["compress_space_res", {"multiplier": 2}]],
        "decoder_blocks": [
            ["res_x", {"num_layers": 5, "inject_noise": False}],
            ["compress_all", {"residual": True, "multiplier": 2}],
            ["res_x", {"num_layers": 5, "inject_noise": False}],
            ["compress_all", {"residual": True, "multiplier": 2}],
            ["res_x", {"num_layers": 5, "inject_noise": False}],
            ["compress_all", {"residual": True, "multiplier": 2}],
            ["res_x", {"num_layers": 5, "inject_noise": False}],
        ],
        "scaling_factor": 1.0,
        "norm_layer": "pixel_norm",
        "patch_size": 4,
        "latent_log_var": "uniform",
        "use_quant_conv": False,
        "causal_decoder": False,
        "timestep_conditioning": True,
    }


def test_metadata_section_parses_to_the_19b_architecture_and_keeps_the_rest():
    section = comfy_v2_section()
    config = VideoVAEConfig.from_metadata(section)
    assert config == VideoVAEConfig.ltx2_19b(timestep_conditioning=True, extra_metadata=config.extra_metadata)
    written = config.to_metadata()
    assert written["encoder_blocks"] == section["encoder_blocks"]
    assert written["decoder_blocks"] == section["decoder_blocks"]
    assert VideoVAEConfig.from_metadata(json.loads(json.dumps(written))) == config


def test_missing_timestep_flag_is_read_from_the_tensor_names():
    section = comfy_v2_section()
    del section["timestep_conditioning"]
    with_table = ["vae.decoder.conv_in.conv.weight", "vae.decoder.last_scale_shift_table"]
    assert VideoVAEConfig.from_metadata(section, tensor_names=with_table).timestep_conditioning
    assert not VideoVAEConfig.from_metadata(section, tensor_names=with_table[:1]).timestep_conditioning


@pytest.mark.parametrize(
    "change, message",
    [
        ({"norm_layer": "group_norm"}, "pixel_norm"),
        ({"decoder_blocks": [["res_x_y", 1]]}, "res_x_y"),
        ({"decoder_blocks": []}, "decoder_blocks"),
        ({"patch_size": 2}, "latent clock"),
    ],
)
def test_unsupported_metadata_is_refused_with_a_reason(change, message):
    with pytest.raises(ConfigError, match=message):
        VideoVAEConfig.from_metadata({**comfy_v2_section(), **change})


def test_tiny_config_round_trips_through_metadata():
    # Loading the weights through a file's metadata is tested in test_decoder_loading.py.
    config = VideoVAEConfig.tiny(timestep_conditioning=True)
    assert VideoVAEConfig.from_metadata(json.loads(json.dumps(config.to_metadata()))) == config


# Whole-clip decode -------------------------------------------------------------------


@pytest.mark.parametrize("latent_frames", [1, 2, 4])
def test_whole_clip_frame_count_and_size(latent_frames):
    vae = random_vae(VideoVAEConfig.tiny(), seed=1)
    pixels = vae.decode(torch.randn(1, 128, latent_frames, *GRID))
    assert pixels.shape == (1, 3, 8 * (latent_frames - 1) + 1, 64, 96)
    frames = vae.decode_frames(torch.randn(1, 128, latent_frames, *GRID))
    assert frames.shape == (8 * (latent_frames - 1) + 1, 64, 96, 3)
    assert frames.dtype == torch.float32 and 0.0 <= frames.min() and frames.max() <= 1.0


# Streaming ---------------------------------------------------------------------------


def test_exact_lookahead_follows_the_receptive_field():
    # 19B: 1 + 10 + 1 convs at the latent rate, then per x2 stage 10 + 1 and finally 10 + 1,
    # halved at each upsample: 22 latents. Tiny (one residual block per stage): 7.
    assert exact_lookahead_latents(VideoVAEConfig.ltx2_19b()) == 22
    assert exact_lookahead_latents(VideoVAEConfig.tiny()) == 7
    assert exact_lookahead_latents(VideoVAEConfig.tiny(causal_decoder=True)) == 0


@pytest.mark.parametrize("layout_name", ["released", "paper"])
def test_one_streamed_block_equals_the_whole_clip_decode(layout_name):
    layout = BlockLayout.named(layout_name)
    vae = random_vae(VideoVAEConfig.tiny(), seed=0)
    latents = torch.randn(1, 128, layout.block(0).video_end, *GRID)
    pieces = stream_blocks(vae, latents, layout, 1)
    span = layout.block(0).pixel_interval
    assert [p.shape[0] for p in pieces] == [span[1] - span[0], 0]
    assert (torch.cat(pieces) - vae.decode_frames(latents)).abs().max() <= 1e-6


@pytest.mark.parametrize("layout_name", ["released", "paper"])
@pytest.mark.parametrize("num_blocks", [2, 6])
def test_streamed_blocks_stay_within_the_documented_bound(layout_name, num_blocks):
    layout = BlockLayout.named(layout_name)
    vae = random_vae(VideoVAEConfig.tiny(), seed=num_blocks)
    latents = torch.randn(1, 128, layout.block(num_blocks - 1).video_end, *GRID)
    reference = vae.decode_frames(latents)

    pieces = stream_blocks(vae, latents, layout, num_blocks)
    spans = [span.pixel_interval for span in layout.iter_blocks(num_blocks)]
    assert [p.shape[0] for p in pieces] == [end - start for start, end in spans] + [0]
    difference = (torch.cat(pieces) - reference).abs()
    assert difference.mean() <= STREAMING_MEAN_ABS
    assert torch.quantile(difference.flatten(), 0.99) <= STREAMING_P99_ABS
    assert difference.max() > 1e-3  # the block-end approximation is real, not a silent whole-clip decode

    lookahead = exact_lookahead_latents(vae.config)
    exact = torch.cat(stream_blocks(vae, latents, layout, num_blocks, lookahead=lookahead))
    assert (exact - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("layout_name", ["released", "paper"])
def test_without_future_taps_the_default_stream_is_exact(layout_name):
    # A decoder whose convs ignore the next frame: then the block-end padding costs nothing,
    # so any remaining difference would come from a wrong carried past.
    layout = BlockLayout.named(layout_name)
    vae = random_vae(VideoVAEConfig.tiny(), seed=7)
    with torch.no_grad():
        for conv in vae.decoder.temporal_convs:
            conv.conv.weight[:, :, 2] = 0.0
    latents = torch.randn(1, 128, layout.block(5).video_end, *GRID)
    streamed = torch.cat(stream_blocks(vae, latents, layout, 6))
    assert (streamed - vae.decode_frames(latents)).abs().max() <= 1e-5


def test_lookahead_converges_to_the_whole_clip_decode():
    layout = BlockLayout.released()
    vae = random_vae(VideoVAEConfig.tiny(), seed=11)
    latents = torch.randn(1, 128, layout.block(5).video_end, *GRID)
    reference = vae.decode_frames(latents)
    errors = {}
    for lookahead in (0, 1, 3, 5, 7):
        streamed = torch.cat(stream_blocks(vae, latents, layout, 6, lookahead=lookahead))
        errors[lookahead] = (streamed - reference).abs().mean()
    assert errors[0] > errors[1] > errors[3] > errors[5] > errors[7]
    assert errors[3] < errors[0] / 5 and errors[7] <= 1e-6


def test_lookahead_holds_back_frames_until_the_next_block():
    layout = BlockLayout.released()
    vae = random_vae(VideoVAEConfig.tiny(), seed=2)
    latents = torch.randn(1, 128, layout.block(2).video_end, *GRID)
    pieces = stream_blocks(vae, latents, layout, 3, lookahead=3)
    # Holding 3 latents back shifts output by one block: block 0 yields latent 0's frame only.
    assert [p.shape[0] for p in pieces] == [1, 24, 24, 24]


def test_timestep_conditioned_noise_is_seeded_and_identical_when_streamed():
    config = VideoVAEConfig.tiny(
        timestep_conditioning=True,
        decoder_blocks=(DecoderBlock.res_x(1, inject_noise=True),) + VideoVAEConfig.tiny().decoder_blocks[1:],
    )
    vae = random_vae(config, seed=4)
    layout = BlockLayout.paper()
    latents = torch.randn(1, 128, layout.block(3).video_end, *GRID)
    reference = vae.decode_frames(latents, seed=9)
    assert torch.equal(reference, vae.decode_frames(latents, seed=9))
    assert (reference - vae.decode_frames(latents, seed=10)).abs().max() > 1e-3
    streamed = stream_blocks(vae, latents, layout, 4, lookahead=exact_lookahead_latents(config), seed=9)
    assert (torch.cat(streamed) - reference).abs().max() <= 1e-5
    one_block = stream_blocks(vae, latents[:, :, :1], layout, 1, seed=9)
    assert (torch.cat(one_block) - vae.decode_frames(latents[:, :, :1], seed=9)).abs().max() <= 1e-6


@pytest.mark.parametrize("lookahead", [0, 3])
def test_stream_state_does_not_grow(lookahead):
    layout = BlockLayout.released()
    vae = random_vae(VideoVAEConfig.tiny(), seed=5)
    latents = torch.randn(1, 128, layout.block(5).video_end, *GRID)
    decoder = VideoStreamDecoder(vae, lookahead_latents=lookahead)
    shapes = {}
    for span in layout.iter_blocks(6):
        decoder.push(latents[:, :, span.video_start:span.video_end])
        shapes[span.index] = {name: tuple(t.shape) for name, t in decoder.state_tensors().items()}
    assert shapes[1] == shapes[5]
    assert len(shapes[5]) == len(vae.decoder.temporal_convs) + 1  # one frame per conv, plus the held latents
    assert shapes[5]["held_latents"][2] == decoder.held_latents == lookahead


def test_stream_rejects_misuse():
    vae = random_vae(VideoVAEConfig.tiny(), seed=0)
    decoder = VideoStreamDecoder(vae)
    with pytest.raises(ValueError, match="reflect padding"):
        decoder.push(torch.randn(1, 128, 4, 1, 3))
    assert decoder.latents_received == 0  # a failed push leaves the stream as it was
    latents = torch.randn(1, 128, 4, *GRID)
    assert torch.equal(decoder.push(latents), vae.decode_frames(latents))
    with pytest.raises(ValueError, match="grid"):
        decoder.push(torch.randn(1, 128, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\[1, 128, frames, H, W\]"):
        decoder.push(torch.randn(2, 128, 3, *GRID))
    decoder.flush()
    with pytest.raises(RuntimeError, match="reset"):
        decoder.push(torch.randn(1, 128, 3, *GRID))
    decoder.reset()
    assert decoder.push(torch.randn(1, 128, 4, *GRID)).shape[0] == 25


# Latent preview ----------------------------------------------------------------------


def test_preview_matches_the_decode_frame_count_per_block():
    preview = LatentPreview.sketch()
    layout = BlockLayout.released()
    latents = torch.randn(1, 128, layout.block(1).video_end, *GRID)
    for span in layout.iter_blocks(2):
        frames = preview.frames(latents[:, :, span.video_start:span.video_end], first_latent=span.video_start)
        assert frames.shape == (span.pixel_count, 64, 96, 3)
        assert 0.0 <= frames.min() and frames.max() <= 1.0


def test_preview_fit_recovers_a_linear_colour_map():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 128, generator=generator) * 0.005  # small enough that nothing clamps
    bias = torch.tensor([0.4, 0.5, 0.6])
    latents = torch.randn(1, 128, 4, 8, 8, generator=generator)
    truth = LatentPreview(weight, bias)
    frames = truth.frames(latents, spatial_scale=1)  # one colour per cell...
    frames = frames.repeat_interleave(32, dim=1).repeat_interleave(32, dim=2)  # ...over its 32 x 32 pixels
    fitted = LatentPreview.fit(latents, frames, ridge=1e-6)
    assert (fitted.weight - weight).abs().max() < 1e-3
    assert (fitted.bias - bias).abs().max() < 1e-3
    assert (fitted.rgb(latents) - truth.rgb(latents)).abs().max() < 1e-3


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_small_fp32_convs_run_on_onednn_and_equal_the_plain_conv(padding_mode):
    from torch.profiler import profile

    from omniforcing_core.decoders.video_vae import conv3d

    conv = torch.nn.Conv3d(128, 128, 3, padding=(0, 1, 1), padding_mode=padding_mode).eval()
    x = torch.randn(1, 128, 6, 10, 14)
    with torch.no_grad(), profile() as run:
        fast = conv3d(conv, x)
    kernels = {event.key for event in run.key_averages()}
    assert "aten::mkldnn_convolution" in kernels and "aten::slow_conv3d" not in kernels
    with torch.no_grad():
        assert (fast - conv(x)).abs().max() <= 1e-4
    x.requires_grad_(True)
    assert conv3d(conv, x).grad_fn is not None  # training keeps the plain conv and its gradients
