"""load_decoders: the video VAE, audio VAE and vocoder from an LTX-2 base file, through load_module_weights."""

from __future__ import annotations

import pytest
import torch

from helpers import random_model
from omniforcing_core import ModelConfig
from omniforcing_core.checkpoint import (
    CheckpointError, load_decoders, load_model, load_module_weights, open_checkpoint, save_checkpoint,
)
from omniforcing_core.decoders.video_vae import VideoVAE, VideoVAEConfig
from test_audio_decoder import random_audio_vae, random_vocoder
from checkpoint_support import no_data_reads  # noqa: F401
from test_video_decoder import GRID, random_vae

BASE_NAME = "ltx-2-19b-dev.safetensors"
# Stand-ins for the encoders a real base file carries beside the decoders.
VIDEO_ENCODER = {"encoder.conv_in.conv.weight": torch.zeros(16, 48, 3, 3, 3)}
AUDIO_ENCODER = {"encoder.conv_in.conv.weight": torch.zeros(8, 2, 3, 3)}


@pytest.fixture(scope="module")
def decoders():
    """The saved modules: (video VAE with timestep conditioning, audio VAE decoder, vocoder)."""
    return random_vae(VideoVAEConfig.tiny(timestep_conditioning=True), seed=3), random_audio_vae(), random_vocoder()


def groups(video, audio, vocoder) -> dict[str, dict[str, torch.Tensor]]:
    """The base file's decoder groups, as ``save_checkpoint(extra=...)`` takes them (fresh dicts to edit)."""
    return {
        "vae.": {**video.state_dict(), **VIDEO_ENCODER},
        "audio_vae.": {**audio.state_dict(), **AUDIO_ENCODER},
        "vocoder.": dict(vocoder.state_dict()),
    }


def sections(video, audio, vocoder) -> dict[str, dict]:
    return {"vae": video.config.to_metadata(), "audio_vae": audio.config.to_metadata(),
            "vocoder": vocoder.config.to_metadata()}


def write_base(directory, extra, extra_config=None, transformer=None, **kwargs):
    """An LTX-2 base file: the transformer (if any) under ``model.diffusion_model.``, the decoders beside it."""
    files = save_checkpoint(directory / BASE_NAME, transformer if transformer is not None else {},
                            prefix="model.diffusion_model.", extra=extra, extra_config=extra_config, **kwargs)
    return files[-1]


def assert_same_outputs(loaded, video, audio, vocoder) -> None:
    latents = torch.randn(1, 128, 2, *GRID, generator=torch.Generator().manual_seed(0))
    tokens = torch.randn(1, 4, 128, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.video_vae.decode(latents, seed=5), video.decode(latents, seed=5))
    with torch.no_grad():
        mel = audio(tokens)
        assert torch.equal(loaded.audio_vae(tokens), mel)
        assert torch.equal(loaded.vocoder(mel), vocoder(mel))


@pytest.mark.parametrize("sharded", [False, True])
def test_decoders_and_transformer_load_from_one_base_file(tmp_path, decoders, sharded):
    transformer = random_model(ModelConfig.tiny())
    path = write_base(tmp_path, groups(*decoders), sections(*decoders), transformer,
                      max_shard_bytes=60_000 if sharded else None)
    assert path.name.endswith(".index.json") == sharded

    loaded = load_decoders(path)
    for module, saved in zip((loaded.video_vae, loaded.audio_vae, loaded.vocoder), decoders):
        assert type(module) is type(saved) and module.config == saved.config  # configs round-trip
        assert not module.training
        assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in module.state_dict().values())
    assert_same_outputs(loaded, *decoders)

    loaded_model = load_model(path, dtype="fp32")
    assert loaded_model.config == transformer.config
    weights = zip(loaded_model.model.state_dict().values(), transformer.state_dict().values())
    assert all(torch.equal(a, b) for a, b in weights)
    assert not any(loaded_model.report.unexpected.values())


