"""OmniForcing Streaming Sampler: generates, decodes and shows the stream block by block."""

from __future__ import annotations

import time

import torch

from omniforcing_core import PromptSwitch, TextConditioning
from omniforcing_core.conditioning import ConditioningError
from omniforcing_core.host import available_host_memory
from omniforcing_core.sampler import decode_blocks
from omniforcing_core.layout import VIDEO_FPS

from .comfy_bridge import bridge
from .demo_prompt import DEMO_PROMPT_KEY
from .live_preview import LivePreview
from .model import OmniForcingModel
from .settings import NodeStreamSettings

DECODE_MODES = ("full", "fast preview")


def conditioning_to_text(conditioning, caption_channels: int, demo: bool = False) -> TextConditioning:
    """ComfyUI's LTX-2 CONDITIONING ([B, tokens, 2 x width], video and audio halves) as text
    contexts; ``demo``: for the built-in demo model, which says where its prompts come from."""
    if not conditioning:
        raise ValueError("the prompt is empty: connect a CONDITIONING from CLIPTextEncode")
    if len(conditioning) > 1:
        raise ValueError(
            f"this CONDITIONING holds {len(conditioning)} prompts (e.g. from a combine node); OmniForcing "
            "streams one prompt at a time: use a prompt schedule to change it over time"
        )
    tensor, extra = conditioning[0]
    if extra.get("unprocessed_ltxav_embeds"):
        raise ValueError(
            "this CONDITIONING comes from an LTX-2.3 text encoder setup; OmniForcing needs the LTX-2 (19B) "
            "text path: LTXAVTextEncoderLoader with the ltx-2-19b checkpoint, then CLIPTextEncode"
        )
    try:
        return TextConditioning.from_joint(tensor.float(), caption_channels, extra.get("attention_mask"))
    except ConditioningError as error:
        if demo:
            raise ConditioningError(f"the built-in demo model takes its prompt from the OmniForcing Demo Prompt "
                                    f"node: {error}") from error
        if extra.get(DEMO_PROMPT_KEY):
            raise ConditioningError(f"this prompt comes from OmniForcing Demo Prompt, which only the built-in demo "
                                    f"model reads: {error}") from error
        raise


class OmniForcingStreamingSampler:
    DESCRIPTION = (
        "Streams LTX-2 audio+video one second at a time: each block is generated, decoded and shown "
        "(frames and sound) the moment it is ready. Outputs all frames, the whole waveform, the frame "
        "rate and the audio-video latent."
    )
    CATEGORY = "OmniForcing"
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT", "LATENT")
    RETURN_NAMES = ("images", "audio", "fps", "latent")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("OMNIFORCING_MODEL",),
                "positive": ("CONDITIONING", {"tooltip": "The prompt from the LTX-2 text encoder (CLIPTextEncode), "
                                                         "or from OmniForcing Demo Prompt for the built-in demo."}),
                # The VAE decoder needs at least 2 x 2 latent cells (64 pixels) each way.
                "width": ("INT", {"default": 768, "min": 64, "max": 4096, "step": 32}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 32}),
                "seconds": ("INT", {"default": 5, "min": 1, "max": 3600,
                                    "tooltip": "One block per second (the paper layout adds a prefix block)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "decode": (list(DECODE_MODES), {
                    "default": "full",
                    "tooltip": "full: every block is VAE-decoded as it lands. fast preview: a cheap colour "
                               "sketch while streaming; the full decode runs at the end.",
                }),
            },
            "optional": {
                "settings": ("OMNIFORCING_SETTINGS",),
                "prompt_schedule": ("OMNIFORCING_PROMPTS",),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sample(self, model: OmniForcingModel, positive, width, height, seconds, seed, decode,
               settings: NodeStreamSettings | None = None, prompt_schedule=(), unique_id=None):
        b = bridge()
        settings = settings or NodeStreamSettings.defaults()
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        pipeline = model.pipeline
        layout = pipeline.layout
        text = conditioning_to_text(positive, pipeline.caption_channels, model.demo)
        switches = [
            PromptSwitch(layout.block_at_second(change.second),
                         conditioning_to_text(change.conditioning, pipeline.caption_channels, model.demo),
                         blend_blocks=change.blend_seconds)
            for change in prompt_schedule
        ]
        sampler = pipeline.sampler(settings.stream)
        preview = decode == "fast preview"
        decoder = pipeline.decoder(video_lookahead_latents=settings.decode_lookahead, preview=preview, seed=seed)
        # Everything is checked here, before the model moves or anything large is allocated.
        stream = sampler.stream(text, seconds, height, width, seed=seed, prompt_schedule=switches, decoder=decoder,
                                overlap_decode=True, should_stop=b.interrupt_requested)
        blocks_total = layout.num_blocks(seconds)
        frames_total = layout.block(blocks_total - 1).pixel_interval[1]
        images = allocate_images(frames_total, height, width)
        b.ready(model.handle, sampler.memory_estimate(seconds, height, width))
        live = LivePreview(b, unique_id, b.prompt_id(), blocks_total, width, height, seconds, decoder.sample_rate)
        blocks, waveforms = [], []
        try:
            started = time.perf_counter()
            for block in stream:
                blocks.append(block)
                waveforms.append(block.decoded.waveform)
                start, end = block.span.pixel_interval
                images[start:end] = block.decoded.frames
                live.block(block, time.perf_counter() - started)
                b.check_interrupt()
                started = time.perf_counter()
            b.check_interrupt()  # a stream stopped early by an interrupt ends here
        except BaseException as stopped:
            stream.close()  # frees the KV cache at once
            # ComfyUI's interrupt is a BaseException; anything else is a failure to report.
            failed = isinstance(stopped, Exception)
            live.end(interrupted=not failed, error=f"{type(stopped).__name__}: {stopped}" if failed else None)
            b.release_memory()
            raise
        live.end()
        if preview:
            final = pipeline.decoder(video_lookahead_latents=settings.decode_lookahead, seed=seed)
            waveforms = []
            for block in decode_blocks(blocks, final, blocks_total):
                start, end = block.span.pixel_interval
                images[start:end] = block.decoded.frames
                waveforms.append(block.decoded.waveform)
        waveform = torch.cat(waveforms, dim=1)
        video_latent = torch.cat([block.video for block in blocks], dim=2).float().cpu()
        audio_latent = pipeline.audio_vae.latents_from_tokens(torch.cat([block.audio for block in blocks], dim=1))
        latent = b.av_latent(video_latent, audio_latent.float().cpu())
        audio = {"waveform": waveform.unsqueeze(0), "sample_rate": decoder.sample_rate}
        b.release_memory()
        return {"ui": live.final_ui(waveform), "result": (images, audio, float(VIDEO_FPS), latent)}


def allocate_images(frames: int, height: int, width: int) -> torch.Tensor:
    """The IMAGE output, allocated once up front (every frame as float32, as ComfyUI expects),
    refused at once when the host cannot hold it."""
    needed = frames * height * width * 3 * 4
    free = available_host_memory()
    if free is not None and needed > free:
        raise MemoryError(
            f"the stream's IMAGE output needs {needed / 2**30:.1f} GiB for {frames} frames at {width}x{height}, "
            f"but only {free / 2**30:.1f} GiB of memory is free; stream fewer seconds or a smaller size"
        )
    return torch.empty((frames, height, width, 3), dtype=torch.float32)
