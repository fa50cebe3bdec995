"""Trained tiny codecs for the world, and the world pre-encoded with them.

``codecs`` trains three small models of the LTX-2 architecture on clips rendered on the
fly from the synthetic world (``omniforcing_core.world``), one after the other, each
resumable from its own distributed checkpoints:

- ``video``: ``VideoVAEEncoder`` + the project's ``VideoVAE`` decoder on 17-frame windows
  of 3 s clips (pixel MSE);
- ``audio``: ``AudioVAEEncoder`` + ``AudioVAEDecoder`` on the stereo 16 kHz log-mel of
  whole 3 s clips (mel L1);
- ``vocoder``: the HiFi-GAN ``Vocoder`` from ground-truth log-mel to the 24 kHz stereo
  sound (multi-resolution STFT + mel losses, no discriminator), on windows around impacts.

Both VAEs are deterministic autoencoders (``latent_log_var = "constant"``, no
``double_z``) regularised by latent noise: in training the decoder sees the means plus
Gaussian noise of ``latent_noise`` times each channel's batch std, so it tolerates latents
that are slightly off by that much in the normalised space the transformer works in, and a
light L2 penalty keeps the means' scale from drifting. After training each VAE's
``per_channel_statistics`` are set from encoded training clips, so normalised latents are
~N(0, 1) per channel. The output is one base file laid out like the LTX-2 base file
(``vae.*``, ``audio_vae.*``, ``vocoder.*`` with their metadata config sections):
``load_decoders`` and ``load_encoders`` read it as they read the real one.

``encode-world`` renders ``[world] count`` clips and writes them, encoded, as the latent
shards ``LatentShards`` reads (``video``, ``audio``, ``prompt``), with each clip's ground
truth in the shard metadata.

Each command runs in one process on the device it is given (the CLI's ``--device``: the
local GPU when there is one): clips are rendered on the CPU, the models and their steps run
on the device, and what is written (base file, shards) is on the CPU. The latent noise is
drawn on the CPU, so a run draws the same numbers on any device.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import save_checkpoint
from ..checkpoint.components import load_decoders, load_encoders
from ..decoders.audio_encoder import AudioVAEEncoder
from ..decoders.audio_vae import AudioVAEConfig, AudioVAEDecoder
from ..decoders.mel import log_mel_spectrogram
from ..decoders.video_encoder import VideoEncoderConfig, VideoVAEEncoder, video_vae_metadata
from ..decoders.video_vae import TemporalChunk, VideoVAE, VideoVAEConfig, pixels_to_frames
from ..decoders.audio_stream import StreamingAudioDecoder, decode_audio_clip
from ..decoders.video_stream import VideoStreamDecoder, exact_lookahead_latents
from ..decoders.vocoder import Vocoder, VocoderConfig
from ..layout import MEL_HOP, MEL_SAMPLE_RATE, SPATIAL_COMPRESSION, BlockLayout
from ..world import AUDIO_RATE, MEL_RATE, Scene, render_clip, resample
from ..world.detect import audio_onsets
from ..world.metrics import detect_clip, position_error
from ..world.prompts import WorldPromptConfig, WorldPromptEncoder
from ..world.render import render_audio, render_frames
from ..world.scene import BACKGROUND
from .config import TrainConfig, TrainConfigError, parse_section
from .data import write_shard
from .distributed import TrainingState, load_latest_state, save_state
from .runner import Progress

BASE_FILE = "codecs/demo_base.safetensors"
PARTS = ("video", "audio", "vocoder")
# Disjoint seed ranges: training clips, the clips the statistics come from, held-out
# evaluation clips. The pre-encoded world uses its own [world] seed upwards.
TRAIN_SEEDS = 1_000_000_000
STATS_SEEDS = 700_000_000
EVAL_SEEDS = 500_000_000
# Mean log-mel of the world's stereo sound (measured over 8 clips: -5.46, std 1.1).
WORLD_MEL_MEAN = -5.5
# Mel bins this far (natural log) above the mean level hold a tone: ~7% of the world's bins.
TONE_MARGIN = 1.5
AUDIO_LOSSES = {"l1": lambda error: error.abs(), "mse": lambda error: error.square()}
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# Config ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecsSection:
    """The ``[codecs]`` table: architectures, the three trainings, statistics and evaluation."""

    height: int = 128
    width: int = 192
    clip_seconds: float = 3.0
    seed: int = 0
    # Architectures (the LTX-2 layouts at small widths).
    video_latent_channels: int = 32
    video_encoder_channels: int = 8
    video_decoder_channels: int = 8
    audio_latent_channels: int = 4
    audio_channels: int = 16
    vocoder_channels: int = 64
    # Regularisation, shared by both VAEs.
    latent_noise: float = 0.1
    latent_l2: float = 1e-4
    # Video VAE.
    video_steps: int = 3000
    video_batch: int = 1
    video_frames: int = 9
    # Training crop (whole latent cells, around a shape). Keep it the full frame unless the
    # crop is several receptive fields wide: on 2 x 3-cell crops every cell sits at a border,
    # and a decoder trained so garbled the interior of the full 4 x 6 frame (measured: 3 dB).
    video_crop: tuple[int, int] = (128, 192)
    clip_reuse: int = 4
    # Single-clip overfits (200 steps, foreground PSNR): 11.8 dB at 3e-4 after 100 steps,
    # 15.1 dB at 1e-3; 2e-3 diverged on the whole world.
    video_lr: float = 3e-4
    foreground_weight: float = 10.0  # shapes' pixels against the empty world
    # Tones' mel bins against the silent floor (audio VAE). The shipped demo's audio VAE was
    # trained without; 10 for 1000 steps at 3e-4 measured 1 of 64 onsets through the vocoder.
    tone_weight: float = 0.0
    # Audio VAE: whole clips, or (``audio_crop_frames`` > 0) ``audio_crops`` random mel
    # windows per clip. On whole clips and L1 the VAE settled on the silent floor (tones'
    # L1 3.0 from step 50 to 400); windows of 65 frames and MSE learn the tones (0.76 by
    # step 600, measured on held-out clips).
    audio_steps: int = 3000
    audio_batch: int = 2
    audio_lr: float = 1e-3
    audio_loss: str = "mse"
    audio_crop_frames: int = 65
    audio_crops: int = 4
    # Vocoder (from the true mel, held-out: 19 of 64 onsets after 500 steps, 63 after 2000).
    vocoder_steps: int = 2000
    vocoder_batch: int = 3
    vocoder_frames: int = 48
    vocoder_lr: float = 3e-4
    # Decoder fine-tuning (``codecs-finetune``): encoders and statistics frozen, so the
    # latents a transformer already learned keep their meaning.
    video_decoder_steps: int = 0
    video_decoder_lr: float = 3e-4
    # The fine-tuned video decoder's base width (0: the trained one's). Another width starts a
    # fresh decoder against the frozen encoder.
    video_decoder_finetune_channels: int = 0
    audio_decoder_steps: int = 0
    audio_decoder_lr: float = 1e-4
    warmup: int = 100
    grad_clip: float = 1.0
    # Statistics, evaluation, output.
    stats_clips: int = 24
    eval_clips: int = 6
    log_every: int = 20
    checkpoint_every: int = 200
    weights_dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.video_frames < 1 or (self.video_frames - 1) % 8:
            raise TrainConfigError(f"[codecs] video_frames must be 1 + 8k, got {self.video_frames}")
        if self.weights_dtype not in SAVE_DTYPES:
            raise TrainConfigError(f"[codecs] weights_dtype must be one of {sorted(SAVE_DTYPES)}")
        if self.height % 32 or self.width % 32:
            raise TrainConfigError(f"[codecs] height and width must be multiples of 32, got {self.height}x{self.width}")
        if self.audio_loss not in AUDIO_LOSSES:
            raise TrainConfigError(f"[codecs] audio_loss must be one of {sorted(AUDIO_LOSSES)}, got {self.audio_loss!r}")
        if self.audio_crop_frames and (self.audio_crop_frames < 17 or (self.audio_crop_frames - 1) % 4):
            raise TrainConfigError(f"[codecs] audio_crop_frames must be 0 (whole clips) or 1 + 4k >= 17, got {self.audio_crop_frames}")
        clip_frames = int(round(self.clip_seconds * MEL_SAMPLE_RATE / MEL_HOP)) + 1
        if self.audio_crop_frames > clip_frames:
            raise TrainConfigError(f"[codecs] audio_crop_frames ({self.audio_crop_frames}) must fit a clip's {clip_frames} mel frames"
                                   f" ({self.clip_seconds} s): shorten the windows or lengthen clip_seconds")
        crop_h, crop_w = self.video_crop
        if crop_h % 32 or crop_w % 32 or not (64 <= crop_h <= self.height and 64 <= crop_w <= self.width):
            raise TrainConfigError(f"[codecs] video_crop must be multiples of 32 within the frame, at least 64, got {self.video_crop}")

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    def steps(self, part: str) -> int:
        return getattr(self, f"{part}_steps")

    # Architectures ------------------------------------------------------------------

    def video_configs(self) -> tuple[VideoVAEConfig, VideoEncoderConfig]:
        decoder = VideoVAEConfig.tiny(latent_channels=self.video_latent_channels,
                                      decoder_base_channels=self.video_decoder_channels)
        encoder = VideoEncoderConfig.tiny(latent_channels=self.video_latent_channels,
                                          encoder_base_channels=self.video_encoder_channels,
                                          latent_log_var="constant")
        return decoder, encoder

    def audio_config(self) -> AudioVAEConfig:
        return AudioVAEConfig.tiny(base_channels=self.audio_channels, latent_channels=self.audio_latent_channels,
                                   double_z=False)

    def vocoder_config(self) -> VocoderConfig:
        return VocoderConfig.tiny(upsample_initial_channel=self.vocoder_channels)


@dataclass(frozen=True)
class WorldSection:
    """The ``[world]`` table: the clips ``encode-world`` renders and encodes."""

    count: int = 2000
    seconds: float = 3.0
    seed: int = 0
    shard_size: int = 100
    max_tokens: int = 16


def _table(cls, config: TrainConfig, name: str):
    return parse_section(cls, config.other.get(name, {}), name)


def codecs_section(config: TrainConfig) -> CodecsSection:
    return _table(CodecsSection, config, "codecs")


def world_section(config: TrainConfig) -> WorldSection:
    return _table(WorldSection, config, "world")


# Models ------------------------------------------------------------------------------


class Codecs(nn.Module):
    """The five trained modules; their state dicts are the base file's groups less the prefix."""

    def __init__(self, s: CodecsSection):
        super().__init__()
        decoder, encoder = s.video_configs()
        self.video_encoder = VideoVAEEncoder(encoder)
        self.video_vae = VideoVAE(decoder)
        self.audio_encoder = AudioVAEEncoder(s.audio_config())
        self.audio_vae = AudioVAEDecoder(s.audio_config())
        self.vocoder = Vocoder(s.vocoder_config())
        # Training runs in the raw latent space: identity statistics until set from data.
        for module in (self.audio_encoder, self.audio_vae):
            module.per_channel_statistics.get_buffer("mean-of-means").zero_()
            module.per_channel_statistics.get_buffer("std-of-means").fill_(1.0)
        # The decoded mel starts at the world's mean level instead of learning it first.
        with torch.no_grad():
            self.audio_vae.decoder.conv_out.conv.bias.fill_(WORLD_MEL_MEAN)

    def part(self, name: str) -> nn.Module:
        """The modules one training updates (a container, so one optimiser steps them all)."""
        return {
            "video": nn.ModuleList([self.video_encoder.encoder, self.video_vae.decoder]),
            "audio": nn.ModuleList([self.audio_encoder.encoder, self.audio_vae.decoder]),
            "vocoder": self.vocoder,
            "video_decoder": self.video_vae.decoder,
            "audio_decoder": self.audio_vae.decoder,
        }[name]


