"""Codec training on the world: the loss falls, a stopped run resumes exactly, the command's
base file loads through the project's loaders with normalised latents, and encode-world
writes the shards the engine reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from helpers import SMALL_CODECS
from omniforcing_core.checkpoint import load_decoders
from omniforcing_core.checkpoint.components import load_encoders
from omniforcing_core.demo import randomize_
from omniforcing_core.train import codecs as C
from omniforcing_core.train.__main__ import main
from omniforcing_core.train.data import LatentShards
from omniforcing_core.world import Scene, render_clip

TOML = """
[codecs]
{codecs}

[world]
count = 3
seconds = 1.0
seed = 7
shard_size = 2
"""


def small(**overrides) -> C.CodecsSection:
    return C.CodecsSection(**{**SMALL_CODECS, **overrides})


def write_config(folder: Path, **overrides) -> Path:
    values = {**SMALL_CODECS, "video_steps": 2, "audio_steps": 2, "vocoder_steps": 2, **overrides}
    body = "\n".join(f"{key} = {json.dumps(value)}" for key, value in values.items())
    path = folder / "codecs.toml"
    path.write_text(TOML.format(codecs=body))
    return path


# The audio VAE first learns the silent floor's level (16% in 20 steps), its tones only after
# a few hundred steps (the demo's training): its bar is lower.
@pytest.mark.parametrize("part, lr, ratio", [("video", 3e-3, 0.8), ("audio", 3e-3, 0.9), ("vocoder", 2e-3, 0.8)])
def test_twenty_steps_lower_the_loss(tmp_path, part, lr, ratio):
    s = small(**{f"{part}_steps": 20, f"{part}_lr": lr})
    codecs = C.new_codecs(s)
    # Clips differ a lot in how much they hold: the same four batches before and after.
    def held_loss() -> float:
        with torch.no_grad():
            return sum(getattr(C.Trainer(codecs, s), part)(step)[0].item() for step in range(4))
    before = held_loss()
    losses = C.train_part(codecs, s, part, tmp_path, log=False)
    assert len(losses) == 20
    assert held_loss() < ratio * before, (part, losses)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 20 and json.loads(lines[-1])["stage"] == f"codecs.{part}"


def test_a_stopped_training_resumes_where_it_was(tmp_path):
    s = small(video_steps=4, checkpoint_every=2)
    straight = C.new_codecs(s)
    C.train_part(straight, s, "video", tmp_path / "straight", log=False)
    # A run stopped after its step-2 checkpoint: only that checkpoint is left.
    stopped = tmp_path / "stopped" / "checkpoints" / "video"
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "video" / "step_0000002", stopped / "step_0000002")
    (stopped / "latest").write_text("step_0000002")
    resumed = C.new_codecs(s)
    assert len(C.train_part(resumed, s, "video", tmp_path / "stopped", log=False)) == 2
    a, b = straight.part("video").state_dict(), resumed.part("video").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    fresh = C.new_codecs(s).part("video").state_dict()
    assert max((a[k] - fresh[k]).abs().max().item() for k in a) > 1e-4


def test_the_command_writes_a_base_file_both_loaders_read(tmp_path):
    config = write_config(tmp_path)
    assert main(["codecs", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    path = tmp_path / "run" / C.BASE_FILE
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        sections = json.loads(f.metadata()["config"])
    for prefix in ("vae.encoder.", "vae.decoder.", "vae.per_channel_statistics.", "audio_vae.encoder.",
                   "audio_vae.decoder.", "audio_vae.per_channel_statistics.", "vocoder."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert not any(k.startswith("model.") for k in keys)
    assert {"vae", "audio_vae", "vocoder"} <= set(sections)

    decoders, encoders = load_decoders(path), load_encoders(path)
    assert decoders.video_vae.config.latent_channels == 8
    assert decoders.audio_vae.config.token_width == 64
    # Statistics from encoded clips: the stats clips themselves come out ~N(0, 1) per channel.
    clip = render_clip(Scene.sample(C.STATS_SEEDS, 1.0, (64, 64)))
    video = encoders.video_encoder.encode(C.frames_to_pixels(clip.frames)[None])
    assert video.shape == (1, 8, 4, 2, 2)
    per_channel = video.movedim(1, -1).reshape(-1, 8)
    assert per_channel.mean(0).abs().max() < 1.5 and 0.3 < per_channel.std(0).mean() < 1.7
    tokens = decoders.audio_vae.tokens_from_latents(
        encoders.audio_encoder.encode(C.stereo_mel(clip.audio_24k, encoders.audio_encoder.config)))
    assert tokens.shape == (1, 26, 64)
    assert tokens.mean().abs() < 0.5 and 0.5 < tokens.std() < 1.5
    # The decoders of the file decode what the encoders of the file encode.
    assert decoders.video_vae.decode(video).shape == (1, 3, 25, 64, 64)
    assert C.decode_audio(decoders, tokens, 24_000).shape == (2, 24_000)
    # A second run finds the file and does nothing.
    stamp = path.stat().st_mtime_ns
    assert main(["codecs", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    assert path.stat().st_mtime_ns == stamp


def test_the_codec_commands_run_on_the_device_given_and_refuse_one_they_cannot(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "run"
    assert main(["codecs", "--config", str(config), "--out", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "codecs" / "eval.json").read_text())["device"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refusals = {
        "gpu": "error: --device: 'gpu' is not a device; use cpu, cuda or cuda:N",
        "cuda": "error: --device cuda: this torch sees no CUDA GPU; use --device cpu",
    }
    for device, message in refusals.items():
        assert main(["encode-world", "--config", str(config), "--out", str(out), "--device", device]) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["encode-world", "--config", str(config), "--out", str(out)]) == 2
    assert "encode-world runs in one process (the codecs are small): launch it with python, not torchrun" in (
        capsys.readouterr().err)
    assert not (out / "latents").exists()


def test_encode_world_writes_shards_the_engine_reads(tmp_path):
    config = write_config(tmp_path)
    out = tmp_path / "run"
    assert main(["codecs", "--config", str(config), "--out", str(out)]) == 0
    assert main(["encode-world", "--config", str(config), "--out", str(out)]) == 0
    shards = sorted((out / "latents").glob("*.safetensors"))
    assert [p.name for p in shards] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    data = LatentShards(out / "latents")
    assert len(data) == 3
    sample = data.sample(2)
    assert sample["video"].shape == (8, 4, 2, 2)  # 1 s: 25 frames -> 1 + 3 latents
    assert sample["audio"].shape == (26, 64)  # 1 + 25 latents of 4 channels x 16 bins
    assert sample["prompt"].dtype == torch.long and sample["prompt"].shape == (16,)
    with safe_open(str(shards[1]), "pt") as f:
        truth = json.loads(f.metadata()["truth"])
    clip = render_clip(Scene.sample(7 + 2, 1.0, (64, 64)))
    assert truth[0]["seed"] == 9 and truth[0]["prompt"] == clip.prompt
    assert len(truth[0]["impacts"]) == len(clip.truth.impacts)
    # The shard holds exactly what the file's encoder gives for that clip, normalised.
    encoders = load_encoders(out / C.BASE_FILE)
    expected = encoders.video_encoder.encode(C.frames_to_pixels(clip.frames)[None])[0]
    assert (sample["video"] - expected).abs().max() < 1e-5


def test_seam_errors_vanish_at_the_exact_lookahead(tmp_path):
    s = small(clip_seconds=2.0)
    codecs = randomize_(C.new_codecs(s), 3)  # fan-in scaled weights: every conv reads its context
    rows = C.seam_errors(codecs, s, clips=1, video_lookaheads=(0,), audio_lookaheads=(0,))
    video, audio = rows["video"], rows["audio"]
    for layout in ("released", "paper"):
        assert video[f"{layout} L=exact"]["max"] < 0.01  # 8-bit levels
        assert video[f"{layout} L=0"]["seam_mean"] > 10 * video[f"{layout} L=exact"]["seam_mean"] + 1e-3
    assert audio["released L=exact frames"]["error_below_signal_db"] > 100
    assert audio["released L=0 frames"]["error_below_signal_db"] < audio["released L=exact frames"]["error_below_signal_db"] - 20


def test_stft_loss_is_zero_only_for_the_same_sound():
    wave = torch.sin(torch.arange(4800) * 0.2)[None, None].repeat(1, 2, 1)
    assert C.stft_loss(wave, wave).item() < 1e-6
    shifted = torch.roll(wave * torch.hann_window(4800), 240, dims=-1)
    assert C.stft_loss(shifted, wave * torch.hann_window(4800)).item() > 0.05


def test_decoder_finetuning_keeps_the_latents_and_moves_only_the_decoders(tmp_path):
    config = write_config(tmp_path, video_decoder_steps=3, audio_decoder_steps=3, video_decoder_lr=3e-3,
                          audio_decoder_lr=3e-3, warmup=1)
    out = tmp_path / "run"
    assert main(["codecs", "--config", str(config), "--out", str(out)]) == 0
    before_encoders, before_decoders = load_encoders(out / C.BASE_FILE), load_decoders(out / C.BASE_FILE)
    assert main(["codecs-finetune", "--config", str(config), "--out", str(out)]) == 0
    after_encoders, after_decoders = load_encoders(out / C.BASE_FILE), load_decoders(out / C.BASE_FILE)

    def differs(a, b):
        sa, sb = a.state_dict(), b.state_dict()
        return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)

    # Encoders and every statistic unchanged: latents encoded before still mean the same.
    assert differs(before_encoders.video_encoder, after_encoders.video_encoder) == 0.0
    assert differs(before_encoders.audio_encoder, after_encoders.audio_encoder) == 0.0
    for module in ("video_vae", "audio_vae"):
        b, a = getattr(before_decoders, module), getattr(after_decoders, module)
        assert differs(b.per_channel_statistics, a.per_channel_statistics) == 0.0
        assert differs(b.decoder, a.decoder) > 0.0
    assert differs(before_decoders.vocoder, after_decoders.vocoder) == 0.0
    assert (out / "codecs" / "demo_base.before-finetune.safetensors").exists()
    # Done once: a second run leaves the file as it is.
    stamp = (out / C.BASE_FILE).stat().st_mtime_ns
    assert main(["codecs-finetune", "--config", str(config), "--out", str(out)]) == 0
    assert (out / C.BASE_FILE).stat().st_mtime_ns == stamp


def test_the_world_s_shapes_and_tones_are_the_foreground_the_losses_weigh_up():
    clip = render_clip(Scene.sample(3, 1.0, (64, 64)))
    pixels = C.frames_to_pixels(clip.frames[None])
    shapes = C.shape_pixels(pixels)
    drawn = torch.from_numpy((clip.frames != C.BACKGROUND).any(axis=-1))
    found = shapes[0, 0].bool()
    # Every pixel found is drawn; only faint anti-aliased edges are left out.
    assert not (found & ~drawn).any() and found.sum() >= 0.9 * drawn.sum()
    assert 0.005 < shapes.mean().item() < 0.2
    config = small().audio_config()
    mel = C.stereo_mel(clip.audio_24k, config)
    tones = C.tone_bins(mel)
    silent = C.stereo_mel(torch.zeros_like(torch.as_tensor(clip.audio_24k)), config)
    assert 0.01 < tones.mean().item() < 0.5 and C.tone_bins(silent).sum() == 0
    # A unit error on the foreground weighs (1 + w) times one on the same count of background.
    foreground = torch.zeros(100)
    foreground[:10] = 1.0
    on, off = C.foreground_weighted(foreground, foreground, 10.0), C.foreground_weighted(torch.roll(foreground, 50), foreground, 10.0)
    assert on.item() == pytest.approx(11.0 * off.item())


def test_a_wider_decoder_starts_fresh_against_the_frozen_encoder(tmp_path):
    config = write_config(tmp_path, video_decoder_steps=2, audio_decoder_steps=0, video_decoder_lr=3e-3, warmup=1)
    out = tmp_path / "run"
    assert main(["codecs", "--config", str(config), "--out", str(out)]) == 0
    before_encoders, before_decoders = load_encoders(out / C.BASE_FILE), load_decoders(out / C.BASE_FILE)
    wider = write_config(tmp_path, video_decoder_steps=2, audio_decoder_steps=0, video_decoder_lr=3e-3, warmup=1,
                         video_decoder_finetune_channels=2 * SMALL_CODECS["video_decoder_channels"])
    assert main(["codecs-finetune", "--config", str(wider), "--out", str(out)]) == 0
    after_encoders, after_decoders = load_encoders(out / C.BASE_FILE), load_decoders(out / C.BASE_FILE)
    assert after_decoders.video_vae.config.decoder_base_channels == 2 * SMALL_CODECS["video_decoder_channels"]
    assert torch.equal(after_decoders.video_vae.per_channel_statistics.get_buffer("std-of-means"),
                       before_decoders.video_vae.per_channel_statistics.get_buffer("std-of-means"))
    for a, b in zip(before_encoders.video_encoder.state_dict().values(), after_encoders.video_encoder.state_dict().values()):
        assert torch.equal(a, b)


def test_audio_windows_fall_on_the_latent_grid_and_the_loss_is_the_configured_one():
    mel = torch.arange(2 * 2 * 61 * 3, dtype=torch.float32).reshape(2, 2, 61, 3)
    windows = C.mel_windows(mel, 17, 5, np.random.default_rng(0))
    assert windows.shape == (10, 2, 17, 3)
    for index, window in enumerate(windows):
        clip = mel[index // 5]
        start = int((window[0, 0, 0] - clip[0, 0, 0]).item()) // 3
        assert start % 4 == 0 and 0 <= start <= 61 - 17
        assert torch.equal(window, clip[:, start:start + 17])
    # Trained on windows, one step sees audio_crops windows per clip, each of the set length.
    s = small(audio_crop_frames=17, audio_crops=3, audio_batch=2, audio_loss="mse")
    codecs = C.new_codecs(s)
    seen = []
    codecs.audio_encoder.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    C.Trainer(codecs, s).audio(0)
    assert seen == [torch.Size([6, 2, 17, s.audio_config().mel_bins])]
    # The same step under L1 and MSE: the loss is the mean absolute or the mean squared error.
    with torch.no_grad():
        for name, reduce in (("l1", torch.abs), ("mse", torch.square)):
            s = small(audio_loss=name, audio_crop_frames=0, latent_l2=0.0, latent_noise=0.0)
            codecs = C.new_codecs(s)
            loss, _ = C.Trainer(codecs, s).audio(1)
            mel = C.stereo_mel(np.stack([a for _, a in C.audio_batch(s, 1)]), codecs.audio_vae.config)
            tokens = codecs.audio_vae.tokens_from_latents(codecs.audio_encoder.posterior(mel)[0])
            decoded = codecs.audio_vae(codecs.audio_vae.per_channel_statistics.normalize(tokens))
            assert loss.item() == pytest.approx(reduce(decoded - mel).mean().item(), rel=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("audio_loss", "l2", "audio_loss must be one of ['l1', 'mse']"),
    ("audio_crop_frames", 16, "audio_crop_frames must be 0 (whole clips) or 1 + 4k >= 17, got 16"),
    ("audio_crop_frames", 13, "1 + 4k >= 17, got 13"),
    ("audio_crop_frames", 105, "audio_crop_frames (105) must fit a clip's 101 mel frames (1.0 s): shorten the windows"),
])
def test_a_bad_audio_training_setting_is_refused_with_what_is_allowed(field, value, message):
    with pytest.raises(C.TrainConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        small(**{field: value})