def test_an_open_checkpoint_stays_open_and_the_dtype_applies(tmp_path, decoders):
    path = write_base(tmp_path, groups(*decoders), sections(*decoders))
    with open_checkpoint(path) as checkpoint:
        loaded = load_decoders(checkpoint, dtype="bf16")
        assert checkpoint.read("vocoder.conv_post.bias").shape == (2,)
    for module in (loaded.video_vae, loaded.audio_vae, loaded.vocoder):
        assert all(t.dtype == torch.bfloat16 for t in module.state_dict().values())


@pytest.mark.parametrize("conditioned", [False, True])
def test_a_missing_timestep_flag_is_read_from_the_tensor_names(tmp_path, decoders, conditioned):
    video = random_vae(VideoVAEConfig.tiny(timestep_conditioning=conditioned), seed=4)
    metadata = sections(video, *decoders[1:])
    del metadata["vae"]["timestep_conditioning"]
    loaded = load_decoders(write_base(tmp_path, groups(video, *decoders[1:]), metadata))
    assert loaded.video_vae.config == video.config
    assert_same_outputs(loaded, video, *decoders[1:])


def test_without_metadata_the_19b_preset_is_assumed_and_a_mismatch_is_named(tmp_path, decoders, no_data_reads):
    path = write_base(tmp_path, groups(*decoders))
    with pytest.raises(CheckpointError) as error:
        load_decoders(path)
    message = str(error.value)
    assert f"{path}: " in message
    assert "'vae.decoder.conv_in.conv.weight' [64, 128, 3, 3, 3] (expected [1024, 128, 3, 3, 3])" in message
    assert "LTX-2 19B preset" in message and "no 'vae' metadata config section" in message


def test_explicit_configs_override_the_file(tmp_path, decoders):
    video, audio, vocoder = decoders
    path = write_base(tmp_path, groups(*decoders))
    loaded = load_decoders(path, video_config=video.config, audio_vae_config=audio.config,
                           vocoder_config=vocoder.config)
    assert_same_outputs(loaded, *decoders)
    with pytest.raises(TypeError, match="video_config must be a VideoVAEConfig, got AudioVAEConfig"):
        load_decoders(path, video_config=audio.config)


def test_a_generator_file_is_not_a_base_file(tmp_path, no_data_reads):
    path = save_checkpoint(tmp_path / "omniforcing_ltx2_5s_causal.safetensors", random_model(ModelConfig.tiny()))[0]
    with pytest.raises(CheckpointError) as error:
        load_decoders(path)
    message = str(error.value)
    assert f"{path}: holds no video VAE ('vae.*'), audio VAE ('audio_vae.*'), vocoder ('vocoder.*') tensors" in message
    assert "the LTX-2 base checkpoint (ltx-2-19b-*.safetensors) holds the decoders" in message


def test_every_video_vae_problem_is_named_at_once(tmp_path, decoders, no_data_reads):
    video = random_vae(VideoVAEConfig.tiny(), seed=0)
    extra = groups(video, *decoders[1:])
    del extra["vae."]["decoder.conv_out.conv.weight"]
    del extra["vae."]["per_channel_statistics.std-of-means"]
    extra["vae."]["decoder.up_blocks.1.conv.conv.bias"] = torch.zeros(7)
    extra["vae."]["decoder.last_scale_shift_table"] = torch.zeros(2, 8)  # a conditioned decoder's
    path = write_base(tmp_path, extra, sections(video, *decoders[1:]))
    with pytest.raises(CheckpointError) as error:
        load_decoders(path)
    message = str(error.value)
    for part in (
        f"{path}: 2 tensor(s) of VideoVAE missing under 'vae.'",
        "vae.decoder.conv_out.conv.weight",
        "vae.per_channel_statistics.std-of-means",
        "'vae.decoder.up_blocks.1.conv.conv.bias' [7] (expected [256])",
        "1 tensor(s) under 'vae.' that VideoVAE does not have: vae.decoder.last_scale_shift_table",
        "The video VAE config came from the 'vae' metadata config section",
    ):
        assert part in message
    assert "encoder." not in message


