"""Detectors for any clip of the world: decoded frames (uint8 [N, H, W, 3]) and sound.

Tracks come from colour segmentation (one shape per colour, as the world draws them);
visual impacts are sudden velocity changes of a track (a reversal at a wall, a kink
where two shapes meet), timed between frames; audio onsets are sudden rises of
narrow-band energy, timed to about a millisecond, each with the pitch of the energy it
added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .scene import BACKGROUND, COLOURS, FPS

# Events of one shape closer than this are one event: a corner hit (a wall and the floor
# at once) is one sound to the ear and one bounce to the tracker.
MERGE_S = 0.06
DUPLICATE_S = 0.01
# An onset adding less than this share of the loudest sound right after it is the
# spectral splash of another tone's start (the world's tones differ by 4x at most: the
# quietest impact is 1/4 of the loudest).
SPLASH = 0.12


@dataclass(frozen=True)
class Track:
    colour: str
    positions: np.ndarray  # [N, 2] centroid (x, y) px, NaN where absent
    present: np.ndarray  # [N] bool
    kind: str | None  # "circle" / "square" / "triangle" from the blob's fill of its box


@dataclass(frozen=True)
class VisualImpact:
    time: float  # s, between frames
    colour: str
    axis: str  # the velocity component that changed: "x" or "y"


@dataclass(frozen=True)
class Onset:
    time: float  # s
    pitch: float  # Hz, of the energy the onset added
    amplitude: float  # estimated peak amplitude of the new tone


# Shapes ------------------------------------------------------------------------------


def _kind_from_fill(fill: float) -> str:
    # Fill of the bounding box: square 1, circle pi/4, triangle 1/2.
    if fill > 0.89:
        return "square"
    return "circle" if fill > 0.65 else "triangle"


def _palette_lut(references: list[np.ndarray], max_distance: float) -> np.ndarray:
    """Label (index into ``references``, or -1) of every colour on a 32-level grid per channel."""
    levels = np.arange(32, dtype=np.float32) * 8 + 3.5
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    distance = ((grid[:, None, :] - np.stack(references)[None]) ** 2).sum(-1)
    label = distance.argmin(1).astype(np.int8)
    label[distance.min(1) > max_distance ** 2] = -1
    return label


def _box3(mask: np.ndarray) -> np.ndarray:
    """Count of set pixels in each pixel's 3x3 neighbourhood, per frame."""
    m = np.pad(mask, ((0, 0), (1, 1), (1, 1))).astype(np.uint8)
    rows = m[:, :-2] + m[:, 1:-1] + m[:, 2:]
    return rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]


