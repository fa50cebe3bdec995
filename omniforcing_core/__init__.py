"""OmniForcing core: block-causal LTX-2 audio+video streaming in plain PyTorch.

Nothing here imports ComfyUI; the node pack (``nodes/``) is a thin layer over this package.
"""

from .config import ConfigError, ModelConfig
from .layout import BlockLayout, BlockSpan, LayoutError
from .schedule import ScheduleError

__all__ = [
    "BlockLayout",
    "BlockSpan",
    "ConfigError",
    "LayoutError",
    "ModelConfig",
    "ScheduleError",
]
