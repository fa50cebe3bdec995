"""Scale-out on PyTorch's own engine: torchrun process groups, FSDP2, distributed checkpoint.

Launched by torchrun (``WORLD_SIZE`` set) the stages run sharded: every transformer layer
and then the root go through ``fully_shard`` on one device mesh (gloo on CPU, nccl on
CUDA), for the generator, the critic and the frozen teacher alike. Launched plainly, the
same code runs unsharded in one process. Training state is saved and resumed with
``torch.distributed.checkpoint``, which also works without a process group.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..transformer import AVTransformer

# Entry points other than ``forward`` that must unshard the root's parameters.
_FORWARD_METHODS = ("forward_span",)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.size > 1


def init_world(device: str | None = None) -> World:
    """Join torchrun's process group if launched by it; otherwise a world of one."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        if dist.is_initialized():
            return World(dist.get_rank(), dist.get_world_size(), pick_device(device, dist.get_rank()))
        return World(0, 1, pick_device(device, 0))
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    target = pick_device(device, int(os.environ.get("LOCAL_RANK", rank)))
    if target.type == "cuda":
        torch.cuda.set_device(target)
    dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return World(rank, size, target)


def close_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def pick_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """The requested device, else this rank's GPU when there is one, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def shard_model(model: AVTransformer, world: World, *, compute_dtype: torch.dtype = torch.float32,
                activation_checkpointing: bool = False) -> AVTransformer:
    """FSDP2 per layer then the root (when sharded); activation checkpointing per layer.

    Mixed precision casts the weights only (``cast_forward_inputs=False``): cast inputs
    would turn the fp32 sigmas into bf16 (40-50% gradient error measured on this model).
    """
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for layer in model.transformer_blocks:
            checkpoint(layer)
    if not world.sharded:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(world.device.type, (world.size,))
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for layer in model.transformer_blocks:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for name in _FORWARD_METHODS:
        register_fsdp_forward_method(model, name)
    return model


def compute_precision(world: World, compute_dtype: torch.dtype):
    """Mixed precision of an unsharded run (a sharded one gets it from FSDP2's policy):
    autocast keeps fp32 master weights, as FSDP2 does."""
    if world.sharded or compute_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(world.device.type, dtype=compute_dtype)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Skip the gradient reduce-scatter on all but the last micro-batch of an accumulation."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)


def all_mean(value: float, world: World) -> float:
    """The mean of a scalar over ranks (for logging)."""
    if not world.sharded:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=world.device if world.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return float(tensor) / world.size


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor() if hasattr(value, "full_tensor") else value


# Checkpoints ------------------------------------------------------------------------


class TrainingState:
    """What a resumed run needs: models, optimisers, EMA and the step (randomness is a pure
    function of seed, step and sample, so it needs no saved state)."""

    def __init__(self, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                 ema: dict[str, torch.Tensor] | None = None):
        """``optimizers[name]`` steps the parameters of ``models[name]``."""
        self.models, self.optimizers, self.ema = models, optimizers, ema
        self.step = 0

    def state_dict(self) -> dict:
        state = {"step": torch.tensor(self.step)}
        for name, model in self.models.items():
            state[f"model.{name}"] = get_model_state_dict(model)
        for name, optimizer in self.optimizers.items():
            state[f"optim.{name}"] = get_optimizer_state_dict(self.models[name], optimizer)
        if self.ema is not None:
            state["ema"] = self.ema
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for name, model in self.models.items():
            set_model_state_dict(model, state[f"model.{name}"])
        for name, optimizer in self.optimizers.items():
            set_optimizer_state_dict(self.models[name], optimizer, state[f"optim.{name}"])
        if self.ema is not None:
            for key, value in state["ema"].items():
                self.ema[key].copy_(value)


@contextlib.contextmanager
def _single_process_is_intended():
    """DCP warns that it assumes one process when no group exists: here that is the design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_state(folder: Path, state: TrainingState) -> Path:
    """``folder/step_{N}``; written on every rank (DCP is collective), the newest kept."""
    target = folder / f"step_{state.step:07d}"
    with _single_process_is_intended():
        dcp.save(state.state_dict(), checkpoint_id=str(target))
    if not dist.is_initialized() or dist.get_rank() == 0:
        (folder / "latest").write_text(target.name)
    return target


def load_latest_state(folder: Path, state: TrainingState) -> bool:
    """Resume from the newest checkpoint in ``folder``; False if there is none."""
    marker = folder / "latest"
    if not marker.exists():
        return False
    wanted = state.state_dict()
    with _single_process_is_intended():
        dcp.load(wanted, checkpoint_id=str(folder / marker.read_text().strip()))
    state.load_state_dict(wanted)
    return True


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights on the CPU (collective when sharded; every rank must call it)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class EMA:
    """Exponential moving average of a model's parameters, sharded like the parameters."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach(), 1 - self.decay)

    def reset(self, model: nn.Module) -> None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                self.shadow[name].copy_(p.detach())
