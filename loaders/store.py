"""Model store: find the files a manifest names, check them, and download missing ones on demand.

Locations come from a ``folders`` function mapping a folder key ("portrait_animation", "vae", ...) to the directories
searched, in order; the first one receives downloads. Inside ComfyUI that is ``folder_paths.get_folder_paths`` (so
``extra_model_paths.yaml`` works); in scripts and tests it is ``<models_dir>/<key>``.

Downloads happen only through :meth:`ModelStore.ensure` with ``download=True``. Each file is fetched with
``huggingface_hub`` into a staging folder next to its destination, checked (size, sha256, format), and only then moved
into place with an atomic rename, so an interrupted download never leaves a partial file under the final name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .manifest import ModelFile

log = logging.getLogger("portrait_animation")

FoldersFn = Callable[[str], Sequence[str | os.PathLike]]
# progress(file, done_bytes, total_bytes or None)
ProgressFn = Callable[[ModelFile, int, "int | None"], None]


class ModelFileError(RuntimeError):
    """Base class for model-file problems; the message is meant for the user as is."""


class MissingModelFiles(ModelFileError, FileNotFoundError):
    def __init__(self, missing: list[tuple[ModelFile, Path]], reason: str = "", hint: str = ""):
        self.missing = missing
        lines = [f"{len(missing)} model file(s) missing{': ' + reason if reason else ''}."]
        for f, dest in missing:
            size = f" ({human_size(f.size)})" if f.size else ""
            lines.append(f"  - {f.family}/{f.id}{size}\n      source:      {f.source}\n      destination: {dest}")
        lines.append(hint or "Enable 'download' on the loader node to fetch them, or place each file at its "
                             "destination by hand (any folder configured for that key in extra_model_paths.yaml works).")
        super().__init__("\n".join(lines))


class CorruptModelFile(ModelFileError):
    def __init__(self, file: ModelFile | None, path: Path, problem: str):
        self.file, self.path, self.problem = file, path, problem
        name = f"{file.family}/{file.id}" if file else path.name
        super().__init__(f"model file {name} at {path} is corrupt or incomplete: {problem}. "
                         "Delete it and download it again (enable 'download' on the loader node).")


def human_size(n: int | None) -> str:
    if n is None:
        return "unknown size"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_file_format(path: Path) -> str | None:
    """Cheap structural check of a weights/config file. Returns a problem description, or None if it looks whole.

    safetensors: the header must parse and its data must end exactly at the end of the file (catches truncation even
    when the manifest does not know the size). torch zip archives: the central directory must be readable. JSON: parse.
    """
    suffix = path.suffix.lower()
    size = path.stat().st_size
    try:
        if suffix in (".safetensors", ".sft"):
            with open(path, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    return "file is shorter than a safetensors header"
                (n,) = struct.unpack("<Q", head)
                if n > size - 8 or n > 100 * 1024 * 1024:
                    return f"safetensors header length {n} does not fit in a {size}-byte file"
                header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if 8 + n + end != size:
                return f"safetensors data should end at byte {8 + n + end} but the file has {size} bytes"
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as z:
                    z.infolist()
            elif size < 64:
                return "file is too small to be a checkpoint"
        elif suffix == ".json":
            json.loads(path.read_text())
    except (ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, struct.error) as e:
        return f"{type(e).__name__}: {e}"
    return None


def check_model_file(file: ModelFile | None, path: Path, deep: bool = False, expected_sha256: str | None = None) -> None:
    """Raise :class:`CorruptModelFile` if ``path`` does not match what the manifest says about it."""
    actual = path.stat().st_size
    if file is not None and file.size is not None and actual != file.size:
        kind = "truncated" if actual < file.size else "larger than expected"
        raise CorruptModelFile(file, path, f"{kind}: {actual} bytes, the official file has {file.size}")
    problem = check_file_format(path)
    if problem:
        raise CorruptModelFile(file, path, problem)
    want = expected_sha256 or (file.sha256 if file else None)
    if deep and want:
        got = sha256_of(path)
        if got != want:
            raise CorruptModelFile(file, path, f"sha256 is {got}, expected {want}")


def _tqdm_forwarding(file: ModelFile, progress: ProgressFn | None):
    """A tqdm class that forwards byte counts to ``progress`` (huggingface_hub drives it)."""
    from tqdm.auto import tqdm

    class ForwardingTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            out = super().update(n)
            if progress is not None:
                progress(file, int(self.n), int(self.total) if self.total else file.size)
            return out

    return ForwardingTqdm


@dataclass
class ModelStore:
    folders: FoldersFn

    # ---- construction --------------------------------------------------------------------------------------------
    @classmethod
    def at(cls, models_dir: str | os.PathLike) -> "ModelStore":
        """A store rooted at a plain models directory (``<models_dir>/<folder key>/...``), for scripts and tests."""
        root = Path(models_dir)
        return cls(folders=lambda key: [root / key])

    @classmethod
    def default(cls) -> "ModelStore":
        """ComfyUI's folders inside ComfyUI; else ``$PORTRAIT_ANIMATION_MODELS`` or ``./models``."""
        from ..runtime import inside_comfyui

        if inside_comfyui():
            from .paths import comfy_folders

            return cls(folders=comfy_folders)
        return cls.at(os.environ.get("PORTRAIT_ANIMATION_MODELS", "models"))

    # ---- lookup ----------------------------------------------------------------------------------------------------
    def candidates(self, file: ModelFile) -> list[Path]:
        return [Path(d) / file.dest for d in self.folders(file.folder)]

    def destination(self, file: ModelFile) -> Path:
        dirs = list(self.folders(file.folder))
        if not dirs:
            raise ModelFileError(f"no folder is configured for model folder key {file.folder!r}")
        return Path(dirs[0]) / file.dest

    def locate(self, file: ModelFile) -> Path | None:
        for p in self.candidates(file):
            if p.is_file():
                return p
        return None

    def status(self, files: Iterable[ModelFile]) -> list[tuple[ModelFile, Path | None]]:
        return [(f, self.locate(f)) for f in files]

    # ---- ensure / download -----------------------------------------------------------------------------------------
    def ensure(self, files: Iterable[ModelFile], download: bool = False, progress: ProgressFn | None = None,
               deep_check: bool = False) -> dict[str, Path]:
        """Paths of all ``files``, downloading the missing ones if ``download``; checks every file found.

        Raises :class:`MissingModelFiles` listing every missing file (source and destination) when downloading is off
        or impossible, and :class:`CorruptModelFile` naming a damaged file.
        """
        files = list(files)
        found: dict[str, Path] = {}
        missing: list[ModelFile] = []
        for f in files:
            p = self.locate(f)
            if p is None:
                missing.append(f)
            else:
                check_model_file(f, p, deep=deep_check)
                found[f.id] = p
        if not missing:
            return found
        if not download:
            raise MissingModelFiles([(f, self.destination(f)) for f in missing], reason="downloading is off")
        if _offline():
            raise MissingModelFiles([(f, self.destination(f)) for f in missing],
                                    reason="offline mode (HF_HUB_OFFLINE) is set",
                                    hint="Unset HF_HUB_OFFLINE to download, or place each file at its destination.")
        failed: list[tuple[ModelFile, Path]] = []
        reasons: list[str] = []
        for f in missing:
            try:
                found[f.id] = self.download(f, progress=progress)
            except CorruptModelFile:
                raise
            except Exception as e:  # network errors: report all files that could not be fetched together
                log.warning("download of %s/%s failed: %s", f.family, f.id, e)
                failed.append((f, self.destination(f)))
                reasons.append(f"{f.id}: {type(e).__name__}: {e}")
        if failed:
            raise MissingModelFiles(failed, reason="download failed (" + "; ".join(reasons)[:2000] + ")",
                                    hint="Check the network connection and HF_ENDPOINT/HF_TOKEN, or place each file "
                                         "at its destination by hand.")
        return found

    def download(self, file: ModelFile, progress: ProgressFn | None = None) -> Path:
        dest = self.destination(file)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".download-{file.id}-", dir=dest.parent))
        try:
            if file.repo_id:
                staged, hub_sha = self._fetch_from_hub(file, staging, progress)
            else:
                staged, hub_sha = self._fetch_url(file, staging, progress), None
            check_model_file(file, staged, deep=True, expected_sha256=file.sha256 or hub_sha)
            os.replace(staged, dest)
            log.info("downloaded %s/%s to %s", file.family, file.id, dest)
            return dest
        except CorruptModelFile as e:
            raise CorruptModelFile(file, dest, f"the downloaded copy failed its check ({e.problem}); nothing was "
                                               "written to the destination") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _fetch_from_hub(file: ModelFile, staging: Path, progress: ProgressFn | None) -> tuple[Path, str | None]:
        import huggingface_hub as hf

        endpoint = os.environ.get("HF_ENDPOINT") or None
        hub_sha = None
        try:  # the hub's LFS etag is the file's sha256: use it to verify when the manifest has no checksum
            url = hf.hf_hub_url(file.repo_id, file.path, revision=file.revision, endpoint=endpoint)
            meta = hf.get_hf_file_metadata(url)
            etag = (meta.etag or "").strip('"')
            if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag):
                hub_sha = etag
        except Exception as e:  # metadata is best effort; the download below reports real failures
            log.debug("no hub metadata for %s: %s", file.id, e)
        path = hf.hf_hub_download(file.repo_id, file.path, revision=file.revision, local_dir=staging,
                                  endpoint=endpoint, tqdm_class=_tqdm_forwarding(file, progress))
        return Path(path), hub_sha

    @staticmethod
    def _fetch_url(file: ModelFile, staging: Path, progress: ProgressFn | None) -> Path:
        from huggingface_hub.file_download import http_get

        target = staging / Path(file.dest).name
        with open(target, "wb") as fh:
            http_get(file.url, fh, expected_size=file.size, displayed_filename=target.name,
                     tqdm_class=_tqdm_forwarding(file, progress))
        return target


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
