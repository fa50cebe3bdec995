"""The stages as runs: models in and out, optimisers, the loop, logs, checkpoints, resume.

Every stage reads the previous stage's output from the run folder and writes its own:

    DIR/teacher/teacher.safetensors + prompt_encoder.safetensors
    DIR/stage1/generator.safetensors
    DIR/ode_pairs/*.safetensors
    DIR/stage2/student.safetensors
    DIR/stage3/student.safetensors (the EMA weights)
    DIR/student.safetensors + DIR/prompt_encoder.safetensors (export)

A stage re-run with its output present does nothing; a stopped one resumes from its last
distributed checkpoint (``DIR/<stage>/checkpoints``) and continues bit-identically.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import load_model, save_checkpoint
from ..config import ModelConfig
from ..layout import BlockLayout, latent_grid
from ..transformer import AVTransformer
from .config import StageSection, TrainConfig, TrainConfigError
from .data import LatentShards, SyntheticLatents, batch_at, sample_indices, write_shard
from .distributed import (
    EMA,
    TrainingState,
    World,
    all_mean,
    compute_precision,
    full_state_dict,
    full_tensor,
    load_latest_state,
    save_state,
    set_gradient_sync,
    shard_model,
)
from .stages import (
    DMDSettings,
    Draws,
    Guidance,
    StreamWeights,
    backward_simulation,
    critic_loss,
    dmd_generator_loss,
    stage2_loss,
    stage3_sample,
    teacher_grid,
    teacher_loss,
    teacher_sample,
)
from ..world.prompts import WorldPromptConfig, WorldPromptEncoder

# Metadata key of the stage settings a finished output was made with.
SETTINGS_KEY = "omniforcing_stage_settings"
STAGE_OUTPUTS = {
    "teacher": "teacher/teacher.safetensors",
    "stage1": "stage1/generator.safetensors",
    "ode_pairs": "ode_pairs/complete",
    "stage2": "stage2/student.safetensors",
    "stage3": "stage3/student.safetensors",
    "export": "student.safetensors",
}


# Prompts of the synthetic smoke data: one latent pattern each.
SMOKE_PROMPTS = ("a red ball bounces", "a blue cube falls", "a green wedge hops", "a white disc and a red box bounce")


class Run:
    """One stage of one run folder on this rank."""

    def __init__(self, config: TrainConfig, out: Path, world: World, stage: str):
        self.config, self.out, self.world, self.stage = config, Path(out), world, stage
        self.section: StageSection = config.stage(stage)
        self.layout: BlockLayout = config.model.block_layout()
        self.grid = latent_grid(config.data.height, config.data.width)
        self.dtype = config.run.compute_dtype
        self.folder = self.out / stage
        self._dataset = None

    @property
    def device(self) -> torch.device:
        return self.world.device

    def done(self) -> bool:
        return (self.out / STAGE_OUTPUTS[self.stage]).exists()

    def settings(self) -> dict:
        """The stage's section as stored beside its output (JSON values)."""
        return json.loads(json.dumps(asdict(self.section)))

    def settings_changed(self) -> dict[str, tuple]:
        """Settings the finished output was made with that this config changes: {key: (then, now)}.
        Outputs from before settings were stored compare as unchanged."""
        output = self.out / STAGE_OUTPUTS[self.stage]
        if output.suffix == ".safetensors":
            with safe_open(str(output), "pt") as stored:
                made = json.loads((stored.metadata() or {}).get(SETTINGS_KEY, "{}"))
        else:
            made = json.loads(output.read_text()).get("settings", {})
        now = self.settings()
        return {key: (value, now[key]) for key, value in made.items() if key in now and now[key] != value}

    def draws(self, step: int, micro: int = 0) -> Draws:
        data_step = step * self.section.grad_accum + micro
        indices = sample_indices(data_step, self.section.batch, self.world.rank, self.world.size)
        return Draws(self.config.run.seed, data_step, indices, self.device)

    # Models ------------------------------------------------------------------------

    def prepare(self, model: nn.Module, trainable: bool) -> nn.Module:
        model = model.to(self.device)
        model.requires_grad_(trainable)
        model.train(trainable)
        if isinstance(model, AVTransformer):
            return shard_model(model, self.world, compute_dtype=self.dtype,
                               activation_checkpointing=trainable and self.config.run.activation_checkpointing)
        return shard_model_generic(model, self.world, self.dtype)

    def new_prompt_encoder(self) -> WorldPromptEncoder:
        torch.manual_seed(self.config.run.seed)
        return WorldPromptEncoder(self.prompt_config())

    def prompt_config(self) -> WorldPromptConfig:
        t = self.config.text
        return WorldPromptConfig(caption_channels=self.config.model.student_config().caption_channels,
                                 width=t.width, num_layers=t.num_layers, heads=t.heads, max_tokens=t.max_tokens)

    def load_prompt_encoder(self) -> WorldPromptEncoder:
        encoder = self.new_prompt_encoder()
        encoder.load_state_dict(load_file(self.out / "teacher" / "prompt_encoder.safetensors"))
        return encoder

    def load_transformer(self, relative: str, config: ModelConfig) -> AVTransformer:
        """Weights from an earlier stage into a model of ``config`` (a student with sinks
        starting from a teacher keeps its fresh sink tokens)."""
        loaded = load_model(self.out / relative, dtype=torch.float32)
        # Fresh parameters (the sinks) are drawn from the run's seed: a resumed or sharded
        # run starts from the same model.
        torch.manual_seed(self.config.run.seed)
        model = AVTransformer(config)
        missing, unexpected = model.load_state_dict(loaded.model.state_dict(), strict=False)
        if unexpected or any(key != "audio_sink_tokens" for key in missing):
            raise ValueError(f"{relative}: weights do not fit the configured model (missing {missing}, unexpected {unexpected})")
        return model

    def save_transformer(self, model: nn.Module, relative: str, layout: BlockLayout, weights=None) -> None:
        """Collective: every rank gathers, rank 0 writes (atomically: a file appears whole)."""
        state = weights if weights is not None else full_state_dict(model)
        if self.world.is_main:
            config = (model.config if isinstance(model, AVTransformer) else None)
            save_checkpoint(self.out / relative, state, prefix="model.", config=config, block_layout=layout,
                            metadata={"omniforcing_stage": self.stage, SETTINGS_KEY: json.dumps(self.settings())},
                            overwrite=True)

    # The loop ------------------------------------------------------------------------

    def loop(self, state: TrainingState, step_fn: Callable[[int], dict[str, float]]) -> None:
        checkpoints = self.folder / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        if load_latest_state(checkpoints, state):
            self.log_line(f"resumed {self.stage} at step {state.step}")
        metrics_file = self.folder / "metrics.jsonl"
        progress = Progress(self.stage, self.section.steps, self.world.is_main)
        started, first_step = time.perf_counter(), state.step
        while state.step < self.section.steps:
            metrics = step_fn(state.step)
            state.step += 1
            metrics = {key: all_mean(value, self.world) for key, value in metrics.items()}
            metrics["steps_per_s"] = (state.step - first_step) / max(time.perf_counter() - started, 1e-9)
            metrics["peak_memory_mb"] = peak_memory_mb(self.device)
            if self.world.is_main:
                with metrics_file.open("a") as handle:
                    handle.write(json.dumps({"stage": self.stage, "step": state.step, **metrics}) + "\n")
            progress.update(state.step, metrics, self.config.run.log_every)
            if state.step % self.config.run.checkpoint_every == 0 or state.step == self.section.steps:
                save_state(checkpoints, state)
        progress.close()

    def optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        s = self.section
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                 betas=tuple(s.betas), weight_decay=s.weight_decay)

    def update(self, model: nn.Module, optimizer, loss_fn: Callable[[int], tuple[torch.Tensor, dict]],
               extra: tuple[nn.Module, ...] = ()) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches, clipped; metrics averaged."""
        optimizer.zero_grad(set_to_none=True)
        accum, totals = self.section.grad_accum, {}
        for micro in range(accum):
            for module in (model, *extra):
                set_gradient_sync(module, micro == accum - 1)
            with compute_precision(self.world, self.dtype):
                loss, metrics = loss_fn(micro)
            (loss / accum).backward()
            for key, value in {"loss": loss.item(), **metrics}.items():
                totals[key] = totals.get(key, 0.0) + value / accum
        parameters = [p for m in (model, *extra) for p in m.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.section.grad_clip)
        optimizer.step()
        totals["grad_norm"] = float(full_tensor(norm))
        return totals

    def log_line(self, text: str) -> None:
        if self.world.is_main:
            print(f"[{self.stage}] {text}", file=sys.stderr, flush=True)

    def weights(self) -> StreamWeights:
        return StreamWeights(self.section.video_weight, self.section.audio_weight)

    def dataset(self):
        """The stage's samples, opened (and checked against the model) once."""
        if self._dataset is None:
            self._dataset = self._open_dataset()
        return self._dataset

    def _open_dataset(self):
        d = self.config.data
        c = self.config.model.student_config()
        if d.kind == "synthetic":
            ids, _ = WorldPromptEncoder(self.prompt_config()).tokenize(list(SMOKE_PROMPTS[: d.prompts]))
            return SyntheticLatents(self.layout, d.seconds, self.grid, ids, (c.video_in_channels, c.audio_in_channels),
                                    size=d.size)
        if d.kind != "shards":
            raise TrainConfigError(f"[data] kind must be 'synthetic' or 'shards', got {d.kind!r}")
        # A relative path is inside the run folder (where encode-world writes).
        where = f"[data] path = {d.path!r} ({self.out / d.path})"
        try:
            shards = LatentShards(self.out / d.path)
        except (FileNotFoundError, ValueError) as error:
            raise TrainConfigError(f"{where}: {error}; a relative path is inside --out, where encode-world "
                                   "writes latents/") from error
        sample = shards.sample(0)
        video, audio = tuple(sample["video"].shape), tuple(sample["audio"].shape)
        if video[0] != c.video_in_channels or video[2:] != self.grid or audio[-1] != c.audio_in_channels:
            raise TrainConfigError(
                f"{where}: the shards hold video latents of {video[0]} channels on a {video[2]}x{video[3]} grid and "
                f"audio tokens {audio[-1]} wide; the model takes {c.video_in_channels} channels on "
                f"{self.grid[0]}x{self.grid[1]} ([data] height/width {self.config.data.height}x{self.config.data.width})"
                f" and tokens {c.audio_in_channels} wide ([model] video_channels / audio_channels)")
        return shards


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory on a GPU; the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shard_model_generic(model: nn.Module, world: World, dtype: torch.dtype) -> nn.Module:
    """Small modules beside the transformer (the prompt encoder): one FSDP2 unit."""
    if not world.sharded:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(world.device.type, (world.size,))
    fully_shard(model, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32,
                                                                 cast_forward_inputs=False))
    return model