@pytest.mark.parametrize(
    "group, edit, expected",
    [
        ("audio_vae.", {"decoder.up.1.upsample.conv.conv.weight": None, "per_channel_statistics.std-of-means": None},
         r"2 tensor\(s\) of AudioVAEDecoder missing under 'audio_vae.': "
         r"audio_vae.decoder.up.1.upsample.conv.conv.weight, audio_vae.per_channel_statistics.std-of-means"),
        ("vocoder.", {"resblocks.7.convs2.1.bias": None},
         r"1 tensor\(s\) of Vocoder missing under 'vocoder.': vocoder.resblocks.7.convs2.1.bias"),
        ("vocoder.", {"conv_pre.weight": torch.zeros(1024, 128, 7)},
         r"'vocoder.conv_pre.weight' \[1024, 128, 7\] \(expected \[32, 128, 7\]\)"),
        # LTX-2.3's bandwidth-extension vocoder carries tensors this architecture does not have.
        ("vocoder.", {"bwe_generator.conv_pre.weight": torch.zeros(1)},
         r"1 tensor\(s\) under 'vocoder.' that Vocoder does not have: vocoder.bwe_generator.conv_pre.weight"),
    ],
)
def test_audio_problems_are_named_before_anything_is_read(tmp_path, decoders, no_data_reads, group, edit, expected):
    extra = groups(*decoders)
    for name, tensor in edit.items():
        if tensor is None:
            del extra[group][name]
        else:
            extra[group][name] = tensor
    path = write_base(tmp_path, extra, sections(*decoders))
    with pytest.raises(CheckpointError, match=expected) as error:
        load_decoders(path)
    assert str(error.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "section, change, expected",
    [
        ("audio_vae", lambda s: s["model"]["params"]["ddconfig"].update(mid_block_add_attention=True),
         "metadata config section 'audio_vae': .*mid-block attention"),
        ("vocoder", lambda s: s.update(bwe={}), "metadata config section 'vocoder': .*bandwidth extension"),
    ],
)
def test_unsupported_metadata_names_the_file_and_section(tmp_path, decoders, no_data_reads, section, change, expected):
    metadata = sections(*decoders)
    change(metadata[section])
    path = write_base(tmp_path, groups(*decoders), metadata)
    with pytest.raises(CheckpointError, match=expected) as error:
        load_decoders(path)
    assert str(error.value).startswith(f"{path}: ")


def test_load_module_weights_ignores_only_the_given_sub_prefixes(tmp_path, decoders):
    video = decoders[0]
    path = write_base(tmp_path, {"vae.": {**video.state_dict(), **VIDEO_ENCODER}})
    with open_checkpoint(path) as checkpoint:
        with torch.device("meta"):
            module = VideoVAE(video.config)
        with pytest.raises(CheckpointError, match=r"under 'vae.' that VideoVAE does not have: vae.encoder.conv_in"):
            load_module_weights(module, checkpoint, "vae.")
        assert load_module_weights(module, checkpoint, "vae.", strict=False) == ["vae.encoder.conv_in.conv.weight"]
        with torch.device("meta"):
            module = VideoVAE(video.config)
        assert load_module_weights(module, checkpoint, "vae.", ignore=("encoder.",)) == []
        assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), video.state_dict().values()))
        # An ignored sub-prefix never hides the module's own tensors.
        with torch.device("meta"):
            module = VideoVAE(VideoVAEConfig.ltx2_19b())
        with pytest.raises(CheckpointError, match=r"'vae.decoder.conv_in.conv.weight' \[64, 128, 3, 3, 3\]"):
            load_module_weights(module, checkpoint, "vae.", ignore=("decoder.",))
