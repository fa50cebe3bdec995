"""The GPU check's dry run on the CPU: the mid preset, every lever measured on and off, as on a GPU."""

import json

from benchmarks import gpu_check


def test_the_gpu_check_dry_run_measures_every_lever(capsys):
    assert gpu_check.main(["--preset", "mid", "--blocks", "2", "--height", "64", "--width", "96", "--device", "cpu",
                           "--dtype", "float32", "--codec-steps", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    configs = {line["config"]: line for line in lines if "config" in line}
    assert list(configs) == ["baseline", "realtime_3step", "fp8_weights", "fp8_gemm", "capture"]
    capture = configs["capture"]["compile"]
    assert capture["mode"] == "eager" and capture["graphs_in_warmup"] >= 1 and capture["recompiles_in_timed_stream"] == 0
    assert configs["baseline"]["compile"]["mode"] == "off"
    assert configs["realtime_3step"]["passes_per_block"] == 4 and configs["baseline"]["passes_per_block"] == 5
    assert [configs[name]["fp8"] for name in configs] == ["off", "off", "weights", "gemm", "off"]
    assert all(len(c["block_s"]["denoise"]) == 2 and "roofline" in c for c in configs.values())
    levers = {line["lever"]: line for line in lines if "lever" in line}
    assert set(levers) == set(gpu_check.LEVERS)
    assert levers["two_streams"] == {"lever": "two_streams", "available": False, "why": "CUDA streams need a GPU"}
    assert all(isinstance(levers[name]["fps_ratio"], float) for name in gpu_check.LEVERS if name != "two_streams")
    codec = lines[-2]
    assert codec["check"] == "video_vae_training" and codec["device"] == "cpu"
    assert codec["steps_per_s"] > 0 and codec["cpu_steps_per_s"] > 0 and codec["ratio"] > 0
    assert lines[-1]["check"] == "done"


def test_levers_past_the_budget_are_reported_not_run(capsys):
    assert gpu_check.main(["--preset", "tiny", "--blocks", "2", "--device", "cpu", "--dtype", "float32",
                           "--budget-s", "0", "--codec-steps", "0"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["config"] for line in lines if "config" in line] == ["baseline"]
    skipped = [line["lever"] for line in lines if line.get("why", "").startswith("not run: past the 0.0 s budget")]
    assert skipped == list(gpu_check.LEVERS)