def new_codecs(s: CodecsSection) -> Codecs:
    torch.manual_seed(s.seed)
    return Codecs(s)


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# Data: clips of the world, rendered on the fly ---------------------------------------


def frames_to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames [..., N, H, W, 3] -> pixels [..., 3, N, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1.0
    return x.movedim(-1, -4)


def _stereo_16k(audio_24k: np.ndarray) -> np.ndarray:
    """The vocoder's stereo 24 kHz sound at the mel path's rate, per channel: the VAE
    sees the pan the vocoder has to reproduce."""
    return resample(audio_24k, AUDIO_RATE, MEL_RATE)


def stereo_mel(audio_24k: np.ndarray | torch.Tensor, config: AudioVAEConfig) -> torch.Tensor:
    """[B, 2, samples at 24 kHz] (or [2, samples]) -> log-mel [B, 2, frames, bins]."""
    audio = np.asarray(audio_24k, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio[None]
    wave = torch.from_numpy(_stereo_16k(audio))
    return log_mel_spectrogram(wave, sample_rate=config.sampling_rate, n_fft=config.n_fft,
                               hop_length=config.mel_hop_length, n_mels=config.mel_bins)


def encode_clip(codecs: Codecs | LoadedCodecs, clip) -> tuple[torch.Tensor, torch.Tensor]:
    """A rendered clip's normalised latents, as the transformer sees them: video [1, C, 1 + k, h, w]
    and audio tokens [1, T, width]."""
    device = device_of(codecs.video_encoder)
    video = codecs.video_encoder.encode(frames_to_pixels(clip.frames)[None].to(device))
    mel = stereo_mel(clip.audio_24k, codecs.audio_vae.config).to(device)
    return video, codecs.audio_vae.tokens_from_latents(codecs.audio_encoder.encode(mel))


@functools.lru_cache(maxsize=4)
def _scene_frames(seed: int, seconds: float, size: tuple[int, int]) -> tuple[Scene, np.ndarray]:
    scene = Scene.sample(seed, seconds, size)
    return scene, render_frames(scene)


def _crop_start(centre: float, crop: int, full: int, rng: np.random.Generator) -> int:
    """A crop origin on the latent grid whose crop holds ``centre`` (px)."""
    cell = SPATIAL_COMPRESSION
    starts = [o for o in range(0, full - crop + 1, cell) if o <= centre < o + crop]
    return int(rng.choice(starts)) if starts else 0


# The world's background colour as pixels in [-1, 1], [1, 3, 1, 1, 1].
_BACKGROUND = (torch.tensor(BACKGROUND, dtype=torch.float32) / 127.5 - 1.0).view(1, 3, 1, 1, 1)


def video_batch(s: CodecsSection, step: int) -> torch.Tensor:
    """``video_batch`` windows of ``video_frames`` frames, cropped to ``video_crop`` on the
    latent grid around one of the shapes (a crop of empty background teaches nothing):
    [B, 3, F, h, w]. Each clip serves ``clip_reuse`` consecutive samples (other windows,
    shapes and crops), so rendering costs little beside the step."""
    windows = []
    for i in range(s.video_batch):
        sample = step * s.video_batch + i
        scene, frames = _scene_frames(TRAIN_SEEDS + sample // s.clip_reuse, s.clip_seconds, s.size)
        rng = np.random.default_rng([s.seed, sample])
        start = int(rng.integers(0, len(frames) - s.video_frames + 1))
        x, y = scene.frame_positions()[int(rng.integers(len(scene.shapes))), start + s.video_frames // 2]
        (height, width) = s.video_crop
        top, left = _crop_start(y, height, s.height, rng), _crop_start(x, width, s.width, rng)
        windows.append(frames[start:start + s.video_frames, top:top + height, left:left + width])
    return frames_to_pixels(np.stack(windows))


def audio_batch(s: CodecsSection, step: int, salt: int = 0) -> list[tuple[Scene, np.ndarray]]:
    """Fresh scenes with their 24 kHz stereo sound (no frames are drawn)."""
    batch = s.audio_batch if salt == 0 else s.vocoder_batch
    out = []
    for i in range(batch):
        scene = Scene.sample(TRAIN_SEEDS + salt + step * batch + i, s.clip_seconds, s.size)
        out.append((scene, render_audio(scene, AUDIO_RATE, stereo=True)))
    return out


def mel_windows(mel: torch.Tensor, frames: int, per_clip: int, rng: np.random.Generator) -> torch.Tensor:
    """``per_clip`` random windows of ``frames`` mel frames from each clip of [B, 2, M, bins].

    Windows start on a multiple of 4, where a latent's frames end, so a window's first
    frame is a stream's single-frame first latent and the rest fall on the clip's grid.
    """
    starts = 4 * rng.integers(0, (mel.shape[2] - frames) // 4 + 1, size=(mel.shape[0], per_clip))
    return torch.stack([mel[b, :, int(start):int(start) + frames] for b in range(mel.shape[0]) for start in starts[b]])


# Losses ------------------------------------------------------------------------------


def shape_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """1 where a pixel ([B, 3, F, H, W] in [-1, 1]) is not the world's background: [B, 1, F, H, W]."""
    return ((pixels - _BACKGROUND.to(pixels)).abs().amax(dim=1, keepdim=True) > 0.05).to(pixels.dtype)


def tone_bins(mel: torch.Tensor) -> torch.Tensor:
    """1 where a log-mel bin holds a tone rather than the world's silent floor."""
    return (mel > WORLD_MEL_MEAN + TONE_MARGIN).to(mel.dtype)


def foreground_weighted(error: torch.Tensor, foreground: torch.Tensor, weight: float) -> torch.Tensor:
    """The mean of ``error`` with foreground elements weighing ``1 + weight`` times more.

    Shapes are a few percent of the pixels and tones of the mel's bins: unweighted, MSE
    (and more so L1) settles on the empty world for hundreds of steps (measured).
    """
    w = 1.0 + weight * foreground
    return (w * error).mean() / w.mean()


def _noisy(mean: torch.Tensor, scale: float, generator: torch.Generator, channel_dims: tuple[int, ...]) -> torch.Tensor:
    """``mean`` plus Gaussian noise of ``scale`` x each channel's std over the batch (detached);
    ``generator`` is a CPU one."""
    if scale <= 0:
        return mean
    std = mean.detach().std(dim=channel_dims, keepdim=True)
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    return mean + scale * std * noise


_STFT_SIZES = ((128, 32), (256, 64), (512, 128), (1024, 256), (2048, 512))


def stft_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss: spectral convergence + log-magnitude L1, short windows
    for onset timing, long ones for pitch."""
    out, tgt = output.reshape(-1, output.shape[-1]), target.reshape(-1, target.shape[-1])
    total = output.new_zeros(())
    for n_fft, hop in _STFT_SIZES:
        window = torch.hann_window(n_fft, device=output.device)
        spec = lambda x: torch.stft(x, n_fft, hop, window=window, return_complex=True).abs()  # noqa: E731
        so, st = spec(out), spec(tgt)
        convergence = torch.linalg.norm(st - so) / torch.linalg.norm(st).clamp(min=1e-7)
        magnitude = (torch.log(so.clamp(min=1e-5)) - torch.log(st.clamp(min=1e-5))).abs().mean()
        total = total + convergence + magnitude
    return total / len(_STFT_SIZES)


def wave_mel(wave: torch.Tensor) -> torch.Tensor:
    """A 24 kHz log-mel of a waveform (the vocoder's mel loss)."""
    return log_mel_spectrogram(wave, sample_rate=AUDIO_RATE, n_fft=1024, hop_length=240, n_mels=80)


def psnr(mse: float, peak_to_peak: float = 2.0) -> float:
    return 10.0 * math.log10(peak_to_peak**2 / max(mse, 1e-12))


class Trainer:
    """The three trainings' step functions over one ``Codecs``."""

    def __init__(self, codecs: Codecs, s: CodecsSection):
        self.codecs, self.s = codecs, s
        self.device = device_of(codecs)

    def video(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        c, s = self.codecs, self.s
        pixels = video_batch(s, step).to(self.device)
        mean, _ = c.video_encoder.posterior(pixels)
        latents = _noisy(mean, s.latent_noise, torch.Generator().manual_seed(step), (0, 2, 3, 4))
        decoded = c.video_vae.decoder(latents, TemporalChunk.whole_clip(latents.shape[2]))
        mse = F.mse_loss(decoded, pixels)
        error = foreground_weighted((decoded - pixels).square(), shape_pixels(pixels), s.foreground_weight)
        loss = error + s.latent_l2 * mean.square().mean()
        return loss, {"mse": mse.item(), "psnr": psnr(mse.item()), "latent_rms": mean.square().mean().sqrt().item()}

    def audio(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        c, s = self.codecs, self.s
        mel = stereo_mel(np.stack([a for _, a in audio_batch(s, step)]), c.audio_vae.config).to(self.device)
        if s.audio_crop_frames:
            mel = mel_windows(mel, s.audio_crop_frames, s.audio_crops, np.random.default_rng([s.seed, step]))
        mean, _ = c.audio_encoder.posterior(mel)
        latents = _noisy(mean, s.latent_noise, torch.Generator().manual_seed(step), (0, 2))
        # The decoder takes normalised tokens (identity statistics while the VAE trains).
        tokens = c.audio_vae.per_channel_statistics.normalize(c.audio_vae.tokens_from_latents(latents))
        decoded = c.audio_vae(tokens)
        l1 = F.l1_loss(decoded, mel)
        error = foreground_weighted(AUDIO_LOSSES[s.audio_loss](decoded - mel), tone_bins(mel), s.tone_weight)
        loss = error + s.latent_l2 * mean.square().mean()
        return loss, {"mel_l1": l1.item(), "latent_rms": mean.square().mean().sqrt().item()}

    # Decoder fine-tuning: the same losses; only the decoder's parameters are stepped.
    video_decoder = video
    audio_decoder = audio

    def vocoder_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground-truth mel windows that start up to half a window before an impact (or
        anywhere in a silent clip), and the 24 kHz sound they cover."""
        s, config = self.s, self.codecs.audio_vae.config
        hop = self.codecs.vocoder.config.samples_per_frame
        mels, waves = [], []
        for i, (scene, audio) in enumerate(audio_batch(s, step, salt=1)):
            mel = stereo_mel(audio, config)[0]
            rng = np.random.default_rng([s.seed, step, i])
            last = min(mel.shape[1], audio.shape[1] // hop) - s.vocoder_frames
            if scene.impacts:
                impact = scene.impacts[int(rng.integers(len(scene.impacts)))]
                first = int(impact.time * 100) - int(rng.integers(0, s.vocoder_frames // 2))
            else:
                first = int(rng.integers(0, last + 1))
            first = min(max(first, 0), last)
            mels.append(mel[:, first:first + s.vocoder_frames])
            waves.append(torch.from_numpy(audio[:, first * hop:(first + s.vocoder_frames) * hop]))
        return torch.stack(mels).to(self.device), torch.stack(waves).to(self.device)

    def vocoder(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        mel, wave = self.vocoder_batch(step)
        out = self.codecs.vocoder(mel)
        spectral = stft_loss(out, wave)
        mel_l1 = F.l1_loss(wave_mel(out), wave_mel(wave))
        return spectral + mel_l1, {"stft": spectral.item(), "mel_l1": mel_l1.item()}


# The loop ----------------------------------------------------------------------------


def _lr(base: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth (a pure function of the step: resumable)."""
    ramp = min(1.0, (step + 1) / max(warmup, 1))
    return base * ramp * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0))))


def train_part(codecs: Codecs, s: CodecsSection, part: str, folder: Path, *, log: bool = True) -> list[float]:
    """Train one part to ``{part}_steps``, resuming from ``folder/checkpoints/{part}``;
    returns this call's losses. One line per step goes to ``folder/metrics.jsonl``."""
    module = codecs.part(part)
    module.train()
    base_lr, total = getattr(s, f"{part}_lr"), s.steps(part)
    optimizer = torch.optim.AdamW(module.parameters(), lr=base_lr, betas=(0.9, 0.99), weight_decay=0.0)
    state = TrainingState({part: module}, {part: optimizer})
    checkpoints = folder / "checkpoints" / part
    checkpoints.mkdir(parents=True, exist_ok=True)
    if load_latest_state(checkpoints, state) and log:
        print(f"[codecs.{part}] resumed at step {state.step}", file=sys.stderr, flush=True)
    step_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]] = getattr(Trainer(codecs, s), part)
    progress = Progress(f"codecs.{part}", total, log)
    losses, started, first = [], time.perf_counter(), state.step
    while state.step < total:
        for group in optimizer.param_groups:
            group["lr"] = _lr(base_lr, state.step, total, s.warmup)
        optimizer.zero_grad(set_to_none=True)
        loss, metrics = step_fn(state.step)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), s.grad_clip)
        optimizer.step()
        state.step += 1
        losses.append(loss.item())
        metrics = {"loss": loss.item(), **metrics, "grad_norm": float(norm), "lr": optimizer.param_groups[0]["lr"],
                   "steps_per_s": (state.step - first) / max(time.perf_counter() - started, 1e-9)}
        with (folder / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps({"stage": f"codecs.{part}", "step": state.step, **metrics}) + "\n")
        progress.update(state.step, metrics, s.log_every)
        if state.step % s.checkpoint_every == 0 or state.step == total:
            save_state(checkpoints, state)
    progress.close()
    module.eval()
    return losses


