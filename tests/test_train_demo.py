"""The demo model's recipe at smoke size: every step, both layouts, published into a pack
folder that the inference loaders read, and resumed on a new machine from what was published."""

import json

import pytest
import torch
from safetensors import safe_open

from omniforcing_core.checkpoint import load_prompt_encoder
from omniforcing_core.demo_model import DEMO_BASE, DEMO_GENERATOR, DEMO_RELEASED_GENERATOR
from omniforcing_core.pipeline import StreamPipeline
from omniforcing_core.train.__main__ import CONFIGS
from omniforcing_core.train.config import load_config
from omniforcing_core.train.demo import PUBLISHED, run_demo
from omniforcing_core.train.distributed import World

SMOKE_SIZE = [
    "codecs.video_steps=2", "codecs.audio_steps=2", "codecs.vocoder_steps=2", "codecs.stats_clips=2",
    "codecs.eval_clips=0", "codecs.video_decoder_steps=1", "codecs.audio_decoder_steps=1", "world.count=4", "world.shard_size=2", "teacher.steps=2", "teacher.batch=2",
    "stage1.steps=1", "stage1.batch=2", "stage1.critic_updates=1", "ode_pairs.count=2", "ode_pairs.shard_size=2",
    "ode_pairs.teacher_steps=4", "stage2.steps=2", "stage2.batch=2", "stage3.steps=1", "stage3.batch=2",
    "stage3.critic_updates=1", "model.num_layers=1",
]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    assets, out = tmp_path_factory.mktemp("assets"), tmp_path_factory.mktemp("run")
    run_demo(load_config(CONFIGS / "demo.toml", SMOKE_SIZE), out, World(), assets=assets)
    return assets, out


def test_the_recipe_publishes_every_stage_and_the_shipped_files(published):
    assets, _ = published
    assert sorted(p.name for p in (assets / "stages").glob("*.safetensors")) == sorted(PUBLISHED)
    for name in (DEMO_GENERATOR, DEMO_RELEASED_GENERATOR, DEMO_BASE):
        # A few MB each; the base is the largest (codecs in fp16, the video decoder 5 M parameters).
        assert (assets / name).stat().st_size < 16 * 2**20
    with safe_open(str(assets / "stages" / "stage2.safetensors"), "pt") as stage2:
        assert {stage2.get_tensor(key).dtype for key in stage2.keys()} == {torch.bfloat16}
    lines = (assets / "stages" / "teacher.metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


def test_the_published_demo_streams_through_the_users_loaders(published):
    assets, _ = published
    paper = StreamPipeline.demo(folder=assets)
    released = StreamPipeline.demo(folder=assets, generator=DEMO_RELEASED_GENERATOR)
    assert (paper.layout.name, paper.transformer.config.audio_sink_tokens) == ("paper", 16)
    assert (released.layout.name, released.transformer.config.audio_sink_tokens) == ("released", 0)
    encoder = load_prompt_encoder(assets / DEMO_BASE)
    with torch.no_grad():
        blocks = list(paper.sampler().stream(encoder("a red ball bounces"), 2, 128, 192, decoder=paper.decoder()))
    assert [b.decoded.frames.shape[0] for b in blocks] == [1, 24, 24]
    assert blocks[-1].decoded.waveform.shape[0] == 2


def test_a_new_machine_continues_from_the_published_stages(published, tmp_path, capsys):
    assets, _ = published
    before = {p.name: p.stat().st_mtime_ns for p in (assets / "stages").glob("*.safetensors")}
    capsys.readouterr()
    run_demo(load_config(CONFIGS / "demo.toml", SMOKE_SIZE), tmp_path / "fresh", World(), assets=assets)
    log = capsys.readouterr().err
    # Nothing is trained again: every stage output came from the pack.
    assert "exists: skipped" in log and "step 1/" not in log
    assert {p.name: p.stat().st_mtime_ns for p in (assets / "stages").glob("*.safetensors")} == before
