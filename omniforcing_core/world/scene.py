"""The world's physics and ground truth: flat shapes falling and bouncing in a box.

Units are pixels and seconds, y pointing down, the box is [0, W] x [0, H] with pixel
(row i, column j) centred at (j + 0.5, i + 0.5). Each shape moves ballistically between
impacts, so the simulation is event-driven and exact: impact times are roots of the
motion equations, not frame-quantised, and a sound started at an impact time is as
exact as the physics. Shapes also bounce off each other, so none ever hides another and every
track is whole in every frame.

Every length scales with the frame height, so a scene looks the same at any size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# The pack's clock (omniforcing_core.layout), repeated so the world stays numpy-only.
FPS = 24
VIDEO_TIME_COMPRESSION = 8
AUDIO_RATE = 24_000
MEL_RATE = 16_000
DEFAULT_SIZE = (128, 192)

KINDS = ("circle", "square", "triangle")
# Well-separated pure tones: 9 semitones apart, about 7-9 mel bins in a 64-bin 16 kHz mel.
PITCHES = {"circle": 523.25, "square": 880.0, "triangle": 1480.0}
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
}
BACKGROUND = (20, 20, 28)
WALLS = ("left", "right", "floor", "ceiling")

GRAVITY = 4.0  # frame heights / s^2
RESTITUTION = 0.85
# After a floor bounce a shape leaves at least this fast (heights / s): it hops again
# rather than coming to rest, so every clip keeps sounding.
MIN_HOP_SPEED = 1.1
MIN_SIDE_SPEED = 0.25  # heights / s, the same for walls
MIN_PART_SPEED = 1.0  # heights / s: two shapes that meet always part, never stick
MAX_EVENTS_PER_SECOND = 100  # per shape; a guard against endless collision chains


def extents(kind: str, size: float) -> tuple[float, float, float]:
    """(half width, top, bottom) of a shape around its position, its area centroid.

    A circle or square has half-size ``size``; the triangle (apex up, base 2*size wide,
    2*size tall) has its centroid a third of the height above the base.
    """
    if kind == "triangle":
        return size, 4.0 * size / 3.0, 2.0 * size / 3.0
    return size, size, size


def circumradius(kind: str, size: float) -> float:
    """Distance from the centroid to the farthest point: the shape's collision disc."""
    if kind == "square":
        return math.sqrt(2.0) * size
    return 4.0 * size / 3.0 if kind == "triangle" else size


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: float  # px, see ``extents``
    position: tuple[float, float]  # px at t = 0
    velocity: tuple[float, float]  # px / s at t = 0
    hop_speed: float  # px / s, the least upward speed after a floor bounce


@dataclass(frozen=True)
class Impact:
    time: float  # s, exact
    shape: int  # index into Scene.shapes
    position: tuple[float, float]  # px, the shape's centroid at the impact
    speed: float  # px / s, the closing speed along the normal just before the impact
    wall: str  # one of WALLS, or "shape" when two shapes meet
    other: int | None = None  # the other shape of a "shape" impact


@dataclass(frozen=True)
class Segment:
    """Ballistic flight from ``start``: p(t) = p0 + v (t - start) + g/2 (t - start)^2 on y."""

    start: float
    position: tuple[float, float]
    velocity: tuple[float, float]


