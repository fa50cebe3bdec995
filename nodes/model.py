"""OmniForcing Model Loader: the generator over the LTX-2 base file, kept across runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from omniforcing_core.checkpoint import resolve_dtype
from omniforcing_core.pipeline import StreamPipeline

from .comfy_bridge import BASE_FOLDERS, GENERATOR_FOLDERS, bridge

WEIGHT_DTYPES = ("auto", "bf16", "fp16", "fp32", "fp8")


@dataclass
class OmniForcingModel:
    """What flows along an OMNIFORCING_MODEL link: the pipeline and the host's handle on it."""

    pipeline: StreamPipeline
    handle: Any  # ComfyUI's model patcher (or the pipeline itself outside ComfyUI)


def weight_dtypes(choice: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """(compute dtype, store block weights in fp8) for a weight-dtype choice on a device."""
    if choice in ("auto", "fp8"):
        fast_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return (torch.bfloat16 if fast_bf16 else torch.float32), choice == "fp8"
    return resolve_dtype(choice), False


class OmniForcingModelLoader:
    DESCRIPTION = (
        "Loads an OmniForcing generator over the LTX-2 base file (which supplies the video VAE, "
        "audio VAE and vocoder). Shows the detected block layout, sink tokens and layers."
    )
    CATEGORY = "OmniForcing"
    FUNCTION = "load"
    # Resend the detected-model text on runs where the cached loader does not execute.
    HAS_INTERMEDIATE_OUTPUT = True
    RETURN_TYPES = ("OMNIFORCING_MODEL",)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls):
        b = bridge()
        return {
            "required": {
                "generator": (b.list_models(GENERATOR_FOLDERS), {
                    "tooltip": "The OmniForcing generator: a .safetensors or the .index.json of a sharded one, "
                               "in models/omniforcing or models/diffusion_models.",
                }),
                "base": (b.list_models(BASE_FOLDERS), {
                    "tooltip": "The LTX-2 base file (e.g. ltx-2-19b-dev.safetensors) in models/checkpoints.",
                }),
                "weight_dtype": (list(WEIGHT_DTYPES), {
                    "default": "auto",
                    "tooltip": "auto: bf16 on a GPU, fp32 on the CPU. fp8 stores the transformer's block "
                               "weights in fp8 (half the memory) and computes in the auto dtype.",
                }),
            }
        }

    def load(self, generator: str, base: str, weight_dtype: str):
        b = bridge()
        compute_device = b.load_device()
        dtype, fp8 = weight_dtypes(weight_dtype, compute_device)
        pipeline = StreamPipeline.from_files(
            b.model_path(GENERATOR_FOLDERS, generator), b.model_path(BASE_FOLDERS, base),
            device=b.offload_device(), dtype=dtype, fp8_weights=fp8,
            # The decoders compute where the transformer does, in its dtype off the CPU.
            decoder_dtype=torch.float32 if compute_device.type == "cpu" else dtype,
        )
        model = OmniForcingModel(pipeline, b.manage(pipeline))
        return {"ui": {"text": [pipeline.info.describe()]}, "result": (model,)}