# Statistics --------------------------------------------------------------------------


@torch.no_grad()
def set_statistics(codecs: Codecs, s: CodecsSection) -> dict[str, Any]:
    """Per-channel mean and std of the encoders' means over ``stats_clips`` training-like
    clips, written into both halves of each VAE: normalised latents are then ~N(0, 1)."""
    video, audio, device = [], [], device_of(codecs)
    for i in range(s.stats_clips):
        clip = render_clip(Scene.sample(STATS_SEEDS + i, s.clip_seconds, s.size))
        video.append(codecs.video_encoder.posterior(frames_to_pixels(clip.frames)[None].to(device))[0])
        mean, _ = codecs.audio_encoder.posterior(stereo_mel(clip.audio_24k, codecs.audio_vae.config).to(device))
        audio.append(codecs.audio_vae.tokens_from_latents(mean))
    video_values = torch.cat([v.movedim(1, -1).reshape(-1, v.shape[1]) for v in video])
    audio_values = torch.cat([a.reshape(-1, a.shape[-1]) for a in audio])
    for values, modules in ((video_values, (codecs.video_encoder, codecs.video_vae)),
                            (audio_values, (codecs.audio_encoder, codecs.audio_vae))):
        mean, std = values.mean(0), values.std(0).clamp(min=1e-6)
        for module in modules:
            module.per_channel_statistics.get_buffer("mean-of-means").copy_(mean)
            module.per_channel_statistics.get_buffer("std-of-means").copy_(std)
    return {"video_std_range": [float(video_values.std(0).min()), float(video_values.std(0).max())],
            "audio_std_range": [float(audio_values.std(0).min()), float(audio_values.std(0).max())]}


