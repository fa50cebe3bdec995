"""A synthetic sounding world: shapes that bounce in a box and ring when they hit.

``scene`` simulates and holds the ground truth, ``render`` draws frames and sound,
``grammar`` is the prompt language, ``detect`` and ``metrics`` score any decoded clip,
``prompts`` (the only module that needs torch) is the learned prompt encoder.
"""

from .grammar import VOCABULARY, describe, parse, words
from .render import Clip, Truth, render_clip, resample, to_mel_input
from .scene import AUDIO_RATE, COLOURS, FPS, KINDS, MEL_RATE, PITCHES, Impact, Scene, Shape, frame_count

__all__ = [
    "AUDIO_RATE", "COLOURS", "FPS", "KINDS", "MEL_RATE", "PITCHES", "VOCABULARY",
    "Clip", "Impact", "Scene", "Shape", "Truth",
    "describe", "frame_count", "parse", "render_clip", "resample", "to_mel_input", "words",
]
