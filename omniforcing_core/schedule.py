"""Few-step denoising schedules (sigma lists) for the distilled student.

The distilled checkpoints name their steps as timesteps in [0, 1000]; the reference
snaps each one to the nearest sigma of the LTX-2 40-step schedule (token shift at the
4096-token anchor, stretched to a terminal sigma of 0.1).
"""

from __future__ import annotations

import math
from typing import Sequence


class ScheduleError(ValueError):
    """A sigma list the sampler cannot run."""


_BASE_SHIFT_TOKENS = 1024
_MAX_SHIFT_TOKENS = 4096


def ltx2_sigmas(
    steps: int = 40,
    tokens: int = _MAX_SHIFT_TOKENS,
    max_shift: float = 2.05,
    base_shift: float = 0.95,
    terminal: float = 0.1,
) -> list[float]:
    """The LTX-2 scheduler's sigmas (steps + 1 values, 1.0 down to 0.0)."""
    slope = (max_shift - base_shift) / (_MAX_SHIFT_TOKENS - _BASE_SHIFT_TOKENS)
    shift = tokens * slope + (base_shift - slope * _BASE_SHIFT_TOKENS)
    linear = [1.0 - i / steps for i in range(steps + 1)]
    shifted = [
        math.exp(shift) / (math.exp(shift) + (1.0 / s - 1.0)) if s > 0 else 0.0 for s in linear
    ]
    last_nonzero = [s for s in shifted if s > 0][-1]
    scale = (1.0 - last_nonzero) / (1.0 - terminal)
    return [1.0 - (1.0 - s) / scale if s > 0 else 0.0 for s in shifted]


_GRID_STEPS = 40


def sigmas_from_timesteps(timesteps: Sequence[float], grid_steps: int = _GRID_STEPS) -> list[float]:
    """Snap timesteps (0..1000) to the nearest sigma of the LTX-2 ``grid_steps`` schedule."""
    grid = ltx2_sigmas(grid_steps)
    return [min(grid, key=lambda sigma: abs(sigma - float(t) / 1000.0)) for t in timesteps]


RELEASED_TIMESTEPS = (1000, 909, 725, 421, 0)
REALTIME_TIMESTEPS = (1000, 750, 500, 0)

PRESETS = {
    "quality-4step": RELEASED_TIMESTEPS,
    "realtime-3step": REALTIME_TIMESTEPS,
}


def preset_sigmas(name: str) -> tuple[float, ...]:
    if name not in PRESETS:
        raise ScheduleError(f"unknown schedule preset {name!r}; choose one of {sorted(PRESETS)}")
    return tuple(sigmas_from_timesteps(PRESETS[name]))


def resolve_schedule(spec: str) -> tuple[float, ...]:
    """A preset name, or a user's list of sigmas or timesteps (see ``parse_sigma_list``)."""
    return preset_sigmas(spec) if spec in PRESETS else parse_sigma_list(spec)


def validate_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
    """A descending list in (0, 1] that ends at exactly 0, with at least one step."""
    values = tuple(float(s) for s in sigmas)
    _check_descending(values, [repr(v) for v in values], "sigma", 1.0)
    return values


def parse_sigma_list(text: str) -> tuple[float, ...]:
    """Parse a user's comma-separated list: sigmas in [0, 1] or timesteps in [0, 1000].

    The values are checked as typed, in their own unit, and errors quote them as typed;
    only then are timesteps snapped to the LTX-2 grid (two that land on one sigma are
    refused: the step between them would vanish).
    """
    items = [item.strip() for item in text.replace(";", ",").split(",") if item.strip()]
    numbers = []
    for item in items:
        try:
            numbers.append(float(item))
        except ValueError:
            raise ScheduleError(
                f"could not read {text!r} as numbers ({item!r} is not a number); write e.g. "
                "'1000, 909, 725, 421, 0' or '1.0, 0.5, 0'"
            ) from None
    timesteps = any(math.isfinite(n) and n > 1.0 for n in numbers)
    _check_descending(numbers, items, *(("timestep", 1000.0) if timesteps else ("sigma", 1.0)))
    if not timesteps:
        return tuple(numbers)
    sigmas = sigmas_from_timesteps(numbers)
    for (earlier, first), (later, second) in zip(zip(items, sigmas), zip(items[1:], sigmas[1:])):
        if first == second:
            raise ScheduleError(
                f"timesteps {earlier} and {later} both snap to sigma {first:.4f} of the LTX-2 "
                f"{_GRID_STEPS}-step grid; space them further apart, or give sigmas in [0, 1]"
            )
    return validate_sigmas(sigmas)


def _check_descending(values: Sequence[float], shown: Sequence[str], unit: str, top: float) -> None:
    """``values`` (quoted as ``shown``) must fall strictly from (0, top] to exactly 0."""
    listed = f"[{', '.join(shown)}]"
    if len(values) < 2:
        raise ScheduleError(f"a schedule needs at least two {unit}s (a start and the final 0), got {listed}")
    bad = [text for value, text in zip(values, shown) if not math.isfinite(value)]
    if bad:
        raise ScheduleError(f"{unit}s must be finite numbers, got {', '.join(bad)} in {listed}")
    if not 0.0 < values[0] <= top:
        raise ScheduleError(f"the first {unit} must be in (0, {top:g}], got {shown[0]} in {listed}")
    bad = [text for value, text in zip(values, shown) if not 0.0 <= value <= top]
    if bad:
        raise ScheduleError(f"{unit}s must lie in [0, {top:g}], got {', '.join(bad)} in {listed}")
    if values[-1] != 0.0:
        raise ScheduleError(f"a schedule must end at {unit} 0 (a clean block), got last value {shown[-1]} in {listed}")
    for (earlier, earlier_text), (later, later_text) in zip(zip(values, shown), zip(values[1:], shown[1:])):
        if later >= earlier:
            raise ScheduleError(f"{unit}s must strictly decrease, got {earlier_text} followed by {later_text} in {listed}")