@dataclass(frozen=True)
class Scene:
    seed: int
    seconds: float
    size: tuple[int, int]  # (H, W)
    shapes: tuple[Shape, ...]
    verb: str = "bounce"
    # Filled by __post_init__ from the rest: the exact trajectories.
    segments: tuple[tuple[Segment, ...], ...] = field(default=(), compare=False, repr=False)
    impacts: tuple[Impact, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        frames = frame_count(self.seconds)
        if frames is None:
            raise ValueError(
                f"a clip of {self.seconds} s does not fit the VAE's clock: 24 * seconds must be a "
                "multiple of 8 (pixel frames 1 + 8k), e.g. 1/3, 1, 5 s"
            )
        height, width = self.size
        if height < 32 or width < 32:
            raise ValueError(f"frame size {self.size} is too small; the world needs at least 32x32 pixels")
        for shape in self.shapes:
            if shape.kind not in KINDS or shape.colour not in COLOURS:
                raise ValueError(
                    f"a {shape.colour} {shape.kind} is not in the world: kinds {KINDS}, colours {tuple(COLOURS)}"
                )
        colours = [shape.colour for shape in self.shapes]
        if not colours or len(set(colours)) != len(colours):
            # The detectors track a shape by its colour.
            raise ValueError(f"a scene needs one or more shapes of distinct colours, got {colours}")
        segments, impacts = _simulate(self)
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "impacts", impacts)

    @property
    def gravity(self) -> float:
        return GRAVITY * self.size[0]

    @property
    def num_frames(self) -> int:
        return frame_count(self.seconds)

    @classmethod
    def sample(cls, seed: int, seconds: float = 5.0, size: tuple[int, int] = DEFAULT_SIZE,
               num_shapes: int | None = None) -> "Scene":
        """A random scene: 1-3 shapes of distinct colours, random kinds and starts."""
        rng = np.random.default_rng(seed)
        height, width = size
        count = int(rng.integers(1, 4)) if num_shapes is None else num_shapes
        if not 1 <= count <= len(COLOURS):
            raise ValueError(f"num_shapes must be 1..{len(COLOURS)}, got {count}")
        colours = rng.choice(list(COLOURS), size=count, replace=False)
        shapes: list[Shape] = []
        for colour in colours:
            kind = KINDS[int(rng.integers(len(KINDS)))]
            size_px = float(rng.uniform(0.06, 0.09) * height)
            half, top, bottom = extents(kind, size_px)
            reach = circumradius(kind, size_px)
            # Starts apart from the shapes placed so far (rejection sampling).
            for _ in range(1000):
                x = float(rng.uniform(half, width - half))
                y = float(rng.uniform(top + 0.1 * height, 0.55 * height))  # clear of the ceiling
                if all(math.hypot(x - o.position[0], y - o.position[1]) > reach + circumradius(o.kind, o.size) + 1
                       for o in shapes):
                    break
            else:
                raise ValueError(f"{count} shapes do not fit apart in the upper half of a {size} frame")
            vx = float(rng.choice((-1.0, 1.0)) * rng.uniform(0.3, 0.9) * height)
            vy = float(rng.uniform(-0.5, 0.5) * height)
            hop = float(rng.uniform(1.0, 1.3) * MIN_HOP_SPEED * height)
            shapes.append(Shape(kind, str(colour), size_px, (x, y), (vx, vy), hop))
        verb = ("bounce", "fall", "hop")[int(rng.integers(3))]
        return cls(seed=seed, seconds=seconds, size=(int(height), int(width)), shapes=tuple(shapes), verb=verb)

    def positions(self, times: np.ndarray) -> np.ndarray:
        """Centroids [len(shapes), len(times), 2] (x, y px) at the given times."""
        times = np.asarray(times, dtype=np.float64)
        out = np.empty((len(self.shapes), times.size, 2))
        for index, segments in enumerate(self.segments):
            starts = np.array([s.start for s in segments])
            which = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(segments) - 1)
            p0 = np.array([s.position for s in segments])[which]
            v0 = np.array([s.velocity for s in segments])[which]
            dt = times - starts[which]
            out[index, :, 0] = p0[:, 0] + v0[:, 0] * dt
            out[index, :, 1] = p0[:, 1] + v0[:, 1] * dt + 0.5 * self.gravity * dt * dt
        return out

    def frame_positions(self) -> np.ndarray:
        """Centroids at every pixel frame, [shapes, N, 2]."""
        return self.positions(np.arange(self.num_frames) / FPS)


def frame_count(seconds: float) -> int | None:
    """Pixel frames of a clip (24 * seconds + 1), or None where that is not 1 + 8k."""
    intervals = seconds * FPS
    if seconds <= 0 or abs(intervals - round(intervals)) > 1e-9 or round(intervals) % VIDEO_TIME_COMPRESSION:
        return None
    return int(round(intervals)) + 1


def _wall_hit(g: float, bounds: tuple[float, float, float, float], x: float, y: float,
              vx: float, vy: float) -> tuple[float, str]:
    """Time to the first wall a shape flying from (x, y) at (vx, vy) hits, and which."""
    left, right, ceiling, floor = bounds
    hits = [((-vy + math.sqrt(vy * vy + 2 * g * max(floor - y, 0.0))) / g, "floor")]
    if vx < 0:
        hits.append(((left - x) / vx, "left"))
    elif vx > 0:
        hits.append(((right - x) / vx, "right"))
    disc = vy * vy - 2 * g * (y - ceiling)
    if vy < 0 and disc > 0:
        hits.append(((-vy - math.sqrt(disc)) / g, "ceiling"))
    dt, wall = min(hits)
    return max(dt, 0.0), wall


