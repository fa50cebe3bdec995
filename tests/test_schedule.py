import pytest

from helpers import golden_vectors
from omniforcing_core import ScheduleError, parse_sigma_list, preset_sigmas
from omniforcing_core.schedule import ltx2_sigmas, sigmas_from_timesteps, validate_sigmas


def test_released_timesteps_snap_to_the_reference_sigmas():
    reference = golden_vectors()["stream.sigmas"].tolist()  # what the public reference streamed with
    assert len(reference) == 5
    assert preset_sigmas("quality-4step") == pytest.approx(reference, abs=1e-6)


def test_realtime_preset_has_three_steps():
    sigmas = preset_sigmas("realtime-3step")
    assert len(sigmas) == 4 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert sigmas[1:3] == pytest.approx([0.750697, 0.488430], abs=1e-6)


def test_ltx2_schedule_shape():
    grid = ltx2_sigmas(40)
    assert len(grid) == 41 and grid[0] == 1.0 and grid[-1] == 0.0
    assert grid[-2] == pytest.approx(0.1)
    assert sigmas_from_timesteps([909])[0] == grid[17]


def test_user_lists_of_sigmas_or_timesteps():
    assert parse_sigma_list("1.0, 0.5, 0") == (1.0, 0.5, 0.0)
    assert parse_sigma_list("1000, 909, 725, 421, 0") == pytest.approx(preset_sigmas("quality-4step"))


@pytest.mark.parametrize(
    ("sigmas", "fragment"),
    [
        ([1.0], "at least two sigmas"),
        ([1.0, 0.5], "must end at sigma 0"),
        ([1.0, 0.5, 0.7, 0.0], "strictly decrease"),
        ([1.5, 0.5, 0.0], r"first sigma must be in \(0, 1\]"),
        ([1.0, float("nan"), 0.0], "finite"),
    ],
)
def test_bad_sigma_lists_are_refused(sigmas, fragment):
    with pytest.raises(ScheduleError, match=fragment):
        validate_sigmas(sigmas)


def test_unreadable_list_says_how_to_write_it():
    with pytest.raises(ScheduleError, match="1000, 909, 725, 421, 0"):
        parse_sigma_list("fast please")


@pytest.mark.parametrize(("text", "fragment"), [
    ("inf, 500, 0", "timesteps must be finite numbers, got inf in [inf, 500, 0]"),
    ("1e9, 500, 0", "the first timestep must be in (0, 1000], got 1e9 in [1e9, 500, 0]"),
    ("1500, 500, 0", "the first timestep must be in (0, 1000], got 1500"),
    ("1000, 1500, 0", "timesteps must lie in [0, 1000], got 1500"),
    ("1000, -5, 0", "timesteps must lie in [0, 1000], got -5"),
    ("1000, 500", "must end at timestep 0 (a clean block), got last value 500 in [1000, 500]"),
    ("1000, 500, 700, 0", "timesteps must strictly decrease, got 500 followed by 700"),
    ("1000, 999, 0", "timesteps 1000 and 999 both snap to sigma 1.0000"),
    ("1, -0.5, 0", "sigmas must lie in [0, 1], got -0.5 in [1, -0.5, 0]"),
    ("1, 0.5", "must end at sigma 0 (a clean block), got last value 0.5 in [1, 0.5]"),
])
def test_typed_lists_are_range_checked_and_quoted_as_typed(text, fragment):
    with pytest.raises(ScheduleError) as error:
        parse_sigma_list(text)
    assert fragment in str(error.value)
