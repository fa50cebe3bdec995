import json
import math

import numpy as np
import pytest

from omniforcing_core.world import AUDIO_RATE, MEL_RATE, PITCHES, Scene, render_clip
from omniforcing_core.world.metrics import (
    av_sync, detect_clip, evaluate, pitch_accuracy, position_error, prompt_adherence, released_boundaries,
    seam_continuity,
)

SEEDS = (11, 9, 5)  # one, two and three shapes


@pytest.fixture(scope="module")
def clips():
    return {seed: render_clip(Scene.sample(seed)) for seed in SEEDS}


@pytest.fixture(scope="module")
def truth(clips):
    return {seed: detect_clip(c.frames, c.audio_16k, MEL_RATE) for seed, c in clips.items()}


def shifted(audio, seconds, rate):
    """The sound ``seconds`` late (early when negative), padded with quiet noise."""
    shift = int(round(abs(seconds) * rate))
    pad = 0.003 * np.random.default_rng(0).standard_normal(shift).astype(np.float32)
    return np.concatenate([pad, audio[:-shift]]) if seconds > 0 else np.concatenate([audio[shift:], pad])


def test_ground_truth_is_in_sync(clips, truth):
    for seed in (11, 9):
        sync = av_sync(truth[seed])
        assert sync["impacts"] >= 8 and sync["misses"] == 0 and sync["false_alarms"] == 0
        assert sync["within_frame_share"] == 1.0
        assert abs(sync["median_offset_ms"]) < 1.5 and sync["p90_abs_offset_ms"] < 5
    # Three shapes crowd the box: a bounce and a collision a frame apart are one event
    # to the tracker. This is the ceiling a decoded clip is compared against.
    crowded = av_sync(truth[5])
    assert crowded["within_frame_share"] >= 0.9 and crowded["misses"] + crowded["false_alarms"] <= 3
    assert abs(crowded["median_offset_ms"]) < 1.5


def test_visual_impacts_are_timed_between_frames(clips, truth):
    errors = []
    for seed in SEEDS:
        scene = clips[seed].scene
        for impact in truth[seed].impacts:
            shape = [s.colour for s in scene.shapes].index(impact.colour)
            errors.append(min(abs(i.time - impact.time) for i in scene.impacts if i.shape == shape))
    assert max(errors) < 1 / 24 and np.median(errors) < 1e-3 and len(errors) >= 40


