"""open_checkpoint: headers without data, one tensor at a time, and every broken input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from helpers import random_model
from omniforcing_core.checkpoint import (
    CheckpointError, load_model, load_module_weights, open_checkpoint, save_checkpoint,
)
from checkpoint_support import no_data_reads, rewrite_header, tiny, write_raw_safetensors  # noqa: F401

TENSORS = {
    "vae.decoder.conv.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 7,
    "vae.decoder.conv.bias": torch.tensor([0.5, -1.25], dtype=torch.bfloat16),
    "vae.per_channel_statistics.mean-of-means": torch.randn(5, dtype=torch.float16),
    "vocoder.steps": torch.tensor([1, 2, 3], dtype=torch.int64),
    "scalar": torch.tensor(2.5),
}


@pytest.fixture
def plain_file(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file(TENSORS, str(path), metadata={"config": json.dumps({"vae": {"latent_channels": 128}})})
    return path


def test_headers_list_keys_shapes_dtypes_and_metadata_without_reading(plain_file, no_data_reads):
    with open_checkpoint(plain_file) as checkpoint:
        assert sorted(checkpoint.keys()) == sorted(TENSORS)
        for key, tensor in TENSORS.items():
            info = checkpoint.info(key)
            assert info.shape == tuple(tensor.shape) and info.dtype == tensor.dtype
            assert info.nbytes == tensor.numel() * tensor.element_size()
        assert checkpoint.config_section("vae") == {"latent_channels": 128}
        assert checkpoint.config_section("transformer") is None
        assert sorted(checkpoint.group("vae.decoder.")) == ["vae.decoder.conv.bias", "vae.decoder.conv.weight"]
        assert sum(info.nbytes for info in checkpoint.infos()) == sum(t.nbytes for t in TENSORS.values())


def test_read_one_tensor_to_a_dtype(plain_file):
    with open_checkpoint(plain_file) as checkpoint:
        for key, tensor in TENSORS.items():
            assert torch.equal(checkpoint.read(key), tensor)
        as_bf16 = checkpoint.read("vae.decoder.conv.weight", dtype=torch.bfloat16)
        assert as_bf16.dtype == torch.bfloat16 and torch.equal(as_bf16, TENSORS["vae.decoder.conv.weight"].bfloat16())
        # dtype applies to floating-point tensors only
        assert checkpoint.read("vocoder.steps", dtype=torch.float16).dtype == torch.int64
    # What read returned owns its memory: it outlives the closed file.
    assert as_bf16.sum().item() == pytest.approx(TENSORS["vae.decoder.conv.weight"].sum().item(), rel=1e-2)


class TinyDecoder(nn.Module):
    def __init__(self, with_bias: bool = True):
        super().__init__()
        self.conv = nn.Module()
        self.conv.weight = nn.Parameter(torch.empty(2, 3, 4))
        if with_bias:
            self.conv.bias = nn.Parameter(torch.empty(2))


def test_load_module_weights_fills_a_meta_module(plain_file):
    with torch.device("meta"):
        decoder = TinyDecoder()
    with open_checkpoint(plain_file) as checkpoint:
        assert load_module_weights(decoder, checkpoint, "vae.decoder.", dtype=torch.float32) == []
        assert torch.equal(decoder.conv.weight, TENSORS["vae.decoder.conv.weight"])
        assert decoder.conv.bias.dtype == torch.float32 and decoder.conv.bias.tolist() == [0.5, -1.25]

        with torch.device("meta"):
            partial = TinyDecoder(with_bias=False)
        with pytest.raises(CheckpointError, match=r"under 'vae.decoder.' that TinyDecoder does not have: "
                                                  r"vae.decoder.conv.bias"):
            load_module_weights(partial, checkpoint, "vae.decoder.")
        assert load_module_weights(partial, checkpoint, "vae.decoder.", strict=False) == ["vae.decoder.conv.bias"]
        with torch.device("meta"):
            linear = nn.Linear(3, 3)
        with pytest.raises(CheckpointError, match=r"'vae.decoder.conv.weight' \[2, 3, 4\] \(expected \[3, 3\]\)"):
            load_module_weights(linear, checkpoint, "vae.decoder.conv.")
        with pytest.raises(CheckpointError, match=r"2 tensor\(s\) of Linear missing under 'vae.encoder.'"):
            load_module_weights(linear, checkpoint, "vae.encoder.")


def test_folder_without_index_reads_every_shard(tmp_path):
    save_file({"a.weight": torch.ones(2)}, str(tmp_path / "part1.safetensors"))
    save_file({"b.weight": torch.zeros(3)}, str(tmp_path / "part2.safetensors"))
    with open_checkpoint(tmp_path) as checkpoint:
        assert sorted(checkpoint.keys()) == ["a.weight", "b.weight"]
        assert torch.equal(checkpoint.read("b.weight"), torch.zeros(3))


def test_sharded_folder_without_its_index_still_loads(tmp_path):
    model = random_model(tiny())
    files = save_checkpoint(tmp_path / "gen.safetensors", model, max_shard_bytes=60_000)
    files[-1].unlink()
    loaded = load_model(tmp_path, dtype="fp32")
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values()))


# Broken inputs: each error names the file and the problem, before any data is read -------


def test_truncated_file(tmp_path, no_data_reads):
    path = save_checkpoint(tmp_path / "cut.safetensors", random_model(tiny()))[0]
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert str(path) in message and "truncated" in message and "1000 bytes missing" in message
    path.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(path)
    path.write_bytes(data[:200])
    with pytest.raises(CheckpointError, match=r"truncated: its header claims \d+ bytes but the file has only 200"):
        open_checkpoint(path)


@pytest.mark.parametrize("damage, needle", [
    (lambda raw: raw[:8] + b"{not json" + raw[17:], "header is corrupted (not valid JSON"),
    (lambda raw: struct.pack("<Q", 2**62) + raw[8:], "not a safetensors file or its header is corrupted"),
    (lambda raw: raw + b"\0" * 16, "16 unexpected bytes follow the tensor data"),
])
def test_corrupted_file(plain_file, no_data_reads, damage, needle):
    plain_file.write_bytes(damage(plain_file.read_bytes()))
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(plain_file)
    assert str(plain_file) in str(error.value) and needle in str(error.value)


@pytest.mark.parametrize("edit, needle", [
    (lambda h: h["scalar"].update(shape=[3]), "'scalar' is corrupted: shape [3] of F32 needs 12 bytes"),
    (lambda h: h["scalar"].update(data_offsets=[0, 4]), "overlaps the previous tensor"),
    (lambda h: h["scalar"].update(dtype="F4"), None),
    (lambda h: h.update(bad={"dtype": "F32"}), "header entry of tensor 'bad' is corrupted"),
])
def test_corrupted_header_entries(plain_file, no_data_reads, edit, needle):
    rewrite_header(plain_file, edit)
    if needle is None:
        # An unknown dtype is listed, and refused only when the tensor is used.
        with open_checkpoint(plain_file) as checkpoint:
            with pytest.raises(CheckpointError, match=r"'scalar' has dtype F4, which this loader does not support"):
                checkpoint.info("scalar").dtype
        return
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(plain_file)
    assert str(plain_file) in str(error.value) and needle in str(error.value)


def test_sdxl_style_checkpoint_is_recognized(tmp_path, no_data_reads):
    path = write_raw_safetensors(tmp_path / "sd_xl_base_1.0.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (4, 4),
        "model.diffusion_model.middle_block.1.norm.weight": (4,),
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": (1, 4),
    })
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    message = str(error.value)
    assert str(path) in message and "Stable Diffusion UNet" in message
    assert "model.diffusion_model.input_blocks.0.0.weight" in message
    assert "model.adaln_single.emb.timestep_embedder.linear_1.bias" in message  # what was expected


def test_video_only_ltx_is_recognized(tmp_path, no_data_reads):
    path = write_raw_safetensors(tmp_path / "ltx-video-2b.safetensors", {
        "model.diffusion_model.adaln_single.emb.timestep_embedder.linear_1.bias": (8,),
        "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight": (8, 8),
    })
    with pytest.raises(CheckpointError, match="LTX-Video transformer without an audio stream") as error:
        load_model(path)
    assert str(path) in str(error.value)


def test_lora_is_recognized(tmp_path):
    path = write_raw_safetensors(tmp_path / "lora.safetensors", {"diffusion_model.x.lora_A.weight": (2, 2)})
    with pytest.raises(CheckpointError, match="a LoRA"):
        load_model(path)


def test_index_naming_a_missing_shard(tmp_path, no_data_reads):
    files = save_checkpoint(tmp_path / "gen.safetensors", random_model(tiny()), max_shard_bytes=60_000)
    files[1].unlink()
    with pytest.raises(CheckpointError) as error:
        load_model(files[-1])
    message = str(error.value)
    assert str(files[-1]) in message and f"names shard '{files[1].name}', which does not exist" in message


def test_index_and_shards_that_do_not_match(tmp_path, no_data_reads):
    files = save_checkpoint(tmp_path / "gen.safetensors", random_model(tiny()), max_shard_bytes=60_000)
    index = json.loads(files[-1].read_text())
    key, shard = next(iter(index["weight_map"].items()))
    other = next(name for name in index["weight_map"].values() if name != shard)
    index["weight_map"][key] = other
    files[-1].write_text(json.dumps(index))
    needle = f"puts tensor '{key}' in shard '{other}', but that shard does not hold it"
    with pytest.raises(CheckpointError, match=needle):
        open_checkpoint(files[-1])
    files[-1].write_text("{")
    with pytest.raises(CheckpointError, match="the index is not valid JSON"):
        open_checkpoint(files[-1])
    index["weight_map"] = {key: "../elsewhere.safetensors"}
    files[-1].write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the index's folder"):
        open_checkpoint(files[-1])


def test_duplicate_keys_and_ambiguous_folders(tmp_path, no_data_reads):
    save_file({"a": torch.ones(1)}, str(tmp_path / "one.safetensors"))
    save_file({"a": torch.ones(1)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(CheckpointError, match="'a' is stored twice, in one.safetensors and two.safetensors"):
        open_checkpoint(tmp_path)
    for name in ("x.safetensors.index.json", "y.safetensors.index.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(CheckpointError, match="several index files"):
        open_checkpoint(tmp_path)


def test_pickles_are_refused_without_unpickling(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never be called"))
    monkeypatch.setattr("pickle.load", lambda *a, **k: pytest.fail("pickle.load must never be called"))
    state = {"model.patchify_proj.weight": torch.ones(2)}
    for name in ("model.pt", "model.ckpt", "pytorch_model.bin"):
        torch.save(state, tmp_path / name)
        with pytest.raises(CheckpointError) as error:
            load_model(tmp_path / name)
        assert str(tmp_path / name) in str(error.value) and "pickle" in str(error.value)
    disguised = tmp_path / "disguised.safetensors"
    torch.save(state, disguised)
    with pytest.raises(CheckpointError, match=r"disguised.safetensors: this is a pickle/zip file \(torch.save\)"):
        open_checkpoint(disguised)
    folder = tmp_path / "only_pickles"
    folder.mkdir()
    torch.save(state, folder / "model.pt")
    with pytest.raises(CheckpointError, match="only pickle-based files"):
        open_checkpoint(folder)


def test_missing_paths(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        open_checkpoint(tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match="holds no .safetensors files"):
        open_checkpoint(tmp_path)


def test_listing_shows_files_and_indexes_not_shards(tmp_path):
    from omniforcing_core.checkpoint import list_checkpoints, save_checkpoint

    model = torch.nn.Linear(4, 4)
    save_checkpoint(tmp_path / "single.safetensors", {"w": model.weight.detach()}, prefix="")
    save_checkpoint(tmp_path / "sharded" / "gen.safetensors", {"a": torch.zeros(64), "b": torch.zeros(64)},
                    prefix="", max_shard_bytes=300)
    (tmp_path / "old.ckpt").write_bytes(b"pickle")
    listed = list_checkpoints(tmp_path)
    assert listed == ["sharded/gen.safetensors.index.json", "single.safetensors"]
    assert list_checkpoints(tmp_path / "missing") == []


def test_listing_survives_symlink_loops_and_lists_each_file_once(tmp_path):
    from omniforcing_core.checkpoint import list_checkpoints

    save_file({"w": torch.zeros(2)}, str(tmp_path / "top.safetensors"))
    (tmp_path / "ltx").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "ltx" / "gen.safetensors"))
    (tmp_path / "ltx" / "back").symlink_to(tmp_path, target_is_directory=True)  # loop one
    (tmp_path / "ltx" / "here").symlink_to(tmp_path / "ltx", target_is_directory=True)  # loop two
    assert list_checkpoints(tmp_path) == ["ltx/gen.safetensors", "top.safetensors"]


def test_index_whose_shards_are_links_into_a_blob_folder_loads(tmp_path):
    """The Hugging Face cache layout: snapshots/<revision>/ holds links into blobs/."""
    model = random_model(tiny())
    export = tmp_path / "export"
    files = save_checkpoint(export / "gen.safetensors", model, max_shard_bytes=60_000)
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "0123abcd"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for number, file in enumerate(files):
        blob = blobs / f"{number:040x}"
        file.rename(blob)
        (snapshot / file.name).symlink_to(Path("../..") / "blobs" / blob.name)
    loaded = load_model(snapshot, dtype="fp32")
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("name", ["../gen-00001.safetensors", "/tmp/gen-00001.safetensors",
                                  "sub/../../gen-00001.safetensors", "C:\\models\\gen-00001.safetensors"])
def test_index_naming_a_shard_outside_its_folder_is_refused(tmp_path, no_data_reads, name):
    index = tmp_path / "gen.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a.weight": name}}))
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(index)
    assert str(index) in str(error.value) and f"shard '{name}' lies outside the index's folder" in str(error.value)