def _span(any_along: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last set index along the last axis (per frame)."""
    first = any_along.argmax(-1)
    last = any_along.shape[-1] - 1 - any_along[..., ::-1].argmax(-1)
    return first, last


def track_shapes(frames: np.ndarray, palette: Mapping[str, tuple[int, int, int]] = COLOURS,
                 background: tuple[int, int, int] = BACKGROUND, max_distance: float = 80.0,
                 min_area: int = 6, margin: int = 6, min_presence: float = 0.1) -> dict[str, Track]:
    """One track per palette colour seen in at least ``min_presence`` of the frames."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    names = list(palette)
    references = [np.asarray(palette[name], np.float32) for name in names] + [np.asarray(background, np.float32)]
    q = frames >> 3
    codes = (q[..., 0].astype(np.int32) << 10) | (q[..., 1].astype(np.int32) << 5) | q[..., 2]
    label = _palette_lut(references, max_distance)[codes]
    count, height, width = frames.shape[:3]
    row_index = np.arange(height)[None, :, None]
    col_index = np.arange(width)[None, None, :]
    tracks = {}
    for index, name in enumerate(names):
        mask = label == index
        # Inside a shape a pixel's whole 3x3 neighbourhood has its colour (one stray
        # allowed); in noise or codec ringing hardly ever.
        core = mask & (_box3(mask) >= 8)
        present = core.sum((1, 2)) >= min_area
        if present.mean() < min_presence:
            continue
        # Pixels near the core weigh by how much of the colour they hold over the
        # background, so anti-aliased edges (and thin tips the 3x3 test drops) count by
        # their coverage and an exact render gives the exact area centroid.
        r0, r1 = _span(core.any(2))
        c0, c1 = _span(core.any(1))
        window = ((row_index >= (r0 - margin)[:, None, None]) & (row_index <= (r1 + margin)[:, None, None])
                  & (col_index >= (c0 - margin)[:, None, None]) & (col_index <= (c1 + margin)[:, None, None])
                  & present[:, None, None] & ((label == index) | (label == len(names)) | (label == -1)))
        colour = references[index] - references[-1]
        offsets = frames[window].astype(np.float32) - references[-1]
        share = (offsets @ colour) / float(colour @ colour)
        # Only mixtures of this colour and the background (not a neighbour's blur) count.
        mixed = np.linalg.norm(offsets - share[:, None] * colour, axis=1) <= max_distance
        weight = np.zeros(frames.shape[:3], np.float32)
        weight[window] = np.where(mixed & (share > 0.15), np.minimum(share, 1.0), 0.0)
        pixels = weight > 0.5
        area = weight.sum((1, 2)).astype(np.float64)
        safe = np.maximum(area, 1e-9)
        positions = np.stack([(weight.sum(1) * col_index[0]).sum(1) / safe + 0.5,
                              (weight.sum(2) * row_index[0, :, 0]).sum(1) / safe + 0.5], -1)
        positions[~present] = np.nan
        pr0, pr1 = _span(pixels.any(2))
        pc0, pc1 = _span(pixels.any(1))
        fills = pixels.sum((1, 2)) / ((pr1 - pr0 + 1) * (pc1 - pc0 + 1))
        # Frames where the shape is whole (not cut by a codec or the frame edge) vote on its kind.
        whole = present & (area >= 0.8 * np.median(area[present]))
        votes = [_kind_from_fill(f) for f in fills[whole]]
        kind = max(set(votes), key=votes.count) if votes else None
        tracks[name] = Track(name, positions, present, kind)
    return tracks


# Visual impacts ------------------------------------------------------------------------


def merge_events(events: list, alike) -> list:
    """Keep the earliest of each run of alike events closer than MERGE_S."""
    kept = []
    for event in sorted(events, key=lambda e: e.time):
        if any(alike(k, event) and event.time - k.time < MERGE_S for k in kept):
            continue
        kept.append(event)
    return kept


def visual_impacts(tracks: Mapping[str, Track], fps: float = FPS, min_jump_px: float = 2.0,
                   fit_frames: int = 4) -> list[VisualImpact]:
    """Impacts of every track, timed where the flight before meets the flight after."""
    events = []
    for track in tracks.values():
        for axis, name in ((0, "x"), (1, "y")):
            p = track.positions[:, axis]
            accel = p[2:] - 2 * p[1:-1] + p[:-2]  # at frames 1 .. N-2
            if np.isfinite(accel).sum() < 3:
                continue
            # Between impacts the second difference is constant (gravity on y, 0 on x).
            curvature = float(np.nanmedian(accel))
            deviation = np.abs(accel - curvature)
            noise = float(np.nanmedian(deviation))
            hot = np.flatnonzero(np.nan_to_num(deviation, nan=0.0) > max(0.3 * min_jump_px, 4 * noise)) + 1
            groups = np.split(hot, np.flatnonzero(np.diff(hot) > 1) + 1) if hot.size else []
            n = np.arange(p.size, dtype=np.float64)
            groups = [g for g in groups if abs(float(np.nansum(accel[g - 1] - curvature))) >= min_jump_px]
            for index, group in enumerate(groups):
                first, last = int(group[0]), int(group[-1])
                if last - first > 1:
                    # More than two straying frames: several impacts a frame or two apart
                    # (a bounce, then a collision) with no clean flight between them. A
                    # kink at first + f (0 <= f < 1) strays by (1 - f) and f of its slope
                    # change on its two frames: time the first impact from them.
                    d0, d1 = np.nan_to_num(accel[first - 1: first + 1] - curvature)
                    t = first + float(np.clip(d1 / (d0 + d1), 0.0, 1.0)) if d0 + d1 else float(first)
                    events.append(VisualImpact(t / fps, track.colour, name))
                    continue
                # One impact between the last frame of the flight before (``first``) and
                # the first frame of the flight after (``last``): fit both with the common
                # curvature, within the flights' own frames, and intersect them.
                previous = int(groups[index - 1][-1]) if index else 0
                following = int(groups[index + 1][0]) if index + 1 < len(groups) else p.size - 1
                before = np.arange(max(first - fit_frames + 1, previous), first + 1)
                after = np.arange(last, min(last + fit_frames, following + 1))
                before, after = before[np.isfinite(p[before])], after[np.isfinite(p[after])]
                t = float(first)
                if before.size >= 2 and after.size >= 2:
                    lines = []
                    for side in (before, after):
                        slope, offset = np.polyfit(n[side], p[side] - 0.5 * curvature * n[side] ** 2, 1)
                        lines.append((slope, offset))
                    (slope_b, offset_b), (slope_a, offset_a) = lines
                    if abs(slope_b - slope_a) >= 0.5 * min_jump_px:
                        t = float(np.clip((offset_a - offset_b) / (slope_b - slope_a), first - 1, last + 1))
                events.append(VisualImpact(t / fps, track.colour, name))
    return merge_events(events, lambda a, b: a.colour == b.colour)


# Audio onsets ----------------------------------------------------------------------------


def _bands(bin_hz: float, low: float = 200.0, high: float = 5000.0) -> list[tuple[int, int]]:
    """Quarter-octave bands as FFT bin ranges [start, end), at least one bin each."""
    edges = np.unique(np.round(low * 2.0 ** (np.arange(0, 4 * math.log2(high / low) + 1) / 4) / bin_hz).astype(int))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _added_pitch(audio: np.ndarray, sample_rate: int, start: int, low_hz: float, high_hz: float) -> tuple[float, float]:
    """Frequency in [low_hz, high_hz] whose magnitude rose most from the 32 ms before
    ``start`` to the 32 ms after, and that rise as a share of the loudest frequency
    (above 100 Hz) after ``start``."""
    length = int(0.032 * sample_rate)
    window = np.hanning(length)
    n_fft = 1 << int(math.ceil(math.log2(sample_rate / 2.0)))  # about 2 Hz bins
    padded = np.pad(audio, length)
    start += length
    after = np.abs(np.fft.rfft(padded[start: start + length] * window, n_fft))
    before = np.abs(np.fft.rfft(padded[start - length: start] * window, n_fft))
    rise = after - before
    lo, hi = int(low_hz * n_fft / sample_rate), int(math.ceil(high_hz * n_fft / sample_rate)) + 1
    peak = lo + int(np.argmax(rise[lo:hi]))
    loudest = float(after[int(100 * n_fft / sample_rate):].max())
    share = float(rise[peak]) / max(loudest, 1e-12)
    # A tone still ringing at the same pitch bends the difference, not the spectrum
    # after the onset: read the frequency off that spectrum's peak next to the rise's.
    near = max(int(0.03 * peak), 2)
    peak = peak - near + int(np.argmax(after[peak - near: peak + near + 1]))
    shift = 0.0
    if 0 < peak < after.size - 1:
        a, b, c = np.log(after[peak - 1: peak + 2] + 1e-12)
        if a - 2 * b + c < 0:
            shift = 0.5 * (a - c) / (a - 2 * b + c)
    return float((peak + shift) * sample_rate / n_fft), share


def audio_onsets(audio: np.ndarray, sample_rate: int, snr: float = 8.0, rise: float = 2.0) -> list[Onset]:
    """Tone onsets of a waveform ([T] or [channels, T]; channels are averaged)."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    window_len = int(round(0.016 * sample_rate))
    if audio.size < 2 * window_len:
        return []
    hop = max(int(round(0.001 * sample_rate)), 1)
    window = np.hanning(window_len)
    half = window_len // 2
    padded = np.pad(audio, (half, half))
    starts = np.arange(0, audio.size, hop)
    frames = np.lib.stride_tricks.sliding_window_view(padded, window_len)[starts]
    # Frame k is centred on sample starts[k]; magnitudes as sine amplitudes.
    spectrum = np.abs(np.fft.rfft(frames * window, axis=-1)) * (2.0 / window.sum())
    lag = max(window_len // hop, 1)  # one window back: before the new tone reached it
    refractory = int(MERGE_S * sample_rate / hop)
    bin_hz = sample_rate / window_len
    candidates = []
    for b0, b1 in _bands(bin_hz):
        if b1 > spectrum.shape[1]:
            break
        band = spectrum[:, b0:b1].max(axis=1)
        floor = max(float(np.percentile(band, 20)), 1e-7)
        earlier = np.concatenate([np.full(lag, np.inf), band[:-lag]])
        active = (band > snr * floor) & (band > rise * earlier)
        k = 1
        while k < active.size:
            if not (active[k] and not active[k - 1]):
                k += 1
                continue
            stop = min(k + 2 * lag, band.size)
            peak_frame = k + int(np.argmax(band[k:stop]))
            peak_bin = b0 + int(np.argmax(spectrum[peak_frame, b0:b1]))
            trace = spectrum[max(k - lag, 0): peak_frame + 1, peak_bin]
            # With a symmetric window the magnitude of a tone switched on at t0 passes
            # half its rise when the window is centred on t0.
            level = 0.5 * (trace[0] + trace[-1])
            up = int(np.argmax(trace >= level))
            frac = 0.0 if up == 0 else (level - trace[up - 1]) / max(trace[up] - trace[up - 1], 1e-12)
            time = (max(k - lag, 0) + (up - 1 + frac if up else 0.0)) * hop / sample_rate
            low, high = (b0 - 0.5) * bin_hz, (b1 - 0.5) * bin_hz
            pitch, share = _added_pitch(audio, sample_rate, int(round(time * sample_rate)), low / 1.25, high * 1.25)
            # A tone's start splashes into the bands around it in a short window; over
            # 32 ms the energy it adds there is tiny, or peaks outside the band (at the
            # edge of the search range). Only the band holding a real peak reports it.
            if low <= pitch < high and share >= SPLASH:
                candidates.append(Onset(float(time), pitch, float(band[peak_frame])))
                k = max(k + refractory, peak_frame + 1)
            else:
                k += 1  # a splash does not hide a real onset right after it
    same_pitch = lambda a, b: abs(math.log(a.pitch / b.pitch)) < 0.03  # noqa: E731
    distinct = []
    for onset in sorted(candidates, key=lambda o: -o.amplitude):
        # A tone on a band edge is reported by both bands, at almost the same time.
        if not any(abs(onset.time - o.time) < DUPLICATE_S and same_pitch(onset, o) for o in distinct):
            distinct.append(onset)
    # Tones of one pitch closer than MERGE_S are one sound: the first.
    return merge_events(distinct, same_pitch)
