"""OmniForcing Save Prompt Context: a prompt encoded in ComfyUI, for the standalone command."""

from __future__ import annotations

from omniforcing_core.conditioning import save_text_conditioning
from omniforcing_core.media import free_path

from .comfy_bridge import bridge
from .errors import plain_errors
from .sampler import conditioning_to_text


class OmniForcingSavePromptContext:
    DESCRIPTION = (
        "Saves the LTX-2 text contexts of a prompt as a .safetensors file in the output folder, for "
        "`python -m omniforcing_core stream --context FILE` outside ComfyUI."
    )
    CATEGORY = "OmniForcing"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING", {
                    "tooltip": "The prompt from the LTX-2 text encoder (CLIPTextEncode): its video and audio "
                               "text contexts are saved.",
                }),
                "filename_prefix": ("STRING", {
                    "default": "omniforcing/prompt",
                    "tooltip": "Path of the file inside ComfyUI's output folder, without .safetensors; an "
                               "existing file is kept and the new one gets _2, _3, ...",
                }),
            }
        }

    @plain_errors
    def save(self, conditioning, filename_prefix: str):
        tensor = conditioning[0][0] if conditioning else None
        if tensor is None or tensor.ndim != 3 or tensor.shape[-1] % 2:
            raise ValueError("expected an LTX-2 CONDITIONING [batch, tokens, 2 x width] from CLIPTextEncode")
        text = conditioning_to_text(conditioning, tensor.shape[-1] // 2)
        output = bridge().output_dir().resolve()
        target = (output / f"{filename_prefix}.safetensors").resolve()
        if output not in target.parents:
            raise ValueError(f"filename_prefix must stay inside the output folder, got {filename_prefix!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        path = free_path(target)
        save_text_conditioning(path, text)
        return {"ui": {"text": [str(path.relative_to(output))]}}
