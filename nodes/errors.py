"""Errors as ComfyUI shows them: the toast and the error panel print the exception's type
(``module.Class`` unless it is a builtin) and then its message, cut to the toast's width.

``plain_errors`` re-raises what a node function raised as the nearest builtin type, so the
type reads ``ValueError`` instead of ``omniforcing_core.checkpoint.reader.CheckpointError``,
and names files by their name, with the folders they were in after the message. The
original exception stays chained (``from``) for the traceback in the server log.
ComfyUI's interrupt is a BaseException and passes through untouched.
"""

from __future__ import annotations

import functools
import re

# An absolute path (POSIX or Windows) of at least one folder and a file or folder name.
_PATH = re.compile(r"(?<![\w.])((?:[A-Za-z]:)?[\\/](?:[^\s:'\",;()\[\]\\/]+[\\/])+)([^\s:'\",;()\[\]\\/]+)")
# The builtins a node error is re-raised as, most specific first.
_BUILTINS = (FileNotFoundError, PermissionError, MemoryError, OSError, ValueError, TypeError)


def plain_message(message: str) -> str:
    """``message`` with each absolute path cut to its last part, the folders said at the end."""
    folders: list[str] = []

    def name_only(match: re.Match) -> str:
        folder = match.group(1).rstrip("\\/")
        if folder not in folders:
            folders.append(folder)
        return match.group(2)

    short = _PATH.sub(name_only, message)
    return short if not folders else f"{short} (in {', '.join(folders)})"


def plain_error(error: Exception) -> Exception:
    kind = next((builtin for builtin in _BUILTINS if isinstance(error, builtin)), RuntimeError)
    return kind(plain_message(str(error)))


def plain_errors(function):
    """Decorates a node's FUNCTION: its errors as ``plain_error`` makes them."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            raise plain_error(error) from error

    return wrapper
