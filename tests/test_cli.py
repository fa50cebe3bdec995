import shlex
from pathlib import Path

import pytest
import torch

from omniforcing_core import pipeline as pipeline_module
from omniforcing_core.__main__ import _build, main, parse_args
from omniforcing_core.checkpoint import load_decoders, load_model, load_prompt_encoder
from omniforcing_core.conditioning import (
    ConditioningError,
    TextConditioning,
    load_text_conditioning,
    save_text_conditioning,
)
from omniforcing_core.demo_model import DEMO_BASE, DEMO_PROMPT
from omniforcing_core.media import Mp4StreamWriter
from omniforcing_core.world.grammar import VOCABULARY

av = pytest.importorskip("av")


def probe(path):
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        size = (container.streams.video[0].codec_context.width, container.streams.video[0].codec_context.height)
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio=0))
        return frames, samples, audio.rate, audio.channels, size


def test_tiny_preset_streams_to_an_mp4_with_sound(tmp_path, capsys):
    out = tmp_path / "tiny.mp4"
    main(["stream", "--random-weights", "--seconds", "2", "--height", "64", "--width", "96", "--device", "cpu",
          "--out", str(out)])
    printed = capsys.readouterr()
    assert "block 1/2" in printed.out and "block 2/2" in printed.out
    assert "RANDOM weights" in printed.err
    frames, samples, rate, channels, _ = probe(out)
    assert frames == 49 and rate == 24000 and channels == 2
    assert abs(samples - 48240) <= 2048  # AAC pads with whole 1024-sample frames
    assert not list(tmp_path.glob("*.partial.mp4"))


def test_real_layout_files_stream_with_a_saved_prompt(tmp_path, capsys):
    main(["write-tiny-checkpoints", str(tmp_path / "models"), "--sink-tokens", "2"])
    generator = tmp_path / "models" / "omniforcing_tiny_random.safetensors"
    base = tmp_path / "models" / "ltx2_tiny_random_base.safetensors"
    loaded = load_model(generator, base, dtype="fp32")
    assert (loaded.sink_tokens, loaded.layout.name) == (2, "paper")
    assert load_decoders(base).vocoder.sample_rate == 24000
    prompt = tmp_path / "prompt.safetensors"
    save_text_conditioning(prompt, TextConditioning(torch.randn(1, 12, 32), torch.randn(1, 12, 32)))
    out = tmp_path / "clip.mp4"
    main(["stream", "--generator", str(generator), "--base", str(base), "--context", str(prompt), "--seconds", "1",
          "--height", "64", "--width", "96", "--dtype", "fp32", "--device", "cpu", "--out", str(out)])
    assert "block 2/2" in capsys.readouterr().out  # paper layout: prefix block + one second
    assert probe(out)[0] == 25


def test_existing_output_is_never_overwritten(tmp_path):
    out = tmp_path / "mine.mp4"
    out.write_bytes(b"the user's video")
    main(["stream", "--random-weights", "--seconds", "1", "--height", "64", "--width", "96", "--device", "cpu",
          "--out", str(out)])
    assert out.read_bytes() == b"the user's video"
    assert probe(tmp_path / "mine_2.mp4")[0] == 25
    writer = Mp4StreamWriter(out)
    assert writer.target == tmp_path / "mine_3.mp4"
    writer.abort()


def test_a_real_model_needs_its_base_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["stream", "--generator", str(tmp_path / "g.safetensors"), "--out", str(tmp_path / "x.mp4")])
    assert exited.value.code == 2 and "error: --base is required" in capsys.readouterr().err