def codec_like_frames(frames, rng):
    """Blurred (two 3x3 box passes), tinted and noisy, as a small video VAE decodes."""
    x = frames.astype(np.float32)
    height, width = x.shape[1:3]
    for _ in range(2):
        p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        x = sum(p[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    return np.clip(0.92 * x + 8 + rng.normal(0, 5, x.shape), 0, 255).astype(np.uint8)


def vocoded(audio, iterations=16, n_fft=1024, hop=160):
    """Sound rebuilt from its magnitude spectrogram with the LTX-2 mel's STFT (Griffin-Lim):
    the phase is lost and every onset smeared over the 64 ms window, as through a vocoder."""
    window = np.hanning(n_fft + 1)[:-1]

    def stft(x):
        padded = np.pad(x, n_fft // 2)
        starts = np.arange(0, x.size + 1, hop)
        return np.fft.rfft(np.stack([padded[s:s + n_fft] * window for s in starts]), axis=1)

    def istft(spectrum):
        out, norm = np.zeros(audio.size + n_fft), np.zeros(audio.size + n_fft)
        for k, frame in enumerate(np.fft.irfft(spectrum, n=n_fft, axis=1) * window):
            out[k * hop:k * hop + n_fft] += frame
            norm[k * hop:k * hop + n_fft] += window ** 2
        return (out / np.maximum(norm, 1e-8))[n_fft // 2:n_fft // 2 + audio.size]

    magnitude = np.abs(stft(audio))
    phase = np.exp(2j * np.pi * np.random.default_rng(0).random(magnitude.shape))
    for _ in range(iterations):
        phase = np.exp(1j * np.angle(stft(istft(magnitude * phase))))
    return istft(magnitude * phase).astype(np.float32)


def test_metrics_read_a_codec_like_clip_like_the_truth(clips):
    clip = clips[9]
    det = detect_clip(codec_like_frames(clip.frames, np.random.default_rng(6)), vocoded(clip.audio_16k), MEL_RATE)
    sync = av_sync(det)
    assert sync["within_frame_share"] >= 0.95 and sync["misses"] + sync["false_alarms"] <= 2
    assert abs(sync["median_offset_ms"]) < 2
    assert pitch_accuracy(det)["correct_share"] >= 0.95
    assert prompt_adherence(det, clip.prompt)["exact"] == 1.0
    assert 0.8 <= seam_continuity(det)["ratio"] <= 1.25
    error = position_error(det, clip.truth.positions, clip.truth.colours)
    assert error["mean_px"] < 0.1 and error["max_px"] < 0.5


def test_sync_reads_the_stereo_vocoder_rate_too(clips):
    clip = clips[9]
    sync = av_sync(detect_clip(clip.frames, clip.audio_24k, AUDIO_RATE))
    assert sync["within_frame_share"] == 1.0 and sync["false_alarms"] == 0


@pytest.mark.parametrize("seconds", [0.08, -0.08])
def test_sync_detects_sound_shifted_by_80_ms(clips, seconds):
    for seed in (9, 5):
        clip = clips[seed]
        sync = av_sync(detect_clip(clip.frames, shifted(clip.audio_16k, seconds, MEL_RATE), MEL_RATE))
        assert sync["median_offset_ms"] == pytest.approx(1000 * seconds, abs=3)
        assert sync["within_frame_share"] <= 0.2
        assert sync["matched"] >= 0.8 * sync["impacts"]


def test_sync_fails_on_noise(clips, truth):
    clip = clips[5]
    rng = np.random.default_rng(1)
    noise_audio = (0.1 * rng.standard_normal(clip.audio_16k.shape)).astype(np.float32)
    sync = av_sync(detect_clip(clip.frames, noise_audio, MEL_RATE))
    assert sync["matched"] == 0 and sync["misses"] == av_sync(truth[5])["impacts"]
    assert sync["within_frame_share"] == 0.0 and math.isnan(sync["median_offset_ms"])
    noise_frames = rng.integers(0, 256, clip.frames.shape, dtype=np.uint8)
    det = detect_clip(noise_frames, clip.audio_16k, MEL_RATE)
    sync = av_sync(det)
    assert det.tracks == {} and sync["impacts"] == 0 and sync["within_frame_share"] == 0.0
    assert sync["false_alarms"] == sync["onsets"] >= 20


def test_pitch_of_each_impact_is_its_shapes(clips, truth):
    for seed in SEEDS:
        pitch = pitch_accuracy(truth[seed])
        assert pitch["pairs"] >= 8 and pitch["correct_share"] == 1.0 and pitch["median_abs_cents"] < 10
    # The shapes ring at each other's pitches: detected, while the sync still holds.
    clip = clips[5]
    swapped = {"circle": PITCHES["square"], "square": PITCHES["triangle"], "triangle": PITCHES["circle"]}
    wrong = render_clip(clip.scene, pitches=swapped)
    det = detect_clip(wrong.frames, wrong.audio_16k, MEL_RATE)
    # (Where two shapes of swapped pitches meet, each hears the other's: not told apart.)
    assert pitch_accuracy(det)["correct_share"] <= 0.25
    assert av_sync(det)["within_frame_share"] >= 0.85
    noise = (0.1 * np.random.default_rng(2).standard_normal(clip.audio_16k.shape)).astype(np.float32)
    assert pitch_accuracy(detect_clip(clip.frames, noise, MEL_RATE))["correct_share"] == 0.0


def test_prompt_adherence(clips, truth):
    for seed in SEEDS:
        scores = prompt_adherence(truth[seed], clips[seed].prompt)
        assert scores["exact"] == scores["precision"] == scores["recall"] == scores["f1"] == 1.0
        assert scores["wanted"] == len(clips[seed].scene.shapes)
    det = truth[9]  # a white circle and a yellow triangle
    assert sorted((c, t.kind) for c, t in det.tracks.items()) == [("white", "circle"), ("yellow", "triangle")]
    wrong_kind = prompt_adherence(det, "a white ball and a yellow cube bounce")
    assert wrong_kind["recall"] == 0.5 and wrong_kind["colour_recall"] == 1.0 and wrong_kind["exact"] == 0.0
    missing = prompt_adherence(det, "a white disc , a yellow wedge and a red ball bounce")
    assert missing["recall"] == pytest.approx(2 / 3) and missing["precision"] == 1.0
    # A shape on screen for under half the clip is not there.
    frames = clips[9].frames.copy()
    yellow = np.abs(frames.astype(int) - (240, 220, 40)).sum(-1) < 200
    frames[:70][yellow[:70]] = (20, 20, 28)
    fleeting = detect_clip(frames, clips[9].audio_16k, MEL_RATE)
    assert "yellow" in fleeting.tracks
    assert prompt_adherence(fleeting, clips[9].prompt)["recall"] == 0.5
    noise = np.random.default_rng(3).integers(0, 256, clips[9].frames.shape, dtype=np.uint8)
    scores = prompt_adherence(detect_clip(noise, clips[9].audio_16k, MEL_RATE), clips[9].prompt)
    assert scores["recall"] == scores["colour_recall"] == scores["exact"] == 0.0


def test_seam_continuity(clips, truth):
    assert released_boundaries(121) == [25, 49, 73, 97]
    for seed in (9, 5):
        seams = seam_continuity(truth[seed])
        # Seams next to an impact are left out: a bounce is no seam.
        assert 2 * len(clips[seed].scene.shapes) <= seams["seams"] <= 4 * len(clips[seed].scene.shapes)
        assert 0.8 <= seams["ratio"] <= 1.25
    # A bounce that falls on a seam is no seam jump (in this clip one does).
    bounce = render_clip(Scene.sample(25))
    assert seam_continuity(detect_clip(bounce.frames, bounce.audio_16k, MEL_RATE))["ratio"] < 1.25
    # Every block after the first drawn 4 px further right: a jump at each seam.
    frames = clips[5].frames.copy()
    for boundary in released_boundaries(len(frames)):
        frames[boundary:] = np.roll(frames[boundary:], 4, axis=2)
    broken = detect_clip(frames, clips[5].audio_16k, MEL_RATE)
    assert seam_continuity(broken)["ratio"] > 3
    # The same clip scored at other boundaries sees no jump there.
    assert seam_continuity(broken, boundaries=[13, 37, 61, 85])["ratio"] < 1.5
    noise = np.random.default_rng(4).integers(0, 256, frames.shape, dtype=np.uint8)
    scores = seam_continuity(detect_clip(noise, clips[5].audio_16k, MEL_RATE))
    assert scores["tracks"] == 0 and scores["seams"] == 0 and math.isnan(scores["ratio"])


def test_positions_are_recovered_from_the_frames(clips, truth):
    for seed in SEEDS:
        clip = clips[seed]
        error = position_error(truth[seed], clip.truth.positions, clip.truth.colours)
        assert error["mean_px"] < 0.1 and error["max_px"] < 0.25 and error["missing_share"] == 0.0
    noise = np.random.default_rng(5).integers(0, 256, clips[9].frames.shape, dtype=np.uint8)
    error = position_error(detect_clip(noise, clips[9].audio_16k, MEL_RATE), clips[9].truth.positions,
                           clips[9].truth.colours)
    assert error["missing_share"] == 1.0


def test_evaluate_returns_plain_json_floats(clips):
    clip = clips[11]
    scores = evaluate(clip.frames, clip.audio_24k, AUDIO_RATE, clip.prompt)
    assert all(isinstance(v, float) for v in scores.values())
    assert {"sync.within_frame_share", "pitch.correct_share", "prompt.exact", "seam.ratio"} <= scores.keys()
    assert scores["sync.within_frame_share"] == scores["prompt.exact"] == scores["pitch.correct_share"] == 1.0
    assert json.loads(json.dumps(scores)).keys() == scores.keys()
