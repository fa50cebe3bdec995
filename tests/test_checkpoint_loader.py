"""load_model: every file layout, prefix and dtype round-trips; overlay, detection, overrides."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import GOLDEN, golden_vectors, random_model, random_text
from omniforcing_core import AVTransformer, BlockLayout, ModelConfig, TextConditioning
from omniforcing_core.demo import tiny_decoders
from omniforcing_core.checkpoint import (
    CheckpointError, FP8Linear, load_model, open_checkpoint, quantize_fp8, save_checkpoint,
)
from omniforcing_core.checkpoint.detect import detect_config
from omniforcing_core.checkpoint import expected_tensors
from checkpoint_support import no_data_reads, outputs, relative_error, rounded_like_file, tiny  # noqa: F401

PREFIXES = ["model.", "model.velocity_model.", "model.diffusion_model."]
SINKS = 3
SHARD_BYTES = 60_000


@pytest.fixture(scope="module")
def models():
    return {0: random_model(tiny(), seed=0), SINKS: random_model(tiny(audio_sink_tokens=SINKS), seed=1)}


@pytest.fixture(scope="module")
def references(models):
    """Outputs of the saved models with weights rounded as each file dtype stores them."""
    result = {}
    for sinks, model in models.items():
        for file_dtype, compute in (("fp32", torch.float32), ("bf16", torch.bfloat16),
                                    ("fp8", torch.float32), ("fp8", torch.bfloat16)):
            result[sinks, file_dtype, compute] = outputs(rounded_like_file(model, file_dtype, compute), compute)
    return result


def write(model, directory: Path, layout: str, prefix: str, file_dtype: str, **kwargs) -> Path:
    """Save ``model`` and return what a user would pass to load_model."""
    if layout == "single":
        return save_checkpoint(directory / "gen.safetensors", model, prefix=prefix, dtype=file_dtype, **kwargs)[0]
    files = save_checkpoint(directory / "gen.safetensors", model, prefix=prefix, dtype=file_dtype,
                            max_shard_bytes=SHARD_BYTES, **kwargs)
    assert len(files) > 2, "the tiny model should need several shards"
    return files[-1] if layout == "sharded" else directory


@pytest.mark.parametrize("file_dtype", ["fp32", "bf16", "fp8"])
@pytest.mark.parametrize("sinks", [0, SINKS])
@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("layout", ["single", "sharded", "folder"])
def test_round_trip(tmp_path, models, references, layout, prefix, sinks, file_dtype):
    model = models[sinks]
    source = write(model, tmp_path, layout, prefix, file_dtype)
    compute = torch.bfloat16 if file_dtype == "bf16" else torch.float32
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model(source, device="cpu", dtype=compute)
    # The LTX-2 base file's layout as the generator: the teacher would run as the student.
    said = [str(w.message) for w in caught]
    if prefix == "model.diffusion_model.":
        assert len(said) == 1 and "is an LTX-2 base file" in said[0] and "teacher runs as" in said[0]
        assert loaded.report.warnings == said and f"WARNING: {said[0]}" in loaded.report.summary()
    else:
        assert said == [] and loaded.report.warnings == []

    assert loaded.config == model.config
    assert loaded.sink_tokens == sinks
    assert loaded.layout == (BlockLayout.paper() if sinks else BlockLayout.released())
    assert loaded.report.generator.prefix == prefix
    assert loaded.report.count("generator") == len(model.state_dict())
    assert not loaded.model.training
    assert not any(t.is_meta or t.requires_grad for t in loaded.model.parameters())

    video, audio = outputs(loaded.model, compute)
    expected_video, expected_audio = references[sinks, file_dtype, compute]
    if file_dtype == "fp8":
        # Same fp8 values; the loaded layer scales its output instead of its weight.
        torch.testing.assert_close(video, expected_video, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(audio, expected_audio, rtol=1e-4, atol=1e-4)
        assert len(loaded.report.fp8_layers) == 2 * 6 * 4 + 2 * 2 * 2
    else:
        assert torch.equal(video, expected_video) and torch.equal(audio, expected_audio)
        assert loaded.report.fp8_layers == []


def test_fp8_weights_stay_fp8_and_compute_in_bf16(tmp_path, models, references):
    model = models[0]
    path = save_checkpoint(tmp_path / "fp8.safetensors", model, dtype="fp8")[0]
    loaded = load_model(path, dtype=torch.bfloat16)
    layer = loaded.model.transformer_blocks[1].attn1.to_q
    assert isinstance(layer, FP8Linear)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
    assert layer.bias.dtype == torch.bfloat16
    assert loaded.model.patchify_proj.weight.dtype == torch.bfloat16  # outside the blocks: bf16
    fp8_bytes = sum(t.nbytes for t in loaded.model.state_dict().values())
    bf16_bytes = sum(t.numel() * 2 for t in model.state_dict().values())
    assert fp8_bytes < 0.75 * bf16_bytes

    video, audio = outputs(loaded.model, torch.bfloat16)
    expected_video, expected_audio = references[0, "fp8", torch.bfloat16]
    assert relative_error(video, expected_video) < 0.02
    assert relative_error(audio, expected_audio) < 0.02
    # And the fp8 model is still the saved model, within fp8 rounding.
    exact_video, _ = outputs(model)
    assert relative_error(video, exact_video) < 0.05


def test_loaded_fp8_model_saves_and_reloads_unchanged(tmp_path, models):
    loaded = load_model(save_checkpoint(tmp_path / "a.safetensors", models[0], dtype="fp8")[0], dtype="fp32")
    again = save_checkpoint(tmp_path / "b.safetensors", loaded.model)[0]
    with open_checkpoint(again) as checkpoint:
        assert checkpoint.info("model.transformer_blocks.0.ff.net.2.weight").dtype_name == "F8_E4M3"
        assert checkpoint.info("model.transformer_blocks.0.ff.net.2.weight_scale").shape == ()
    reloaded = load_model(again, dtype="fp32")
    for first, second in zip(outputs(loaded.model), outputs(reloaded.model)):
        assert torch.equal(first, second)


def test_input_scales_are_classified_not_unexpected(tmp_path, models):
    extra = {"model.": {"transformer_blocks.0.attn1.to_q.input_scale": torch.tensor(0.5)}}
    path = save_checkpoint(tmp_path / "g.safetensors", models[0], dtype="fp8", extra=extra)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model(path, dtype="fp32")
    assert loaded.report.unexpected["generator"] == []
    assert loaded.report.ignored_groups["generator"] == {"fp8 input scales (activations are not quantized)": 1}


# The base file and the overlay ---------------------------------------------------------

TEACHER_SECTION = {  # LTX-2 teacher conventions, as in the base file's metadata
    "num_layers": 2, "num_attention_heads": 4, "attention_head_dim": 16, "audio_num_attention_heads": 4,
    "audio_attention_head_dim": 8, "caption_channels": 32, "rope_type": "split",
    "frequencies_precision": "float64", "av_ca_timestep_scale_multiplier": 1000,
}
DECODERS = tiny_decoders(seed=0)  # a base file carries the decoders, checked with the transformer
BASE_EXTRAS = {
    "vae.": dict(DECODERS[0].state_dict()),
    "audio_vae.": dict(DECODERS[1].state_dict()),
    "vocoder.": dict(DECODERS[2].state_dict()),
    "text_embedding_projection.": {"aggregate_embed.weight": torch.randn(5, 6)},
}
DECODER_SECTIONS = {"vae": DECODERS[0].config.to_metadata(), "audio_vae": DECODERS[1].config.to_metadata(),
                    "vocoder": DECODERS[2].config.to_metadata()}
CONNECTORS = {
    "video_embeddings_connector.learnable_registers": torch.randn(4, 32),
    "audio_embeddings_connector.learnable_registers": torch.randn(4, 32),
}
ONLY_IN_BASE = ["transformer_blocks.1.ff.net.2.weight", "proj_out.bias", "audio_caption_projection.linear_1.weight"]


def write_base(model, path: Path, dtype=None, section=TEACHER_SECTION) -> Path:
    state = dict(model.state_dict()) | CONNECTORS
    return save_checkpoint(path, state, prefix="model.diffusion_model.", extra=BASE_EXTRAS, dtype=dtype,
                           extra_config={"transformer": section} | DECODER_SECTIONS)[0]


def test_generator_overlays_the_base(tmp_path):
    base_model, generator_model = random_model(tiny(), seed=10), random_model(tiny(), seed=11)
    base = write_base(base_model, tmp_path / "ltx-2-19b-dev.safetensors")
    partial = {k: v for k, v in generator_model.state_dict().items() if k not in ONLY_IN_BASE}
    generator = save_checkpoint(tmp_path / "gen.safetensors", partial, config=generator_model.config,
                                max_shard_bytes=SHARD_BYTES)[-1]

    with pytest.warns(UserWarning) as caught:
        loaded = load_model(generator, base, dtype="fp32")
    # What came from where, by name: the tensors filled from the base file.
    (said,) = [str(w.message) for w in caught]
    assert f"3 transformer tensor(s) are not in the generator {generator}" in said and str(base) in said
    assert all(name in said for name in ONLY_IN_BASE)

    state = loaded.model.state_dict()
    for name, tensor in generator_model.state_dict().items():
        source = base_model if name in ONLY_IN_BASE else generator_model
        assert torch.equal(state[name], source.state_dict()[name]), name
        assert loaded.report.sources[name] == ("base" if name in ONLY_IN_BASE else "generator")
    report = loaded.report
    assert report.count("base") == len(ONLY_IN_BASE)
    assert len(report.superseded) == len(state) - len(ONLY_IN_BASE)
    assert report.base.prefix == "model.diffusion_model."
    assert report.ignored_groups["base"] == {
        "video VAE": len(BASE_EXTRAS["vae."]), "audio VAE": len(BASE_EXTRAS["audio_vae."]),
        "vocoder": len(BASE_EXTRAS["vocoder."]), "text-encoder projection": 1,
        "text connector (video)": 1, "text connector (audio)": 1,
    }
    assert report.unexpected == {"generator": [], "base": []}
    assert "text connector (video) (1)" in report.summary()

    expected = random_model(tiny(), seed=11)
    expected.load_state_dict({k: (base_model if k in ONLY_IN_BASE else generator_model).state_dict()[k] for k in state})
    for got, want in zip(outputs(loaded.model), outputs(expected)):
        assert torch.equal(got, want)


def test_fp8_base_under_a_bf16_generator(tmp_path):
    base_model, generator_model = random_model(tiny(), seed=12), random_model(tiny(), seed=13)
    base = write_base(base_model, tmp_path / "ltx-2-19b-dev-fp8.safetensors", dtype="fp8")
    partial = {k: v for k, v in generator_model.state_dict().items() if k != "transformer_blocks.1.ff.net.2.weight"}
    generator = save_checkpoint(tmp_path / "gen.safetensors", partial, config=generator_model.config, dtype="bf16")[0]
    loaded = load_model(generator, base, dtype="bf16")
    assert loaded.report.fp8_layers == ["transformer_blocks.1.ff.net.2"]
    layer = loaded.model.transformer_blocks[1].ff.net[2]
    original = base_model.state_dict()["transformer_blocks.1.ff.net.2.weight"]
    assert relative_error(layer.dequantized_weight(), original) < 0.05
    assert isinstance(loaded.model.transformer_blocks[0].ff.net[2], torch.nn.Linear)


def test_generator_without_metadata_takes_heads_from_the_base(tmp_path):
    base_model = random_model(tiny(), seed=14)
    base = write_base(base_model, tmp_path / "base.safetensors")
    generator = save_checkpoint(tmp_path / "gen.safetensors", dict(base_model.state_dict()))[0]
    loaded = load_model(generator, base, dtype="fp32")
    assert loaded.config == tiny()  # student conventions despite the teacher's metadata
    notes = "\n".join(loaded.report.notes)
    assert "rope_type='split'" in notes and "av_ca_timestep_scale_multiplier=1000" in notes


def test_tensor_missing_from_both_files_names_it(tmp_path, no_data_reads):
    model = random_model(tiny(), seed=15)
    state = {k: v for k, v in model.state_dict().items() if k != "transformer_blocks.0.audio_attn2.to_v.bias"}
    base = save_checkpoint(tmp_path / "base.safetensors", state, prefix="model.diffusion_model.",
                           extra_config={"transformer": TEACHER_SECTION})[0]
    generator = save_checkpoint(tmp_path / "gen.safetensors", state, config=model.config)[0]
    with pytest.raises(CheckpointError) as error:
        load_model(generator, base)
    message = str(error.value)
    assert "transformer_blocks.0.audio_attn2.to_v.bias" in message
    assert str(generator) in message and str(base) in message and "1 transformer tensor(s)" in message


def test_many_missing_tensors_are_summarized(tmp_path):
    model = random_model(tiny(), seed=16)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("to_k.bias")}
    generator = save_checkpoint(tmp_path / "gen.safetensors", state, config=model.config)[0]
    with pytest.raises(CheckpointError, match=r"12 transformer tensor\(s\)") as error:
        load_model(generator)
    assert "transformer_blocks.{0-1}.attn1.to_k.bias" in str(error.value)


def test_unexpected_tensors_are_reported_and_strict_refuses_them(tmp_path, models):
    # Training leftovers the computation never reads (unlike to_gate_logits: refused below).
    state = dict(models[0].state_dict()) | {"transformer_blocks.0.attn1.grad_norm_ema": torch.ones(1)}
    path = save_checkpoint(tmp_path / "gen.safetensors", state, config=models[0].config,
                           extra={"": {"critic.head.weight": torch.ones(2)}})[0]
    with pytest.warns(UserWarning, match="grad_norm_ema"):
        loaded = load_model(path, dtype="fp32")
    assert loaded.report.unexpected["generator"] == [
        "critic.head.weight", "model.transformer_blocks.0.attn1.grad_norm_ema"
    ]
    assert "UNEXPECTED in the generator file (2)" in loaded.report.summary()
    with pytest.raises(CheckpointError, match="strict"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_model(path, strict=True)


@pytest.mark.parametrize("tensor, needle", [
    ("transformer_blocks.{}.attn1.to_gate_logits.weight", "gated attention"),
    ("prompt_adaln_single.linear.weight", "prompt-side AdaLN"),
    ("keyframes_abs_pos_embedding", "keyframe position embedding"),
])
def test_tensors_for_computation_the_model_lacks_are_refused(tmp_path, models, no_data_reads, tensor, needle):
    extra = {name.format(block): torch.ones(4, 64) for name in [tensor] for block in (0, 1)}
    state = dict(models[0].state_dict()) | extra
    path = save_checkpoint(tmp_path / "ltx-2.3.safetensors", state, config=models[0].config)[0]
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert str(path) in message and needle in message and "does not implement" in message
    assert tensor.format("{0-1}" if "{}" in tensor else "") in message


@pytest.mark.parametrize("key, value, needle", [
    ("apply_gated_attention", True, "gated attention"),
    ("cross_attention_adaln", True, "AdaLN-modulated text cross-attention"),
    ("use_prompt_adaln_single", True, "prompt-side AdaLN"),
    ("ff_bias", False, "without biases"),
    ("activation_fn", "gelu", "feed-forward activation"),
    ("use_middle_indices_grid", "false", "midpoint"),
])
def test_metadata_asking_for_computation_the_model_lacks_is_refused(tmp_path, models, no_data_reads, key, value,
                                                                    needle):
    section = models[0].config.to_metadata() | {key: value}
    state = dict(models[0].state_dict())
    path = save_checkpoint(tmp_path / "g.safetensors", state, extra_config={"transformer": section})[0]
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert str(path) in message and f"{key}={value!r}" in message and needle in message
    # The base file's metadata is checked too, before anything is read.
    base = save_checkpoint(tmp_path / "base.safetensors", state, prefix="model.diffusion_model.",
                           extra_config={"transformer": section})[0]
    generator = save_checkpoint(tmp_path / "gen.safetensors", models[0])[0]
    with pytest.raises(CheckpointError, match=f"base {base}: the metadata asks for computation"):
        load_model(generator, base)


def test_the_real_19b_computation_keys_are_the_implemented_ones():
    # The teacher golden carries every key ltx-core's configurator reads, at the 19B checkpoint's values.
    loaded = load_model(GOLDEN / "teacher_tiny.weights.safetensors", dtype="fp32", conventions="checkpoint")
    assert loaded.config.num_layers == 2


def test_the_base_files_decoders_are_checked_before_any_tensor_is_read(tmp_path, no_data_reads):
    model = random_model(tiny(), seed=17)
    extras = {group: dict(tensors) for group, tensors in BASE_EXTRAS.items()}
    name = next(iter(extras["vocoder."]))
    extras["vocoder."][name] = torch.zeros(3)  # misshapen: another vocoder than the metadata's
    base = save_checkpoint(tmp_path / "base.safetensors", model, prefix="model.diffusion_model.", extra=extras,
                           extra_config={"transformer": TEACHER_SECTION} | DECODER_SECTIONS)[0]
    generator = save_checkpoint(tmp_path / "gen.safetensors", model)[0]
    with pytest.raises(CheckpointError) as error:
        load_model(generator, base)
    message = str(error.value)
    assert str(base) in message and f"'vocoder.{name}' [3]" in message


def test_base_of_another_size_is_refused(tmp_path, no_data_reads):
    generator = save_checkpoint(tmp_path / "gen.safetensors", random_model(tiny()))[0]
    bigger = random_model(tiny(video_heads=8), seed=2)
    base = save_checkpoint(tmp_path / "base.safetensors", bigger, prefix="model.diffusion_model.")[0]
    with pytest.raises(CheckpointError, match="different models") as error:
        load_model(generator, base)
    assert "[64, 128] in the generator vs [128, 128] in the base" in str(error.value)


# Detection, layout and overrides --------------------------------------------------------


def test_layout_hint_in_metadata(tmp_path, models):
    path = save_checkpoint(tmp_path / "g.safetensors", models[0], block_layout="paper")[0]
    loaded = load_model(path, dtype="fp32")
    assert loaded.layout == BlockLayout.paper() and loaded.sink_tokens == 0
    assert "metadata block_layout" in loaded.report.layout_reason


def test_overrides(tmp_path, models):
    path = save_checkpoint(tmp_path / "g.safetensors", models[0])[0]
    loaded = load_model(path, dtype="fp32", overrides={
        "block_layout": "paper", "num_layers": 2, "video_heads": 8, "rope_theta": 5000.0,
    })
    assert loaded.layout == BlockLayout.paper()
    assert (loaded.config.video_heads, loaded.config.video_head_dim) == (8, 8)
    assert loaded.config.rope_theta == 5000.0
    assert loaded.report.layout_reason == "set by override"


@pytest.mark.parametrize("overrides, needles", [
    ({"num_layers": 3}, ["override num_layers=3", "num_layers=2"]),
    ({"audio_sink_tokens": 2}, ["override audio_sink_tokens=2", "audio_sink_tokens=3"]),
    ({"block_layout": "released"}, ["block_layout='released'", "3 audio sink tokens"]),
    ({"video_heads": 5}, ["video_heads=5", "video width 64"]),
    ({"video_heads": 4, "video_head_dim": 32}, ["video_heads=4 x video_head_dim=32 = 128", "64"]),
    ({"caption_channels": 64}, ["override caption_channels=64", "caption_channels=32"]),
    ({"layers": 2}, ["unknown override", "num_layers"]),
])
def test_contradicting_overrides_name_both_values(tmp_path, models, no_data_reads, overrides, needles):
    path = save_checkpoint(tmp_path / "g.safetensors", models[SINKS])
    with pytest.raises(CheckpointError) as error:
        load_model(path[0], overrides=overrides)
    for needle in needles:
        assert needle in str(error.value)


def test_without_metadata_heads_need_ltx2_head_sizes_or_overrides(tmp_path, models, no_data_reads):
    path = save_checkpoint(tmp_path / "bare.safetensors", dict(models[0].state_dict()))[0]
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert str(path) in message and "128 does not divide the video width 64" in message
    assert "overrides={'video_heads'" in message


def test_without_metadata_overrides_supply_the_heads(tmp_path, models):
    path = save_checkpoint(tmp_path / "bare.safetensors", dict(models[0].state_dict()))[0]
    loaded = load_model(path, dtype="fp32", overrides={"video_head_dim": 16, "audio_heads": 4})
    assert loaded.config == tiny()
    for got, want in zip(outputs(loaded.model), outputs(models[0])):
        assert torch.equal(got, want)


def test_metadata_that_contradicts_the_weights(tmp_path, models, no_data_reads):
    path = save_checkpoint(tmp_path / "g.safetensors", models[0], config=tiny(num_layers=4))[0]
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert str(path) in str(error.value) and "num_layers=4" in str(error.value) and "have 2" in str(error.value)


def test_wrong_shape_names_file_key_and_both_shapes(tmp_path, models, no_data_reads):
    state = dict(models[0].state_dict())
    state["transformer_blocks.1.attn1.to_q.weight"] = torch.zeros(64, 32)
    path = save_checkpoint(tmp_path / "g.safetensors", state, config=models[0].config)[0]
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert str(path) in message and "'model.transformer_blocks.1.attn1.to_q.weight'" in message
    assert "[64, 32]" in message and "needs [64, 64]" in message


def test_integer_tensor_and_bad_scale_are_refused(tmp_path, models, no_data_reads):
    state = dict(models[0].state_dict())
    state["proj_out.bias"] = torch.zeros(128, dtype=torch.int32)
    path = save_checkpoint(tmp_path / "int.safetensors", state, config=models[0].config)[0]
    with pytest.raises(CheckpointError, match="'model.proj_out.bias' has dtype I32"):
        load_model(path)
    extra = {"model.": {"transformer_blocks.0.attn1.to_q.weight_scale": torch.ones(3)}}
    path = save_checkpoint(tmp_path / "scale.safetensors", models[0], extra=extra)[0]
    with pytest.raises(CheckpointError, match=r"weight_scale' must be one floating-point number.*\[3\]"):
        load_model(path)


def test_room_is_checked_before_loading(tmp_path, models, monkeypatch, no_data_reads):
    from omniforcing_core.checkpoint import loader

    monkeypatch.setattr(loader, "available_host_memory", lambda: 1000)
    path = save_checkpoint(tmp_path / "g.safetensors", models[0])[0]
    with pytest.raises(CheckpointError, match="only 0.0 GiB of host memory is free"):
        load_model(path)


# The real files' layout -----------------------------------------------------------------


def test_golden_reference_file_loads():
    loaded = load_model(GOLDEN / "released_tiny.weights.safetensors", dtype="fp32")
    assert loaded.config == ModelConfig.tiny()
    assert loaded.layout == BlockLayout.released() and loaded.sink_tokens == 0
    assert loaded.report.generator.prefix == "model."
    # The loader's result equals a plain load_state_dict of the same file.
    plain = AVTransformer(ModelConfig.tiny()).eval()
    plain.load_state_dict({k.removeprefix("model."): v for k, v in load_file(GOLDEN / "released_tiny.weights.safetensors").items()})
    for got, want in zip(outputs(loaded.model), outputs(plain)):
        assert torch.equal(got, want)

    vectors = golden_vectors()
    text = TextConditioning(vectors["context.video"], vectors["context.audio"])
    video = vectors["full.video_in"].permute(0, 2, 1, 3, 4)
    audio, video_sigma, audio_sigma = vectors["full.audio_in"], vectors["full.video_sigma"], vectors["full.audio_sigma"]
    with torch.no_grad():
        video_v, audio_v = loaded.model(video, audio, video_sigma, audio_sigma, text)
    video_x0 = (video - video_sigma[:, None, :, None, None] * video_v).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(video_x0, vectors["full.bidirectional.video_x0"], rtol=0, atol=1e-4)
    torch.testing.assert_close(audio - audio_sigma[..., None] * audio_v, vectors["full.bidirectional.audio_x0"],
                               rtol=0, atol=1e-4)


def real_19b_shapes() -> dict[str, tuple[int, ...]]:
    keys = json.loads((GOLDEN.parent / "ltx2_19b_transformer_keys.json").read_text())
    return {k: tuple(v) for k, v in keys.items() if "embeddings_connector." not in k}


def test_19b_preset_has_exactly_the_real_transformer_keys():
    assert expected_tensors(AVTransformer, ModelConfig.ltx2_19b()) == real_19b_shapes()


@pytest.mark.parametrize("section", [None, TEACHER_SECTION | {
    "num_layers": 48, "num_attention_heads": 32, "attention_head_dim": 128, "audio_num_attention_heads": 32,
    "audio_attention_head_dim": 64, "caption_channels": 3840, "cross_attention_dim": 4096,
}])
def test_19b_architecture_is_detected_from_real_shapes(section):
    shapes = real_19b_shapes()
    config, notes = detect_config(lambda key: (shapes[key], "ltx-2-19b-dev.safetensors"), 48, "48 blocks",
                                  False, section, "base", {})
    assert config == ModelConfig.ltx2_19b()
    assert len(notes) == (3 if section else 0)


def test_fp8_file_with_some_scales_missing_is_refused_naming_the_layers(tmp_path, models, no_data_reads):
    path = save_checkpoint(tmp_path / "fp8.safetensors", models[0], dtype="fp8")[0]
    missing = ["model.transformer_blocks.0.attn1.to_q.weight_scale", "model.transformer_blocks.1.attn1.to_q.weight_scale"]
    with open_checkpoint(path) as checkpoint:
        metadata = checkpoint.metadata
    tensors = {key: value for key, value in load_file(path).items() if key not in missing}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert str(path) in message and "2 fp8 tensor(s) have no weight_scale" in message
    assert "transformer_blocks.{0-1}.attn1.to_q.weight" in message and "re-export" in message


def test_fp8_weight_without_a_scale_counts_as_scale_one(tmp_path, models):
    state = dict(models[0].state_dict())
    name = "transformer_blocks.0.ff.net.0.proj.weight"
    state[name] = state[name].to(torch.float8_e4m3fn)
    path = save_checkpoint(tmp_path / "g.safetensors", state, config=models[0].config)[0]
    loaded = load_model(path, dtype="fp32")
    assert loaded.report.fp8_layers == ["transformer_blocks.0.ff.net.0.proj"]
    assert "has no weight_scale; using 1" in loaded.report.notes[-1]
    layer = loaded.model.transformer_blocks[0].ff.net[0].proj
    assert layer.weight_scale.item() == 1.0 and not layer.weight_scale.is_meta
    expected = random_model(tiny())
    expected.load_state_dict(dict(models[0].state_dict()) | {name: state[name].float()})
    for got, want in zip(outputs(loaded.model), outputs(expected)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fp8_weights_from_a_full_precision_file(tmp_path, monkeypatch):
    from omniforcing_core.checkpoint import materialize

    model = random_model()
    path = tmp_path / "g.safetensors"
    save_checkpoint(path, model, config=model.config)
    # Quantised while materialising: the model never holds more than its final fp8 self.
    held = []
    assign = materialize.assign_tensor

    def assign_and_measure(module, name, tensor):
        assign(module, name, tensor)
        held.append(sum(t.nbytes for t in module.state_dict().values() if not t.is_meta))

    monkeypatch.setattr(materialize, "assign_tensor", assign_and_measure)
    loaded = load_model(path, dtype="fp32", fp8_weights=True)
    assert max(held) == held[-1] == sum(t.nbytes for t in loaded.model.state_dict().values())
    for name, module in loaded.model.named_modules():
        if isinstance(module, FP8Linear):
            weight, scale = quantize_fp8(model.get_submodule(name).weight)
            assert torch.equal(module.weight.float(), weight.float()) and torch.equal(module.weight_scale, scale)
    linears = [m for m in loaded.model.modules() if isinstance(m, FP8Linear)]
    assert len(linears) == len(loaded.report.fp8_layers) == 2 * (6 * 4 + 4)
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    assert not any(isinstance(m, torch.nn.Linear) for n, m in loaded.model.named_modules() if n.startswith("transformer_blocks"))
    video, audio, sigma_v, sigma_a = torch.randn(1, 128, 4, 2, 3), torch.randn(1, 26, 128), torch.full((1, 4), 0.5), torch.full((1, 26), 0.5)
    text = random_text(model.config)
    with torch.no_grad():
        reference = model(video, audio, sigma_v, sigma_a, text)
        quantized = loaded.model(video, audio, sigma_v, sigma_a, text)
    relative = (quantized[0] - reference[0]).norm() / reference[0].norm()
    assert 1e-4 < relative < 0.1  # fp8 rounding: close, but not the same numbers
