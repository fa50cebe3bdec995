"""The quality benchmark's colour-blind blob and tone measures read what they claim to, and its
reference line scores the world itself as found."""

import json

import numpy as np
import pytest
import torch

from benchmarks.quality import blob_scores, boundaries, codec_clip, main, tone_scores
from omniforcing_core import BlockLayout
from omniforcing_core.decoders.video_stream import exact_lookahead_latents
from omniforcing_core.decoders.video_vae import pixels_to_frames
from omniforcing_core.demo_model import DEMO_BASE, demo_available, demo_path
from omniforcing_core.train.codecs import EVAL_SEEDS, encode_clip, load_codecs
from omniforcing_core.world import Scene, render_clip
from omniforcing_core.world.render import render_audio
from omniforcing_core.world.scene import PITCHES


def test_blob_seam_ratio_sees_a_jump_at_the_seams_and_not_in_a_rendered_clip():
    clip = render_clip(Scene.sample(0, 3.0, (128, 192)))
    seams = boundaries(BlockLayout.released(), clip.frames.shape[0])
    assert seams == [25, 49]
    smooth = blob_scores(clip.frames, seams)
    assert 0.01 < smooth["blob.foreground_share"] < 0.1 and smooth["blob.seam_ratio"] < 1.5
    # Every block after the first drawn 8 px further right: the track jumps at each seam.
    shifted = clip.frames.copy()
    for start in seams:
        shifted[start:] = np.roll(shifted[start:], 8, axis=2)
    assert blob_scores(shifted, seams)["blob.seam_ratio"] > 4


def test_paper_layout_seams_follow_its_blocks():
    assert boundaries(BlockLayout.paper(), 73) == [1, 25, 49]


def test_tone_scores_count_the_world_s_tones_and_their_pitches():
    clip = render_clip(Scene.sample(0, 3.0, (128, 192)))
    truth = tone_scores(clip.audio_24k)
    # Impacts at once (two shapes meeting) sound as one onset.
    assert len(clip.truth.impacts) / 3.0 >= truth["tones.per_s"] >= 0.5 * len(clip.truth.impacts) / 3.0
    assert truth["tones.world_pitch_share"] == 1.0
    # The same impacts a tritone off the world's pitches: as many tones, none at a world pitch.
    off = render_audio(clip.scene, 24_000, stereo=True, pitches={k: v * 2 ** 0.5 for k, v in PITCHES.items()})
    shifted = tone_scores(off)
    assert abs(shifted["tones.per_s"] - truth["tones.per_s"]) < 0.5 and shifted["tones.world_pitch_share"] < 0.1
    assert tone_scores(np.zeros((2, 24_000), dtype=np.float32)) == {"tones.per_s": 0.0, "tones.world_pitch_share": 0.0}


def test_tone_scores_hear_whether_the_sound_follows_the_prompt():
    clip = render_clip(Scene.sample(3, 3.0, (128, 192)))  # two wedges and a cube: no ball
    assert set(clip.truth.kinds) == {"triangle", "square"}
    truth = tone_scores(clip.audio_24k, prompt=clip.prompt)
    assert truth["tones.prompt_pitch_share"] == 1.0 and truth["tones.prompt_recall"] == 1.0
    # The same sound under a prompt naming only the kind the scene lacks: none of it follows.
    ball = tone_scores(clip.audio_24k, prompt="a red ball bounces")
    assert ball["tones.prompt_pitch_share"] == 0.0 and ball["tones.prompt_recall"] == 0.0
    # Each kind rings at its own pitch: naming one of the two gets its tones' share, and
    # the two shares make the whole.
    wedge = tone_scores(clip.audio_24k, prompt="a red wedge bounces")["tones.prompt_pitch_share"]
    cube = tone_scores(clip.audio_24k, prompt="a red cube bounces")["tones.prompt_pitch_share"]
    assert 0.0 < wedge < 1.0 and wedge + cube == pytest.approx(1.0)


@pytest.mark.skipif(not demo_available(), reason="the trained demo files are not in omniforcing_core/assets/demo")
def test_the_codecs_line_decodes_with_the_look_ahead_asked_for():
    codecs = load_codecs(demo_path(DEMO_BASE))
    clip = render_clip(Scene.sample(EVAL_SEEDS, 3.0, (128, 192)))
    with torch.no_grad():
        whole = pixels_to_frames(codecs.video_vae.decode(encode_clip(codecs, clip)[0])).clamp(0, 1).numpy()
    whole = np.round(whole * 255).astype(np.int16)

    def off(lookahead: int) -> int:
        return int(np.abs(codec_clip(codecs, clip, lookahead)["frames"].astype(np.int16) - whole).max())

    # The exact look-ahead streams the whole-clip decode (to a level); none shows seams (~200 levels).
    assert off(exact_lookahead_latents(codecs.video_vae.config)) <= 1 < 50 < off(0)
