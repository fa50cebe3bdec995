"""OmniForcing Model Loader: the generator over the LTX-2 base file, kept across runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from omniforcing_core.checkpoint import resolve_dtype
from omniforcing_core.pipeline import StreamPipeline

from .comfy_bridge import BASE_FOLDERS, GENERATOR_FOLDERS, bridge
from .errors import plain_errors

WEIGHT_DTYPES = ("auto", "bf16", "fp16", "fp32", "fp8")
# Choices that name no file: the pack's own demo model, which needs no download.
DEMO_GENERATOR = "omniforcing_demo (built in)"
BUILT_IN_BASE = "(built in)"


@dataclass
class OmniForcingModel:
    """What flows along an OMNIFORCING_MODEL link: the pipeline and the host's handle on it."""

    pipeline: StreamPipeline
    handle: Any  # ComfyUI's model patcher (or the pipeline itself outside ComfyUI)
    demo: bool = False  # the built-in demo: prompts come from OmniForcing Demo Prompt


def weight_dtypes(choice: str, device: torch.device, demo: bool = False) -> tuple[torch.dtype, bool]:
    """(compute dtype, store block weights in fp8) for a weight-dtype choice on a device."""
    if choice in ("auto", "fp8"):
        # The demo is a few MB: fp32 costs nothing on any device and rounds nothing away.
        fast_bf16 = not demo and device.type == "cuda" and torch.cuda.is_bf16_supported()
        return (torch.bfloat16 if fast_bf16 else torch.float32), choice == "fp8"
    return resolve_dtype(choice), False


class OmniForcingModelLoader:
    DESCRIPTION = (
        "Loads an OmniForcing generator over the LTX-2 base file (which supplies the video VAE, "
        "audio VAE and vocoder), or the built-in demo model (nothing to download). Shows the "
        "detected block layout, sink tokens and layers."
    )
    CATEGORY = "OmniForcing"
    FUNCTION = "load"
    # Resend the detected-model text on runs where the cached loader does not execute.
    HAS_INTERMEDIATE_OUTPUT = True
    RETURN_TYPES = ("OMNIFORCING_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded generator and its decoders, for the Streaming Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        b = bridge()
        return {
            "required": {
                "generator": ([DEMO_GENERATOR, *b.list_models(GENERATOR_FOLDERS)], {
                    "tooltip": f"{DEMO_GENERATOR}: the pack's own small model of the same architecture, trained "
                               "on a world of bouncing shapes that ring when they hit a wall; prompt it with "
                               "OmniForcing Demo Prompt. Otherwise the OmniForcing generator: a .safetensors or "
                               "the .index.json of a sharded one, in models/omniforcing or models/diffusion_models.",
                }),
                "base": ([*b.list_models(BASE_FOLDERS), BUILT_IN_BASE], {
                    "tooltip": "The LTX-2 base file (e.g. ltx-2-19b-dev.safetensors) in models/checkpoints. "
                               f"Ignored with the built-in demo, which carries its own codecs ({BUILT_IN_BASE}).",
                }),
                "weight_dtype": (list(WEIGHT_DTYPES), {
                    "default": "auto",
                    "tooltip": "auto: bf16 on a GPU, fp32 on the CPU (fp32 everywhere for the demo). fp8 stores "
                               "the transformer's block weights in fp8 (half the memory) and computes in the "
                               "auto dtype.",
                }),
            }
        }

    @plain_errors
    def load(self, generator: str, base: str, weight_dtype: str):
        b = bridge()
        compute_device = b.load_device()
        demo = generator == DEMO_GENERATOR
        dtype, fp8 = weight_dtypes(weight_dtype, compute_device, demo)
        # The decoders compute where the transformer does, in its dtype off the CPU.
        decoder_dtype = torch.float32 if compute_device.type == "cpu" else dtype
        if demo:
            pipeline = StreamPipeline.demo(device=b.offload_device(), dtype=dtype, fp8_weights=fp8,
                                           decoder_dtype=decoder_dtype)
        else:
            if base == BUILT_IN_BASE:
                raise ValueError(f"base {BUILT_IN_BASE} goes with the built-in demo only; {generator} needs its "
                                 "LTX-2 base file (e.g. ltx-2-19b-dev.safetensors in models/checkpoints)")
            pipeline = StreamPipeline.from_files(
                b.model_path(GENERATOR_FOLDERS, generator), b.model_path(BASE_FOLDERS, base),
                device=b.offload_device(), dtype=dtype, fp8_weights=fp8, decoder_dtype=decoder_dtype,
            )
        info = pipeline.info.describe()
        if demo and base != BUILT_IN_BASE:
            info += f"\nbase {base} ignored: the demo carries its own codecs"
        model = OmniForcingModel(pipeline, b.manage(pipeline), demo)
        return {"ui": {"text": [info]}, "result": (model,)}
