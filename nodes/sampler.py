"""OmniForcing Streaming Sampler: generates, decodes and shows the stream block by block."""

from __future__ import annotations

import time

import torch

from omniforcing_core import PromptSwitch, TextConditioning
from omniforcing_core.layout import VIDEO_FPS

from .comfy_bridge import bridge
from .live_preview import LivePreview
from .model import OmniForcingModel
from .settings import NodeStreamSettings

DECODE_MODES = ("full", "fast preview")


def conditioning_to_text(conditioning, caption_channels: int) -> TextConditioning:
    """ComfyUI's LTX-2 CONDITIONING ([B, tokens, 2 x width], video and audio halves) as text contexts."""
    if not conditioning:
        raise ValueError("the prompt is empty: connect a CONDITIONING from CLIPTextEncode")
    tensor, extra = conditioning[0][0], conditioning[0][1]
    if extra.get("unprocessed_ltxav_embeds"):
        raise ValueError(
            "this CONDITIONING comes from an LTX-2.3 text encoder setup; OmniForcing needs the LTX-2 (19B) "
            "text path: LTXAVTextEncoderLoader with the ltx-2-19b checkpoint, then CLIPTextEncode"
        )
    return TextConditioning.from_joint(tensor.float(), caption_channels, extra.get("attention_mask"))


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
                "positive": ("CONDITIONING", {"tooltip": "The prompt from the LTX-2 text encoder (CLIPTextEncode)."}),
                "width": ("INT", {"default": 768, "min": 32, "max": 4096, "step": 32}),
                "height": ("INT", {"default": 512, "min": 32, "max": 4096, "step": 32}),
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
        text = conditioning_to_text(positive, pipeline.caption_channels)
        switches = [
            PromptSwitch(layout.block_at_second(change.second),
                         conditioning_to_text(change.conditioning, pipeline.caption_channels),
                         blend_blocks=change.blend_seconds)
            for change in prompt_schedule
        ]
        sampler = pipeline.sampler(settings.stream)
        preview = decode == "fast preview"
        decoder = pipeline.decoder(video_lookahead_latents=settings.decode_lookahead, preview=preview, seed=seed)
        # Everything is checked here, before the model moves or the cache is allocated.
        stream = sampler.stream(text, seconds, height, width, seed=seed, prompt_schedule=switches, decoder=decoder,
                                overlap_decode=True)
        b.ready(model.handle, sampler.memory_estimate(seconds, height, width))
        live = LivePreview(b, unique_id, b.prompt_id(), layout.num_blocks(seconds), width, height, seconds,
                           decoder.sample_rate)
        blocks = []
        try:
            started = time.perf_counter()
            for block in stream:
                blocks.append(block)
                live.block(block, block.decoded.frames, block.decoded.waveform, time.perf_counter() - started)
                b.check_interrupt()
                started = time.perf_counter()
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
            decoded = [final.push(block.span, block.video, block.audio, final=block is blocks[-1]) for block in blocks]
        else:
            decoded = [block.decoded for block in blocks]
        images = torch.cat([d.frames for d in decoded])
        waveform = torch.cat([d.waveform for d in decoded], dim=1)
        video_latent = torch.cat([block.video for block in blocks], dim=2).float().cpu()
        audio_latent = pipeline.audio_vae.latents_from_tokens(torch.cat([block.audio for block in blocks], dim=1))
        latent = b.av_latent(video_latent, audio_latent.float().cpu())
        audio = {"waveform": waveform.unsqueeze(0), "sample_rate": decoder.sample_rate}
        b.release_memory()
        return {"ui": live.final_ui(waveform), "result": (images, audio, float(VIDEO_FPS), latent)}
