"""The stages' losses on the real model, the command end to end, and resume."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from helpers import random_model, random_text
from omniforcing_core import BlockLayout, ModelConfig, StreamingSampler, StreamSettings, block_causal_masks
from omniforcing_core.checkpoint import load_model
from omniforcing_core.train.__main__ import CONFIGS, main
from omniforcing_core.train.config import TrainConfigError, load_config
from omniforcing_core.train.data import write_shard
from omniforcing_core.train.distributed import World
from omniforcing_core.train.runner import run_stage, with_stage_steps
from omniforcing_core.train.stages import (
    DMDSettings,
    Draws,
    Guidance,
    StreamWeights,
    dmd_generator_loss,
    stage2_loss,
    teacher_grid,
    teacher_sample,
)
from omniforcing_core.world.prompts import WorldPromptConfig, WorldPromptEncoder

GRID = (2, 2)
SIGMAS = StreamSettings().sigmas


def _trajectories(teacher, layout, seconds, cfg=1.0, batch=2):
    """Teacher trajectories on a grid equal to the student's sigmas: the last kept state
    is one teacher step from the clean end."""
    frames, audio_frames = layout.latent_lengths(seconds)
    draws = Draws(0, 0, range(batch), "cpu")
    noise_video = draws.normal((128, frames, *GRID), "noise")
    noise_audio = draws.normal((audio_frames, 128), "noise", 1)
    text = random_text(teacher.config, batch=batch)
    null = random_text(teacher.config, seed=9, batch=batch)
    keep = [s for s in SIGMAS if s > 0]
    (video, audio), kept = teacher_sample(teacher, noise_video, noise_audio, text, null, Guidance(cfg, cfg), list(SIGMAS), keep)
    trajectory_video = torch.stack([v for v, _ in kept], dim=1)
    trajectory_audio = torch.stack([a for _, a in kept], dim=1)
    return trajectory_video, trajectory_audio, video, audio, torch.tensor(keep), text, draws


@pytest.mark.parametrize("layout_name", ["released", "paper"])
def test_stage2_loss_is_zero_for_the_teacher_with_full_visibility_and_positive_under_the_causal_mask(layout_name):
    layout = BlockLayout.named(layout_name)
    teacher = random_model(ModelConfig.tiny())
    tv, ta, video, audio, sigmas, text, draws = _trajectories(teacher, layout, 2)
    last = torch.full((2, layout.num_blocks(2)), len(sigmas) - 1)
    weights = StreamWeights(1.0, 1.0)
    with torch.no_grad():
        visible = stage2_loss(teacher, layout, tv, ta, video, audio, sigmas, text, draws, weights, 0,
                              masks=_full_visibility(layout), block_indices=last)
        causal = stage2_loss(teacher, layout, tv, ta, video, audio, sigmas, text, draws, weights, 0, block_indices=last)
    assert visible[0].item() <= 1e-12
    # The causal floor: a bidirectional teacher's block 0 saw later blocks' noise.
    assert causal[0].item() > 1e-6 > visible[0].item() * 1e6


def _full_visibility(layout):
    return block_causal_masks(layout, layout.num_blocks(2), GRID[0] * GRID[1], visible_blocks=lambda k: range(layout.num_blocks(2)))


def test_stage2_gives_every_parameter_a_gradient_with_sinks():
    layout = BlockLayout.paper()
    teacher = random_model(ModelConfig.tiny())
    tv, ta, video, audio, sigmas, text, draws = _trajectories(teacher, layout, 2)
    student = random_model(ModelConfig.tiny(audio_sink_tokens=4), seed=3).train()
    loss, metrics = stage2_loss(student, layout, tv, ta, video, audio, sigmas, text, draws, StreamWeights(1.0, 0.5), 4)
    loss.backward()
    without = [name for name, p in student.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert without == []
    assert loss.item() == pytest.approx(metrics["video"] + 0.5 * metrics["audio"], rel=1e-6)


def test_stage2_puts_each_block_of_both_streams_at_its_own_trajectory_point():
    layout = BlockLayout.released()
    teacher = random_model(ModelConfig.tiny())
    tv, ta, video, audio, sigmas, text, draws = _trajectories(teacher, layout, 3, batch=1)
    seen = {}

    class Recorder(torch.nn.Module):
        config = teacher.config

        def forward(self, v, a, video_sigma, audio_sigma, *rest):
            seen.update(v=v, a=a, video_sigma=video_sigma, audio_sigma=audio_sigma)
            return torch.zeros_like(v), torch.zeros_like(a)

    indices = torch.tensor([[0, 3, 1]])
    stage2_loss(Recorder(), layout, tv, ta, video, audio, sigmas, text, draws, StreamWeights(1, 1), 0, block_indices=indices)
    for k, span in enumerate(layout.iter_blocks(3)):
        point = indices[0, k]
        assert torch.equal(seen["v"][:, :, span.video_start:span.video_end], tv[:, point, :, span.video_start:span.video_end])
        assert torch.equal(seen["a"][:, span.audio_start:span.audio_end], ta[:, point, span.audio_start:span.audio_end])
        assert seen["audio_sigma"][0, span.audio_start:span.audio_end].eq(sigmas[point]).all()
        assert seen["video_sigma"][0, span.video_start:span.video_end].eq(sigmas[point]).all()


def test_dmd_gives_no_generator_gradient_when_critic_equals_teacher_without_guidance():
    teacher = random_model(ModelConfig.tiny())
    generator = random_model(ModelConfig.tiny(), seed=5).train()
    layout = BlockLayout.released()
    frames, audio_frames = layout.latent_lengths(2)
    draws = Draws(0, 0, range(2), "cpu")
    noise_video, noise_audio = draws.normal((128, frames, *GRID), "noise"), draws.normal((audio_frames, 128), "noise", 1)
    text = random_text(teacher.config, batch=2)
    sigma = torch.full((2, 1), 0.7)
    v_video, v_audio = generator(noise_video, noise_audio, sigma, sigma, text)
    video, audio = noise_video - 0.7 * v_video, noise_audio - 0.7 * v_audio
    settings = DMDSettings(Guidance(1.0, 1.0), StreamWeights(1.0, 1.0))
    loss, _ = dmd_generator_loss(teacher, teacher, video, audio, text, text, draws, settings)
    loss.backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in generator.parameters()
               if p.grad is not None)
    assert any(p.grad is not None for p in generator.parameters())
    # A different critic does move the generator.
    generator.zero_grad()
    v_video, v_audio = generator(noise_video, noise_audio, sigma, sigma, text)
    video, audio = noise_video - 0.7 * v_video, noise_audio - 0.7 * v_audio
    loss, _ = dmd_generator_loss(teacher, random_model(ModelConfig.tiny(), seed=8), video, audio, text, text, draws, settings)
    loss.backward()
    assert sum(p.grad.abs().sum() for p in generator.parameters() if p.grad is not None) > 0


def test_teacher_sample_refuses_sigmas_off_its_grid_and_the_grid_keeps_the_students():
    grid = teacher_grid(8, SIGMAS)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and all(any(abs(g - s) < 1e-9 for g in grid) for s in SIGMAS)
    assert grid == sorted(grid, reverse=True) and len(grid) == len(set(grid))
    teacher = random_model(ModelConfig.tiny())
    text = random_text(teacher.config)
    with pytest.raises(ValueError, match="not on the teacher's grid"):
        teacher_sample(teacher, torch.zeros(1, 128, 4, *GRID), torch.zeros(1, 26, 128), text, text,
                       Guidance(1, 1), [1.0, 0.5, 0.0], [0.7])


def test_config_errors_name_the_section_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[teacher]\nstepz = 3\n")
    with pytest.raises(TrainConfigError, match=r"\[teacher\] has unknown keys \['stepz'\]"):
        load_config(bad)
    bad.write_text("[teachr]\nsteps = 3\n")
    with pytest.raises(TrainConfigError, match="unknown sections"):
        load_config(bad)
    bad.write_text("[run]\ndtype = 'float8'\n")
    with pytest.raises(TrainConfigError, match="dtype must be one of"):
        load_config(bad).run.compute_dtype
    assert main(["teacher", "--config", str(bad.with_name("missing.toml")), "--out", str(tmp_path / "o")]) == 2
    good = load_config(CONFIGS / "smoke.toml", ["stage2.steps=7", "run.dtype=bfloat16", "stage3.betas=[0.5, 0.9]"])
    assert good.stage("stage2").steps == 7 and good.run.compute_dtype == torch.bfloat16
    assert good.stage("stage3").betas == (0.5, 0.9)
    with pytest.raises(TrainConfigError, match="section.key=value"):
        load_config(CONFIGS / "smoke.toml", ["steps=7"])
    with pytest.raises(TrainConfigError, match=r"^\[stage2\] steps must be an integer >= 0, got -1$"):
        load_config(CONFIGS / "smoke.toml", ["stage2.steps=-1"])
    with pytest.raises(TrainConfigError, match=r"^\[stage1\] batch must be an integer >= 1, got 0$"):
        load_config(CONFIGS / "smoke.toml", ["stage1.batch=0"])


def test_missing_or_misfitting_latents_are_refused_before_a_model_is_built(tmp_path, monkeypatch, capsys):
    import omniforcing_core.train.runner as runner

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the data was checked")

    monkeypatch.setattr(runner, "AVTransformer", no_model)
    out = tmp_path / "run"
    shards = ["--set", 'data.kind="shards"', "--set", 'data.path="latents"']
    assert main(["teacher", "--config", str(CONFIGS / "smoke.toml"), "--out", str(out), *shards]) == 2
    err = capsys.readouterr().err
    assert f"error: [data] path = 'latents' ({out / 'latents'}): no shards (*.safetensors) in {out / 'latents'}" in err
    assert "a relative path is inside --out, where encode-world writes latents/" in err
    # Latents of another codec: 8 channels where the tiny preset takes 128.
    (out / "latents").mkdir()
    write_shard(out / "latents" / "shard-00000.safetensors", {
        "video": torch.zeros(2, 8, 3, 2, 2), "audio": torch.zeros(2, 17, 128), "prompt": torch.zeros(2, 12, dtype=torch.long)})
    assert main(["teacher", "--config", str(CONFIGS / "smoke.toml"), "--out", str(out), *shards]) == 2
    assert ("the shards hold video latents of 8 channels on a 2x2 grid and audio tokens 128 wide; the model takes "
            "128 channels on 2x2 ([data] height/width 64x64) and tokens 128 wide") in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["latents"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert main(["smoke", "--out", str(out)]) == 0
    return out


def test_smoke_leaves_a_student_that_load_model_loads_and_the_sampler_streams(smoke_run):
    loaded = load_model(smoke_run / "student.safetensors", dtype=torch.float32)
    config = load_config(CONFIGS / "smoke.toml")
    assert loaded.layout.name == "paper" and loaded.model.config.audio_sink_tokens == 4
    with safe_open(str(smoke_run / "prompt_encoder.safetensors"), "pt") as stored:
        section = json.loads(stored.metadata()["config"])["prompt_encoder"]
    encoder = WorldPromptEncoder(WorldPromptConfig.from_metadata(section))
    assert encoder.config.max_tokens == config.text.max_tokens
    encoder.load_state_dict(load_file(smoke_run / "prompt_encoder.safetensors"))
    with torch.no_grad():
        text = encoder("a red ball bounces")
        blocks = list(StreamingSampler(loaded.model, loaded.layout).stream(text, 2, 64, 64))
    assert [tuple(b.video.shape[2:]) for b in blocks] == [(1, 2, 2), (3, 2, 2), (3, 2, 2)]
    assert all(torch.isfinite(b.video).all() for b in blocks)
    # Every stage logged its steps, and the export records how it was made.
    for stage, steps in (("teacher", 30), ("stage2", 10), ("stage3", 3)):
        lines = (smoke_run / stage / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(1, steps + 1))
    with safe_open(str(smoke_run / "student.safetensors"), "pt") as exported:
        provenance = json.loads(exported.metadata()["omniforcing_training"])
    assert (provenance["model"]["preset"], provenance["model"]["audio_sink_tokens"], provenance["model"]["layout"]) == ("tiny", 4, "paper")
    assert provenance["stages"]["stage2"]["steps"] == 10


def test_a_rerun_skips_finished_stages_and_says_which_settings_it_made_them_with(smoke_run, capsys):
    before = (smoke_run / "stage2" / "student.safetensors").stat().st_mtime_ns
    assert main(["stage2", "--config", str(CONFIGS / "smoke.toml"), "--out", str(smoke_run)]) == 0
    assert capsys.readouterr().err.strip() == "[stage2] stage2/student.safetensors exists: skipped"
    # A changed setting does not retrain a finished stage silently.
    for stage, change, then, now in (("stage2", "stage2.lr=1e-3", "lr=0.0005", "lr=0.001"),
                                     ("ode-pairs", "ode_pairs.teacher_steps=9", "teacher_steps=8", "teacher_steps=9")):
        assert main([stage, "--config", str(CONFIGS / "smoke.toml"), "--out", str(smoke_run), "--set", change]) == 0
        assert (f"exists: skipped (made with {then}; this config says {now}: move it aside to run "
                f"{stage.replace('-', '_')} again)") in capsys.readouterr().err
    assert (smoke_run / "stage2" / "student.safetensors").stat().st_mtime_ns == before


def test_a_stopped_stage_resumes_bit_identically(smoke_run, tmp_path):
    config = with_stage_steps(load_config(CONFIGS / "smoke.toml"), stage2=6)
    config = replace(config, run=replace(config.run, checkpoint_every=3))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for folder in (straight, resumed):
        for needed in ("teacher", "ode_pairs", "stage1"):
            (folder / needed).mkdir(parents=True)
            for file in (smoke_run / needed).glob("*.safetensors"):
                (folder / needed / file.name).write_bytes(file.read_bytes())
    run_stage(config, straight, World(), "stage2")
    # Stopped after the checkpoint at step 3: the output never appeared.
    run_stage(with_stage_steps(config, stage2=3), resumed, World(), "stage2")
    (resumed / "stage2" / "student.safetensors").unlink()
    run_stage(config, resumed, World(), "stage2")
    a = load_file(straight / "stage2" / "student.safetensors")
    b = load_file(resumed / "stage2" / "student.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (resumed / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_draws_of_one_sample_never_repeat_across_steps_and_ranks_agree():
    shape = (3,)
    seen = [Draws(0, step, [5], "cpu").normal(shape, "noise", draw) for step in range(3) for draw in (0, 64, 100)]
    assert len({tuple(x.flatten().tolist()) for x in seen}) == len(seen)
    # The sample's numbers do not depend on which rank draws it, nor on the batch it is in.
    alone = Draws(0, 7, [5], "cpu").normal(shape, "noise")
    in_batch = Draws(0, 7, [4, 5], "cpu").normal(shape, "noise")
    assert torch.equal(alone[0], in_batch[1])
