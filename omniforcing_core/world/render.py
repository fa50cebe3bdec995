"""Pictures and sound of a scene: flat shapes on a dark background, a tone per impact.

Each impact starts a decaying sine at the shape's pitch with zero phase at the exact
impact time, so the tone's first non-zero sample is the first sample at or after it
(at any sample rate). Loudness follows the impact speed; the stereo pan follows x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .grammar import describe
from .scene import AUDIO_RATE, BACKGROUND, COLOURS, MEL_RATE, PITCHES, Impact, Scene, extents

TONE_DECAY_S = 0.03
TONE_LENGTH_S = 0.2
TONE_FADE_S = 0.02  # a linear fade before the cut, so the tone ends without a click
PEAK_AMPLITUDE = 0.3  # three tones at once stay below full scale
QUIETEST = 0.25  # share of the peak amplitude for the softest impact
NOISE_LEVEL = 0.003  # background noise std, about -50 dBFS


@dataclass(frozen=True)
class Truth:
    positions: np.ndarray  # [shapes, N, 2] centroid (x, y) px at each pixel frame
    impacts: tuple[Impact, ...]
    kinds: tuple[str, ...]
    colours: tuple[str, ...]

    def to_dict(self) -> dict:
        """Plain lists and numbers (JSON), e.g. to store beside encoded latents."""
        return {
            "kinds": list(self.kinds),
            "colours": list(self.colours),
            "positions": np.round(self.positions, 4).tolist(),
            "impacts": [dict(time=i.time, shape=i.shape, position=list(i.position), speed=i.speed,
                             wall=i.wall, other=i.other) for i in self.impacts],
        }


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # uint8 [N, H, W, 3], 24 fps
    audio_24k: np.ndarray  # float32 [2, T], the vocoder's rate and layout
    audio_16k: np.ndarray  # float32 [T16], mono, the mel path's input
    prompt: str
    truth: Truth
    scene: Scene


SUPERSAMPLING = 4  # per axis: edges are anti-aliased by pixel coverage


def _inside(kind: str, half: float, top: float, bottom: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    if kind == "circle":
        return dx * dx + dy * dy <= half * half
    if kind == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # Apex at dy = -top, base at dy = +bottom; the half width grows linearly.
    return (dy <= bottom) & (np.abs(dx) <= (dy + top) * half / (top + bottom))


def render_frames(scene: Scene) -> np.ndarray:
    height, width = scene.size
    frames = np.empty((scene.num_frames, height, width, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    background = np.asarray(BACKGROUND, np.float64)
    positions = scene.frame_positions()
    sub = (np.arange(SUPERSAMPLING) + 0.5) / SUPERSAMPLING
    for shape, track in zip(scene.shapes, positions):
        half, top, bottom = extents(shape.kind, shape.size)
        colour = np.asarray(COLOURS[shape.colour], np.float64)
        for frame, (x, y) in zip(frames, track):
            # Only the shape's bounding box is rasterised, at SUPERSAMPLING^2 points a pixel.
            r0, r1 = max(int(y - top) - 1, 0), min(int(y + bottom) + 2, height)
            c0, c1 = max(int(x - half) - 1, 0), min(int(x + half) + 2, width)
            dy = (np.arange(r0, r1)[:, None] + sub[None, :]).reshape(-1)[:, None] - y
            dx = (np.arange(c0, c1)[:, None] + sub[None, :]).reshape(-1)[None, :] - x
            inside = _inside(shape.kind, half, top, bottom, dx, dy)
            coverage = inside.reshape(r1 - r0, SUPERSAMPLING, c1 - c0, SUPERSAMPLING).mean((1, 3))
            region = frame[r0:r1, c0:c1]
            touched = coverage > 0
            # Shapes never overlap, so an edge pixel mixes the shape with the background.
            mixed = background + coverage[..., None] * (colour - background)
            region[touched] = np.round(mixed[touched]).astype(np.uint8)
    return frames


def impact_amplitude(scene: Scene, impact: Impact) -> float:
    """Tone amplitude: linear in the impact speed, relative to a fall from the full height."""
    reference = math.sqrt(2.0 * scene.gravity * scene.size[0])
    loudness = min(impact.speed / reference, 1.0)
    return PEAK_AMPLITUDE * (QUIETEST + (1.0 - QUIETEST) * loudness)


def render_audio(scene: Scene, sample_rate: int, stereo: bool,
                 pitches: Mapping[str, float] = PITCHES, noise_level: float = NOISE_LEVEL) -> np.ndarray:
    """[2, T] (stereo, panned by x) or [T] mono float32 of ``scene.seconds`` seconds."""
    total = int(round(scene.seconds * sample_rate))
    channels = 2 if stereo else 1
    audio = np.zeros((channels, total))
    length = int(TONE_LENGTH_S * sample_rate)
    fade = int(TONE_FADE_S * sample_rate)
    envelope_cut = np.ones(length)
    envelope_cut[-fade:] = np.linspace(1.0, 0.0, fade)
    width = scene.size[1]
    for impact in scene.impacts:
        shape = scene.shapes[impact.shape]
        first = math.ceil(impact.time * sample_rate)
        n = np.arange(first, min(first + length, total))
        s = n / sample_rate - impact.time
        tone = np.sin(2.0 * math.pi * pitches[shape.kind] * s) * np.exp(-s / TONE_DECAY_S) * envelope_cut[: n.size]
        tone *= impact_amplitude(scene, impact)
        # Constant-power pan: full left at x = 0, full right at x = W; the mono path is
        # the mean of the two channels, as a downmix of the stereo output would be.
        angle = 0.5 * math.pi * min(max(impact.position[0] / width, 0.0), 1.0)
        left, right = math.sqrt(2.0) * math.cos(angle), math.sqrt(2.0) * math.sin(angle)
        if stereo:
            audio[0, n] += left * tone
            audio[1, n] += right * tone
        else:
            audio[0, n] += 0.5 * (left + right) * tone
    if noise_level > 0:
        noise = np.random.default_rng([scene.seed, sample_rate, channels])
        audio += noise_level * noise.standard_normal(audio.shape)
    audio = audio.astype(np.float32)
    return audio if stereo else audio[0]


def render_clip(scene: Scene, pitches: Mapping[str, float] = PITCHES, noise_level: float = NOISE_LEVEL) -> Clip:
    """Frames, both audio paths, the prompt and the ground truth of a scene."""
    truth = Truth(
        positions=scene.frame_positions(),
        impacts=scene.impacts,
        kinds=tuple(s.kind for s in scene.shapes),
        colours=tuple(s.colour for s in scene.shapes),
    )
    return Clip(
        frames=render_frames(scene),
        audio_24k=render_audio(scene, AUDIO_RATE, stereo=True, pitches=pitches, noise_level=noise_level),
        audio_16k=render_audio(scene, MEL_RATE, stereo=False, pitches=pitches, noise_level=noise_level),
        prompt=describe(scene),
        truth=truth,
        scene=scene,
    )


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling along the last axis (FFT method, for whole clips)."""
    audio = np.asarray(audio, dtype=np.float64)
    length_in = audio.shape[-1]
    length_out = int(round(length_in * rate_out / rate_in))
    spectrum = np.fft.rfft(audio, axis=-1)
    keep = min(spectrum.shape[-1], length_out // 2 + 1)
    resized = np.zeros(audio.shape[:-1] + (length_out // 2 + 1,), dtype=complex)
    resized[..., :keep] = spectrum[..., :keep]
    return (np.fft.irfft(resized, n=length_out, axis=-1) * (length_out / length_in)).astype(np.float32)


def to_mel_input(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Any waveform ([T] or [channels, T]) as the 16 kHz mono signal the mel path takes."""
    audio = np.asarray(audio, dtype=np.float32)
    mono = audio.mean(axis=0) if audio.ndim == 2 else audio
    return mono if sample_rate == MEL_RATE else resample(mono, sample_rate, MEL_RATE)
