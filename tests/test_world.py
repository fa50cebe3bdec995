import json
import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from omniforcing_core.config import ConfigError
from omniforcing_core.layout import AUDIO_SAMPLE_RATE, MEL_SAMPLE_RATE, VIDEO_FPS
from omniforcing_core.world import (
    AUDIO_RATE, COLOURS, FPS, MEL_RATE, PITCHES, VOCABULARY, Scene, describe, parse, render_clip, to_mel_input,
    words,
)
from omniforcing_core.world.detect import MERGE_S, audio_onsets, track_shapes
from omniforcing_core.world.prompts import WorldPromptConfig, WorldPromptEncoder
from omniforcing_core.world.render import impact_amplitude, render_audio
from omniforcing_core.world.scene import WALLS, extents


@pytest.fixture(scope="module")
def clip():
    return render_clip(Scene.sample(5))


def test_the_world_runs_on_the_packs_clock():
    assert (FPS, AUDIO_RATE, MEL_RATE) == (VIDEO_FPS, AUDIO_SAMPLE_RATE, MEL_SAMPLE_RATE)


def test_clip_shapes_follow_the_vae_clock(clip):
    assert clip.frames.shape == (121, 128, 192, 3) and clip.frames.dtype == np.uint8
    assert clip.audio_24k.shape == (2, 5 * 24_000) and clip.audio_24k.dtype == np.float32
    assert clip.audio_16k.shape == (5 * 16_000,) and clip.audio_16k.dtype == np.float32
    assert clip.truth.positions.shape == (len(clip.scene.shapes), 121, 2)
    small = render_clip(Scene.sample(1, seconds=1 / 3, size=(64, 96)))
    assert small.frames.shape == (9, 64, 96, 3)
    with pytest.raises(ValueError, match="multiple of 8"):
        Scene.sample(0, seconds=0.5)
    scene = Scene.sample(1)
    with pytest.raises(ValueError, match="distinct colours"):
        Scene(1, 5.0, (128, 192), scene.shapes + scene.shapes)
    with pytest.raises(ValueError, match="hexagon"):
        Scene(1, 5.0, (128, 192), (replace(scene.shapes[0], kind="hexagon"),))


def test_truth_is_plain_json(clip):
    record = json.loads(json.dumps(clip.truth.to_dict()))
    assert record["kinds"] == list(clip.truth.kinds) and len(record["impacts"]) == len(clip.truth.impacts)
    assert np.allclose(record["positions"], clip.truth.positions, atol=1e-4)
    first = clip.truth.impacts[0]
    assert record["impacts"][0]["time"] == first.time and record["impacts"][0]["wall"] == first.wall


def test_world_is_deterministic_from_its_seed(clip):
    again = render_clip(Scene.sample(5))
    assert np.array_equal(again.frames, clip.frames)
    assert np.array_equal(again.audio_24k, clip.audio_24k) and np.array_equal(again.audio_16k, clip.audio_16k)
    assert again.prompt == clip.prompt and again.truth.impacts == clip.truth.impacts
    other = render_clip(Scene.sample(6))
    assert not np.array_equal(other.frames, clip.frames)


def test_a_five_second_clip_renders_well_under_a_second():
    scene = Scene.sample(3)
    start = time.perf_counter()
    render_clip(scene)
    assert time.perf_counter() - start < 0.5


def test_shapes_stay_in_the_box_and_keep_bouncing():
    for seed in range(6):
        scene = Scene.sample(seed, seconds=8)
        height, width = scene.size
        positions = scene.positions(np.linspace(0, 8, 2000))
        for shape, track in zip(scene.shapes, positions):
            half, top, bottom = extents(shape.kind, shape.size)
            assert track[:, 0].min() >= half - 1e-6 and track[:, 0].max() <= width - half + 1e-6
            assert track[:, 1].min() >= top - 1e-6 and track[:, 1].max() <= height - bottom + 1e-6
        for index in range(len(scene.shapes)):
            # A fall from the full height lasts 2 * sqrt(2 / 4) = 1.4 s; a shape at rest
            # would stop landing (or land ever faster, which the simulation refuses).
            floors = [0.0] + [i.time for i in scene.impacts if i.shape == index and i.wall == "floor"] + [8.0]
            assert max(np.diff(floors)) < 2.0 and len(floors) >= 6, "a shape came to rest"


def test_impacts_happen_where_the_shape_touches_the_wall():
    scene = Scene.sample(4)
    height, width = scene.size
    walls = 0
    for impact in scene.impacts:
        shape = scene.shapes[impact.shape]
        half, top, bottom = extents(shape.kind, shape.size)
        x, y = scene.positions(np.array([impact.time]))[impact.shape, 0]
        assert (x, y) == pytest.approx(impact.position, abs=1e-6)
        expected = {"left": (0, half), "right": (0, width - half), "floor": (1, height - bottom), "ceiling": (1, top)}
        assert impact.wall in WALLS + ("shape",)
        if impact.wall == "shape":
            other = scene.shapes[impact.other]
            assert impact.other != impact.shape and other is not shape
        else:
            axis, value = expected[impact.wall]
            assert impact.position[axis] == pytest.approx(value, abs=1e-6)
            walls += 1
        assert impact.speed > 0
    assert walls >= 10


