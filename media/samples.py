"""The example workflows' input files, shipped in ``workflows/inputs/`` and offered where the loaders look.

Why: a template opened from the pack names its inputs (``harris.jpg``, ``jue.mp4``, ``dicaprio.jpg``,
``speech.wav``). ComfyUI's core loaders (LoadImage, LoadVideo, LoadAudio) list only ComfyUI's input folder, so on a
fresh install the template would show an empty or wrong choice and fail. Two things make "open and press Run" work:

* :func:`install_samples` copies every sample that is absent into the input folder when the pack loads (cheap: one
  ``stat`` per sample; a file of the same name is never touched, whatever it holds);
* :func:`sample_names` / :func:`sample_path` let the pack's own loaders list and open the samples from the pack even
  when the input folder could not be written.

Plain stdlib: no ComfyUI import here; the node layer passes ComfyUI's input folder in.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path

log = logging.getLogger("portrait_animation")

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "workflows" / "inputs"
NOT_SAMPLES = {"README.md"}  # documentation next to the files, never an input


def sample_names(folder: Path = SAMPLES_DIR) -> list[str]:
    """Names of the shipped sample inputs (plain files of ``folder``, without its README or hidden files), sorted."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in entries
                  if n not in NOT_SAMPLES and not n.startswith(".") and (folder / n).is_file())


def sample_path(name: str, folder: Path = SAMPLES_DIR) -> Path | None:
    """The shipped file called ``name``, or None (also for names with a folder part: only plain names are samples)."""
    if not name or os.path.basename(name) != name or name not in sample_names(folder):
        return None
    return folder / name


def install_samples(input_dir: str | os.PathLike, folder: Path = SAMPLES_DIR) -> list[str]:
    """Copy every sample that ``input_dir`` lacks into it; return the names copied.

    Idempotent and never destructive: a name already present (a user's own file, or an earlier copy) is left as it
    is. Each copy is written to a hidden temporary file first and renamed into place, so an interrupted start never
    leaves a half-written sample under its real name. Never raises: a read-only or missing input folder is logged
    and the pack's own loaders still find the samples in the pack.
    """
    target = Path(input_dir)
    names = [n for n in sample_names(folder) if not os.path.lexists(target / n)]
    if not names:
        return []
    copied: list[str] = []
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            tmp = target / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
            # os.open with 0o666: the umask applies, so the copy gets a user's usual permissions (mkstemp: 0o600)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            try:
                with os.fdopen(fd, "wb") as dst, open(folder / name, "rb") as src:
                    shutil.copyfileobj(src, dst)
                if os.path.lexists(target / name):  # appeared meanwhile (another process): keep that one
                    continue
                os.replace(tmp, target / name)
                copied.append(name)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    except OSError as e:
        log.warning("Portrait Animation: could not copy the example inputs into %s (%s); the pack's loaders still "
                    "offer them, core loaders need them copied there by hand from %s", target, e, folder)
    if copied:
        log.info("Portrait Animation: copied the example inputs %s into %s", ", ".join(copied), target)
    return copied
