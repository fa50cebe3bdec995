"""The built-in demo model's recipe: ``python -m omniforcing_core.train demo --out DIR``.

codecs -> decoder fine-tuning (encoders frozen) -> encode-world -> teacher -> Stage I ->
ODE pairs -> Stage II -> Stage III -> export, into a paper-layout student with audio sink tokens; then Stage II and III again
into a released-layout student without sinks (same teacher, Stage I and ODE pairs) for
comparison. Every finished stage is published at once into ``assets/demo`` (weights in
bf16, a few MB each, with its metrics): a run on a new machine starts from the last
published stage instead of from scratch, and the pack's shipped files are refreshed as
soon as the student exists. ODE pairs and latents are regenerated, not published.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..checkpoint import load_model, save_checkpoint
from ..demo_model import DEMO_BASE, DEMO_FOLDER, DEMO_GENERATOR, DEMO_RELEASED_GENERATOR, write_demo_base
from .codecs import BASE_FILE, FINETUNE_MARKER, run_codecs, run_encode_world, run_finetune_decoders
from .config import TrainConfig
from .distributed import World
from .runner import PIPELINE, STAGE_OUTPUTS, Run, run_stage

# Published name in assets/demo/stages -> the stage output it stands for (run-relative).
PUBLISHED = {
    "teacher.safetensors": STAGE_OUTPUTS["teacher"],
    "prompt_encoder.safetensors": "teacher/prompt_encoder.safetensors",
    "stage1.safetensors": STAGE_OUTPUTS["stage1"],
    "stage2.safetensors": STAGE_OUTPUTS["stage2"],
    "stage3.safetensors": STAGE_OUTPUTS["stage3"],
    "released_stage2.safetensors": "released/" + STAGE_OUTPUTS["stage2"],
    "released_stage3.safetensors": "released/" + STAGE_OUTPUTS["stage3"],
}
SHARED_WITH_RELEASED = ("teacher", "stage1", "ode_pairs", "latents", "codecs")


def released_variant(config: TrainConfig) -> TrainConfig:
    """The comparison student: the released layout (4 + 26 first block), no sinks."""
    return replace(config, model=replace(config.model, layout="released", audio_sink_tokens=0))


def seed_run(out: Path, assets: Path) -> None:
    """Start ``out`` from what is published: finished stages are then skipped."""
    stages = assets / "stages"
    for name, relative in PUBLISHED.items():
        source, target = stages / name, out / relative
        if source.exists() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Keeping the time stamp tells ``publish`` the pack already has this stage.
            shutil.copy2(source, target)
    codecs = assets / DEMO_BASE
    if codecs.exists() and not (out / BASE_FILE).exists():
        (out / BASE_FILE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(codecs, out / BASE_FILE)
        with safe_open(str(codecs), "pt") as published:
            made = json.loads((published.metadata() or {}).get("omniforcing_codecs", "{}"))
        if made.get("finetuned"):
            # Its decoders are already fine-tuned: not a second time.
            (out / BASE_FILE).with_name(FINETUNE_MARKER).write_text(json.dumps(made.get("eval", {})))


def publish(out: Path, assets: Path, config: TrainConfig) -> None:
    """Copy finished stage outputs (bf16) and their metrics into ``assets``; refresh the
    shipped generator files and the base file (codecs + prompt encoder)."""
    stages = assets / "stages"
    stages.mkdir(parents=True, exist_ok=True)
    for name, relative in PUBLISHED.items():
        source = out / relative
        target = stages / name
        if not source.exists() or (target.exists() and target.stat().st_mtime >= source.stat().st_mtime):
            continue
        _copy_bf16(source, target)
        metrics = source.parent / "metrics.jsonl"
        if metrics.exists() and name != "prompt_encoder.safetensors":
            shutil.copyfile(metrics, stages / name.replace(".safetensors", ".metrics.jsonl"))
    run = Run(config, out, World(), "export")
    if (out / BASE_FILE).exists() and (out / "teacher" / "prompt_encoder.safetensors").exists():
        write_demo_base(assets / DEMO_BASE, out / BASE_FILE, run.load_prompt_encoder(),
                        {"codecs": json.loads((out / BASE_FILE).with_name("eval.json").read_text())
                         if (out / BASE_FILE).with_name("eval.json").exists() else {}})
    for exported, shipped in ((out / STAGE_OUTPUTS["export"], DEMO_GENERATOR),
                              (out / "released" / STAGE_OUTPUTS["export"], DEMO_RELEASED_GENERATOR)):
        if exported.exists():
            _copy_bf16(exported, assets / shipped)


def _copy_bf16(source: Path, target: Path) -> None:
    """A stage output rewritten in bf16 (half the bytes; later stages only start from it)."""
    if source.name == "prompt_encoder.safetensors":
        with safe_open(str(source), "pt") as stored:
            metadata = stored.metadata()
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(source).items()}, str(target), metadata)
        return
    loaded = load_model(source, dtype=torch.float32)
    with safe_open(str(source), "pt") as stored:
        extra = {k: v for k, v in (stored.metadata() or {}).items() if k.startswith("omniforcing_")}
    save_checkpoint(target, loaded.model, prefix="model.", block_layout=loaded.layout, metadata=extra,
                    dtype=torch.bfloat16, overwrite=True)


def _log(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)


def run_demo(config: TrainConfig, out: Path, world: World, assets: Path = DEMO_FOLDER) -> None:
    """The whole recipe, resumable at every stage (see the module docstring)."""
    out = Path(out)
    seed_run(out, assets)
    if world.is_main:
        run_codecs(config, out, device=world.device)
        run_finetune_decoders(config, out, device=world.device)
        # The encoded world feeds the teacher and the DMD stages (their prompts and shapes).
        data_stages = [out / STAGE_OUTPUTS[s] for s in ("teacher", "stage1", "stage3")]
        data_stages.append(out / "released" / STAGE_OUTPUTS["stage3"])
        if not all(p.exists() for p in data_stages) and not any((out / "latents").glob("*.safetensors")):
            run_encode_world(config, out, device=world.device)
        publish(out, assets, config)
    _barrier(world)
    released = released_variant(config)
    released_out = out / "released"
    for variant, variant_out in ((config, out), (released, released_out)):
        if variant is released:
            released_out.mkdir(parents=True, exist_ok=True)
            for shared in SHARED_WITH_RELEASED:
                link = released_out / shared
                if not link.exists():
                    link.symlink_to((out / shared).resolve(), target_is_directory=True)
        for stage in PIPELINE:
            if variant is released and stage in ("teacher", "stage1", "ode_pairs"):
                continue
            if stage == "ode_pairs" and (variant_out / STAGE_OUTPUTS["stage2"]).exists():
                _log("Stage II is done: its ODE pairs are not needed")
                continue
            run_stage(variant, variant_out, world, stage)
            if world.is_main:
                publish(out, assets, config)
            _barrier(world)


def _barrier(world: World) -> None:
    if world.sharded:
        torch.distributed.barrier()
