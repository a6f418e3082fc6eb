"""Errors raised by the media package, and :class:`PlainName`, the base every user-facing error of the pack uses."""
from __future__ import annotations

import importlib
import os


def _rebuild(module: str, qualname: str, args: tuple, state: dict) -> BaseException:
    """Unpickle a :class:`PlainName` exception from its real module (its ``__module__`` says ``builtins``)."""
    cls = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


class PlainName:
    """Mixin for the pack's user-facing exceptions: ComfyUI shows them by their bare class name (``NoFaceError``).

    ComfyUI reports a failed node's ``exception_type`` as ``module + "." + qualname`` unless the module is
    ``builtins`` (``execution.full_type_name``, 0.3.x and 0.33+ alike). A custom node pack is imported under a module
    name built from its install folder, so users would read ``custom_nodes.comfyui-portrait-animation.face.track.
    NoFaceError``. Every subclass therefore declares itself a builtin; Python's tracebacks then print the bare name
    too. The real module is kept in ``__real_module__`` and pickling goes through it.

        class NoFaceError(PlainName, ValueError): ...
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__real_module__ = cls.__module__
        cls.__module__ = "builtins"

    def __reduce__(self):
        cls = type(self)
        return _rebuild, (cls.__real_module__, cls.__qualname__, self.args, dict(self.__dict__))


class MediaError(PlainName, ValueError):
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
