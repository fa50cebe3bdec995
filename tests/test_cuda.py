"""CUDA-only checks (``pytest -m cuda``; benchmarks/gpu_check runs them on a lent GPU)."""

import pytest
import torch

from benchmarks.stream import random_pipeline
from helpers import random_text
from omniforcing_core import BlockLayout
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