# Evaluation --------------------------------------------------------------------------


def match_onsets(reference: list, decoded: list, window_s: float = 0.05) -> dict[str, float]:
    """Offsets (ms) of each reference onset's nearest same-pitch decoded onset."""
    offsets, missed = [], 0
    for onset in reference:
        near = [d.time - onset.time for d in decoded
                if abs(d.time - onset.time) <= window_s and abs(math.log(d.pitch / onset.pitch)) < 0.06]
        if near:
            offsets.append(1000.0 * min(near, key=abs))
        else:
            missed += 1
    absolute = np.abs(np.asarray(offsets)) if offsets else np.zeros(0)
    return {"onsets": len(reference), "matched": len(offsets), "missed": missed,
            "extra": max(len(decoded) - len(offsets), 0),
            "median_abs_ms": float(np.median(absolute)) if offsets else float("nan"),
            "max_abs_ms": float(absolute.max()) if offsets else float("nan"),
            "within_10ms": float((absolute <= 10.0).mean()) if offsets else float("nan")}


@torch.no_grad()
def decode_audio(codecs: Codecs | Any, tokens: torch.Tensor, samples: int) -> np.ndarray:
    """Normalised audio tokens [1, T, C] -> 24 kHz stereo [2, samples] (whole clip)."""
    return codecs.vocoder(codecs.audio_vae(tokens))[0, :, :samples].float().cpu().numpy()


