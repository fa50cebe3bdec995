"""The ComfyUI nodes: thin layers over ``omniforcing_core``."""

from .demo_prompt import OmniForcingDemoPrompt
from .model import OmniForcingModelLoader
from .prompt_file import OmniForcingSavePromptContext
from .sampler import OmniForcingStreamingSampler
from .settings import OmniForcingPromptSchedule, OmniForcingStreamSettings

NODE_CLASS_MAPPINGS = {
    "OmniForcingModelLoader": OmniForcingModelLoader,
    "OmniForcingStreamSettings": OmniForcingStreamSettings,
    "OmniForcingStreamingSampler": OmniForcingStreamingSampler,
    "OmniForcingPromptSchedule": OmniForcingPromptSchedule,
    "OmniForcingSavePromptContext": OmniForcingSavePromptContext,
    "OmniForcingDemoPrompt": OmniForcingDemoPrompt,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "OmniForcingModelLoader": "OmniForcing Model Loader",
    "OmniForcingStreamSettings": "OmniForcing Stream Settings",
    "OmniForcingStreamingSampler": "OmniForcing Streaming Sampler",
    "OmniForcingPromptSchedule": "OmniForcing Prompt Schedule",
    "OmniForcingSavePromptContext": "OmniForcing Save Prompt Context",
    "OmniForcingDemoPrompt": "OmniForcing Demo Prompt",
}
