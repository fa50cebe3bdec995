"""A stand-in for the built-in demo model's files (no tests here).

The real files are trained by the pack; these have the same names, layout (paper, with
audio sink tokens) and key groups but random weights, so every demo code path runs in CI
without them. Tests point the code at a stand-in folder with ``use_stand_in_demo``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omniforcing_core import demo_model
from omniforcing_core.demo import TINY_GENERATOR_FILE, tiny_model, write_tiny_checkpoints
from omniforcing_core.demo_model import (
    DEMO_BASE,
    DEMO_GENERATOR,
    DEMO_RELEASED_GENERATOR,
    write_demo_base,
    write_demo_generator,
)
from omniforcing_core.layout import BlockLayout
from omniforcing_core.world.prompts import WorldPromptConfig, WorldPromptEncoder

SINK_TOKENS = 4
PROVENANCE = {"stand_in": "random weights for the tests"}


def write_stand_in_demo(folder: str | Path, seed: int = 0) -> Path:
    """A demo folder in ``folder``: the paper-layout generator, the released-layout one and
    the base file with the codecs and a prompt encoder."""
    folder = Path(folder)
    _, tiny_base = write_tiny_checkpoints(folder / "tiny", seed=seed)
    write_demo_generator(folder / DEMO_GENERATOR, tiny_model(seed, SINK_TOKENS), BlockLayout.paper(), PROVENANCE)
    write_demo_generator(folder / DEMO_RELEASED_GENERATOR, tiny_model(seed + 1), BlockLayout.released(), PROVENANCE)
    (folder / "tiny" / TINY_GENERATOR_FILE).unlink()
    torch.manual_seed(seed)
    # Small widths keep it fast; caption_channels must be the tiny transformer's.
    encoder = WorldPromptEncoder(WorldPromptConfig(caption_channels=32, width=32, num_layers=1, heads=2))
    write_demo_base(folder / DEMO_BASE, tiny_base, encoder.eval(), PROVENANCE)
    tiny_base.unlink()
    (folder / "tiny").rmdir()
    return folder


@pytest.fixture(scope="session")
def stand_in_folder(tmp_path_factory) -> Path:
    return write_stand_in_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def use_stand_in_demo(stand_in_folder, monkeypatch) -> Path:
    """Every consumer of the demo reads the stand-in folder."""
    monkeypatch.setattr(demo_model, "DEMO_FOLDER", stand_in_folder)
    return stand_in_folder


@pytest.fixture
def no_demo(tmp_path, monkeypatch) -> Path:
    """A checkout without the demo files."""
    monkeypatch.setattr(demo_model, "DEMO_FOLDER", tmp_path / "no_demo")
    return tmp_path / "no_demo"
