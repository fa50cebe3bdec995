"""Every place the nodes touch ComfyUI, in one module.

ComfyUI's modules are imported lazily, inside ``ComfyBridge``; without ComfyUI (the
pack's CI, a plain Python session) ``StandaloneBridge`` stands in, so every node runs
and is tested the same way. Tests swap in a recording bridge with ``use_bridge``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from omniforcing_core.checkpoint import list_checkpoints

GENERATOR_FOLDERS = ("omniforcing", "diffusion_models")
BASE_FOLDERS = ("checkpoints",)


class StandaloneBridge:
    """No ComfyUI: model folders from ``OMNIFORCING_MODELS`` (a folder with ``omniforcing/``
    and ``checkpoints/`` inside), the CPU, a temp folder, and no UI to talk to."""

    def __init__(self, models_dir: str | os.PathLike | None = None):
        self.models_dir = Path(models_dir or os.environ.get("OMNIFORCING_MODELS", "models"))
        self._temp = Path(tempfile.gettempdir()) / "omniforcing"

    # Model files -----------------------------------------------------------------

    def folder_paths(self, folder: str) -> list[Path]:
        return [self.models_dir / folder]

    def list_models(self, folders: tuple[str, ...]) -> list[str]:
        names: list[str] = []
        for folder in folders:
            for root in self.folder_paths(folder):
                names += [name for name in list_checkpoints(root) if name not in names]
        return names

    def model_path(self, folders: tuple[str, ...], name: str) -> Path:
        for folder in folders:
            for root in self.folder_paths(folder):
                if (root / name).exists():
                    return root / name
        looked = ", ".join(str(root) for folder in folders for root in self.folder_paths(folder))
        raise FileNotFoundError(f"'{name}' is not in the model folders ({looked})")

    # Devices and memory ------------------------------------------------------------

    def load_device(self) -> torch.device:
        return torch.device("cpu")

    def offload_device(self) -> torch.device:
        return torch.device("cpu")

    def manage(self, module: torch.nn.Module) -> Any:
        """A handle the host can offload; here, the module itself."""
        return module

    def ready(self, handle: Any, memory_required: int) -> None:
        """Put the managed model on the load device, freeing room for it and its stream."""

    def release_memory(self) -> None:
        pass

    # Talking to the UI -------------------------------------------------------------

    def temp_dir(self) -> Path:
        return self._temp

    def output_dir(self) -> Path:
        return Path(tempfile.gettempdir()) / "omniforcing_output"

    def progress(self, node_id: str | None, value: int, total: int, preview=None) -> None:
        pass

    def send(self, event: str, payload: dict) -> None:
        pass

    def check_interrupt(self) -> None:
        pass

    def interrupt_requested(self) -> bool:
        """Whether the user asked to stop (without consuming the request)."""
        return False

    def prompt_id(self) -> str | None:
        return None

    def av_latent(self, video: torch.Tensor, audio: torch.Tensor) -> dict:
        """LATENT with video [B, 128, F, H, W] and audio [B, 8, T, 16] together."""
        return {"samples": (video, audio)}


class ComfyBridge(StandaloneBridge):
    """The running ComfyUI: its model folders, devices, progress bar, websocket and interrupts."""

    def __init__(self):
        import folder_paths

        super().__init__()
        self._folder_paths = folder_paths
        if "omniforcing" not in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path("omniforcing", os.path.join(folder_paths.models_dir, "omniforcing"))

    def folder_paths(self, folder: str) -> list[Path]:
        return [Path(p) for p in self._folder_paths.get_folder_paths(folder)]

    def load_device(self) -> torch.device:
        import comfy.model_management as mm

        return mm.get_torch_device()

    def offload_device(self) -> torch.device:
        import comfy.model_management as mm

        return mm.unet_offload_device()

    def manage(self, module: torch.nn.Module) -> Any:
        # Looked up at call time: ComfyUI swaps CoreModelPatcher for its dynamic-VRAM patcher on NVIDIA.
        import comfy.model_patcher

        return comfy.model_patcher.CoreModelPatcher(
            module, load_device=self.load_device(), offload_device=self.offload_device()
        )

    def ready(self, handle: Any, memory_required: int) -> None:
        import comfy.model_management as mm

        mm.load_models_gpu([handle], memory_required=memory_required)

    def release_memory(self) -> None:
        import comfy.model_management as mm

        mm.soft_empty_cache()

    def temp_dir(self) -> Path:
        return Path(self._folder_paths.get_temp_directory())

    def output_dir(self) -> Path:
        return Path(self._folder_paths.get_output_directory())

    def progress(self, node_id: str | None, value: int, total: int, preview=None) -> None:
        import comfy.utils

        bar = comfy.utils.ProgressBar(total, node_id=node_id)
        bar.update_absolute(value, total, ("JPEG", preview, 512) if preview is not None else None)

    def send(self, event: str, payload: dict) -> None:
        from server import PromptServer

        server = PromptServer.instance
        server.send_sync(event, payload, server.client_id)

    def check_interrupt(self) -> None:
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()

    def interrupt_requested(self) -> bool:
        import comfy.model_management as mm

        return mm.processing_interrupted()

    def prompt_id(self) -> str | None:
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        return context.prompt_id if context is not None else None

    def av_latent(self, video: torch.Tensor, audio: torch.Tensor) -> dict:
        from comfy.nested_tensor import NestedTensor

        return {"samples": NestedTensor((video, audio))}


_bridge: StandaloneBridge | None = None


def bridge() -> StandaloneBridge:
    """The ComfyUI bridge when running inside ComfyUI, else the standalone one."""
    global _bridge
    if _bridge is None:
        try:
            import folder_paths  # noqa: F401  (only present inside ComfyUI)
        except ImportError:
            _bridge = StandaloneBridge()
        else:
            _bridge = ComfyBridge()
    return _bridge


def use_bridge(replacement: StandaloneBridge | None) -> None:
    """Swap the bridge (tests); None goes back to detecting ComfyUI."""
    global _bridge
    _bridge = replacement
