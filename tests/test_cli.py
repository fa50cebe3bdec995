import pytest
import torch

from omniforcing_core.__main__ import main
from omniforcing_core.checkpoint import load_decoders, load_model
from omniforcing_core.conditioning import (
    ConditioningError,
    TextConditioning,
    load_text_conditioning,
    save_text_conditioning,
)
from omniforcing_core.media import MediaError, Mp4StreamWriter

av = pytest.importorskip("av")


def probe(path):
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio=0))
        return frames, samples, audio.rate, audio.channels


def test_tiny_preset_streams_to_an_mp4_with_sound(tmp_path, capsys):
    out = tmp_path / "tiny.mp4"
    main(["stream", "--seconds", "2", "--height", "64", "--width", "96", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr()
    assert "block 1/2" in printed.out and "block 2/2" in printed.out
    assert "RANDOM weights" in printed.err
    frames, samples, rate, channels = probe(out)
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
    main(["stream", "--seconds", "1", "--height", "64", "--width", "96", "--device", "cpu", "--out", str(out)])
    assert out.read_bytes() == b"the user's video"
    assert probe(tmp_path / "mine_2.mp4")[0] == 25
    with pytest.raises(MediaError, match="already exists"):
        Mp4StreamWriter(out)


def test_a_real_model_needs_its_base_file(tmp_path):
    with pytest.raises(SystemExit, match="--base is required"):
        main(["stream", "--generator", str(tmp_path / "g.safetensors"), "--out", str(tmp_path / "x.mp4")])


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
