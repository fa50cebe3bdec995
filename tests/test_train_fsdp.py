"""FSDP2 at world size 2 on CPU (gloo), launched by torchrun exactly as users launch it:
sharded steps equal unsharded ones, and a sharded run resumes bit-identically."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from omniforcing_core.train.__main__ import main

SMOKE = ["smoke", "--out"]


def _torchrun(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "omniforcing_core.train", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def _max_difference(a_path, b_path, same_keys=True) -> float:
    a, b = load_file(a_path), load_file(b_path)
    assert a.keys() == b.keys() or not same_keys
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a.keys() & b.keys())


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Teacher, Stage I and ODE pairs from one unsharded smoke run (the inputs of II and III)."""
    out = tmp_path_factory.mktemp("upstream")
    for stage in ("teacher", "stage1", "ode-pairs"):
        assert main([stage, "--config", _smoke_config(), "--out", str(out)]) == 0
    return out


def _smoke_config() -> str:
    from omniforcing_core.train.__main__ import CONFIGS

    return str(CONFIGS / "smoke.toml")


def _copy_inputs(upstream, folder, *stages):
    for stage in stages:
        shutil.copytree(upstream / stage, folder / stage)
        checkpoints = folder / stage / "checkpoints"
        if checkpoints.exists():
            shutil.rmtree(checkpoints)


@pytest.mark.parametrize("stage,inputs,output", [
    ("stage2", ("teacher", "stage1", "ode_pairs"), "stage2/student.safetensors"),
    ("stage3", ("teacher", "stage2"), "stage3/student.safetensors"),
])
def test_one_sharded_step_equals_the_unsharded_step(upstream, tmp_path, stage, inputs, output):
    if stage == "stage3" and not (upstream / "stage2").exists():
        assert main(["stage2", "--config", _smoke_config(), "--out", str(upstream)]) == 0
    overrides = ["--set", f"{stage}.steps=1", "--set", "stage3.ema_decay=0.0"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    for folder in (single, sharded):
        _copy_inputs(upstream, folder, *inputs)
    assert main([stage, "--config", _smoke_config(), "--out", str(single), *overrides]) == 0
    _torchrun(stage, "--config", _smoke_config(), "--out", str(sharded), *overrides)
    assert _max_difference(single / output, sharded / output) <= 1e-5
    # The step did move the weights (so equality above is not that of two untouched copies).
    before = upstream / ("stage1/generator.safetensors" if stage == "stage2" else "stage2/student.safetensors")
    assert _max_difference(single / output, before, same_keys=False) > 1e-4


def test_a_sharded_run_resumes_bit_identically(upstream, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    inputs = ("teacher", "stage1", "ode_pairs")
    for folder in (straight, resumed):
        _copy_inputs(upstream, folder, *inputs)
    common = ["--config", _smoke_config(), "--set", "run.checkpoint_every=2"]
    _torchrun("stage2", "--out", str(straight), *common, "--set", "stage2.steps=4")
    _torchrun("stage2", "--out", str(resumed), *common, "--set", "stage2.steps=2")
    (resumed / "stage2" / "student.safetensors").unlink()
    _torchrun("stage2", "--out", str(resumed), *common, "--set", "stage2.steps=4")
    assert _max_difference(straight / "stage2/student.safetensors", resumed / "stage2/student.safetensors") == 0.0


def test_torchrun_smoke_leaves_a_loadable_student(tmp_path):
    from omniforcing_core.checkpoint import load_model

    _torchrun(*SMOKE, str(tmp_path))
    loaded = load_model(tmp_path / "student.safetensors", dtype=torch.float32)
    assert loaded.layout.name == "paper" and loaded.model.config.audio_sink_tokens == 4
