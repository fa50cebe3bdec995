"""The loss floor of Stage II: a causal student regressing a bidirectional teacher's ODE pairs.

    python -m benchmarks.stage2_floor                                   # tiny random teacher
    python -m benchmarks.stage2_floor --teacher omniforcing_core/assets/demo/stages/teacher.safetensors

The student is the teacher itself. With every block visible and every block one teacher
step from the end the Stage II loss is exactly 0; under the block-causal mask it is not, because the teacher's early blocks were denoised
looking at later blocks' noise, which a causal student never sees. One JSON line per
trajectory point (all blocks at that sigma), and the floor relative to the target's power.
"""

from __future__ import annotations

import argparse
import json

import torch

from omniforcing_core import BlockLayout, ModelConfig, StreamSettings, block_causal_masks
from omniforcing_core.checkpoint import load_model
from omniforcing_core.demo import randomize_
from omniforcing_core.transformer import AVTransformer
from omniforcing_core.conditioning import TextConditioning
from omniforcing_core.train.stages import Draws, Guidance, StreamWeights, stage2_loss, teacher_sample


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="a bidirectional teacher file (default: tiny random weights)")
    parser.add_argument("--layout", default="paper", choices=("paper", "released"))
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--grid", default="4x6", help="latent rows x columns")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    teacher = (load_model(args.teacher, dtype=torch.float32).model if args.teacher
               else randomize_(AVTransformer(ModelConfig.tiny()), 0))
    layout = BlockLayout.named(args.layout)
    grid = tuple(int(v) for v in args.grid.split("x"))
    c = teacher.config
    frames, audio_frames = layout.latent_lengths(args.seconds)
    draws = Draws(0, 0, range(args.batch), "cpu")
    noise_video = draws.normal((c.video_in_channels, frames, *grid), "noise")
    noise_audio = draws.normal((audio_frames, c.audio_in_channels), "noise", 1)
    text = TextConditioning(draws.normal((8, c.caption_channels), "data"), draws.normal((8, c.caption_channels), "data", 1))
    sigmas = [s for s in StreamSettings().sigmas]
    keep = sigmas[:-1]
    with torch.no_grad():
        (video, audio), kept = teacher_sample(teacher, noise_video, noise_audio, text, text, Guidance(1, 1), sigmas, keep)
        trajectory_video = torch.stack([v for v, _ in kept], dim=1)
        trajectory_audio = torch.stack([a for _, a in kept], dim=1)
        blocks = layout.num_blocks(args.seconds)
        every = block_causal_masks(layout, blocks, grid[0] * grid[1], visible_blocks=lambda k: range(blocks))
        power = 0.5 * (video.square().mean() + audio.square().mean())
        for point, sigma in enumerate(keep):
            indices = torch.full((args.batch, blocks), point)
            losses = {}
            for name, masks in (("causal", None), ("full_visibility", every)):
                loss, parts = stage2_loss(teacher, layout, trajectory_video, trajectory_audio, video, audio,
                                          torch.tensor(keep), text, draws, StreamWeights(1.0, 1.0), 0,
                                          masks=masks, block_indices=indices)
                losses[name] = loss.item()
                losses[f"{name}_video"], losses[f"{name}_audio"] = parts["video"], parts["audio"]
            # What the mask alone costs: the one-step gap to the trajectory's end is in both.
            floor = losses["causal"] - losses["full_visibility"]
            print(json.dumps({"sigma": round(sigma, 6), **{k: float(f"{v:.4g}") for k, v in losses.items()},
                              "causal_floor": float(f"{floor:.4g}"),
                              "causal_floor_relative": float(f"{floor / 2 / power.item():.4g}")}))


if __name__ == "__main__":
    main()
