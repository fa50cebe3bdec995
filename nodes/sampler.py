"""OmniForcing Streaming Sampler: generates, decodes and shows the stream block by block."""

from __future__ import annotations

import time

from omniforcing_core import TextConditioning
from omniforcing_core.conditioning import ConditioningError
from omniforcing_core.layout import VIDEO_FPS
from omniforcing_core.stream_run import DecodeOptions, PromptAt, StreamRequest, StreamRun

from .comfy_bridge import bridge
from .demo_prompt import DEMO_PROMPT_KEY
from .errors import plain_errors, plain_message
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
    # Watching the stream in the node is an output: a graph with the sampler and no save node
    # runs, and a cached re-run hands the player the stream again (ComfyUI resends an output
    # node's UI output, not other nodes').
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT", "LATENT")
    RETURN_NAMES = ("images", "audio", "fps", "latent")
    OUTPUT_TOOLTIPS = (
        "Every frame of the stream, float32 [frames, height, width, 3] in 0..1: 24 x seconds + 1 frames "
        "(about height x width x 12 bytes each: a long stream is large).",
        "The whole sound: 24 kHz stereo.",
        "The frame rate of images: always 24 (LTX-2's clock). Connect it to CreateVideo's fps.",
        "The audio-video latent in ComfyUI's LTX-2 layout: video [1, 128, frames, height/32, width/32] and "
        "audio [1, 8, 25 x seconds + 1, 16] side by side, for LTXVSeparateAVLatent and the LTX-2 decoders.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("OMNIFORCING_MODEL", {"tooltip": "From OmniForcing Model Loader."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt from the LTX-2 text encoder (CLIPTextEncode), "
                                                         "or from OmniForcing Demo Prompt for the built-in demo."}),
                # The VAE decoder needs at least 2 x 2 latent cells (64 pixels) each way.
                "width": ("INT", {"default": 768, "min": 64, "max": 4096, "step": 32,
                                  "tooltip": "Frame width in pixels, a multiple of 32 (one latent cell). LTX-2 "
                                             "was trained at 768x512 and 512x768; the demo at 192x128."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 32,
                                   "tooltip": "Frame height in pixels, a multiple of 32 (one latent cell)."}),
                "seconds": ("INT", {"default": 5, "min": 1, "max": 3600,
                                    "tooltip": "Length of the stream: one block per second (the paper layout adds a "
                                               "prefix block). A prompt schedule's switches must fall before it."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "The noise of the stream: the same seed and inputs give the same stream."}),
                "decode": (list(DECODE_MODES), {
                    "default": "full",
                    "tooltip": "full: every block is VAE-decoded as it lands. fast preview: a cheap colour "
                               "sketch while streaming; the full decode runs at the end.",
                }),
            },
            "optional": {
                "settings": ("OMNIFORCING_SETTINGS", {
                    "tooltip": "From OmniForcing Stream Settings; unconnected: the quality 4-step schedule, a "
                               "4 s window, every sink token the checkpoint has.",
                }),
                "prompt_schedule": ("OMNIFORCING_PROMPTS", {
                    "tooltip": "From OmniForcing Prompt Schedule: new prompts from given seconds on.",
                }),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @plain_errors
    def sample(self, model: OmniForcingModel, positive, width, height, seconds, seed, decode,
               settings: NodeStreamSettings | None = None, prompt_schedule=(), unique_id=None):
        b = bridge()
        settings = settings or NodeStreamSettings.defaults()
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        pipeline = model.pipeline
        to_text = lambda conditioning: conditioning_to_text(conditioning, pipeline.caption_channels, model.demo)  # noqa: E731
        preview = decode == "fast preview"
        request = StreamRequest(
            to_text(positive), seconds, height, width, seed, settings.stream,
            prompts=tuple(PromptAt(change.second, to_text(change.conditioning), change.blend_seconds)
                          for change in prompt_schedule),
            decode=DecodeOptions("sketch" if preview else "full", settings.decode_lookahead, overlap=True,
                                 final_full_decode=preview),
        )
        # Everything is checked here, memory included, before the model moves or anything large is allocated.
        run = StreamRun(pipeline, request, should_stop=b.interrupt_requested)
        b.ready(model.handle, run.memory.stream_bytes)
        live = LivePreview(b, unique_id, b.prompt_id(), run.blocks_total, width, height, seconds,
                           run.decoder.sample_rate)
        try:
            with run:  # an interrupt raised here frees the KV cache at once
                started = time.perf_counter()
                for block in run:
                    # An interrupt that landed while this block (generated ahead) decoded: not shown.
                    b.check_interrupt()
                    live.block(block, time.perf_counter() - started)
                    b.check_interrupt()  # before the next block's decode starts
                    started = time.perf_counter()
            b.check_interrupt()  # a stream stopped early by an interrupt ends here
        except BaseException as stopped:
            # ComfyUI's interrupt is a BaseException; anything else is a failure to report.
            failed = isinstance(stopped, Exception)
            live.end(interrupted=not failed, error=plain_message(str(stopped)) if failed else None)
            b.release_memory()
            raise
        live.end()
        outputs = run.outputs
        waveform = outputs.waveform()
        video_latent, audio_tokens = outputs.latents()
        audio_latent = pipeline.audio_vae.latents_from_tokens(audio_tokens)
        latent = b.av_latent(video_latent.float().cpu(), audio_latent.float().cpu())
        audio = {"waveform": waveform.unsqueeze(0), "sample_rate": outputs.sample_rate}
        b.release_memory()
        return {"ui": live.final_ui(waveform), "result": (outputs.images(), audio, float(VIDEO_FPS), latent)}