def test_frames_show_the_true_positions_and_kinds(clip):
    tracks = track_shapes(clip.frames)
    assert sorted(tracks) == sorted(clip.truth.colours)
    for colour, kind, truth in zip(clip.truth.colours, clip.truth.kinds, clip.truth.positions):
        assert tracks[colour].present.all()
        assert tracks[colour].kind == kind
        # Anti-aliased edges put the coverage centroid on the true centroid.
        assert np.abs(tracks[colour].positions - truth).max() < 0.25
        assert np.median(np.abs(tracks[colour].positions - truth)) < 0.1  # 4x4 supersampled coverage
    frame = clip.frames[0]
    assert tuple(frame[0, 0]) == (20, 20, 28)
    assert {tuple(COLOURS[c]) for c in clip.truth.colours} <= {tuple(p) for p in frame.reshape(-1, 3)}


def test_each_tone_starts_at_the_first_sample_after_its_impact():
    scene = Scene.sample(11)  # one shape
    assert len(scene.shapes) == 1
    first = scene.impacts[0].time
    for rate, stereo in ((AUDIO_RATE, True), (MEL_RATE, False)):
        audio = np.atleast_2d(render_audio(scene, rate, stereo, noise_level=0.0))
        onset = math.ceil(first * rate)
        assert not audio[:, :onset].any()
        assert np.abs(audio[:, onset:onset + 1]).max() > 0
        # Every later impact adds a tone there too: the sound jumps on the impact sample.
        for impact in scene.impacts[1:]:
            n = math.ceil(impact.time * rate)
            before = np.abs(audio[:, n - 24:n]).max()
            after = np.abs(audio[:, n:n + 24]).max()
            assert after > 1.5 * before


def test_shape_pitches_are_far_apart():
    semitones = sorted(12 * math.log2(p) for p in PITCHES.values())
    assert min(np.diff(semitones)) >= 6


def test_detected_sound_onsets_match_the_impact_times():
    for seed in (11, 12, 9):
        scene = Scene.sample(seed)
        clip = render_clip(scene)
        onsets = audio_onsets(clip.audio_16k, MEL_RATE)
        times = np.array([o.time for o in onsets])
        # Tones of one pitch closer than MERGE_S are one onset to the ear (the first).
        heard = []
        for impact in scene.impacts:
            kind = scene.shapes[impact.shape].kind
            if not any(scene.shapes[h.shape].kind == kind and impact.time - h.time < MERGE_S for h in heard):
                heard.append(impact)
        pitches = np.array([o.pitch for o in onsets])
        errors = []
        for impact in heard:
            # Two shapes meeting ring at once: the onset of this shape's pitch counts.
            # Within a semitone (the world's pitches are 9 apart): two tones of one pitch
            # starting a few ms apart beat and bend the estimate by up to ~70 cents.
            same_pitch = np.abs(12 * np.log2(pitches / PITCHES[scene.shapes[impact.shape].kind])) < 1
            errors.append(np.abs(times[same_pitch] - impact.time).min())
        assert max(errors) < 5e-3 and np.median(errors) < 1e-3
        assert len(onsets) == len(heard)


def test_loudness_follows_speed_and_pan_follows_x():
    scene = Scene.sample(11)
    audio = render_audio(scene, AUDIO_RATE, stereo=True, noise_level=0.0)
    amplitudes = [impact_amplitude(scene, i) for i in scene.impacts]
    speeds = [i.speed for i in scene.impacts]
    assert np.all(np.diff(np.array(amplitudes)[np.argsort(speeds)]) >= 0)
    assert max(amplitudes) > 1.5 * min(amplitudes)
    for impact in scene.impacts:
        if impact.wall in ("left", "right"):
            n = math.ceil(impact.time * AUDIO_RATE)
            left, right = np.abs(audio[:, n:n + 240]).max(axis=1)
            assert (left > 2 * right) if impact.wall == "left" else (right > 2 * left)


def test_mel_input_of_the_stereo_render_is_the_mono_render():
    scene = Scene.sample(5)
    stereo = render_audio(scene, AUDIO_RATE, stereo=True, noise_level=0.0)
    mono = render_audio(scene, MEL_RATE, stereo=False, noise_level=0.0)
    converted = to_mel_input(stereo, AUDIO_RATE)
    assert converted.shape == mono.shape
    # Band-limiting rounds off the tones' first samples a little; the FFT resampler treats
    # the clip as periodic (a tone cut at the end rings at the start: 10 ms left out).
    difference = (converted - mono)[160:-160]
    assert np.abs(difference).max() < 0.03 * np.abs(mono).max()
    assert np.sqrt(np.mean(difference ** 2)) < 0.01 * np.sqrt(np.mean(mono ** 2))
    assert np.array_equal(to_mel_input(mono, MEL_RATE), mono)


