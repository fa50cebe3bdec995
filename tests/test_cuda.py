"""CUDA-only checks (``pytest -m cuda``; benchmarks/gpu_check runs them on a lent GPU)."""

import json

import numpy as np
import pytest
import torch

from benchmarks.stream import random_pipeline
from helpers import SMALL_CODECS, random_text
from omniforcing_core import BlockLayout
from omniforcing_core.train import codecs as C
from omniforcing_core.train.__main__ import main as train_main
from omniforcing_core.train.data import LatentShards
from omniforcing_core.stream_run import DecodeOptions, StreamRequest, StreamRun
from omniforcing_core.transformer import use_two_streams

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _stream(fp8="off", overlap=False, seconds=3, two_streams=False):
    pipeline = random_pipeline("tiny", BlockLayout.released(), torch.device("cuda"), torch.bfloat16, 0, fp8=fp8)
    use_two_streams(pipeline.transformer, two_streams)
    text = random_text(pipeline.transformer.config).to("cuda")
    text = type(text)(text.video.bfloat16(), text.audio.bfloat16())
    run = StreamRun(pipeline, StreamRequest(text, seconds, 64, 96, 1, decode=DecodeOptions(overlap=overlap)))
    run.run()
    return run


def test_the_overlapped_decode_on_its_side_stream_equals_the_inline_one():
    inline, overlapped = _stream(overlap=False), _stream(overlap=True)
    assert torch.equal(inline.outputs.images(), overlapped.outputs.images())


def test_fp8_gemms_run_on_this_gpu_and_stay_close_to_the_upcast_weights():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("no fp8 GEMM on this GPU")
    upcast, gemm = _stream("weights"), _stream("gemm")
    a, b = upcast.outputs.latents()[0].float(), gemm.outputs.latents()[0].float()
    assert torch.isfinite(b).all() and (a - b).norm() / a.norm() < 0.2


def test_the_audio_side_on_its_own_cuda_stream_gives_the_same_stream():
    one, two = _stream(), _stream(two_streams=True)
    assert torch.equal(one.outputs.latents()[0], two.outputs.latents()[0])
    assert torch.equal(one.outputs.latents()[1], two.outputs.latents()[1])


def test_the_block_loop_waits_for_the_gpu_once_per_block_where_the_block_is_handed_over():
    import warnings

    pipeline = random_pipeline("tiny", BlockLayout.released(), torch.device("cuda"), torch.bfloat16, 0)
    text = random_text(pipeline.transformer.config).to("cuda")
    text = type(text)(text.video.bfloat16(), text.audio.bfloat16())
    blocks = pipeline.sampler().stream(text, 4, 64, 96, seed=1)
    next(blocks)  # start-up (the prompt's checks) done
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            rest = list(blocks)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(rest) == 3 and len(syncs) == 3, [str(w.message) for w in syncs]  # the finiteness reads only


@pytest.mark.parametrize("part", C.PARTS)
def test_each_codec_trains_on_the_gpu_as_on_the_cpu(tmp_path, part):
    s = C.CodecsSection(**{**SMALL_CODECS, f"{part}_steps": 3})
    losses = {}
    for device in ("cpu", "cuda"):
        codecs = C.new_codecs(s).to(device)
        losses[device] = C.train_part(codecs, s, part, tmp_path / device, log=False)
        assert C.device_of(codecs).type == device
    # Same weights, batches and latent noise: only the kernels' rounding (TF32 convs) differs.
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=0.02)


def test_the_codec_commands_run_on_the_gpu_and_write_cpu_files(tmp_path):
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {**SMALL_CODECS, "video_steps": 2, "audio_steps": 2,
                                                             "vocoder_steps": 2}.items())
    config = tmp_path / "codecs.toml"
    config.write_text(f"[codecs]\n{body}\n\n[world]\ncount = 2\nseconds = 1.0\nseed = 7\nshard_size = 2\n")
    out = tmp_path / "run"
    for command in ("codecs", "encode-world"):
        assert train_main([command, "--config", str(config), "--out", str(out), "--device", "cuda"]) == 0
    assert json.loads((out / "codecs" / "eval.json").read_text())["device"] == "cuda"
    # The shards, encoded on the GPU, hold what the file's encoder gives on the CPU.
    codecs = C.load_codecs(out / C.BASE_FILE)
    clip = C.render_clip(C.Scene.sample(7 + 1, 1.0, (64, 64)))
    video, audio = C.encode_clip(codecs, clip)
    sample = LatentShards(out / "latents").sample(1)
    assert sample["video"].device.type == "cpu"
    # TF32 convolutions on the GPU put them a few thousandths apart; another clip's latents are O(1) off.
    assert (sample["video"] - video[0]).abs().max() < 0.05 and (sample["audio"] - audio[0]).abs().max() < 0.05