@torch.no_grad()
def evaluate(codecs: Codecs, s: CodecsSection, clips: int | None = None) -> dict[str, Any]:
    """Held-out clips through encode -> whole-clip decode: PSNR, positions, onsets."""
    psnrs, mean_px, max_px, missing = [], [], [], []
    truth_px, device = [], device_of(codecs)
    onset_rows, vocoder_rows = [], []
    for i in range(s.eval_clips if clips is None else clips):
        clip = render_clip(Scene.sample(EVAL_SEEDS + i, s.clip_seconds, s.size))
        latents = codecs.video_encoder.encode(frames_to_pixels(clip.frames)[None].to(device))
        frames = pixels_to_frames(codecs.video_vae.decode(latents)).cpu().numpy()
        decoded_u8 = np.round(frames * 255.0).astype(np.uint8)
        mse = float(np.mean((decoded_u8.astype(np.float64) - clip.frames) ** 2))
        psnrs.append(psnr(mse, 255.0))
        samples = clip.audio_24k.shape[1]
        mel = stereo_mel(clip.audio_24k, codecs.audio_vae.config).to(device)
        tokens = codecs.audio_vae.tokens_from_latents(codecs.audio_encoder.encode(mel))
        sound = decode_audio(codecs, tokens, samples)
        det = detect_clip(decoded_u8, sound, AUDIO_RATE)
        err = position_error(det, clip.truth.positions, clip.truth.colours)
        mean_px.append(err["mean_px"]), max_px.append(err["max_px"]), missing.append(err["missing_share"])
        truth_px.append(position_error(detect_clip(clip.frames, clip.audio_24k, AUDIO_RATE),
                                       clip.truth.positions, clip.truth.colours)["max_px"])
        reference = audio_onsets(clip.audio_24k, AUDIO_RATE)
        onset_rows.append(match_onsets(reference, audio_onsets(sound, AUDIO_RATE)))
        vocoded = codecs.vocoder(mel)[0, :, :samples].cpu().numpy()
        vocoder_rows.append(match_onsets(reference, audio_onsets(vocoded, AUDIO_RATE)))

    def pooled(rows: list[dict[str, float]]) -> dict[str, float]:
        keys = ("onsets", "matched", "missed", "extra")
        out = {key: int(sum(r[key] for r in rows)) for key in keys}
        out["max_abs_ms"] = float(np.nanmax([r["max_abs_ms"] for r in rows]))
        out["median_abs_ms"] = float(np.nanmedian([r["median_abs_ms"] for r in rows]))
        out["within_10ms"] = float(np.nansum([r["within_10ms"] * r["matched"] for r in rows]) / max(out["matched"], 1))
        return out

    return {
        "clips": len(psnrs),
        "video_psnr_db": {"mean": float(np.mean(psnrs)), "min": float(np.min(psnrs))},
        "position_error_px": {"mean": float(np.nanmean(mean_px)), "max": float(np.nanmax(max_px)),
                              "missing_share": float(np.mean(missing)),
                              "detector_on_truth_max": float(np.nanmax(truth_px))},
        "onsets_vae_vocoder": pooled(onset_rows),
        "onsets_vocoder_only": pooled(vocoder_rows),
    }


