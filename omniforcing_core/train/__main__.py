"""``python -m omniforcing_core.train STAGE --config FILE --out DIR`` (also under torchrun).

Stages: teacher, stage1, ode-pairs, stage2, stage3, export; ``all`` runs them in order and
``smoke`` runs them all with the checked-in tiny smoke config. Each stage reads the
previous one's output in DIR, skips itself when its own output exists, and resumes from
its last checkpoint when it was stopped. ``demo`` is the built-in demo model's whole
recipe (codecs, encoded world, every stage, both layouts; ``configs/demo.toml`` by
default), publishing each finished stage into the pack.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..host import device_problem
from .config import TrainConfigError, load_config
from .distributed import close_world, init_world, pick_device
from .runner import PIPELINE, run_stage

CONFIGS = Path(__file__).parent / "configs"
COMMANDS = [name.replace("_", "-") for name in PIPELINE] + ["all", "smoke", "demo"]
DEFAULT_CONFIGS = {"smoke": "smoke.toml", "demo": "demo.toml"}
# The world's codecs and its pre-encoded latents (``codecs.py``): one process, on the CPU or a GPU.
CODEC_COMMANDS = {"codecs": "run_codecs", "encode-world": "run_encode_world", "codecs-finetune": "run_finetune_decoders"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omniforcing_core.train", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=COMMANDS + list(CODEC_COMMANDS))
    parser.add_argument("--config", type=Path, help="training config (TOML); smoke uses configs/smoke.toml")
    parser.add_argument("--out", type=Path, required=True, help="run folder: every stage's output and checkpoints")
    parser.add_argument("--device", default="", help="cpu, cuda, cuda:1 ... (default: the local GPU if any)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set stage2.steps=50 (repeatable)")
    args = parser.parse_args(argv)
    default = DEFAULT_CONFIGS.get(args.command)
    config_path = args.config or (CONFIGS / default if default else None)
    if config_path is None:
        parser.error(f"{args.command} needs --config FILE (checked-in configs: {sorted(p.name for p in CONFIGS.glob('*.toml'))})")
    try:
        config = load_config(config_path, args.overrides)
    except TrainConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = args.device or config.run.device or None
    problem = device and device_problem(device)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.command in CODEC_COMMANDS:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            print(f"error: {args.command} runs in one process (the codecs are small): launch it with python, "
                  "not torchrun", file=sys.stderr)
            return 2
        from . import codecs

        args.out.mkdir(parents=True, exist_ok=True)
        getattr(codecs, CODEC_COMMANDS[args.command])(config, args.out, device=pick_device(device))
        return 0
    stages = PIPELINE if args.command in ("all", "smoke") else (args.command.replace("-", "_"),)
    world = init_world(device)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        if args.command == "demo":
            from .demo import run_demo

            run_demo(config, args.out, world)
            return 0
        for stage in stages:
            run_stage(config, args.out, world, stage)
    except TrainConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        close_world()
    return 0


if __name__ == "__main__":
    sys.exit(main())
