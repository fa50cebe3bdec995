"""A captured block loop: the cached per-block forward compiled once, reused by every block.

Each pass of a streamed block runs the same layers on the same shapes: only the sigma, the
cache slot the block writes and (until the window is full) how many cached tokens it reads
change. Dynamo makes those dynamic the first time they change, so after the first blocks a
stream of any length runs on the graphs it has (``tests/test_capture.py`` asserts no
recompile over 60 blocks). ``backend="inductor"`` fuses kernels on the CPU and the GPU;
``mode="reduce-overhead"`` adds CUDA graphs on a GPU, which removes the per-kernel launch
cost that makes the eager 48-layer loop host-bound.
"""

from __future__ import annotations

import torch

from .transformer import AVTransformer

BACKENDS = ("eager", "aot_eager", "inductor")


def capture_block_loop(model: AVTransformer, backend: str = "inductor", mode: str | None = None) -> AVTransformer:
    """Compile ``model.forward_block`` in place (the full-sequence forward stays eager)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    model.forward_block = torch.compile(model.forward_block, backend=backend, mode=mode)
    return model
