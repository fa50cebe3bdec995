"""save_checkpoint: the layouts the loader reads, fp8 with scales, and nothing lost on failure."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from helpers import random_model
from omniforcing_core.checkpoint import CheckpointError, load_model, open_checkpoint, save_checkpoint
from omniforcing_core.checkpoint import writer as writer_module
from checkpoint_support import relative_error, tiny


@pytest.fixture(scope="module")
def model():
    return random_model(tiny(), seed=5)


def test_single_file_is_standard_safetensors(tmp_path, model):
    vae = {"decoder.conv_in.weight": torch.randn(3, 4), "per_channel_statistics.std-of-means": torch.rand(8)}
    path = save_checkpoint(tmp_path / "base.safetensors", model, prefix="model.diffusion_model.", dtype="bf16",
                           extra={"vae.": vae}, extra_config={"vae": {"latent_channels": 8}},
                           block_layout="released")[0]
    with safe_open(str(path), "pt") as official:  # the reference parser validates the format
        keys = set(official.keys())
        assert keys == {f"model.diffusion_model.{k}" for k in model.state_dict()} | {f"vae.{k}" for k in vae}
        for name, tensor in model.state_dict().items():
            stored = official.get_tensor(f"model.diffusion_model.{name}")
            assert stored.dtype == torch.bfloat16 and torch.equal(stored, tensor.bfloat16())
        assert torch.equal(official.get_tensor("vae.decoder.conv_in.weight"), vae["decoder.conv_in.weight"].bfloat16())
        metadata = official.metadata()
    config = json.loads(metadata["config"])
    assert config["vae"] == {"latent_channels": 8}
    assert config["transformer"] == model.config.to_metadata()
    assert json.loads(metadata["omniforcing"]) == {"block_layout": "released"}


def test_sharded_with_index(tmp_path, model):
    files = save_checkpoint(tmp_path / "omniforcing_ltx2_5s_causal.safetensors", model, max_shard_bytes=50_000)
    *shards, index_path = files
    assert index_path.name == "omniforcing_ltx2_5s_causal.safetensors.index.json"
    assert shards[0].name == f"omniforcing_ltx2_5s_causal-00001-of-{len(shards):05d}.safetensors"
    index = json.loads(index_path.read_text())
    state = model.state_dict()
    assert set(index["weight_map"]) == {f"model.{k}" for k in state}
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in state.values())
    biggest = max(t.nbytes for t in state.values())
    for shard in shards:
        with safe_open(str(shard), "pt") as official:
            size = sum(official.get_tensor(k).nbytes for k in official.keys())
            assert size <= max(50_000, biggest)
            for key in official.keys():
                assert index["weight_map"][key] == shard.name
                assert torch.equal(official.get_tensor(key), state[key.removeprefix("model.")])


def test_fp8_stores_block_linears_with_per_tensor_scales(tmp_path, model):
    path = save_checkpoint(tmp_path / "fp8.safetensors", model, dtype="fp8")[0]
    state = model.state_dict()
    with open_checkpoint(path) as checkpoint:
        weight = checkpoint.info("model.transformer_blocks.0.attn1.to_q.weight")
        scale = checkpoint.info("model.transformer_blocks.0.attn1.to_q.weight_scale")
        assert (weight.dtype_name, scale.dtype_name, scale.shape) == ("F8_E4M3", "F32", ())
        for key in ("model.patchify_proj.weight", "model.transformer_blocks.0.attn1.to_q.bias",
                    "model.transformer_blocks.0.scale_shift_table", "model.transformer_blocks.0.attn1.q_norm.weight"):
            assert checkpoint.info(key).dtype_name == "BF16"
        fp8_keys = [i.key for i in checkpoint.infos() if i.dtype_name == "F8_E4M3"]
        assert len(fp8_keys) == 56 and all(f"{k}_scale" in checkpoint for k in fp8_keys)
        for key in fp8_keys:
            restored = checkpoint.read(key, dtype=torch.float32) * checkpoint.read(f"{key}_scale")
            original = state[key.removeprefix("model.")]
            assert relative_error(restored, original) < 0.04  # e4m3 keeps 3 mantissa bits
            assert checkpoint.read(key).float().abs().max().item() == 448.0  # the scale uses the full range
    with safe_open(str(path), "pt") as official:
        assert official.get_tensor("model.transformer_blocks.1.ff.net.2.weight").dtype == torch.float8_e4m3fn


def test_fp8_weights_are_dequantized_when_saving_in_bf16(tmp_path, model):
    loaded = load_model(save_checkpoint(tmp_path / "fp8.safetensors", model, dtype="fp8")[0], dtype="fp32")
    path = save_checkpoint(tmp_path / "bf16.safetensors", loaded.model, dtype="bf16")[0]
    with open_checkpoint(path) as checkpoint:
        assert not any(key.endswith("weight_scale") for key in checkpoint.keys())
        layer = loaded.model.transformer_blocks[0].attn1.to_q
        stored = checkpoint.read("model.transformer_blocks.0.attn1.to_q.weight")
        assert stored.dtype == torch.bfloat16 and torch.equal(stored, layer.dequantized_weight(torch.bfloat16))


def test_refuses_to_overwrite(tmp_path, model):
    path = tmp_path / "mine.safetensors"
    path.write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError, match="mine.safetensors already exist"):
        save_checkpoint(path, model)
    assert path.read_bytes() == b"the user's own file"
    index = tmp_path / "sharded.safetensors.index.json"
    index.write_text("{}")
    with pytest.raises(FileExistsError, match="sharded.safetensors.index.json"):
        save_checkpoint(tmp_path / "sharded.safetensors", model, max_shard_bytes=50_000)
    assert index.read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == [
        "mine.safetensors", "sharded.safetensors.index.json"
    ]
    save_checkpoint(path, model, overwrite=True)
    assert len(open_checkpoint(path)) == len(model.state_dict())


def test_a_failure_half_way_leaves_the_old_file_and_no_debris(tmp_path, model, monkeypatch):
    path = save_checkpoint(tmp_path / "g.safetensors", model)[0]
    before = path.read_bytes()
    calls = []

    def failing(weight, dtype):
        calls.append(1)
        if len(calls) > 3:
            raise OSError("No space left on device")
        return original(weight, dtype)

    original = writer_module.quantize_fp8
    monkeypatch.setattr(writer_module, "quantize_fp8", failing)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model, dtype="fp8", overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]


def test_bad_arguments(tmp_path, model):
    with pytest.raises(CheckpointError, match="must end with .safetensors"):
        save_checkpoint(tmp_path / "model.pt", model)
    with pytest.raises(CheckpointError, match="dtype 'int8' cannot be used here; use one of fp32, bf16, fp16, fp8"):
        save_checkpoint(tmp_path / "a.safetensors", model, dtype="int8")
    with pytest.raises(CheckpointError, match="unknown block layout"):
        save_checkpoint(tmp_path / "a.safetensors", model, block_layout="sideways")
    with pytest.raises(CheckpointError, match="two tensors would be saved as 'model.proj_out.bias'"):
        save_checkpoint(tmp_path / "a.safetensors", model, extra={"model.": {"proj_out.bias": torch.ones(1)}})
    with pytest.raises(CheckpointError, match="metadata 'config' is given twice"):
        save_checkpoint(tmp_path / "a.safetensors", model, metadata={"config": "{}"})
    assert list(tmp_path.iterdir()) == []
