"""Scores of a clip of the world, from its frames and sound alone (plain dicts of floats).

``detect_clip`` runs the detectors once; each metric reads the detections:
``av_sync`` (audio onsets against visual impacts), ``pitch_accuracy`` (the onset's pitch
against the shape that hit), ``prompt_adherence`` (shapes and colours against the
prompt), ``seam_continuity`` (track jumps at block boundaries against inside blocks).
Values that cannot be measured (no matched events, no tracks) are NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .detect import Onset, Track, VisualImpact, audio_onsets, merge_events, track_shapes, visual_impacts
from .grammar import parse
from .scene import FPS, PITCHES

NAN = float("nan")
# Long enough to pair simultaneous hits by pitch, short enough that a wrong pitch
# cannot pull an onset away from the impact it belongs to.
PITCH_PENALTY_S = 0.01


@dataclass(frozen=True)
class Detections:
    tracks: dict[str, Track]
    impacts: tuple[VisualImpact, ...]
    onsets: tuple[Onset, ...]
    num_frames: int
    fps: float

    @property
    def duration(self) -> float:
        return (self.num_frames - 1) / self.fps


def detect_clip(frames: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float = FPS) -> Detections:
    """Tracks, visual impacts and audio onsets of decoded frames [N, H, W, 3] (uint8)
    and a waveform [T] or [channels, T] at ``sample_rate``."""
    tracks = track_shapes(frames)
    return Detections(tracks, tuple(visual_impacts(tracks, fps)), tuple(audio_onsets(audio, sample_rate)),
                      int(np.asarray(frames).shape[0]), float(fps))


def _sounding_impacts(det: Detections) -> list[VisualImpact]:
    """Visual impacts as the ear hears them: shapes of one kind ring at one pitch, so
    their impacts closer than MERGE_S are one sound (the earliest)."""
    def kind(impact: VisualImpact) -> str:
        return det.tracks[impact.colour].kind or impact.colour

    return merge_events(list(det.impacts), lambda a, b: kind(a) == kind(b))


def _cents_off(det: Detections, impact: VisualImpact, onset: Onset, pitches: Mapping[str, float]) -> float:
    """How far the onset's pitch is from that of the shape that hit (inf if unknown)."""
    kind = det.tracks[impact.colour].kind
    return abs(1200.0 * math.log2(onset.pitch / pitches[kind])) if kind and onset.pitch > 0 else math.inf


def clip_lag(impacts: Sequence[VisualImpact], onsets: Sequence[Onset], max_offset_s: float,
             tolerance_s: float = 0.02) -> float:
    """The sound's delay (s) that lines most impacts up with an onset: the clip's common
    offset, so that a shift longer than the gap between impacts is still seen as one."""
    offsets = np.array([o.time - i.time for i in impacts for o in onsets if abs(o.time - i.time) <= max_offset_s])
    if offsets.size == 0:
        return 0.0
    best, lag = -1, 0.0
    for candidate in offsets:
        support = offsets[np.abs(offsets - candidate) <= tolerance_s]
        if support.size > best or (support.size == best and abs(candidate) < abs(lag)):
            best, lag = support.size, float(candidate)
    return float(np.median(offsets[np.abs(offsets - lag) <= tolerance_s]))


def match_events(det: Detections, impacts: Sequence[VisualImpact], onsets: Sequence[Onset], max_offset_s: float,
                 pitches: Mapping[str, float] = PITCHES, tolerance_cents: float = 100.0) -> list[tuple[int, int]]:
    """Pairs (impact index, onset index), each event used once, those nearest the
    clip's lag first. When shapes hit at once, an onset of the hitting shape's pitch
    goes first: a pitch that does not fit counts as PITCH_PENALTY_S further off."""
    lag = clip_lag(impacts, onsets, max_offset_s)
    pairs = sorted(
        (abs(onset.time - impact.time - lag)
         + (0.0 if _cents_off(det, impact, onset, pitches) <= tolerance_cents else PITCH_PENALTY_S), i, j)
        for i, impact in enumerate(impacts) for j, onset in enumerate(onsets)
        if abs(onset.time - impact.time) <= max_offset_s
    )
    used_i, used_j, matched = set(), set(), []
    for _, i, j in pairs:
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            matched.append((i, j))
    return matched


def _scored(det: Detections, max_offset_s: float, edge_s: float):
    """Impacts, onsets and their matches, without events too near the clip's ends to
    be seen on both sides (a pair counts by its impact's time)."""
    impacts, onsets = _sounding_impacts(det), list(det.onsets)
    matched = match_events(det, impacts, onsets, max_offset_s)

    def inside(time: float) -> bool:
        return edge_s <= time <= det.duration - edge_s

    pairs = [(impacts[i], onsets[j]) for i, j in matched if inside(impacts[i].time)]
    matched_i, matched_j = {i for i, _ in matched}, {j for _, j in matched}
    missed = [x for i, x in enumerate(impacts) if i not in matched_i and inside(x.time)]
    extra = [x for j, x in enumerate(onsets) if j not in matched_j and inside(x.time)]
    return pairs, missed, extra


def av_sync(det: Detections, max_offset_s: float = 0.2, edge_s: float = 0.1) -> dict[str, float]:
    """Offsets (audio minus video, ms) of matched onsets; the share of visual impacts
    heard within one video frame; impacts without a sound (misses) and sounds without
    an impact (false alarms)."""
    pairs, missed, extra = _scored(det, max_offset_s, edge_s)
    offsets = np.array([1000.0 * (onset.time - impact.time) for impact, onset in pairs])
    impacts = len(pairs) + len(missed)
    frame_ms = 1000.0 / det.fps
    within = int((np.abs(offsets) <= frame_ms).sum()) if offsets.size else 0
    return {
        "impacts": float(impacts),
        "onsets": float(len(pairs) + len(extra)),
        "matched": float(len(pairs)),
        "misses": float(len(missed)),
        "false_alarms": float(len(extra)),
        "median_offset_ms": float(np.median(offsets)) if offsets.size else NAN,
        "median_abs_offset_ms": float(np.median(np.abs(offsets))) if offsets.size else NAN,
        "p90_abs_offset_ms": float(np.percentile(np.abs(offsets), 90)) if offsets.size else NAN,
        "within_frame_share": within / impacts if impacts else 0.0,
    }


