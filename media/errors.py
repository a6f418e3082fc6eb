"""Errors raised by the media package."""
from __future__ import annotations

import os


class MediaError(ValueError):
    """A media file could not be read or written (corrupt, unsupported, no matching stream).

    The message always names the file, because it is what ComfyUI shows the user.
    """


def check_exists(path, what: str = "media") -> str:
    """Return ``path`` as a string, or raise ``FileNotFoundError`` naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        if os.path.exists(path):
            raise MediaError(f"{what} path '{path}' is not a file")
        raise FileNotFoundError(f"{what} file not found: '{path}'")
    return path
