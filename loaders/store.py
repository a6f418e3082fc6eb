"""Model store: find the files a manifest names, check them, and download missing ones on demand.

Locations come from a ``folders`` function mapping a folder key ("portrait_animation", "vae", ...) to the directories
searched, in order; the first one receives downloads. Inside ComfyUI that is ``folder_paths.get_folder_paths`` (so
``extra_model_paths.yaml`` works); in scripts and tests it is ``<models_dir>/<key>``.

Before anything is downloaded the store looks for the weights where users already keep them, in this order:

1. the canonical destination in every folder configured for the entry's key (the first one receives downloads);
2. the entry's alternates in ComfyUI folders (other packs' layouts, ComfyUI's usual file names), each accepted by its
   rule: any file there, an exact size, the official sha256, or a key probe;
3. the Hugging Face hub cache (``HF_HUB_CACHE``, ``HF_HOME/hub``, ``~/.cache/huggingface/hub``) and the ModelScope
   cache (``MODELSCOPE_CACHE``, ``~/.cache/modelscope/hub``): the entry's own repository, then cache alternates.

:meth:`ModelStore.locate` returns a :class:`Located` record (the path, how it was found, why it was accepted, and the
tensor layout when it differs from the canonical file's, e.g. an LDM-layout VAE); nothing is copied. A candidate that
fails its rule (wrong hash, wrong size, damaged) is skipped with a log line that says why.

Downloads happen only through :meth:`ModelStore.ensure` with ``download=True``, and never for a family whose manifest
is marked unavailable. Each file is fetched with ``huggingface_hub`` into a staging folder next to its destination,
checked (size, sha256, format), and only then moved into place with an atomic rename, so an interrupted download never
leaves a partial file under the final name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from ..media.errors import PlainName
from .manifest import Alternate, KeyProbe, ModelFile, load_manifest

log = logging.getLogger("portrait_animation")

FoldersFn = Callable[[str], Sequence[str | os.PathLike]]
# progress(file, done_bytes, total_bytes or None)
ProgressFn = Callable[[ModelFile, int, "int | None"], None]


class ModelFileError(PlainName, RuntimeError):
    """Base class for model-file problems; the message is meant for the user as is."""


class MissingModelFiles(ModelFileError, FileNotFoundError):
    """Model files that are neither on disk nor downloaded.

    Why two texts: the message (``str(e)``) is what ComfyUI's error dialog shows, so it stays a few short lines (how
    many files, their size where known, where they go, the one thing to do); a list of dozens of files with URLs and
    paths ran past the dialog's edge. The full per-file list (id, size, source, destination, download error) is
    ``report``: the store logs it once as a warning, and a node may output it.
    """

    LINE_WIDTH = 100  # fits the frontend's error dialog

    def __init__(self, missing: list[tuple[ModelFile, Path]], reason: str = "", hint: str = "",
                 found_elsewhere: Sequence[tuple[ModelFile, "Located"]] = (), errors: dict[str, str] | None = None):
        self.missing = missing
        self.found_elsewhere = list(found_elsewhere)
        self.reason = reason
        self.hint = hint or "Switch 'download' on in the loader node, or place the files there by hand."
        self.errors = dict(errors or {})  # file id -> why its download failed
        self.report = self._full_report()
        super().__init__(self._short_message())

    # ---- the dialog text -------------------------------------------------------------------------------------------
    def _short_message(self) -> str:
        width = self.LINE_WIDTH
        first_error = next(iter(self.errors.values()), "")
        reason = self.reason + (f" ({_clip(first_error, 50)})" if first_error else "")
        lines = [f"{len(self.missing)} model file(s) missing{': ' + reason if reason else ''}."]
        labels = [f"{f.family}/{f.id}" for f, _ in self.missing]
        lines.append(_fit_list(f"Files{self._size_text()}: ", labels, width))
        lines.append(f"Destination: {self._destination_text()}")
        if self.found_elsewhere:  # the user should see that these are not downloaded again
            lines.append(_fit_list("Found under other names or folders (used as they are): ",
                                   [loc.path.name for _, loc in self.found_elsewhere], width))
        lines.append(self.hint)
        lines.append("Each file with its source and destination is listed in the ComfyUI log.")
        return "\n".join(textwrap.fill(line, width, break_long_words=False, break_on_hyphens=False,
                                       subsequent_indent="  ") for line in lines)

    def _size_text(self) -> str:
        """The total size when every size is known; a lower bound only when it says something (>= 1 MB)."""
        sizes = [f.size for f, _ in self.missing if f.size]
        if sizes and len(sizes) == len(self.missing):
            return f" ({human_size(sum(sizes))})"
        return f" (at least {human_size(sum(sizes))})" if sum(sizes) >= 2**20 else ""

    def _destination_text(self) -> str:
        """One file: its path. Several: the folder the first file's group goes to (the common folder of the files
        sharing its models folder), and how many other models folders receive files."""
        if not self.missing:
            return "-"
        if len(self.missing) == 1:
            return str(self.missing[0][1])
        roots: dict[Path, list[Path]] = {}
        for f, dest in self.missing:
            roots.setdefault(_models_root(f, dest), []).append(Path(dest).parent)
        first = Path(os.path.commonpath([str(p) for p in next(iter(roots.values()))]))
        others = len(roots) - 1
        return str(first) + (f" (and {others} other folder{'s' if others > 1 else ''})" if others else "")

    # ---- the full list (log, node report) --------------------------------------------------------------------------
    def _full_report(self) -> str:
        lines = [f"{len(self.missing)} model file(s) missing{': ' + self.reason if self.reason else ''}."]
        for f, dest in self.missing:
            size = f" ({human_size(f.size)})" if f.size else ""
            lines.append(f"  - {f.family}/{f.id}{size}\n      source:      {f.source}\n      destination: {dest}")
            if f.id in self.errors:
                lines.append(f"      error:       {self.errors[f.id]}")
        if self.found_elsewhere:
            lines.append("Found under other names or folders (used as they are, nothing is copied):")
            lines.extend(f"  - {f.family}/{f.id}: {loc.path} ({loc.reason})" for f, loc in self.found_elsewhere)
        lines.append(self.hint + " Any folder configured for a file's key in extra_model_paths.yaml works too.")
        return "\n".join(lines)


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _fit_list(prefix: str, items: list[str], width: int) -> str:
    """``prefix`` + as many ``items`` as fit in ``width`` characters (at least one), then "(+N more)"."""
    line = prefix + (items[0] if items else "-")
    for i, item in enumerate(items[1:], start=1):
        rest = len(items) - i - 1
        more = f", … (+{rest} more)" if rest else ""
        if len(line) + 2 + len(item) + len(more) > width:
            return line + f", … (+{len(items) - i} more)"
        line += ", " + item
    return line


def _models_root(f: ModelFile, dest: Path) -> Path:
    """The models folder a destination lies in (``dest`` minus the manifest's relative ``dest``)."""
    dest = Path(dest)
    parts = Path(f.dest).parts
    if dest.parts[-len(parts):] == parts:
        return Path(*dest.parts[: -len(parts)])
    return dest.parent


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


# ---- where a file was found ------------------------------------------------------------------------------------------

HOW_TEXT = {"canonical": "canonical destination", "alternate": "alternate name",
            "hf_cache": "Hugging Face cache", "modelscope_cache": "ModelScope cache"}


@dataclass(frozen=True)
class Located:
    """Where the store found a manifest file and why it accepted it.

    ``how``: "canonical" (the manifest's destination), "alternate" (another name or folder in ComfyUI's models),
    "hf_cache" or "modelscope_cache". ``layout`` is set when the file's tensor layout differs from the canonical
    file's (e.g. "ldm" for ``vae-ft-mse-840000-ema-pruned.safetensors``), so the loader knows to convert.
    Usable wherever a path is (``os.fspath``).
    """
    path: Path
    how: str
    reason: str
    layout: str | None = None

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __getattr__(self, name: str):
        """Path attributes (``parent``, ``suffix``, ``is_file`` ...) pass through to ``path``: code written when
        ``locate()`` returned a plain Path keeps working."""
        if name.startswith("__") or name == "path":
            raise AttributeError(name)
        return getattr(self.path, name)

    @property
    def canonical(self) -> bool:
        return self.how == "canonical"


@dataclass(frozen=True)
class Skipped:
    """A candidate that exists but was not accepted, and why (shown in the Model Files report and logged)."""
    path: Path
    why: str


@dataclass(frozen=True)
class HubCaches:
    """The download caches searched after ComfyUI's folders (None: that cache is not searched)."""
    hf: Path | None = None
    modelscope: Path | None = None

    @classmethod
    def from_env(cls) -> "HubCaches":
        """The folders huggingface_hub and modelscope themselves would use, from the same environment variables."""
        env = os.environ
        hf = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
        if not hf:
            home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
            hf = os.path.join(home, "hub")
        ms = env.get("MODELSCOPE_CACHE") or "~/.cache/modelscope/hub"
        return cls(hf=Path(hf).expanduser(), modelscope=Path(ms).expanduser())


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def hf_cache_files(cache: Path, repo_id: str, path: str, revision: str = "main") -> list[tuple[Path, str]]:
    """Candidate paths of ``repo_id/path`` in a hub cache, best first, each with the snapshot (commit) it is in.

    Layout: ``<cache>/models--<org>--<name>/snapshots/<commit>/<path>``, ``refs/<branch>`` naming the commit of a
    branch. A pinned (40-hex) revision only accepts its own snapshot; a branch prefers the snapshot its ref names and
    then falls back to other snapshots, newest first (an older revision of the same repository holds the same weights
    unless the file was re-uploaded, which the size rule of a known-size file catches).
    """
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return []
    if _is_commit(revision):
        order = [revision]
    else:
        order = []
        ref = repo_dir / "refs" / revision
        if ref.is_file():
            order.append(ref.read_text().strip())
        others = [d for d in snapshots.iterdir() if d.is_dir() and d.name not in order]
        order += [d.name for d in sorted(others, key=lambda d: d.stat().st_mtime, reverse=True)]
    return [(snapshots / rev / path, rev) for rev in order]


def modelscope_cache_files(cache: Path, repo_id: str, path: str) -> list[Path]:
    """Candidate paths of ``repo_id/path`` in a ModelScope cache: ``<cache>/[models/]<org>/<name>/<path>`` (newer
    modelscope versions add ``models/`` and store a '.' in a name as '___')."""
    org, name = repo_id.split("/", 1)
    names = [name] + ([name.replace(".", "___")] if "." in name else [])
    return [cache / sub / org / n / path for sub in ("models", "") for n in names]


_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_WARNED: set[tuple[str, str]] = set()


def sha256_cached(path: Path) -> str:
    """sha256 of a file, remembered for this process while its size and mtime stay the same (an alternate is checked
    on every lookup; a 261 MB ONNX file should be hashed once)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_of(path)
    return _SHA_CACHE[key]


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a weights file: the safetensors header only, or a memory-mapped
    ``torch.load(weights_only=True)`` of a pickled checkpoint (unwrapping ``state_dict``/``model``)."""
    if path.suffix.lower() in (".safetensors", ".sft"):
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip archive: the legacy format cannot be memory-mapped
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    return {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}


def _probe_problem(path: Path, keys: Sequence[KeyProbe]) -> str | None:
    try:
        shapes = tensor_shapes(path)
    except Exception as e:  # unreadable: not the file we look for
        return f"its tensors cannot be listed ({type(e).__name__}: {e})"
    for k in keys:
        if k.name not in shapes:
            return f"it has no tensor {k.name}"
        if k.shape is not None and shapes[k.name] != k.shape:
            return f"tensor {k.name} has shape {list(shapes[k.name])}, expected {list(k.shape)}"
    return None


def acceptance_problem(path: Path, rule: Alternate) -> str | None:
    """Why a file found at an alternate location is NOT the wanted one (None: accepted). Cheap checks first."""
    problem = check_file_format(path)
    if problem:
        return f"damaged or not a weights file ({problem})"
    size = path.stat().st_size
    if rule.size is not None and size != rule.size:
        return f"size is {size} bytes, the wanted file has {rule.size}"
    if rule.accept == "sha256":
        got = sha256_cached(path)
        if got != rule.sha256:
            return f"sha256 is {got}, the official file's is {rule.sha256}"
    if rule.accept == "keys":
        return _probe_problem(path, rule.keys)
    return None


def _acceptance_text(rule: Alternate) -> str:
    return {"any": "known name", "size": "size matched", "sha256": "size and sha256 matched the official file",
            "keys": "key probe matched (" + ", ".join(k.describe() for k in rule.keys) + ")"}[rule.accept]


def _warn_once(path: Path, why: str, file: ModelFile) -> None:
    if (str(path), why) not in _WARNED:
        _WARNED.add((str(path), why))
        log.warning("%s/%s: not using %s: %s", file.family, file.id, path, why)


@dataclass(frozen=True)
class FileStatus:
    """One manifest entry as the Model Files report shows it."""
    file: ModelFile
    located: Located | None
    destination: Path
    skipped: tuple[Skipped, ...] = ()

    def line(self) -> str:
        head = f"{self.file.family}/{self.file.id} ({human_size(self.file.size)}): "
        if self.located is not None:
            loc = self.located
            why = HOW_TEXT[loc.how] + ("" if loc.canonical else f": {loc.reason}")
            text = head + f"ok   {loc.path}  [{why}]"
        elif self.file.unavailable:
            text = head + f"MISSING -> {self.destination}  (not offered for download: {self.file.unavailable})"
        else:
            text = head + f"MISSING -> {self.destination}  (download: {self.file.source})"
        return "\n".join([text] + [f"      skipped {s.path}: {s.why}" for s in self.skipped])


def format_report(rows: Iterable[FileStatus]) -> str:
    return "\n".join(r.line() for r in rows)


@dataclass
class ModelStore:
    folders: FoldersFn
    caches: HubCaches | None = None  # None: no download cache is searched (plain models folders, tests)

    # ---- construction --------------------------------------------------------------------------------------------
    @classmethod
    def at(cls, models_dir: str | os.PathLike, caches: HubCaches | None = None) -> "ModelStore":
        """A store rooted at a plain models directory (``<models_dir>/<folder key>/...``), for scripts and tests."""
        root = Path(models_dir)
        return cls(folders=lambda key: [root / key], caches=caches)

    @classmethod
    def default(cls) -> "ModelStore":
        """ComfyUI's folders inside ComfyUI; else ``$PORTRAIT_ANIMATION_MODELS`` or ``./models``. Both also search the
        Hugging Face and ModelScope caches of this machine."""
        from ..runtime import inside_comfyui

        if inside_comfyui():
            from .paths import comfy_folders

            return cls(folders=comfy_folders, caches=HubCaches.from_env())
        return cls.at(os.environ.get("PORTRAIT_ANIMATION_MODELS", "models"), caches=HubCaches.from_env())

    # ---- lookup ----------------------------------------------------------------------------------------------------
    def candidates(self, file: ModelFile) -> list[Path]:
        """The canonical destinations of ``file`` (one per folder configured for its key)."""
        return [Path(d) / file.dest for d in self.folders(file.folder)]

    def destination(self, file: ModelFile) -> Path:
        dirs = list(self.folders(file.folder))
        if not dirs:
            raise ModelFileError(f"no folder is configured for model folder key {file.folder!r}")
        return Path(dirs[0]) / file.dest

    def _search(self, file: ModelFile) -> Iterator[tuple[Path, str, Alternate | None, str]]:
        """Every place ``file`` may be, in lookup order: (path, how, acceptance rule or None, where-detail)."""
        for p in self.candidates(file):
            yield p, "canonical", None, ""
        for alt in file.alternates:
            if alt.folder:
                for d in self.folders(alt.folder):
                    yield Path(d) / alt.path, "alternate", alt, ""
        if self.caches is None:
            return
        # the entry's own repository file: the same file, so a known size still applies
        own = (Alternate(path=file.path, cache="hf", repo_id=file.repo_id, accept="size", size=file.size)
               if file.size is not None else Alternate(path=file.path, cache="hf", repo_id=file.repo_id))
        cache_alts = [a for a in file.alternates if a.cache]
        if self.caches.hf is not None:
            for alt in ([own] if file.repo_id else []) + [a for a in cache_alts if a.cache == "hf"]:
                revision = file.revision if alt is own else "main"
                for p, rev in hf_cache_files(self.caches.hf, alt.repo_id, alt.path, revision):
                    yield p, "hf_cache", alt, f"{alt.repo_id}@{rev[:8]}"
        if self.caches.modelscope is not None:
            ms_own = Alternate(path=own.path, cache="modelscope", repo_id=own.repo_id, accept=own.accept,
                               size=own.size)
            for alt in ([ms_own] if file.repo_id else []) + [a for a in cache_alts if a.cache == "modelscope"]:
                for p in modelscope_cache_files(self.caches.modelscope, alt.repo_id, alt.path):
                    yield p, "modelscope_cache", alt, alt.repo_id

    def lookup(self, file: ModelFile) -> tuple[Located | None, list[Skipped]]:
        """The first acceptable place of ``file`` and every candidate skipped before it (with the reason)."""
        skipped: list[Skipped] = []
        seen: set[str] = set()
        for path, how, rule, detail in self._search(file):
            if not path.is_file() or str(path) in seen:
                continue
            seen.add(str(path))
            if rule is None:  # the canonical destination: checked (and reported as corrupt) by ensure()
                return Located(path, how, "the manifest's destination"), skipped
            problem = acceptance_problem(path, rule)
            if problem:
                _warn_once(path, problem, file)
                skipped.append(Skipped(path, problem))
                continue
            reason = _acceptance_text(rule)
            if detail:
                reason = f"{detail}, {reason}"
            if rule.note:
                reason += f"; {rule.note}"
            return Located(path, how, reason, rule.layout), skipped
        return None, skipped

    def locate(self, file: ModelFile) -> Located | None:
        """Where ``file`` is (canonical destination, alternate, or a download cache), or None."""
        return self.lookup(file)[0]

    def status(self, files: Iterable[ModelFile]) -> list[tuple[ModelFile, Path | None]]:
        out = []
        for f in files:
            loc = self.locate(f)
            out.append((f, loc.path if loc else None))
        return out

    def describe(self, files: Iterable[ModelFile]) -> list[FileStatus]:
        """For every file: where it is and why (or where it will go and its download URL), and skipped candidates."""
        rows = []
        for f in files:
            loc, skipped = self.lookup(f)
            rows.append(FileStatus(f, loc, self.destination(f), tuple(skipped)))
        return rows

    # ---- ensure / download -----------------------------------------------------------------------------------------
    def ensure(self, files: Iterable[ModelFile], download: bool = False, progress: ProgressFn | None = None,
               deep_check: bool = False) -> dict[str, Path]:
        """Paths of all ``files``, downloading the missing ones if ``download``; checks every file found.

        Raises :class:`MissingModelFiles` listing every missing file (source and destination) when downloading is off
        or impossible, and :class:`CorruptModelFile` naming a damaged file.
        """
        located = self.ensure_located(files, download=download, progress=progress, deep_check=deep_check)
        return {k: v.path for k, v in located.items()}

    def ensure_located(self, files: Iterable[ModelFile], download: bool = False, progress: ProgressFn | None = None,
                       deep_check: bool = False) -> dict[str, Located]:
        """Like :meth:`ensure`, with the :class:`Located` record of every file (how it was found, its layout)."""
        files = list(files)
        found: dict[str, Located] = {}
        missing: list[ModelFile] = []
        for f in files:
            loc = self.locate(f)
            if loc is None:
                missing.append(f)
                continue
            if loc.canonical:
                check_model_file(f, loc.path, deep=deep_check)
            elif deep_check and loc.how.endswith("_cache") and f.sha256:  # the entry's own file in a cache
                check_model_file(f, loc.path, deep=True)
            else:
                log.info("%s/%s: using %s (%s: %s); nothing is copied", f.family, f.id, loc.path, HOW_TEXT[loc.how],
                         loc.reason)
            found[f.id] = loc
        if not missing:
            return found
        elsewhere = [(f, found[f.id]) for f in files if f.id in found and not found[f.id].canonical]
        refused = [f for f in missing if f.unavailable]
        if download and refused:
            raise _logged(MissingModelFiles([(f, self.destination(f)) for f in missing],
                                            reason=f"{refused[0].family} files are not downloaded: "
                                                   f"{refused[0].unavailable}",
                                            hint="Place each file at its destination by hand if you want to keep it "
                                                 "there.",
                                            found_elsewhere=elsewhere))
        if not download:
            raise _logged(MissingModelFiles([(f, self.destination(f)) for f in missing], reason="downloading is off",
                                            found_elsewhere=elsewhere))
        if _offline():
            raise _logged(MissingModelFiles([(f, self.destination(f)) for f in missing],
                                            reason="offline mode (HF_HUB_OFFLINE) is set",
                                            hint="Unset HF_HUB_OFFLINE to download, or place the files there by hand.",
                                            found_elsewhere=elsewhere))
        failed: list[tuple[ModelFile, Path]] = []
        errors: dict[str, str] = {}
        for f in missing:
            try:
                path = self.download(f, progress=progress)
                found[f.id] = Located(path, "canonical", "downloaded")
            except CorruptModelFile:
                raise
            except Exception as e:  # network errors: report all files that could not be fetched together
                log.warning("download of %s/%s failed: %s", f.family, f.id, e)
                failed.append((f, self.destination(f)))
                errors[f.id] = f"{type(e).__name__}: {e}"
        if failed:
            raise _logged(MissingModelFiles(failed, reason="download failed", errors=errors,
                                            hint="Check the network and HF_ENDPOINT/HF_TOKEN, or place the files "
                                                 "there by hand."))
        return found

    def download(self, file: ModelFile, progress: ProgressFn | None = None) -> Path:
        if file.unavailable:  # the one gate every download passes, whichever node asks
            raise ModelFileError(f"{file.family}/{file.id} is not downloaded: {file.unavailable}")
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
        url = mirrored_url(file.url)
        if url != file.url:
            log.info("downloading %s/%s from the mirror %s", file.family, file.id, url)
        with open(target, "wb") as fh:
            http_get(url, fh, expected_size=file.size, displayed_filename=target.name,
                     tqdm_class=_tqdm_forwarding(file, progress))
        return target


URL_MIRRORS_ENV = "PORTRAIT_ANIMATION_URL_MIRRORS"


def mirrored_url(url: str) -> str:
    """``url`` with the longest matching prefix replaced per ``PORTRAIT_ANIMATION_URL_MIRRORS``.

    The variable holds ``prefix=replacement`` pairs separated by whitespace or ``;``, e.g.
    ``https://storage.googleapis.com/=https://mirror.example/gcs/``. It is the plain-URL counterpart of
    ``HF_ENDPOINT`` (which redirects the Hub files) for the few files that are not on the Hub (MediaPipe's
    ``face_landmarker.task``), for a company mirror or an offline test server."""
    rules = []
    for pair in os.environ.get(URL_MIRRORS_ENV, "").replace(";", " ").split():
        prefix, sep, replacement = pair.partition("=")
        if not sep or not prefix:
            raise ValueError(f"{URL_MIRRORS_ENV}: {pair!r} is not 'prefix=replacement'")
        rules.append((prefix, replacement))
    for prefix, replacement in sorted(rules, key=lambda r: -len(r[0])):
        if url.startswith(prefix):
            return replacement + url[len(prefix):]
    return url


def _logged(err: MissingModelFiles) -> MissingModelFiles:
    """Log the full per-file list once (the exception's message, which the dialog shows, is the short summary)."""
    log.warning("Portrait Animation: %s", err.report)
    return err


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_model_files(store: ModelStore, files: Sequence[ModelFile], download: bool = False,
                      progress: ProgressFn | None = None, deep_check: bool = False) -> str:
    """What the Model Files node does: make sure ``files`` are there (downloading the missing ones when asked) and
    return the report, one line per file with the file it will use and why.

    With downloading off, a missing file raises :class:`MissingModelFiles` (its source and destination), listing the
    files found under other names too.
    """
    store.ensure_located(files, download=download, progress=progress, deep_check=deep_check)
    return format_report(store.describe(files))


def model_files_report(family: str, groups: str = "all", store: ModelStore | None = None) -> str:
    """The report for a family's groups without checking or downloading anything (never raises for missing files)."""
    store = store or ModelStore.default()
    return format_report(store.describe(load_manifest(family).select_spec(groups)))