def pitch_accuracy(det: Detections, pitches: Mapping[str, float] = PITCHES, tolerance_cents: float = 100.0,
                   max_offset_s: float = 0.2, edge_s: float = 0.1) -> dict[str, float]:
    """Of the matched impact-onset pairs, the share whose pitch is the hitting shape's."""
    pairs, _, _ = _scored(det, max_offset_s, edge_s)
    errors = np.array([_cents_off(det, impact, onset, pitches) for impact, onset in pairs])
    return {
        "pairs": float(errors.size),
        "correct_share": float((errors <= tolerance_cents).mean()) if errors.size else 0.0,
        "median_abs_cents": float(np.median(errors)) if errors.size else NAN,
    }


def prompt_adherence(det: Detections, prompt: str, min_presence: float = 0.5) -> dict[str, float]:
    """Shapes (colour and kind) on screen for at least ``min_presence`` of the clip
    against those the prompt names."""
    wanted = set(parse(prompt))
    seen = {(colour, track.kind) for colour, track in det.tracks.items() if track.present.mean() >= min_presence}
    hits = len(wanted & seen)
    wanted_colours = {colour for colour, _ in wanted}
    seen_colours = {colour for colour, _ in seen}
    precision = hits / len(seen) if seen else 0.0
    recall = hits / len(wanted) if wanted else 0.0
    return {
        "wanted": float(len(wanted)),
        "seen": float(len(seen)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if hits else 0.0,
        "colour_recall": len(wanted_colours & seen_colours) / len(wanted_colours) if wanted_colours else 0.0,
        "exact": float(wanted == seen),
    }


def released_boundaries(num_frames: int) -> list[int]:
    """First pixel frame of every block after the first in the released layout
    (block 0 has 25 frames, later blocks 24): 25, 49, 73, ..."""
    return list(range(1 + FPS, num_frames, FPS))


def seam_continuity(det: Detections, boundaries: Sequence[int] | None = None) -> dict[str, float]:
    """How far each track strays at a block's first frame from where its last two
    frames say it goes (constant-velocity prediction error, px), at the seams against
    inside the blocks (median over tracks and frames). ~1 for a seamless stream.

    Frames next to a detected impact are left out on both sides: a bounce changes the
    velocity, which the physics explains, while a seam moves the position (a jump that
    is no impact: it strays one way and then back)."""
    boundaries = released_boundaries(det.num_frames) if boundaries is None else list(boundaries)
    seam_errors, inside_errors = [], []
    skip = set(boundaries) | {b + 1 for b in boundaries}  # frames whose prediction spans a seam
    for colour, track in det.tracks.items():
        p = track.positions
        error = np.full(p.shape[0], np.nan)
        error[2:] = np.linalg.norm(p[2:] - 2 * p[1:-1] + p[:-2], axis=1)
        for impact in det.impacts:
            if impact.colour == colour:
                frame = int(math.floor(impact.time * det.fps))
                error[max(frame - 1, 0): frame + 3] = np.nan
        seam_errors += [error[b] for b in boundaries if 2 <= b < p.shape[0] and np.isfinite(error[b])]
        inside_errors += [e for n, e in enumerate(error) if n not in skip and np.isfinite(e)]
    seam = float(np.median(seam_errors)) if seam_errors else NAN
    inside = float(np.median(inside_errors)) if inside_errors else NAN
    return {
        "tracks": float(len(det.tracks)),
        "seams": float(len(seam_errors)),
        "seam_error_px": seam,
        "inside_error_px": inside,
        # A floor of a quarter pixel keeps still tracks from dividing by ~0.
        "ratio": seam / max(inside, 0.25) if seam_errors and inside_errors else NAN,
    }


def position_error(det: Detections, positions: np.ndarray, colours: Sequence[str]) -> dict[str, float]:
    """Distance (px) of the detected tracks from known positions [shapes, N, 2]; a
    shape without a track counts as missing in every frame."""
    errors, missing = [], 0
    for colour, truth in zip(colours, positions):
        track = det.tracks.get(colour)
        found = np.zeros(len(truth), bool) if track is None else track.present
        missing += int((~found).sum())
        if track is not None:
            errors.append(np.linalg.norm(track.positions[found] - truth[found], axis=1))
    errors = np.concatenate(errors) if errors else np.zeros(0)
    return {
        "mean_px": float(errors.mean()) if errors.size else NAN,
        "max_px": float(errors.max()) if errors.size else NAN,
        "missing_share": missing / max(positions.shape[0] * positions.shape[1], 1),
    }


def evaluate(frames: np.ndarray, audio: np.ndarray, sample_rate: int, prompt: str, fps: float = FPS,
             boundaries: Sequence[int] | None = None) -> dict[str, float]:
    """All metrics of one clip, keys prefixed by metric (``sync.median_offset_ms``...)."""
    det = detect_clip(frames, audio, sample_rate, fps)
    scores = {}
    for name, values in (("sync", av_sync(det)), ("pitch", pitch_accuracy(det)),
                         ("prompt", prompt_adherence(det, prompt)), ("seam", seam_continuity(det, boundaries))):
        scores.update({f"{name}.{key}": value for key, value in values.items()})
    return scores
