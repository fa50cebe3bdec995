"""Checkpoint reading, loading and writing (safetensors only; pickles are refused).

- ``open_checkpoint``: a file, an ``.index.json`` or a folder, headers validated up front;
  tensors read one at a time, memory-mapped, straight to a device and dtype.
- ``load_model``: the OmniForcing generator over the LTX-2 base file into a ready
  ``AVTransformer`` built on meta and filled tensor by tensor.
- ``load_decoders`` / ``load_encoders``: the video VAE, audio VAE and vocoder (encoders:
  the two VAE encoders) from the LTX-2 base file, each checked and filled the same way
  (``load_module_weights``); ``load_prompt_encoder``: the built-in demo's text encoder.
- ``save_checkpoint``: the same layouts back (single or sharded, any prefix, fp8).
"""

from .components import LoadedDecoders, LoadedEncoders, load_decoders, load_encoders, load_prompt_encoder
from .detect import OVERRIDE_KEYS
from .fp8 import FP8Linear, dequantize_fp8, quantize_fp8
from .keys import describe_keys, find_transformer_prefix
from .loader import LoadedModel, LoadReport, SourceSummary, load_model
from .materialize import expected_tensors, load_module_weights
from .reader import Checkpoint, CheckpointError, TensorInfo, list_checkpoints, open_checkpoint, resolve_dtype
from .writer import block_linear_weights, save_checkpoint

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FP8Linear",
    "LoadReport",
    "LoadedDecoders",
    "LoadedEncoders",
    "LoadedModel",
    "OVERRIDE_KEYS",
    "SourceSummary",
    "TensorInfo",
    "block_linear_weights",
    "dequantize_fp8",
    "describe_keys",
    "expected_tensors",
    "find_transformer_prefix",
    "load_decoders",
    "load_encoders",
    "load_model",
    "list_checkpoints",
    "load_module_weights",
    "load_prompt_encoder",
    "open_checkpoint",
    "quantize_fp8",
    "resolve_dtype",
    "save_checkpoint",
]