class Progress:
    """A progress bar with loss, grad norm and steps/s on a terminal; plain lines otherwise."""

    def __init__(self, stage: str, total: int, enabled: bool):
        self.stage, self.total, self.enabled = stage, total, enabled
        self.tty = enabled and sys.stderr.isatty()

    def update(self, step: int, metrics: dict[str, float], every: int) -> None:
        if not self.enabled:
            return
        summary = " ".join(f"{k}={metrics[k]:.4g}" for k in ("loss", "grad_norm", "steps_per_s") if k in metrics)
        if self.tty:
            filled = int(30 * step / max(self.total, 1))
            print(f"\r{self.stage} [{'#' * filled}{'.' * (30 - filled)}] {step}/{self.total} {summary}",
                  end="", file=sys.stderr, flush=True)
        elif step % every == 0 or step == self.total:
            print(f"[{self.stage}] step {step}/{self.total} {summary}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


# Stages ------------------------------------------------------------------------------


def run_teacher(run: Run) -> None:
    """Bidirectional flow matching of the teacher and its prompt encoder from scratch."""
    torch.manual_seed(run.config.run.seed)
    teacher = run.prepare(AVTransformer(run.config.model.teacher_config()), trainable=True)
    encoder = run.prepare(run.new_prompt_encoder(), trainable=True)
    # One optimiser over both: the prompt encoder learns with the teacher it conditions.
    both = nn.ModuleDict({"teacher": teacher, "prompt_encoder": encoder})
    optimizer = run.optimizer(both, run.section.lr)
    state = TrainingState({"teacher": both}, {"teacher": optimizer})
    dataset, s = run.dataset(), run.section

    def step(index: int) -> dict[str, float]:
        def loss_fn(micro: int):
            draws = run.draws(index, micro)
            batch = batch_at(dataset, draws.indices, run.device)
            return teacher_loss(teacher, encoder, batch, draws, run.weights(), s.text_dropout, s.sigma_shift)

        return run.update(teacher, optimizer, loss_fn, extra=(encoder,))

    run.loop(state, step)
    encoder_state = full_state_dict(encoder)
    if run.world.is_main:
        save_file(encoder_state, str(run.folder / "prompt_encoder.safetensors"),
                  metadata={"config": json.dumps({"prompt_encoder": run.prompt_config().to_metadata()})})
    run.save_transformer(teacher, STAGE_OUTPUTS["teacher"], run.layout)


def _teacher(run: Run) -> AVTransformer:
    return run.prepare(run.load_transformer(STAGE_OUTPUTS["teacher"], run.config.model.teacher_config()), trainable=False)


def _dmd_settings(run: Run) -> DMDSettings:
    s = run.section
    return DMDSettings(Guidance(s.guidance_video, s.guidance_audio), run.weights(), s.dmd_sigma_low, s.dmd_sigma_high)


def _dmd_stage(run: Run, generator: AVTransformer, sample_fn, ema: EMA | None) -> None:
    """Stage I and III share this: critic updates, then one generator update per step."""
    teacher = _teacher(run)
    critic = run.prepare(run.load_transformer(STAGE_OUTPUTS["teacher"], run.config.model.teacher_config()), trainable=True)
    encoder = run.prepare(run.load_prompt_encoder(), trainable=False)
    generator_optimizer = run.optimizer(generator, run.section.lr)
    critic_optimizer = run.optimizer(critic, run.section.critic_lr)
    state = TrainingState(
        {"generator": generator, "critic": critic},
        {"generator": generator_optimizer, "critic": critic_optimizer},
        ema.shadow if ema is not None else None,
    )
    dataset, settings = run.dataset(), _dmd_settings(run)

    def prompts(draws: Draws):
        batch = batch_at(dataset, draws.indices, run.device)
        with torch.no_grad():
            return encoder(batch["prompt"]), encoder(torch.zeros_like(batch["prompt"])), batch

    def step(index: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for update in range(run.section.critic_updates):
            def critic_fn(micro: int):
                draws = run.draws(index, micro)
                cond, _, batch = prompts(draws)
                with torch.no_grad():
                    video, audio = sample_fn(draws, cond, batch, with_grad=False, salt=update)
                return critic_loss(critic, video, audio, cond, draws, settings, draw=10 + 2 * update)

            metrics.update({f"critic_{k}": v for k, v in run.update(critic, critic_optimizer, critic_fn).items()})

        def generator_fn(micro: int):
            draws = run.draws(index, micro)
            cond, uncond, batch = prompts(draws)
            video, audio = sample_fn(draws, cond, batch, with_grad=True, salt=0)
            return dmd_generator_loss(teacher, critic, video, audio, cond, uncond, draws, settings)

        metrics.update(run.update(generator, generator_optimizer, generator_fn))
        if ema is not None:
            if index + 1 == run.section.ema_start:
                ema.reset(generator)
            elif index + 1 > run.section.ema_start:
                ema.update(generator)
        return metrics

    run.loop(state, step)


def run_stage1(run: Run) -> None:
    """Stage I: a few-step bidirectional generator by DMD, from the teacher."""
    generator = run.prepare(run.load_transformer(STAGE_OUTPUTS["teacher"], run.config.model.teacher_config()), trainable=True)
    sigmas = [s for s in run.config.sigmas if s > 0]

    def sample_fn(draws: Draws, cond, batch, with_grad: bool, salt: int):
        exit_step = draws.choice(len(sigmas))[0]
        noise_video, noise_audio = draws.latent_noise(batch["video"], batch["audio"], "noise", 200 + salt)
        return backward_simulation(generator, noise_video, noise_audio, cond, sigmas, exit_step, draws, with_grad)

    _dmd_stage(run, generator, sample_fn, None)
    run.save_transformer(generator, STAGE_OUTPUTS["stage1"], run.layout)


def run_ode_pairs(run: Run) -> None:
    """Teacher trajectories (Euler, CFG) kept at the student's sigmas, as shards per rank."""
    teacher = _teacher(run)
    encoder = run.prepare(run.load_prompt_encoder(), trainable=False)
    dataset, s = run.dataset(), run.section
    keep = [sigma for sigma in run.config.sigmas if sigma > 0]
    grid = teacher_grid(s.teacher_steps, keep)
    guidance = Guidance(s.guidance_video, s.guidance_audio)
    run.folder.mkdir(parents=True, exist_ok=True)
    shards = range(run.world.rank, -(-s.count // s.shard_size), run.world.size)
    for shard in shards:
        path = run.folder / f"pairs-{shard:05d}.safetensors"
        if path.exists():
            continue
        indices = range(shard * s.shard_size, min((shard + 1) * s.shard_size, s.count))
        draws = Draws(run.config.run.seed, 0, indices, run.device)
        batch = batch_at(dataset, indices, run.device)
        with torch.no_grad():
            cond, uncond = encoder(batch["prompt"]), encoder(torch.zeros_like(batch["prompt"]))
            noise_video, noise_audio = draws.latent_noise(batch["video"], batch["audio"], "noise", 300)
            with compute_precision(run.world, run.dtype):
                (video, audio), kept = teacher_sample(teacher, noise_video, noise_audio, cond, uncond, guidance, grid, keep)
        write_shard(path, {
            "video": video.float(), "audio": audio.float(), "prompt": batch["prompt"],
            "video_trajectory": torch.stack([v for v, _ in kept], dim=1).float(),
            "audio_trajectory": torch.stack([a for _, a in kept], dim=1).float(),
        }, metadata={"sigmas": json.dumps(keep), "teacher_grid": json.dumps(grid)})
        run.log_line(f"wrote {path.name} ({len(indices)} trajectories, {len(grid) - 1} teacher steps)")
    _barrier(run.world)
    if run.world.is_main:
        (run.out / STAGE_OUTPUTS["ode_pairs"]).write_text(json.dumps({"count": s.count, "sigmas": keep,
                                                                     "settings": run.settings()}))


def run_stage2(run: Run) -> None:
    """Stage II: the block-causal student regresses the teacher's trajectories."""
    start = STAGE_OUTPUTS["stage1"] if (run.out / STAGE_OUTPUTS["stage1"]).exists() else STAGE_OUTPUTS["teacher"]
    student = run.prepare(run.load_transformer(start, run.config.model.student_config()), trainable=True)
    encoder = run.prepare(run.load_prompt_encoder(), trainable=False)
    pairs = LatentShards(run.out / "ode_pairs", keys=("video", "audio", "prompt", "video_trajectory", "audio_trajectory"))
    sigmas = torch.tensor(json.loads(pairs.metadata["sigmas"]))
    optimizer = run.optimizer(student, run.section.lr)
    state = TrainingState({"student": student}, {"student": optimizer})
    sinks = run.config.model.audio_sink_tokens

    def step(index: int) -> dict[str, float]:
        def loss_fn(micro: int):
            draws = run.draws(index, micro)
            batch = batch_at(pairs, draws.indices, run.device)
            with torch.no_grad():
                cond = encoder(batch["prompt"])
            return stage2_loss(student, run.layout, batch["video_trajectory"], batch["audio_trajectory"],
                               batch["video"], batch["audio"], sigmas, cond, draws, run.weights(), sinks)

        return run.update(student, optimizer, loss_fn)

    run.loop(state, step)
    run.save_transformer(student, STAGE_OUTPUTS["stage2"], run.layout)


def run_stage3(run: Run) -> None:
    """Stage III: self-forcing DMD of the causal student through its own rollout."""
    student = run.prepare(run.load_transformer(STAGE_OUTPUTS["stage2"], run.config.model.student_config()), trainable=True)
    ema = EMA(student, run.section.ema_decay)
    sinks = run.config.model.audio_sink_tokens
    num_blocks = run.layout.num_blocks(run.config.data.seconds)

    def sample_fn(draws: Draws, cond, batch, with_grad: bool, salt: int):
        salted = Draws(draws.seed, draws.step * 8 + salt, draws.indices, draws.device)
        return stage3_sample(student, run.layout, num_blocks, run.grid, cond, run.config.sigmas, salted, sinks,
                             run.section.context_noise, with_grad)

    _dmd_stage(run, student, sample_fn, ema)
    ema_weights = {name: full_tensor(value).detach().cpu() for name, value in ema.shadow.items()}
    run.save_transformer(student, STAGE_OUTPUTS["stage3"], run.layout, weights=ema_weights)


def run_export(run: Run) -> None:
    """The shipped student (Stage III, else Stage II) and its prompt encoder, loadable by
    ``load_model`` as a generator of the configured layout."""
    source = STAGE_OUTPUTS["stage3"] if (run.out / STAGE_OUTPUTS["stage3"]).exists() else STAGE_OUTPUTS["stage2"]
    if run.world.is_main:
        student = run.load_transformer(source, run.config.model.student_config())
        save_checkpoint(run.out / STAGE_OUTPUTS["export"], student, prefix="model.", block_layout=run.layout,
                        metadata={"omniforcing_source": source, "omniforcing_training": json.dumps(_provenance(run)),
                                  SETTINGS_KEY: json.dumps(run.settings())},
                        overwrite=True)
        shutil.copyfile(run.out / "teacher" / "prompt_encoder.safetensors", run.out / "prompt_encoder.safetensors")


def _provenance(run: Run) -> dict:
    c = run.config
    return {"model": asdict(c.model), "data": asdict(c.data), "sigmas": list(c.sigmas),
            "stages": {name: asdict(section) for name, section in c.stages.items()}}


def _barrier(world: World) -> None:
    if world.sharded:
        import torch.distributed as dist

        dist.barrier()


# The stages that read [data]: checked before any model of theirs is built.
READS_DATA = ("teacher", "stage1", "ode_pairs", "stage3")
RUNNERS = {
    "teacher": run_teacher,
    "stage1": run_stage1,
    "ode_pairs": run_ode_pairs,
    "stage2": run_stage2,
    "stage3": run_stage3,
    "export": run_export,
}
PIPELINE = tuple(RUNNERS)


def run_stage(config: TrainConfig, out: Path, world: World, stage: str) -> bool:
    """Run one stage unless its output exists; True if it ran."""
    run = Run(config, out, world, stage)
    if run.done():
        changed = run.settings_changed()
        note = ""
        if changed:
            then = ", ".join(f"{key}={old!r}" for key, (old, _) in changed.items())
            now = ", ".join(f"{key}={new!r}" for key, (_, new) in changed.items())
            note = f" (made with {then}; this config says {now}: move it aside to run {stage} again)"
        run.log_line(f"{STAGE_OUTPUTS[stage]} exists: skipped{note}")
        return False
    if stage in READS_DATA:
        run.dataset()
    run.folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    RUNNERS[stage](run)
    # Rank 0 writes the stage's output; no rank may look for it before it exists.
    _barrier(world)
    run.log_line(f"finished in {time.perf_counter() - started:.1f} s")
    return True


def with_stage_steps(config: TrainConfig, **steps: int) -> TrainConfig:
    """A copy with some stages' step counts changed (tests, quick tries)."""
    stages = dict(config.stages)
    for name, count in steps.items():
        stages[name] = replace(config.stage(name), steps=count)
    return replace(config, stages=stages)
