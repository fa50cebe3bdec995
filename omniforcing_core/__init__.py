"""OmniForcing core: block-causal LTX-2 audio+video streaming in plain PyTorch.

Nothing here imports ComfyUI; the node pack (``nodes/``) is a thin layer over this package.
"""

from .checkpoint import CheckpointError, LoadedModel, load_decoders, load_model, save_checkpoint
from .conditioning import ConditioningError, TextConditioning
from .config import ConfigError, ModelConfig
from .decoders.av_stream import AVStreamDecoder, DecodedBlock
from .kv_cache import CacheError, StreamKVCache, WindowPolicy
from .layout import BlockLayout, BlockSpan, LayoutError
from .masks import AVMasks, block_causal_masks
from .pipeline import StreamPipeline
from .sampler import PromptSwitch, StreamBlock, StreamingSampler, StreamSettings, StreamSettingsError
from .schedule import ScheduleError, parse_sigma_list, preset_sigmas
from .transformer import AVTransformer

__all__ = [
    "AVMasks",
    "AVStreamDecoder",
    "AVTransformer",
    "BlockLayout",
    "BlockSpan",
    "CacheError",
    "CheckpointError",
    "ConditioningError",
    "ConfigError",
    "DecodedBlock",
    "LayoutError",
    "LoadedModel",
    "ModelConfig",
    "PromptSwitch",
    "ScheduleError",
    "StreamBlock",
    "StreamKVCache",
    "StreamPipeline",
    "StreamSettings",
    "StreamSettingsError",
    "StreamingSampler",
    "TextConditioning",
    "WindowPolicy",
    "block_causal_masks",
    "load_decoders",
    "load_model",
    "parse_sigma_list",
    "preset_sigmas",
    "save_checkpoint",
]