@torch.no_grad()
def seam_errors(codecs: Codecs | LoadedCodecs, s: CodecsSection, clips: int = 4,
                video_lookaheads: tuple[int, ...] = (0, 1, 2), audio_lookaheads: tuple[int, ...] = (0, 6)
                ) -> dict[str, Any]:
    """The streaming decoders against the whole-clip decode on encoded held-out clips.

    Video (both layouts): per look-ahead (plus the exact one) the mean and max absolute
    error in 8-bit levels, over all frames and over the frames within 2 of a block seam,
    and the stream's PSNR against the whole-clip decode. Audio (released layout): per
    vocoder look-ahead (plus the exact one) the max absolute error, the error's level
    below the signal (dB) and the onsets of the stream against the whole-clip decode's.
    """
    exact_video = exact_lookahead_latents(codecs.video_vae.config)
    exact_audio = codecs.vocoder.config.receptive_field_frames[1]
    seconds = int(s.clip_seconds)
    rows: dict[str, Any] = {"video": {}, "audio": {}, "exact_video_lookahead": exact_video,
                            "exact_audio_lookahead_frames": exact_audio}
    encoded = []
    for i in range(clips):
        clip = render_clip(Scene.sample(EVAL_SEEDS + i, s.clip_seconds, s.size))
        video, tokens = encode_clip(codecs, clip)
        encoded.append((video, tokens, pixels_to_frames(codecs.video_vae.decode(video)) * 255.0,
                        decode_audio_clip(codecs.audio_vae, codecs.vocoder, tokens).waveform[0]))
    for layout in (BlockLayout.released(), BlockLayout.paper()):
        spans = layout.blocks(seconds)
        seams = [span.pixel_interval[0] for span in spans[1:]]
        for lookahead in (*video_lookaheads, exact_video):
            errors, near = [], []
            for video, _, whole, _ in encoded:
                stream = VideoStreamDecoder(codecs.video_vae, lookahead_latents=lookahead)
                parts = [stream.push(video[:, :, span.video_start:span.video_end]) for span in spans]
                frames = torch.cat([*parts, stream.flush()]) * 255.0
                error = (frames - whole).abs()
                errors.append(error)
                index = torch.arange(len(frames))
                close = torch.zeros(len(frames), dtype=torch.bool)
                for seam in seams:
                    close |= (index >= seam - 2) & (index < seam + 2)
                near.append(error[close])
            every, seam_part = torch.cat([e.flatten() for e in errors]), torch.cat([n.flatten() for n in near])
            name = "exact" if lookahead == exact_video else str(lookahead)
            rows["video"][f"{layout.name} L={name}"] = {
                "mean": round(float(every.mean()), 4), "max": round(float(every.max()), 2),
                "seam_mean": round(float(seam_part.mean()), 4),
                "psnr_vs_whole_db": round(psnr(float(every.square().mean()), 255.0), 2)}
    spans = BlockLayout.released().blocks(seconds)
    for lookahead in (*audio_lookaheads, exact_audio):
        worst, noise, power, matched = 0.0, 0.0, 0.0, []
        for _, tokens, _, whole in encoded:
            stream = StreamingAudioDecoder(codecs.audio_vae, codecs.vocoder, lookahead_frames=lookahead)
            chunks = [stream.push(tokens[:, span.audio_start:span.audio_end], span=span, final=span is spans[-1])
                      for span in spans]
            wave = torch.cat([chunk.waveform[0] for chunk in chunks], dim=-1)
            ref = whole[:, :wave.shape[-1]]
            diff = wave[:, :ref.shape[-1]] - ref
            worst = max(worst, float(diff.abs().max()))
            noise, power = noise + float(diff.square().sum()), power + float(ref.square().sum())
            matched.append(match_onsets(audio_onsets(ref.numpy(), AUDIO_RATE), audio_onsets(wave.numpy(), AUDIO_RATE)))
        name = "exact" if lookahead == exact_audio else str(lookahead)
        offsets = [r["max_abs_ms"] for r in matched if r["matched"]]
        rows["audio"][f"released L={name} frames"] = {
            "max_abs": round(worst, 5), "error_below_signal_db": round(10 * math.log10(power / max(noise, 1e-20)), 1),
            "onset_max_abs_ms": round(max(offsets), 2) if offsets else float("nan"),
            "onsets_missed": int(sum(r["missed"] for r in matched))}
    return rows


