"""The standalone command's edges: bad input refused before anything loads, in one line
(`error: ...`, exit code 2, no traceback), and output files that are never lost or replaced."""

import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from omniforcing_core import media
from omniforcing_core import pipeline as pipeline_module
from omniforcing_core.__main__ import _build, main, parse_args
from omniforcing_core.conditioning import TextConditioning, save_text_conditioning
from omniforcing_core.media import MediaError, Mp4StreamWriter

av = pytest.importorskip("av")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--random-weights", "--seconds", "1", "--height", "64", "--width", "96", "--device", "cpu"]


def frames_in(path):
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0)), container.format.name


def block(frames=24):
    return torch.rand(frames, 64, 96, 3), torch.zeros(2, 1000 * frames)


@pytest.fixture
def nothing_loads(monkeypatch):
    """Every model load fails the test: argument errors must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")
    for name in ("demo", "from_files", "tiny_random"):
        monkeypatch.setattr(pipeline_module.StreamPipeline, name, refuse)
    monkeypatch.setattr("omniforcing_core.__main__.load_prompt_encoder", refuse)


def refused(argv, capsys):
    """Run the command, expect the exit code 2 and return stderr."""
    with pytest.raises(SystemExit) as exited:
        main(["stream", *argv])
    assert exited.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seconds", "0"], "argument --seconds: must be a whole number >= 1, got 0"),
        (["--height", "0"], "--height/--width: height must be a positive multiple of 32 pixels"),
        (["--width", "100"], "--height/--width: width must be a positive multiple of 32 pixels (the VAE's spatial compression), got 100; try 96"),
        (["--schedule", "fast"], "--schedule: could not read 'fast' as numbers"),
        (["--window", "-1"], "argument --window: must be a whole number >= 0, got -1"),
        (["--video-lookahead", "-2"], "argument --video-lookahead: must be a whole number >= 0, got -2"),
        (["--context-noise", "1.5"], "--context-noise: context_noise is a sigma in [0, 1), got 1.5"),
        (["--seed", str(2**64)], f"argument --seed: must be a whole number from 0 to {2**63 - 1}, got {2**64}"),
        (["--seed", "-1"], "argument --seed: must be a whole number from 0 to"),
        (["--device", "gpu"], "--device: 'gpu' is not a device; use cpu, cuda or cuda:N"),
        (["--dtype", "bf16"], "--dtype goes with a loaded model (--generator or the built-in demo)"),
        (["--fp8"], "--fp8 goes with a loaded model"),
        (["--out", "clip.avi"], "--out: cannot write 'clip.avi': the output is H.264 video with AAC sound in a "
                                ".mp4, .mkv or .mov file"),
        (["--out", "clip"], "--out: cannot write 'clip'"),
    ],
)
def test_bad_arguments_are_refused_in_one_line_before_anything_loads(argv, message, nothing_loads, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = refused([*TINY, "--out", "x.mp4", *argv], capsys)
    assert f"error: {message}" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [[], ["--generator", "g.safetensors", "--base", "b.safetensors"]])
def test_the_demo_and_real_models_check_their_arguments_before_loading(argv, nothing_loads, tmp_path, capsys):
    context = tmp_path / "p.safetensors"
    save_text_conditioning(context, TextConditioning(torch.randn(1, 5, 32), torch.randn(1, 5, 32)))
    real = ["--context", str(context)] if argv else []
    assert "--height/--width" in refused([*argv, *real, "--height", "0", "--out", str(tmp_path / "x.mp4")], capsys)
    assert "--schedule" in refused([*argv, *real, "--schedule", "1,2", "--out", str(tmp_path / "x.mp4")], capsys)


def test_a_missing_cuda_is_refused_before_loading(nothing_loads, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "error: --device cuda: this torch sees no CUDA GPU; use --device cpu" in refused(
        ["--random-weights", "--device", "cuda"], capsys)


def test_the_largest_seed_streams(tmp_path):
    main(["stream", *TINY, "--seed", str(2**63 - 1), "--out", str(tmp_path / "x.mp4")])
    assert frames_in(tmp_path / "x.mp4")[0] == 25


def test_the_demo_takes_dtype_and_fp8(use_stand_in_demo):
    bf16, _ = _build(parse_args(["stream", "--device", "cpu", "--dtype", "bf16"]))
    assert bf16.transformer.patchify_proj.weight.dtype == torch.bfloat16
    fp8, _ = _build(parse_args(["stream", "--device", "cpu", "--fp8"]))
    assert fp8.transformer.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn


# --context ------------------------------------------------------------------------------------


@pytest.fixture
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    main(["write-tiny-checkpoints", str(folder)])
    return folder / "omniforcing_tiny_random.safetensors", folder / "ltx2_tiny_random_base.safetensors"


def real(tiny_files, context, tmp_path):
    generator, base = tiny_files
    return ["--generator", str(generator), "--base", str(base), "--context", str(context), "--seconds", "1",
            "--height", "64", "--width", "96", "--dtype", "fp32", "--device", "cpu", "--out", str(tmp_path / "x.mp4")]


def test_a_model_file_given_as_context_is_named_as_one_before_loading(tiny_files, nothing_loads, tmp_path, capsys):
    generator, _ = tiny_files
    err = refused(real(tiny_files, generator, tmp_path), capsys)
    assert f"error: --context {generator} is not a prompt context: it holds " in err
    assert ", like a model file; a prompt context holds 'video' and 'audio' tensors" in err
    assert err.count("transformer_blocks") <= 3  # a few keys, not every one


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"video": torch.zeros(5, 32), "audio": torch.zeros(5, 32)},
         "tensor(s) audio, video must be [batch, tokens, width], got 2 dimension(s), 2 dimension(s)"),
        ({"mask": torch.zeros(1)}, "is not a prompt context: it holds 1 tensor(s) (mask); a prompt context"),
    ],
)
def test_a_context_of_the_wrong_shape_is_refused_before_loading(tensors, message, tiny_files, nothing_loads,
                                                                tmp_path, capsys):
    save_file(tensors, str(tmp_path / "p.safetensors"))
    assert message in refused(real(tiny_files, tmp_path / "p.safetensors", tmp_path), capsys)


def test_a_missing_context_file_is_refused_before_loading(tiny_files, nothing_loads, tmp_path, capsys):
    err = refused(real(tiny_files, tmp_path / "nope.safetensors", tmp_path), capsys)
    assert f"error: --context {tmp_path / 'nope.safetensors'}: no such file" in err


def test_a_context_for_another_width_names_the_flag_after_loading(tiny_files, tmp_path, capsys):
    context = tmp_path / "p.safetensors"
    save_text_conditioning(context, TextConditioning(torch.randn(1, 5, 16), torch.randn(1, 5, 16)))
    err = refused(real(tiny_files, context, tmp_path), capsys)
    assert f"error: --context {context}: video text context must be [batch, tokens, 32], got (1, 5, 16)" in err
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*"))


# Errors in one line -----------------------------------------------------------------------------


def test_an_error_during_the_stream_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    def fail(self, frames, waveform):
        raise RuntimeError("the encoder broke")
    monkeypatch.setattr(Mp4StreamWriter, "write", fail)
    err = refused([*TINY, "--out", str(tmp_path / "x.mp4")], capsys)
    assert "error: RuntimeError: the encoder broke\n(unexpected: run again with --debug for the traceback)" in err
    assert not list(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="the encoder broke"):
        main(["stream", *TINY, "--debug", "--out", str(tmp_path / "x.mp4")])


def run_command(*argv, **kwargs):
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "omniforcing_core", *argv], cwd=ROOT, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_the_command_prints_errors_without_a_traceback_and_debug_shows_it(tmp_path):
    bad_context = tmp_path / "p.safetensors"
    bad_context.write_bytes(b"not a safetensors file")
    generator = ["stream", "--generator", "g", "--base", "b", "--out", str(tmp_path / "x.mp4")]
    process = run_command(*generator, "--context", str(bad_context))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2 and "error: --context: " in err and "Traceback" not in err
    process = run_command("write-tiny-checkpoints", str(tmp_path / "models"))
    assert process.wait(timeout=120) == 0
    process = run_command("write-tiny-checkpoints", str(tmp_path / "models"))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2 and err.startswith("error: ") and "Traceback" not in err
    process = run_command("write-tiny-checkpoints", str(tmp_path / "models"), "--debug")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" in err


# Output files ----------------------------------------------------------------------------------


def test_a_file_that_appears_at_out_during_the_stream_is_kept(tmp_path, monkeypatch, capsys):
    out = tmp_path / "clip.mp4"
    write = Mp4StreamWriter.write

    def someone_else_writes_out(self, frames, waveform):
        out.write_bytes(b"another program's file")
        write(self, frames, waveform)
    monkeypatch.setattr(Mp4StreamWriter, "write", someone_else_writes_out)
    main(["stream", *TINY, "--out", str(out)])
    assert out.read_bytes() == b"another program's file"
    assert frames_in(tmp_path / "clip_2.mp4")[0] == 25
    printed = capsys.readouterr()
    assert f"note: {out} appeared while the stream ran; it was kept and this stream went to {tmp_path / 'clip_2.mp4'}" \
        in printed.err
    assert f"wrote {tmp_path / 'clip_2.mp4'}" in printed.out


def test_two_streams_to_the_same_out_keep_both(tmp_path):
    out = tmp_path / "clip.mp4"
    first, second = Mp4StreamWriter(out), Mp4StreamWriter(out)
    assert first.partial != second.partial and first.partial.parent == tmp_path
    first.write(*block(25))
    second.write(*block(24))
    second.write(*block(24))
    assert (first.close(), second.close()) == (out, tmp_path / "clip_2.mp4")
    assert frames_in(out)[0] == 25 and frames_in(tmp_path / "clip_2.mp4")[0] == 48
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.mp4", "clip_2.mp4"]


def test_overwrite_replaces_out_at_the_end(tmp_path):
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"old")
    writer = Mp4StreamWriter(out, overwrite=True)
    writer.write(*block())
    assert out.read_bytes() == b"old"  # until the stream is finished
    assert writer.close() == out and frames_in(out)[0] == 24


def test_without_hard_links_the_name_is_claimed_before_the_rename(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(media.os, "link", no_links)
    out = tmp_path / "clip.mp4"
    writer = Mp4StreamWriter(out)
    writer.write(*block())
    out.write_bytes(b"appeared")
    assert writer.close() == tmp_path / "clip_2.mp4"
    assert out.read_bytes() == b"appeared" and frames_in(tmp_path / "clip_2.mp4")[0] == 24


def test_a_finished_stream_that_cannot_be_named_is_kept_and_said_where(tmp_path, monkeypatch):
    writer = Mp4StreamWriter(tmp_path / "clip.mp4", overwrite=True)
    writer.write(*block())
    monkeypatch.setattr(media.os, "replace", lambda *a: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")))
    with pytest.raises(MediaError, match=f"it is kept as {writer.partial}"):
        writer.close()
    assert frames_in(writer.partial)[0] == 24


@pytest.mark.parametrize("name", ["folder", "folder/", "new/"])
def test_a_folder_as_out_is_refused_before_loading(name, nothing_loads, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    err = refused([*TINY, "--out", str(tmp_path) + os.sep + name], capsys)
    assert f"is a folder; give a file name, e.g. {tmp_path / name / 'stream.mp4'}" in err
    assert [path.name for path in tmp_path.iterdir()] == ["folder"] and not list((tmp_path / "folder").iterdir())


def test_an_unwritable_folder_is_named_before_loading(nothing_loads, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "read-only"
    folder.mkdir()
    create = os.open

    def read_only(path, *args, **kwargs):  # what a read-only folder answers, also to root
        if Path(path).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied")
        return create(path, *args, **kwargs)
    monkeypatch.setattr(media.os, "open", read_only)
    err = refused([*TINY, "--out", str(folder / "x.mp4")], capsys)
    assert f"error: cannot write into the folder {folder}: Permission denied; choose another --out" in err


def test_a_file_in_place_of_the_folder_is_named_before_loading(nothing_loads, tmp_path, capsys):
    (tmp_path / "out").write_bytes(b"")
    err = refused([*TINY, "--out", str(tmp_path / "out" / "x.mp4")], capsys)
    assert f"error: cannot write into the folder {tmp_path / 'out'}: " in err


@pytest.mark.parametrize(("suffix", "container"), [(".mkv", "matroska"), (".mov", "mov"), (".MP4", "mp4")])
def test_the_container_follows_the_extension(suffix, container, tmp_path):
    main(["stream", *TINY, "--out", str(tmp_path / f"clip{suffix}")])
    frames, name = frames_in(tmp_path / f"clip{suffix}")
    assert frames == 25 and container in name.split(",")


def test_ctrl_c_stops_the_generating_worker_and_removes_the_file(tmp_path, monkeypatch, capsys):
    def interrupt(self, frames, waveform):
        raise KeyboardInterrupt
    monkeypatch.setattr(Mp4StreamWriter, "write", interrupt)
    with pytest.raises(SystemExit) as exited:
        main(["stream", *TINY, "--seconds", "5", "--out", str(tmp_path / "x.mp4")])
    assert exited.value.code == 130
    err = capsys.readouterr().err
    assert f"stopped after 1 of 5 blocks; the unfinished file was removed, nothing was written to {tmp_path / 'x.mp4'}" \
        in err and "stopped by SIGINT" in err
    assert not [thread for thread in threading.enumerate() if thread.name == "omniforcing-generate"]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_stops_the_stream_cleanly_and_leaves_no_file(signum, tmp_path):
    # Default handling of the signal in the child, whatever the test run inherited (under nohup,
    # a hangup is ignored, and the command rightly keeps it so: the test below).
    process = run_command("stream", *TINY, "--seconds", "600", "--window", "2", "--out", str(tmp_path / "x.mp4"),
                          preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))
    assert process.stdout.readline().startswith("block 1/600")
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and f"stopped by {name}" in err
    assert "blocks; the unfinished file was removed, nothing was written to" in err
    assert not list(tmp_path.iterdir())


def test_a_hangup_that_nohup_ignores_stays_ignored(tmp_path):
    process = run_command("stream", *TINY, "--seconds", "10", "--out", str(tmp_path / "x.mp4"),
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert process.stdout.readline().startswith("block 1/10")
    process.send_signal(signal.SIGHUP)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert frames_in(tmp_path / "x.mp4")[0] == 241
