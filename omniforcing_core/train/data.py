"""Training data: latent clips with their prompts, addressed by a global sample index.

Every random draw of a sample (its noise, its sigma) comes from a generator seeded by
(seed, step, global sample index), never by rank: a batch split over N ranks sees exactly
the numbers one process sees for the whole batch, and a resumed run re-draws what the
stopped one would have. Choices that change the number of forward passes (exit steps,
backward-simulation depth) are seeded by (seed, step) alone, so every rank makes them alike.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..layout import BlockLayout

# Distinct streams of randomness drawn from one (seed, step, sample) triple.
PURPOSES = {"data": 1, "noise": 2, "sigma": 3, "dropout": 4, "critic": 5, "choice": 6}


def sample_generator(seed: int, step: int, sample: int, purpose: str, draw: int = 0) -> torch.Generator:
    """A CPU generator owned by one sample of one step (see the module docstring); ``draw``
    tells apart several draws of one purpose in a step (each denoising step's noise...)."""
    mixed = (((seed * 1_000_003 + step) * 1_000_033 + sample) * 16 + PURPOSES[purpose]) * 1_000_037 + draw
    return torch.Generator().manual_seed(mixed % (2**63))


def synced_generator(seed: int, step: int, purpose: str = "choice") -> torch.Generator:
    """The generator every rank shares at ``step``."""
    return sample_generator(seed, step, -1, purpose)


class SyntheticLatents:
    """Structured latent clips for smoke runs: each prompt picks a pattern that drifts over
    time in both streams, so a model has something learnable without any codec."""

    def __init__(self, layout: BlockLayout, seconds: int, grid_hw: tuple[int, int], prompt_ids: torch.Tensor,
                 channels: tuple[int, int] = (128, 128), size: int = 256):
        self.video_frames, self.audio_frames = layout.latent_lengths(seconds)
        self.grid_hw, self.channels, self.prompt_ids, self.size = grid_hw, channels, prompt_ids, size
        basis = torch.Generator().manual_seed(12345)
        self.video_basis = torch.randn(len(prompt_ids), channels[0], 1, *grid_hw, generator=basis)
        self.audio_basis = torch.randn(len(prompt_ids), 1, channels[1], generator=basis)

    def __len__(self) -> int:
        return self.size

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        label = index % len(self.prompt_ids)
        phase = torch.rand(1, generator=generator) * 6.28
        t_video = torch.arange(self.video_frames, dtype=torch.float32)[None, :, None, None] * 0.7
        t_audio = torch.arange(self.audio_frames, dtype=torch.float32)[:, None] * 0.08
        video = self.video_basis[label] * torch.cos(t_video + phase) + 0.1 * torch.randn(
            self.channels[0], self.video_frames, *self.grid_hw, generator=generator)
        audio = self.audio_basis[label] * torch.sin(t_audio + phase) + 0.1 * torch.randn(
            self.audio_frames, self.channels[1], generator=generator)
        return {"video": video, "audio": audio, "prompt": self.prompt_ids[label]}


class LatentShards:
    """Samples stored in safetensors shards, one row per sample along dim 0 of every tensor:
    pre-encoded clips (``video`` [N, C, F, h, w], ``audio`` [N, T, C], ``prompt`` [N, L]) or
    ODE pairs (the same plus ``video_trajectory`` / ``audio_trajectory`` [N, S, ...])."""

    def __init__(self, folder: str | Path, keys: tuple[str, ...] = ("video", "audio", "prompt")):
        self.folder, self.keys = Path(folder), keys
        self.files = sorted(self.folder.glob("*.safetensors"))
        if not self.files:
            raise FileNotFoundError(f"no shards (*.safetensors) in {self.folder}")
        self.index: list[tuple[Path, int]] = []
        self.metadata: dict[str, str] = {}
        for path in self.files:
            with safe_open(str(path), "pt") as shard:
                missing = set(keys) - set(shard.keys())
                if missing:
                    raise ValueError(f"shard {path} lacks {sorted(missing)}; it holds {sorted(shard.keys())}")
                count = shard.get_slice(keys[0]).get_shape()[0]
                self.metadata = shard.metadata() or {}
            self.index += [(path, row) for row in range(count)]
        self._cache: dict[Path, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        path, row = self.index[index % len(self.index)]
        if path not in self._cache:
            with safe_open(str(path), "pt") as shard:
                self._cache[path] = {key: shard.get_tensor(key) for key in self.keys}
        return {
            key: value[row] if value.dtype == torch.long else value[row].float()
            for key, value in self._cache[path].items()
        }


def write_shard(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write one shard atomically (a stopped writer never leaves a truncated shard behind)."""
    path = Path(path)
    partial = path.with_suffix(".partial")
    save_file({key: value.contiguous().cpu() for key, value in tensors.items()}, str(partial), metadata=metadata)
    partial.replace(path)


def sample_indices(step: int, global_batch: int, rank: int, world: int) -> range:
    """Global indices of this rank's slice of the global batch of ``step``."""
    if global_batch % world:
        raise ValueError(f"the global batch ({global_batch}) must split evenly over {world} ranks")
    per_rank = global_batch // world
    first = step * global_batch + rank * per_rank
    return range(first, first + per_rank)


def batch_at(dataset, indices: range, device) -> dict[str, torch.Tensor]:
    samples = [dataset.sample(i) for i in indices]
    return {key: torch.stack([s[key] for s in samples]).to(device) for key in samples[0]}