# The prompt language ----------------------------------------------------------------------


def test_prompts_name_the_shapes_and_never_positions():
    seen_words = set()
    for seed in range(40):
        clip_scene = Scene.sample(seed, seconds=1 / 3)
        prompt = describe(clip_scene)
        seen_words |= set(words(prompt))
        assert sorted(parse(prompt)) == sorted((s.colour, s.kind) for s in clip_scene.shapes)
    assert {"ball", "box", "cube", "circle", "wedge", "bounce", "falls", ","} <= seen_words
    for place in ("left", "right", "top", "bottom", "corner", "middle", "above", "below"):
        assert place not in VOCABULARY


def test_parser_resolves_synonyms():
    assert parse("a red ball , a blue cube and a white wedge hop around") == (
        ("red", "circle"), ("blue", "square"), ("white", "triangle"))
    assert parse("A Green Box falls.") == (("green", "square"),)
    assert parse("") == ()


def test_unknown_word_names_the_word_and_the_vocabulary():
    with pytest.raises(ValueError, match=r"'purple'.*allowed words: a and , around"):
        parse("a purple ball bounces")


# The prompt encoder -------------------------------------------------------------------------


def test_prompt_encoder_gives_fixed_length_text_contexts():
    torch.manual_seed(0)
    encoder = WorldPromptEncoder(WorldPromptConfig(caption_channels=24, width=32, heads=2)).eval()
    prompts = ["a red ball bounces", "a blue cube , a green disc and a white wedge hop around", ""]
    text = encoder(prompts)
    text.validate(24, batch=3)
    assert text.video.shape == text.audio.shape == (3, 16, 24)
    assert text.mask[0].tolist() == [True] * 4 + [False] * 12
    assert text.mask[1].sum() == 13
    assert torch.all(text.video[0, 4:] == 0) and torch.all(text.audio[0, 4:] == 0)
    assert not torch.allclose(text.video, text.audio)
    # Padding does not leak: a prompt encodes the same alone and in a batch.
    alone = encoder(prompts[0])
    assert torch.allclose(alone.video[0], text.video[0], atol=1e-6)
    # Padding is masked: what sits in the slots after a prompt does not reach it.
    with torch.no_grad():
        encoder.position_embedding[4:] += 1.0
        encoder.token_embedding.weight[0] += 1.0
    assert torch.allclose(encoder(prompts[0]).video[0], text.video[0], atol=1e-6)
    # Word order matters (positions are embedded): "red" reads differently first and
    # second, though a transformer without positions would give it the same vector.
    first = encoder("a red ball and a blue cube bounce").video[0, 1]
    second = encoder("a blue cube and a red ball bounce").video[0, 5]
    assert not torch.allclose(first, second, atol=1e-3)


def test_empty_prompt_is_the_learned_null_context():
    torch.manual_seed(1)
    encoder = WorldPromptEncoder()
    text = encoder(["", "a red ball bounces"])
    assert torch.equal(text.video[0], encoder.null_video) and torch.equal(text.audio[0], encoder.null_audio)
    assert text.mask[0].all()
    text.video[0].sum().backward()
    assert encoder.null_video.grad is not None and encoder.null_video.grad.abs().sum() > 0
    assert encoder.token_embedding.weight.grad is None or encoder.token_embedding.weight.grad.abs().sum() == 0


def test_prompt_encoder_is_deterministic_and_trains():
    torch.manual_seed(2)
    first = WorldPromptEncoder()
    torch.manual_seed(2)
    second = WorldPromptEncoder()
    a, b = first("a yellow box falls"), second("a yellow box falls")
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    (a.video.square().sum() + a.audio.square().sum()).backward()
    assert first.token_embedding.weight.grad[1:].abs().sum() > 0


def test_prompt_encoder_rejects_unknown_words_and_long_prompts():
    encoder = WorldPromptEncoder(WorldPromptConfig(max_tokens=5))
    with pytest.raises(ValueError, match="'sphere'"):
        encoder("a red sphere bounces")
    with pytest.raises(ValueError, match="at most 5"):
        encoder("a red ball and a blue box bounce")


def test_prompt_encoder_config_round_trips_through_metadata():
    config = WorldPromptConfig(caption_channels=48, width=32, num_layers=1, heads=2, max_tokens=20)
    assert WorldPromptConfig.from_metadata(config.to_metadata()) == config
    assert WorldPromptConfig.from_metadata({}) == WorldPromptConfig()
    with pytest.raises(ConfigError, match="another vocabulary"):
        WorldPromptConfig.from_metadata({"vocabulary": ["a", "red"]})
    with pytest.raises(ConfigError, match="divisible"):
        WorldPromptConfig(width=30, heads=4)
    with pytest.raises(ConfigError, match="positive"):
        WorldPromptConfig.from_metadata({"num_layers": 0})
