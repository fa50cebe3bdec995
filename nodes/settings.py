"""OmniForcing Stream Settings and OmniForcing Prompt Schedule."""

from __future__ import annotations

from dataclasses import dataclass

from omniforcing_core import ScheduleError, StreamSettings, StreamSettingsError, parse_sigma_list, preset_sigmas
from omniforcing_core.schedule import PRESETS
from omniforcing_core.stream_run import DEFAULT_WINDOW_SECONDS, default_settings

CUSTOM = "custom"
SCHEDULES = (*PRESETS, CUSTOM)


@dataclass(frozen=True)
class NodeStreamSettings:
    """An OMNIFORCING_SETTINGS link: the stream settings plus the decode options."""

    stream: StreamSettings
    decode_lookahead: int = 0

    @classmethod
    def defaults(cls) -> "NodeStreamSettings":
        return cls(default_settings())


def build_settings(audio_sink_tokens, window_seconds, retained_start_blocks, schedule, custom_sigmas,
                   context_noise, position_mode, decode_lookahead) -> NodeStreamSettings:
    if schedule not in SCHEDULES:
        raise StreamSettingsError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == CUSTOM and not custom_sigmas.strip():
        raise StreamSettingsError("schedule custom needs a list in custom_sigmas, e.g. 1000, 909, 725, 421, 0")
    sigmas = parse_sigma_list(custom_sigmas) if schedule == CUSTOM else tuple(preset_sigmas(schedule))
    if window_seconds < 0:
        raise StreamSettingsError(f"window_seconds is >= 0 (0 keeps the whole stream), got {window_seconds}")
    if decode_lookahead < 0:
        raise StreamSettingsError(f"decode_lookahead is >= 0 latents, got {decode_lookahead}")
    stream = StreamSettings(
        sigmas=sigmas,
        window_blocks=window_seconds or None,
        retained_start_blocks=retained_start_blocks,
        context_noise=context_noise,
        position_mode=position_mode,
        audio_sink_tokens=None if audio_sink_tokens < 0 else audio_sink_tokens,
    )
    return NodeStreamSettings(stream, decode_lookahead)


class OmniForcingStreamSettings:
    DESCRIPTION = "How the stream is sampled and how much of its past stays in the KV cache."
    CATEGORY = "OmniForcing"
    FUNCTION = "build"
    RETURN_TYPES = ("OMNIFORCING_SETTINGS",)
    RETURN_NAMES = ("settings",)
    OUTPUT_TOOLTIPS = ("For the Streaming Sampler's settings input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "audio_sink_tokens": ("INT", {
                    "default": -1, "min": -1, "max": 256,
                    "tooltip": "-1 uses every audio sink token the checkpoint learned; 0 to that count uses "
                               "fewer. Checkpoints without sinks only allow -1 or 0.",
                }),
                "window_seconds": ("INT", {
                    "default": DEFAULT_WINDOW_SECONDS, "min": 0, "max": 600,
                    "tooltip": "Seconds of past kept in the cache beside the retained start. Memory and time "
                               "per block stay flat however long the stream. 0 keeps everything.",
                }),
                "retained_start_blocks": ("INT", {
                    "default": 1, "min": 1, "max": 16,
                    "tooltip": "Blocks at the start of the stream (and the sink tokens) never evicted: "
                               "the stream's attention anchor.",
                }),
                "schedule": (list(SCHEDULES), {
                    "default": "quality-4step",
                    "tooltip": "quality-4step: the released 4 steps. realtime-3step: faster, a little "
                               "less quality. custom: the list below.",
                }),
                "custom_sigmas": ("STRING", {
                    "default": "1000, 909, 725, 421, 0",
                    "tooltip": "Used with schedule = custom: descending timesteps (0-1000) or sigmas (0-1) "
                               "ending at 0.",
                }),
                "context_noise": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 0.99, "step": 0.001, "round": 0.001,
                    "tooltip": "Sigma at which each finished block is written into the cache (0 = clean).",
                }),
                "position_mode": (["absolute", "rebased"], {
                    "default": "absolute",
                    "tooltip": "Positions past the trained horizon. absolute: true stream time (as "
                               "trained, up to 20 s). rebased: the current block sits right after the "
                               "window, so long streams never look longer than they were trained.",
                }),
                "decode_lookahead": ("INT", {
                    "default": 0, "min": 0, "max": 24,
                    "tooltip": "Video latents held back until the next block arrives, for exact frames at "
                               "block seams (each latent = 1/3 s of latency). 0 shows each block at once, its "
                               "seam frames approximate (demo: mean error 0.008, 2 latents: 0.0005); 22 is "
                               "exact for LTX-2 19B.",
                }),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, custom_sigmas):
        # ComfyUI reports a failure once per argument named here and range-checks the others
        # itself (min, max, choices): naming only custom_sigmas puts its error under its name.
        # The list is checked whatever the schedule (the default parses); with schedule =
        # custom an empty list is refused when the node runs.
        if not custom_sigmas.strip():
            return True
        try:
            parse_sigma_list(custom_sigmas)
        except ScheduleError as error:
            return str(error)
        return True

    def build(self, **inputs):
        return (build_settings(**inputs),)


@dataclass(frozen=True)
class PromptChange:
    second: int
    conditioning: list
    blend_seconds: int


class OmniForcingPromptSchedule:
    DESCRIPTION = (
        "Switch the prompt from a given second on, without restarting the stream; chain several "
        "for several switches."
    )
    CATEGORY = "OmniForcing"
    FUNCTION = "schedule"
    RETURN_TYPES = ("OMNIFORCING_PROMPTS",)
    RETURN_NAMES = ("prompt_schedule",)
    OUTPUT_TOOLTIPS = ("Every switch so far, for the Streaming Sampler's prompt_schedule (or the next schedule's "
                       "previous).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING", {"tooltip": "The new prompt (LTX-2 text encoder)."}),
                # Inside the sampler's default 5 s, so the two defaults make a valid graph.
                "at_second": ("INT", {"default": 3, "min": 1, "max": 3600,
                                      "tooltip": "The stream second from which the new prompt applies (the stream "
                                                 "starts at 0): below the sampler's seconds."}),
                "blend_seconds": ("INT", {"default": 0, "min": 0, "max": 60,
                                          "tooltip": "Blend from the previous prompt over this many seconds."}),
            },
            "optional": {
                "previous": ("OMNIFORCING_PROMPTS", {"tooltip": "Earlier switches, to chain several."}),
            },
        }

    def schedule(self, conditioning, at_second: int, blend_seconds: int, previous=()):
        changes = [*previous, PromptChange(at_second, conditioning, blend_seconds)]
        seconds = [change.second for change in changes]
        if len(set(seconds)) != len(seconds):
            raise ValueError(f"two prompt switches at the same second: {sorted(seconds)}")
        return (tuple(sorted(changes, key=lambda change: change.second)),)
