"""The benchmark runs and reports every field with sane values (no timing assertions)."""

import json

from benchmarks.stream import main


def test_tiny_benchmark_reports_every_field(capsys):
    main(["--preset", "tiny", "--blocks", "4", "--warmup", "1", "--recompute-at", "3", "--window", "1",
          "--device", "cpu", "--threads", "1", "--overlap-blocks", "2", "--repeats", "2"])
    result = json.loads(capsys.readouterr().out)
    for field in ("ttfc_s", "block_s", "fps_inline", "realtime_factor", "cache_bytes", "peak_mem_bytes",
                  "recompute_ratio", "host_syncs", "warmup_s", "decode_fraction"):
        assert field in result, field
    assert len(result["block_s"]["denoise"]) == len(result["block_s"]["decode"]) == 4
    assert len(result["cache_bytes"]) == 4 and len(set(result["cache_bytes"])) == 1  # allocated once
    # One per block (its finiteness, read where it is handed over), two for the prompt's contexts.
    assert result["host_syncs"] == 4 + 2
    assert result["peak_mem_bytes"]["host_after_warmup"] > result["cache_bytes"][0]
    # Like with like: the no-cache baseline re-runs the blocks the cached block sees (0, 2 and 3).
    assert result["recompute"]["block"] == 3 and result["recompute"]["visible_blocks"] == 3
    assert result["recompute"]["repeats"] == 2 and result["warmup_blocks"] == 1
    assert result["passes_per_block"] == 5
    roofline = result["roofline"]
    assert roofline["measured_block"] == 2 and roofline["gemm_peak_gflops"] > 0
    assert roofline["denoise_flops"] > 0 and roofline["decode_flops"] > 0 and roofline["denoise_aten_calls"] > 100
    assert 0 < roofline["denoise_peak_fraction"] and 0 < roofline["decode_peak_fraction"]
    lever = result["levers"]["decode_overlap"]
    assert set(lever) == {"inline_fps", "overlapped_fps", "ratio"}


def test_sync_counter_sees_host_reads():
    import torch

    from benchmarks.stream import SyncCounter

    counter = SyncCounter()
    with counter.counting():
        torch.ones(3).sum().item()
        float(torch.ones(()))
    assert counter.count == 2


def test_paper_layout_counts_its_prefix_block(capsys):
    main(["--preset", "tiny", "--blocks", "3", "--layout", "paper", "--warmup", "1", "--device", "cpu", "--threads", "1"])
    result = json.loads(capsys.readouterr().out)
    assert result["blocks"] == 3 and len(result["block_s"]["denoise"]) == 3  # prefix + 2 seconds
    assert result["host_syncs"] == 3 + 2


def test_the_cpu_flash_attention_kernel_is_counted_like_the_cuda_ones():
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import sdpa_flop_count

    from benchmarks.roofline import Counted

    q = torch.randn(1, 4, 64, 32)
    mask = torch.ones(64, 64, dtype=torch.bool)
    with Counted() as counted:
        F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    assert counted.flops == sdpa_flop_count(q.shape, q.shape, q.shape) == 4 * 4 * 64 * 64 * 32
    assert counted.calls >= 1
