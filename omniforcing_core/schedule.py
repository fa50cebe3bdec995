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


def sigmas_from_timesteps(timesteps: Sequence[float], grid_steps: int = 40) -> list[float]:
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
    if len(values) < 2:
        raise ScheduleError(
            f"a schedule needs at least two sigmas (a start and the final 0), got {list(values)}"
        )
    if values[-1] != 0.0:
        raise ScheduleError(f"a schedule must end at sigma 0 (a clean block), got last value {values[-1]}")
    if any(not math.isfinite(s) for s in values):
        raise ScheduleError(f"sigmas must be finite numbers, got {list(values)}")
    if values[0] > 1.0 or values[0] <= 0.0:
        raise ScheduleError(f"the first sigma must be in (0, 1], got {values[0]}")
    for earlier, later in zip(values, values[1:]):
        if later >= earlier:
            raise ScheduleError(
                f"sigmas must strictly decrease, got {earlier} followed by {later} in {list(values)}"
            )
    return values


def parse_sigma_list(text: str) -> tuple[float, ...]:
    """Parse a user's comma-separated list: sigmas in [0, 1] or timesteps in [0, 1000]."""
    try:
        numbers = [float(item) for item in text.replace(";", ",").split(",") if item.strip()]
    except ValueError as exc:
        raise ScheduleError(
            f"could not read {text!r} as numbers; write e.g. '1000, 909, 725, 421, 0' or '1.0, 0.5, 0'"
        ) from exc
    if numbers and max(numbers) > 1.0:
        return validate_sigmas(sigmas_from_timesteps(numbers))
    return validate_sigmas(numbers)
