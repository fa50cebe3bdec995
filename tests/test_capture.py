"""The captured block loop: no recompile once the window is full, the same stream as eager."""

import torch
from torch._dynamo.utils import counters

from helpers import random_model, random_text
from omniforcing_core import BlockLayout, StreamingSampler, StreamSettings
from omniforcing_core.capture import capture_block_loop


def test_a_sixty_block_stream_compiles_in_its_first_blocks_and_never_again():
    torch._dynamo.reset()
    counters.clear()
    model = random_model()
    text = random_text(model.config)
    settings = StreamSettings(window_blocks=2)
    eager = [b.video for b in StreamingSampler(model, BlockLayout.released(), settings).stream(text, 6, 64, 96, seed=1)]
    capture_block_loop(model, backend="eager")
    stream = StreamingSampler(model, BlockLayout.released(), settings).stream(text, 60, 64, 96, seed=1)
    captured = [next(stream).video for _ in range(6)]
    compiled_after_warmup = counters["frames"]["total"]
    for _ in stream:
        pass
    assert counters["frames"]["total"] == compiled_after_warmup  # 54 more blocks, no recompile
    assert 1 <= compiled_after_warmup <= 4 and not counters["graph_break"]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(eager, captured))
