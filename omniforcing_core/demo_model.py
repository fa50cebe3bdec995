"""The built-in demo model: a small student of the real architecture, trained by the pack's
own engine on the synthetic world (bouncing shapes that ring when they hit a wall).

Two files ship in ``assets/demo`` and load through the same loaders as a user's files:

- ``omniforcing_demo.safetensors``: the generator (``model.*``), paper layout with audio
  sink tokens, with the training provenance in its metadata;
- ``omniforcing_demo_base.safetensors``: its LTX-2-style base file: the trained codecs
  (``vae.*``, ``audio_vae.*``, ``vocoder.*``) and the world's prompt encoder
  (``prompt_encoder.*``), which turns prompts of the world's grammar into text contexts.

``omniforcing_demo_released.safetensors`` (released layout, no sinks) is the comparison
student of the quality benchmark; it uses the same base file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoint import CheckpointError, save_checkpoint
from .layout import BlockLayout
from .world.prompts import PROMPT_ENCODER_PREFIX, WorldPromptEncoder

DEMO_FOLDER = Path(__file__).parent / "assets" / "demo"
DEMO_GENERATOR = "omniforcing_demo.safetensors"
DEMO_RELEASED_GENERATOR = "omniforcing_demo_released.safetensors"
DEMO_BASE = "omniforcing_demo_base.safetensors"
DEMO_PROMPT = "a red ball and a blue cube bounce"
# The demo's native size: what its codecs and transformer were trained at.
DEMO_HEIGHT, DEMO_WIDTH = 128, 192
CODEC_PREFIXES = ("vae.", "audio_vae.", "vocoder.")


def demo_path(name: str = DEMO_GENERATOR, folder: str | Path | None = None) -> Path:
    """A shipped demo file; a clear error if this checkout lacks it."""
    path = Path(folder or DEMO_FOLDER) / name
    if not path.exists():
        raise CheckpointError(
            f"the built-in demo model file {path} is missing; it ships with the pack (git LFS is not used), "
            "so re-clone or retrain it with `python -m omniforcing_core.train demo --out DIR`"
        )
    return path


def demo_available(folder: str | Path | None = None) -> bool:
    return all((Path(folder or DEMO_FOLDER) / name).exists() for name in (DEMO_GENERATOR, DEMO_BASE))


def write_demo_base(path: str | Path, codecs_path: str | Path, prompt_encoder: WorldPromptEncoder,
                    provenance: dict | None = None) -> Path:
    """The codecs of ``codecs_path`` (its ``vae.``, ``audio_vae.`` and ``vocoder.`` tensors and
    their config sections) plus the prompt encoder under ``prompt_encoder.``, in one file."""
    path = Path(path)
    with safe_open(str(codecs_path), "pt") as codecs:
        tensors = {key: codecs.get_tensor(key) for key in codecs.keys() if key.startswith(CODEC_PREFIXES)}
        metadata = dict(codecs.metadata() or {})
    config = {name: section for name, section in json.loads(metadata.get("config", "{}")).items()
              if name in ("vae", "audio_vae", "vocoder")}
    config["prompt_encoder"] = prompt_encoder.config.to_metadata()
    metadata["config"] = json.dumps(config)
    if provenance is not None:
        metadata["omniforcing_training"] = json.dumps(provenance)
    tensors.update({PROMPT_ENCODER_PREFIX + key: value.detach().float().contiguous()
                    for key, value in prompt_encoder.state_dict().items()})
    partial = path.with_name(path.name + ".partial")
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(partial), metadata=metadata)
    partial.replace(path)
    return path


def write_demo_generator(path: str | Path, student: torch.nn.Module, layout: BlockLayout,
                         provenance: dict | None = None) -> Path:
    metadata = {"omniforcing_training": json.dumps(provenance)} if provenance is not None else None
    save_checkpoint(path, student, prefix="model.", block_layout=layout, metadata=metadata, overwrite=True)
    return Path(path)