# The base file -----------------------------------------------------------------------


def write_base_file(codecs: Codecs, s: CodecsSection, path: Path, metadata: Mapping[str, Any]) -> Path:
    """``vae.*``, ``audio_vae.*``, ``vocoder.*`` and their config sections, as the LTX-2 base file has them."""
    c = codecs
    save_checkpoint(
        path, {}, prefix="model.",
        extra={
            "vae.": {**c.video_encoder.state_dict(), **c.video_vae.state_dict()},
            "audio_vae.": {**c.audio_encoder.state_dict(), **c.audio_vae.state_dict()},
            "vocoder.": c.vocoder.state_dict(),
        },
        extra_config={
            "vae": video_vae_metadata(c.video_vae.config, c.video_encoder.config),
            "audio_vae": c.audio_vae.config.to_metadata(),
            "vocoder": c.vocoder.config.to_metadata(),
        },
        metadata={"omniforcing_codecs": json.dumps(metadata)},
        dtype=SAVE_DTYPES[s.weights_dtype],
        overwrite=True,
    )
    # Both loaders must read it back (a file they cannot read is not a base file).
    load_decoders(path), load_encoders(path)
    return path


@dataclass(frozen=True)
class LoadedCodecs:
    """Encoders and decoders of one base file (what ``encode-world`` and the measurements use)."""

    video_encoder: VideoVAEEncoder
    video_vae: VideoVAE
    audio_encoder: AudioVAEEncoder
    audio_vae: AudioVAEDecoder
    vocoder: Vocoder


def load_codecs(path: str | Path, device: torch.device | str = "cpu") -> LoadedCodecs:
    decoders, encoders = load_decoders(path, device=device), load_encoders(path, device=device)
    return LoadedCodecs(encoders.video_encoder, decoders.video_vae, encoders.audio_encoder,
                        decoders.audio_vae, decoders.vocoder)


# Commands ----------------------------------------------------------------------------


def run_codecs(config: TrainConfig, out: Path, *, device: torch.device | str, log: bool = True) -> Path:
    """Train the three codecs on ``device`` (resumable), set the statistics, evaluate, write the base file."""
    s = codecs_section(config)
    out = Path(out)
    path = out / BASE_FILE
    if path.exists():
        if log:
            print(f"[codecs] {path} exists: skipped", file=sys.stderr, flush=True)
        return path
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    codecs = new_codecs(s).to(device)
    timings = {}
    for part in PARTS:
        started = time.perf_counter()
        train_part(codecs, s, part, folder, log=log)
        timings[part] = round(time.perf_counter() - started, 1)
    stats = set_statistics(codecs, s)
    report = evaluate(codecs, s) if s.eval_clips else {}
    if log:
        print(f"[codecs] held-out: {json.dumps(report)}", file=sys.stderr, flush=True)
    (folder / "eval.json").write_text(json.dumps({"eval": report, "statistics": stats, "device": str(device),
                                                  "train_seconds_this_run": timings}, indent=2))
    return write_base_file(codecs.cpu(), s, path, {"config": asdict(s), "eval": report, "statistics": stats})