def _pair_hit(p: np.ndarray, v: np.ndarray, i: int, j: int, reach: float) -> float:
    """Time until shapes i and j come within ``reach``; gravity moves both alike, so
    their relative motion is a straight line. inf when they do not approach."""
    d, u = p[j] - p[i], v[j] - v[i]
    a, b, c = float(u @ u), 2.0 * float(d @ u), float(d @ d) - reach * reach
    disc = b * b - 4 * a * c
    if b >= 0 or a == 0 or disc < 0:
        return math.inf
    return max((-b - math.sqrt(disc)) / (2 * a), 0.0)


def _simulate(scene: Scene) -> tuple[tuple[tuple[Segment, ...], ...], tuple[Impact, ...]]:
    """Event-driven flight of all shapes: advance to the earliest wall or pair impact,
    apply it, repeat. Shapes collide as discs of their circumradius (equal masses)."""
    height, width = scene.size
    g = scene.gravity
    min_side, min_part = MIN_SIDE_SPEED * height, MIN_PART_SPEED * height
    count = len(scene.shapes)
    bounds = []
    for shape in scene.shapes:
        half, top, bottom = extents(shape.kind, shape.size)
        bounds.append((half, width - half, top, height - bottom))
    reach = [circumradius(s.kind, s.size) for s in scene.shapes]
    p = np.array([s.position for s in scene.shapes], dtype=np.float64)
    v = np.array([s.velocity for s in scene.shapes], dtype=np.float64)
    segments = [[Segment(0.0, scene.shapes[i].position, scene.shapes[i].velocity)] for i in range(count)]
    impacts: list[Impact] = []
    t = 0.0
    while len(impacts) < MAX_EVENTS_PER_SECOND * scene.seconds * count:
        events = [(*_wall_hit(g, bounds[i], *p[i], *v[i]), i, -1) for i in range(count)]
        events += [(_pair_hit(p, v, i, j, reach[i] + reach[j]), "shape", i, j)
                   for i in range(count) for j in range(i + 1, count)]
        dt, wall, i, j = min(events, key=lambda e: e[0])
        if t + dt > scene.seconds:
            break
        t = float(t + dt)
        p[:, 0] += v[:, 0] * dt
        p[:, 1] += v[:, 1] * dt + 0.5 * g * dt * dt
        v[:, 1] += g * dt
        left, right, ceiling, floor = bounds[i]
        if wall == "shape":
            normal = (p[j] - p[i]) / np.linalg.norm(p[j] - p[i])
            closing = -float((v[j] - v[i]) @ normal)
            # Equal masses: each takes half the change of the relative normal speed.
            parting = max(RESTITUTION * closing, min_part)
            v[i] -= 0.5 * (closing + parting) * normal
            v[j] += 0.5 * (closing + parting) * normal
            for k, other in ((i, j), (j, i)):
                impacts.append(Impact(t, k, (float(p[k, 0]), float(p[k, 1])), closing, "shape", other))
        elif wall in ("left", "right"):
            speed = abs(v[i, 0])
            p[i, 0] = left if wall == "left" else right
            v[i, 0] = math.copysign(max(RESTITUTION * speed, min_side), -v[i, 0])
            impacts.append(Impact(t, i, (float(p[i, 0]), float(p[i, 1])), float(speed), wall))
        elif wall == "floor":
            speed = v[i, 1]
            p[i, 1] = floor
            v[i, 1] = -max(RESTITUTION * speed, scene.shapes[i].hop_speed)
            impacts.append(Impact(t, i, (float(p[i, 0]), float(p[i, 1])), float(speed), wall))
        else:
            speed = -v[i, 1]
            p[i, 1] = ceiling
            v[i, 1] = RESTITUTION * speed
            impacts.append(Impact(t, i, (float(p[i, 0]), float(p[i, 1])), float(speed), wall))
        for k in {i, j} - {-1}:
            segments[k].append(Segment(t, (float(p[k, 0]), float(p[k, 1])), (float(v[k, 0]), float(v[k, 1]))))
    else:
        raise RuntimeError(f"scene of seed {scene.seed} keeps colliding without end; choose another seed")
    impacts.sort(key=lambda impact: (impact.time, impact.shape))
    return tuple(tuple(s) for s in segments), tuple(impacts)
