"""A ComfyUI pack for the pack's end-to-end tests only; never shipped or installed by users.

The LTX-2 text path (Gemma 3 12B behind ``LTXAVTextEncoderLoader`` + ``CLIPTextEncode``)
cannot run on a test machine, so ``OmniForcingTestContext`` stands in for that pair: it
returns a CONDITIONING of the same structure, ``[[tensor [1, tokens, 2 x width],
{"pooled_output": None}]]`` (video and audio contexts side by side), drawn from a seed
derived from the prompt text, so one text always gives one tensor and two texts differ.

``OmniForcingTestProbe`` is an output node that shows a test what arrives at its inputs
(LATENTs and AUDIOs from the pack's sampler and from ComfyUI's own LTX-2 nodes): it writes
every tensor, exactly, to ``<output>/omniforcing_probe/<label>.safetensors`` and describes
the inputs (keys, shapes, nesting, sample rates) in its UI output.
"""

import json
import os
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


class OmniForcingTestProbe:
    DESCRIPTION = "Tests only: saves the tensors of its LATENT/AUDIO inputs and describes them."
    CATEGORY = "OmniForcing/testing"
    FUNCTION = "probe"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    LATENTS = ("av_latent", "video_latent", "audio_latent")
    AUDIOS = ("native_audio", "sampler_audio")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"label": ("STRING", {"default": "probe"})},
            "optional": {**{name: ("LATENT",) for name in cls.LATENTS}, **{name: ("AUDIO",) for name in cls.AUDIOS}},
        }

    def probe(self, label: str, **inputs):
        import folder_paths
        from safetensors.torch import save_file

        tensors, described = {}, {}
        for name, value in inputs.items():
            if value is None:
                continue
            entry = described[name] = {"keys": sorted(value)}
            for key, item in value.items():
                if getattr(item, "is_nested", False):  # comfy.nested_tensor.NestedTensor, or a torch nested tensor
                    parts = list(item.unbind())
                    entry[key] = {"nested": True, "type": type(item).__name__,
                                  "shapes": [list(part.shape) for part in parts]}
                    tensors.update({f"{name}.{key}.{i}": part for i, part in enumerate(parts)})
                elif isinstance(item, torch.Tensor):
                    entry[key] = {"nested": False, "shape": list(item.shape), "dtype": str(item.dtype)}
                    tensors[f"{name}.{key}"] = item
                else:
                    entry[key] = item if isinstance(item, (int, float, str, bool)) or item is None else repr(item)
        folder = os.path.join(folder_paths.get_output_directory(), "omniforcing_probe")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{label}.safetensors")
        save_file({key: t.detach().to("cpu", torch.float32).clone().contiguous() for key, t in tensors.items()}, path,
                  metadata={"described": json.dumps(described)})
        return {"ui": {"probe": [{"file": os.path.relpath(path, folder_paths.get_output_directory()),
                                  "inputs": described}]}, "result": ()}


NODE_CLASS_MAPPINGS = {"OmniForcingTestContext": OmniForcingTestContext, "OmniForcingTestProbe": OmniForcingTestProbe}
NODE_DISPLAY_NAME_MAPPINGS = {
    "OmniForcingTestContext": "OmniForcing Test Context (tests only)",
    "OmniForcingTestProbe": "OmniForcing Test Probe (tests only)",
}
