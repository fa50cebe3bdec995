"""A ComfyUI pack for the pack's end-to-end tests only; never shipped or installed by users.

The LTX-2 text path (Gemma 3 12B behind ``LTXAVTextEncoderLoader`` + ``CLIPTextEncode``)
cannot run on a test machine, so ``OmniForcingTestContext`` stands in for that pair: it
returns a CONDITIONING of the same structure, ``[[tensor [1, tokens, 2 x width],
{"pooled_output": None}]]`` (video and audio contexts side by side), drawn from a seed
derived from the prompt text, so one text always gives one tensor and two texts differ.
"""

import zlib

import torch


class OmniForcingTestContext:
    DESCRIPTION = "Tests only: a random LTX-2-shaped CONDITIONING, seeded by the prompt text."
    CATEGORY = "OmniForcing/testing"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "default": ""}),
                "width": ("INT", {"default": 32, "min": 1, "max": 4096,
                                  "tooltip": "Caption width of one stream; the tensor is twice as wide."}),
                "tokens": ("INT", {"default": 8, "min": 1, "max": 1024}),
            }
        }

    def encode(self, text: str, width: int, tokens: int):
        generator = torch.Generator().manual_seed(zlib.crc32(text.encode("utf-8")))
        context = torch.randn(1, tokens, width * 2, generator=generator)
        return ([[context, {"pooled_output": None}]],)


NODE_CLASS_MAPPINGS = {"OmniForcingTestContext": OmniForcingTestContext}
NODE_DISPLAY_NAME_MAPPINGS = {"OmniForcingTestContext": "OmniForcing Test Context (tests only)"}
