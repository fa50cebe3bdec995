"""OmniForcing Demo Prompt: the built-in demo's prompt, in the words of its world, as CONDITIONING."""

from __future__ import annotations

import torch

from omniforcing_core.checkpoint import load_prompt_encoder
from omniforcing_core.demo_model import DEMO_BASE, DEMO_PROMPT, demo_path
from omniforcing_core.world.grammar import NOUNS, VERBS, words
from omniforcing_core.world.prompts import WorldPromptEncoder
from omniforcing_core.world.scene import COLOURS

from .errors import plain_errors

# Set in the CONDITIONING's options, so a wrong pairing (demo prompt, real model) is named as such.
DEMO_PROMPT_KEY = "omniforcing_demo_prompt"

_encoder: tuple[tuple[str, int], WorldPromptEncoder] | None = None


def demo_prompt_encoder() -> WorldPromptEncoder:
    """The demo's prompt encoder, loaded once (again only if its file changes)."""
    global _encoder
    path = demo_path(DEMO_BASE)  # the folder is looked up now: tests and retraining move it
    key = (str(path), path.stat().st_mtime_ns)
    if _encoder is None or _encoder[0] != key:
        _encoder = (key, load_prompt_encoder(path).eval())
    return _encoder[1]


def grammar_help() -> str:
    return (
        f"Shapes: a COLOUR and a NOUN each, joined by 'and' or ','. Colours: {' '.join(COLOURS)}. "
        f"Nouns: {' '.join(NOUNS)}. Then a verb: {' '.join(VERBS)} (with two or more shapes) or "
        f"{' '.join(VERBS.values())} (with one), and optionally 'around', 'off the walls' or 'and bounce'. "
        f"Example: '{DEMO_PROMPT}'. The empty prompt is the unconditional one."
    )


class OmniForcingDemoPrompt:
    DESCRIPTION = (
        "The prompt of the built-in demo model (Model Loader: omniforcing_demo): which shapes, in which "
        "colours, and how they move, in the closed vocabulary of its world. Encoded by the demo's own "
        "small text encoder: no text encoder to download."
    )
    CATEGORY = "OmniForcing"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The demo's text contexts in ComfyUI's LTX-2 layout, for the Streaming Sampler (demo model "
                       "only).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"default": DEMO_PROMPT, "multiline": True, "tooltip": grammar_help()}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, text):
        # Unknown words are shown in the node before anything runs.
        try:
            words(text)
        except ValueError as error:
            return str(error)
        return True

    @plain_errors
    def encode(self, text: str):
        with torch.no_grad():
            context = demo_prompt_encoder()(text)
        # ComfyUI's LTX-2 layout: video and audio contexts side by side, the padding mask beside them.
        joint = torch.cat([context.video, context.audio], dim=-1)
        options = {"pooled_output": None, "attention_mask": context.mask, DEMO_PROMPT_KEY: True}
        return ([[joint, options]],)