FINETUNE_PARTS = ("video_decoder", "audio_decoder")
FINETUNE_MARKER = "finetuned.json"  # beside the base file once its decoders are fine-tuned


def run_finetune_decoders(config: TrainConfig, out: Path, *, device: torch.device | str, log: bool = True) -> Path:
    """Continue the VAE decoders' training on a finished base file with the encoders and the
    statistics frozen (the latents keep their meaning); the base file is rewritten, the one
    it started from kept beside it as ``demo_base.before-finetune.safetensors``."""
    s = codecs_section(config)
    path = Path(out) / BASE_FILE
    done = path.with_name(FINETUNE_MARKER)
    if done.exists() or not any(s.steps(part) for part in FINETUNE_PARTS):
        return path
    original = path.with_name("demo_base.before-finetune.safetensors")
    if not original.exists():
        shutil.copyfile(path, original)
    loaded = load_codecs(original)
    if s.video_decoder_finetune_channels:
        s = replace(s, video_decoder_channels=s.video_decoder_finetune_channels)
    codecs = new_codecs(s)
    for name in ("video_encoder", "audio_encoder", "vocoder"):
        getattr(codecs, name).load_state_dict(getattr(loaded, name).state_dict())
    for name in ("video_vae", "audio_vae"):
        ours, theirs = getattr(codecs, name), getattr(loaded, name)
        if ours.decoder.state_dict().keys() == theirs.decoder.state_dict().keys() and all(
                a.shape == b.shape for a, b in zip(ours.decoder.state_dict().values(), theirs.decoder.state_dict().values())):
            ours.load_state_dict(theirs.state_dict())
        else:
            # A decoder of another width starts fresh; the statistics stay the file's, so the
            # latents the transformer learned keep their meaning.
            ours.per_channel_statistics.load_state_dict(theirs.per_channel_statistics.state_dict())
            if log:
                print(f"[codecs-finetune] {name}: a fresh decoder of the configured width", file=sys.stderr, flush=True)
    codecs.to(device)
    codecs.video_encoder.requires_grad_(False)
    codecs.audio_encoder.requires_grad_(False)
    timings = {}
    for part in FINETUNE_PARTS:
        if s.steps(part):
            started = time.perf_counter()
            train_part(codecs, s, part, path.parent, log=log)
            timings[part] = round(time.perf_counter() - started, 1)
    report = evaluate(codecs, s) if s.eval_clips else {}
    if log:
        print(f"[codecs-finetune] held-out: {json.dumps(report)}", file=sys.stderr, flush=True)
    (path.parent / "eval.json").write_text(json.dumps({"eval": report, "device": str(device),
                                                       "finetune_seconds": timings}, indent=2))
    write_base_file(codecs.cpu(), s, path, {"config": asdict(s), "eval": report, "finetuned": list(FINETUNE_PARTS)})
    done.write_text(json.dumps({"eval": report, "seconds": timings}))
    return path


def _truth(clip) -> dict[str, Any]:
    t = clip.truth
    return {
        "seed": clip.scene.seed, "prompt": clip.prompt, "kinds": list(t.kinds), "colours": list(t.colours),
        "positions": np.round(t.positions, 2).tolist(),
        "impacts": [{"time": round(i.time, 6), "shape": i.shape, "position": [round(v, 2) for v in i.position],
                     "speed": round(i.speed, 2)} for i in t.impacts],
    }


def run_encode_world(config: TrainConfig, out: Path, *, codecs_path: Path | None = None,
                     device: torch.device | str, log: bool = True) -> Path:
    """Render ``[world] count`` clips and encode them into ``out/latents/shard-XXXXX.safetensors``
    (existing shards are kept: a stopped run continues)."""
    w, s = world_section(config), codecs_section(config)
    out = Path(out)
    codecs = load_codecs(codecs_path or out / BASE_FILE, device)
    tokenizer = WorldPromptEncoder(WorldPromptConfig(max_tokens=w.max_tokens))
    folder = out / "latents"
    folder.mkdir(parents=True, exist_ok=True)
    shards = math.ceil(w.count / w.shard_size)
    progress = Progress("encode-world", shards, log)
    for shard in range(shards):
        target = folder / f"shard-{shard:05d}.safetensors"
        if target.exists():
            continue
        indices = range(shard * w.shard_size, min((shard + 1) * w.shard_size, w.count))
        video, audio, prompts, truths = [], [], [], []
        with torch.no_grad():
            for index in indices:
                clip = render_clip(Scene.sample(w.seed + index, w.seconds, s.size))
                clip_video, clip_audio = encode_clip(codecs, clip)
                video.append(clip_video.cpu())
                audio.append(clip_audio.cpu())
                prompts.append(clip.prompt)
                truths.append(_truth(clip))
        ids, _ = tokenizer.tokenize(prompts)
        write_shard(target, {"video": torch.cat(video), "audio": torch.cat(audio), "prompt": ids.long()},
                    metadata={"truth": json.dumps(truths), "world": json.dumps(asdict(w)),
                              "codecs": str(codecs_path or out / BASE_FILE)})
        progress.update(shard + 1, {}, 1)
    progress.close()
    return folder
