"""OmniForcing core: block-causal LTX-2 audio+video streaming in plain PyTorch.

Nothing here imports ComfyUI; the node pack (``nodes/``) is a thin layer over this package.
"""

from .conditioning import ConditioningError, TextConditioning
from .config import ConfigError, ModelConfig
from .kv_cache import CacheError, StreamKVCache, WindowPolicy
from .layout import BlockLayout, BlockSpan, LayoutError
from .masks import AVMasks, block_causal_masks
from .sampler import PromptSwitch, StreamBlock, StreamingSampler, StreamSettings, StreamSettingsError
from .schedule import ScheduleError, parse_sigma_list, preset_sigmas
from .transformer import AVTransformer

__all__ = [
    "AVMasks",
    "AVTransformer",
    "BlockLayout",
    "BlockSpan",
    "CacheError",
    "ConditioningError",
    "ConfigError",
    "LayoutError",
    "ModelConfig",
    "PromptSwitch",
    "ScheduleError",
    "StreamBlock",
    "StreamKVCache",
    "StreamSettings",
    "StreamSettingsError",
    "StreamingSampler",
    "TextConditioning",
    "WindowPolicy",
    "block_causal_masks",
    "parse_sigma_list",
    "preset_sigmas",
]