def test_prompt_context_files(tmp_path):
    text = TextConditioning(torch.randn(1, 5, 32), torch.randn(1, 5, 32))
    save_text_conditioning(tmp_path / "p.safetensors", text)
    loaded = load_text_conditioning(tmp_path / "p.safetensors", 32)
    assert torch.equal(loaded.video, text.video) and torch.equal(loaded.audio, text.audio)
    from safetensors.torch import save_file

    save_file({"context": torch.randn(1, 5, 64)}, str(tmp_path / "joint.safetensors"))
    joint = load_text_conditioning(tmp_path / "joint.safetensors", 32)
    assert joint.video.shape == (1, 5, 32)
    save_file({"something": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConditioningError, match="needs 'video' and 'audio'"):
        load_text_conditioning(tmp_path / "other.safetensors", 32)
    with pytest.raises(ConditioningError, match=r"\[batch, tokens, 3840\]"):
        load_text_conditioning(tmp_path / "p.safetensors", 3840)


# The built-in demo (a stand-in of its files: see demo_support) --------------------------------


def test_no_generator_streams_the_built_in_demo(use_stand_in_demo, tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    main(["stream", "--seconds", "2", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr()
    assert "built-in demo model" in printed.err and f"prompt: '{DEMO_PROMPT}'" in printed.err
    assert "RANDOM" not in printed.err
    assert "block 3/3" in printed.out  # the paper layout: a prefix block, then two seconds
    frames, _, rate, channels, size = probe(out)
    assert (frames, rate, channels, size) == (49, 24000, 2, (192, 128))  # the demo's own size, width x height


def test_the_demo_prompt_goes_through_the_demo_prompt_encoder(use_stand_in_demo, tmp_path):
    pipeline, text = _build(parse_args(["stream", "--device", "cpu", "--prompt", "a white box hops"]))
    expected = load_prompt_encoder(use_stand_in_demo / DEMO_BASE)("a white box hops")
    assert torch.equal(text.video, expected.video) and torch.equal(text.audio, expected.audio)
    assert text.mask.sum().item() == 4  # four words, the rest padding
    assert pipeline.transformer.patchify_proj.weight.dtype == torch.float32
    assert (pipeline.layout.name, pipeline.info.sink_tokens) == ("paper", 4)
    fp8, _ = _build(parse_args(["stream", "--device", "cpu", "--fp8"]))
    assert fp8.transformer.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    default = parse_args(["stream"])
    assert (default.prompt, default.height, default.width, default.dtype) == (DEMO_PROMPT, 128, 192, "fp32")
    context = tmp_path / "p.safetensors"
    save_text_conditioning(context, TextConditioning(torch.randn(1, 5, 32), torch.randn(1, 5, 32)))
    real = parse_args(["stream", "--generator", "g.safetensors", "--base", "b.safetensors", "--context", str(context)])
    assert (real.prompt, real.height, real.width, real.dtype) == (None, 512, 768, "bf16")


def _loading_fails(monkeypatch):
    """Any model load ends the test: prompt errors must come before one."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(pipeline_module.StreamPipeline, "demo", refuse)
    monkeypatch.setattr("omniforcing_core.__main__.load_prompt_encoder", refuse)


def test_an_unknown_prompt_word_is_refused_before_anything_loads(no_demo, tmp_path, capsys, monkeypatch):
    _loading_fails(monkeypatch)
    with pytest.raises(SystemExit) as exited:
        main(["stream", "--prompt", "a red dog bounces", "--out", str(tmp_path / "x.mp4")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: the word 'dog' is not in the world's prompt vocabulary" in err
    assert "allowed words: " + " ".join(VOCABULARY) in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


def test_a_prompt_too_long_for_the_encoder_is_refused_before_the_model_loads(use_stand_in_demo, capsys, monkeypatch):
    monkeypatch.setattr(pipeline_module.StreamPipeline, "demo",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("the model was loaded")))
    with pytest.raises(SystemExit) as exited:
        main(["stream", "--prompt", " and ".join(["a red ball"] * 6) + " bounce"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: the prompt 'a red ball and" in err and "has 24 words; the encoder takes at most 16" in err


def test_missing_demo_files_say_so_and_offer_random_weights(no_demo, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["stream", "--seconds", "1", "--out", str(tmp_path / "x.mp4")])
    assert exited.value.code == 2
    message = capsys.readouterr().err
    assert f"error: the built-in demo model file {no_demo / DEMO_BASE} is missing" in message
    assert "--random-weights" in message
    assert not list(tmp_path.rglob("*.mp4"))  # the output's temporary file is gone again


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--generator", "g.safetensors", "--prompt", "a red ball bounces"], "comes from --context"),
        (["--random-weights", "--prompt", "a red ball bounces"], "--random-weights takes none"),
        (["--generator", "g.safetensors", "--random-weights"], "not allowed with argument --generator"),
        (["--base", "b.safetensors"], "--base goes with --generator"),
        (["--context", "p.safetensors"], "--context goes with --generator"),
        (["--random-weights", "--layout", "paper"], "--layout goes with --generator"),
    ],
)
def test_options_that_do_not_go_together_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(["stream", *argv])
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_the_readme_opens_with_the_demo():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    setup_and_run, install_and_test = readme.split("```bash\n", 1)[1].split("\n```", 1)[0].splitlines()
    command = shlex.split(setup_and_run.split(" && ", 1)[1])
    assert command[:3] == ["python", "-m", "omniforcing_core"]
    args = parse_args(command[3:])
    assert args.generator is None and not args.random_weights and args.prompt == DEMO_PROMPT
    assert install_and_test.endswith("&& python -m pytest -q")


def test_the_readme_s_training_commands_are_the_engine_s():
    from omniforcing_core.train import __main__ as train_cli

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Distill your own", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    commands = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines()]
    assert len(commands) == 4
    for argv in commands:
        module = argv.index("-m") + 1
        assert argv[module] == "omniforcing_core.train"
        assert argv[module + 1] in train_cli.COMMANDS + list(train_cli.CODEC_COMMANDS), argv
        assert "--out" in argv
