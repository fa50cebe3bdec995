"""The LTX-2 decoders (video VAE, audio VAE, vocoder) and encoders from the base checkpoint.

The OmniForcing generator holds only the transformer; the decoders come from the LTX-2
base file under ``vae.``, ``audio_vae.`` and ``vocoder.``, and so do the VAE encoders
(``vae.encoder.*``, ``audio_vae.encoder.*``, sharing each VAE's ``per_channel_statistics``).
Each architecture comes from an explicit config, else the file's metadata ``config``
section, else the LTX-2 19B preset (then a mismatch shows as a shape error). All the
components of one call are checked against the headers before any tensor is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..decoders.audio_encoder import AudioVAEEncoder
from ..decoders.audio_vae import CHECKPOINT_PREFIX as AUDIO_VAE_PREFIX
from ..decoders.audio_vae import AudioVAEConfig, AudioVAEDecoder
from ..decoders.video_encoder import VideoEncoderConfig, VideoVAEEncoder
from ..decoders.video_vae import CHECKPOINT_PREFIX as VIDEO_VAE_PREFIX
from ..decoders.video_vae import VideoVAE, VideoVAEConfig
from ..decoders.vocoder import CHECKPOINT_PREFIX as VOCODER_PREFIX
from ..decoders.vocoder import Vocoder, VocoderConfig
from ..world.prompts import PROMPT_ENCODER_PREFIX, WorldPromptConfig, WorldPromptEncoder
from .materialize import ModuleWeights, check_module_weights
from .reader import Checkpoint, CheckpointError, open_checkpoint, resolve_dtype

_BASE_FILE_HINT = (
    "the LTX-2 base checkpoint (ltx-2-19b-*.safetensors) holds the {}; the OmniForcing "
    "generator holds none, so pass the base file"
)


@dataclass(frozen=True)
class LoadedDecoders:
    video_vae: VideoVAE
    audio_vae: AudioVAEDecoder
    vocoder: Vocoder


@dataclass(frozen=True)
class LoadedEncoders:
    video_encoder: VideoVAEEncoder
    audio_encoder: AudioVAEEncoder


@dataclass(frozen=True)
class _Component:
    """Where one decoder or encoder lives in the base file and how its config is found."""

    label: str
    module_type: Callable[[Any], nn.Module]
    config_type: type
    argument: str  # the loader's keyword for an explicit config
    section: str  # metadata config section
    prefix: str
    ignore: tuple[str, ...]  # parts of the component that are not built
    parse: Callable[[Mapping[str, Any], Checkpoint], Any]


_DECODERS = (
    _Component(
        "video VAE", VideoVAE, VideoVAEConfig, "video_config", "vae", VIDEO_VAE_PREFIX, ("encoder.",),
        # Files without the timestep_conditioning key tell it by their tensor names.
        lambda section, checkpoint: VideoVAEConfig.from_metadata(
            section, tensor_names=checkpoint.group(VIDEO_VAE_PREFIX)
        ),
    ),
    _Component(
        "audio VAE", AudioVAEDecoder, AudioVAEConfig, "audio_vae_config", "audio_vae", AUDIO_VAE_PREFIX,
        ("encoder.",), lambda section, _: AudioVAEConfig.from_metadata(section),
    ),
    _Component(
        "vocoder", Vocoder, VocoderConfig, "vocoder_config", "vocoder", VOCODER_PREFIX, (),
        lambda section, _: VocoderConfig.from_metadata(section),
    ),
)
_ENCODERS = (
    _Component(
        "video VAE encoder", VideoVAEEncoder, VideoEncoderConfig, "video_config", "vae", VIDEO_VAE_PREFIX,
        ("decoder.",), lambda section, _: VideoEncoderConfig.from_metadata(section),
    ),
    _Component(
        "audio VAE encoder", AudioVAEEncoder, AudioVAEConfig, "audio_vae_config", "audio_vae", AUDIO_VAE_PREFIX,
        ("decoder.",), lambda section, _: AudioVAEConfig.from_metadata(section),
    ),
)


_PROMPT_ENCODER = _Component(
    "world prompt encoder", WorldPromptEncoder, WorldPromptConfig, "prompt_encoder_config", "prompt_encoder",
    PROMPT_ENCODER_PREFIX, (), lambda section, _: WorldPromptConfig.from_metadata(section),
)


def load_decoders(
    base_path_or_checkpoint: str | os.PathLike | Checkpoint,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    video_config: VideoVAEConfig | None = None,
    audio_vae_config: AudioVAEConfig | None = None,
    vocoder_config: VocoderConfig | None = None,
) -> LoadedDecoders:
    """Build the video VAE decoder, audio VAE decoder and vocoder from the LTX-2 base file.

    ``base_path_or_checkpoint``: a ``.safetensors``, an ``.index.json``, a folder, or an
    open ``Checkpoint`` (left open). The decoders are built on the meta device and
    filled tensor by tensor, straight to ``device`` and ``dtype``, and returned in eval
    mode. The encoders' tensors are skipped; any other tensor under a decoder's prefix
    that the configured decoder lacks (e.g. LTX-2.3's bandwidth-extension vocoder) is
    an error, as are missing and misshapen ones.
    """
    modules = _load(base_path_or_checkpoint, _DECODERS, (video_config, audio_vae_config, vocoder_config),
                    "decoders", device, dtype)
    return LoadedDecoders(*modules)


def load_encoders(
    base_path_or_checkpoint: str | os.PathLike | Checkpoint,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    video_config: VideoEncoderConfig | None = None,
    audio_vae_config: AudioVAEConfig | None = None,
) -> LoadedEncoders:
    """Build the video and audio VAE encoders from the LTX-2 base file, as ``load_decoders``
    builds the decoders: the decoders' tensors are skipped, each VAE's statistics are
    read beside its encoder, and anything else missing, misshapen or unknown is an error."""
    modules = _load(base_path_or_checkpoint, _ENCODERS, (video_config, audio_vae_config), "VAE encoders",
                    device, dtype)
    return LoadedEncoders(*modules)


def load_prompt_encoder(
    base_path_or_checkpoint: str | os.PathLike | Checkpoint, *, device: torch.device | str = "cpu",
) -> WorldPromptEncoder:
    """The world's prompt encoder (``prompt_encoder.*``) of the built-in demo's base file:
    text of the world's grammar -> text contexts, in place of Gemma."""
    with ExitStack() as stack:
        checkpoint = base_path_or_checkpoint
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = stack.enter_context(open_checkpoint(checkpoint))
        if checkpoint.config_section(_PROMPT_ENCODER.section) is None:
            raise CheckpointError(
                f"{checkpoint.path}: has no 'prompt_encoder' metadata config section; only the built-in demo's "
                "base file holds a world prompt encoder (real models take Gemma text contexts)"
            )
        (encoder,) = _load(checkpoint, (_PROMPT_ENCODER,), (None,), "world prompt encoder", device, torch.float32)
    return encoder


def check_decoders(checkpoint: Checkpoint) -> None:
    """Check the decoders of a base file against its headers, reading nothing, so that a
    broken decoder is refused before the transformer is loaded. A file holding none (a
    transformer-only file) passes: ``load_decoders`` refuses it when asked for them."""
    if any(checkpoint.group(component.prefix) for component in _DECODERS):
        _check(checkpoint, _DECODERS, (None,) * len(_DECODERS), "decoders", torch.float32)


def _load(
    base_path_or_checkpoint: str | os.PathLike | Checkpoint,
    components: tuple[_Component, ...],
    explicit_configs: tuple[Any, ...],
    what: str,
    device: torch.device | str,
    dtype: torch.dtype | str,
) -> list[nn.Module]:
    """Check every component against the headers, then fill each one; modules in eval mode."""
    dtype = resolve_dtype(dtype)
    with ExitStack() as stack:
        checkpoint = base_path_or_checkpoint
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = stack.enter_context(open_checkpoint(checkpoint))
        plans = _check(checkpoint, components, explicit_configs, what, dtype)
        for plan in plans:
            plan.load(device)
    return [plan.module.eval() for plan in plans]


def _check(
    checkpoint: Checkpoint,
    components: tuple[_Component, ...],
    explicit_configs: tuple[Any, ...],
    what: str,
    dtype: torch.dtype,
) -> list[ModuleWeights]:
    """Every component built on meta and matched to the headers; nothing is read."""
    _check_components_present(checkpoint, components, what)
    plans: list[ModuleWeights] = []
    for component, explicit in zip(components, explicit_configs):
        config, config_source = _resolve_config(checkpoint, component, explicit)
        with torch.device("meta"):
            module = component.module_type(config)
        try:
            plans.append(check_module_weights(module, checkpoint, component.prefix, dtype=dtype,
                                              ignore=component.ignore))
        except CheckpointError as error:
            raise CheckpointError(f"{error}. The {component.label} config came from {config_source}") from None
    return plans


def _check_components_present(checkpoint: Checkpoint, components: tuple[_Component, ...], what: str) -> None:
    absent = [c for c in components if not checkpoint.group(c.prefix)]
    if absent:
        listed = ", ".join(f"{c.label} ('{c.prefix}*')" for c in absent)
        raise CheckpointError(f"{checkpoint.path}: holds no {listed} tensors; {_BASE_FILE_HINT.format(what)}")


def _resolve_config(checkpoint: Checkpoint, component: _Component, explicit: Any) -> tuple[Any, str]:
    """The component's config and where it came from (for error messages)."""
    if explicit is not None:
        if not isinstance(explicit, component.config_type):
            raise TypeError(
                f"{component.argument} must be a {component.config_type.__name__}, got {type(explicit).__name__}"
            )
        return explicit, f"the {component.argument} argument"
    section = checkpoint.config_section(component.section)
    if section is None:
        return (
            component.config_type.ltx2_19b(),
            f"the LTX-2 19B preset, as {checkpoint.path} has no '{component.section}' metadata config section "
            f"(pass {component.argument}= if the file holds another architecture)",
        )
    try:
        return component.parse(section, checkpoint), f"the '{component.section}' metadata config section"
    except ConfigError as error:
        raise CheckpointError(
            f"{checkpoint.path}: metadata config section '{component.section}': {error}"
        ) from None
