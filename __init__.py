"""OmniForcing for ComfyUI: streaming LTX-2 audio+video, one second at a time.

ComfyUI imports this folder as a package. The core (``omniforcing_core``) is a plain
top-level package beside it, so this folder goes on ``sys.path`` for the nodes (and for
``python -m omniforcing_core`` from a checkout, which needs nothing else).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
