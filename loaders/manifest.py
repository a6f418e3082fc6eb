"""Manifests: one JSON file per model family naming every official file, where it comes from and where it goes.

A file entry (``loaders/manifests/<family>.json``)::

    {"id": "hm5_reference",                         # unique within the family
     "repo_id": "songkey/hm5_reference",            # Hugging Face repo (or "url" for a plain HTTP source)
     "path": "diffusion_pytorch_model.safetensors", # path inside the repo
     "revision": "main",
     "folder": "portrait_animation",                # folder_paths key: portrait_animation, checkpoints, vae, ...
     "dest": "hellomeme/hm5_reference/diffusion_pytorch_model.safetensors",  # relative to that folder
     "size": 145336456,                             # bytes, null when unknown
     "sha256": null,                                # hex digest, null when unknown
     "groups": ["v5"],                              # which loader configurations need it
     "description": "HelloMeme v5 reference adapter",
     "alternates": [...]}                           # other places where the same weights may already be

An alternate is another name or folder under which users already keep the same weights (another custom-node pack's
layout, ComfyUI's own file names, the Hugging Face or ModelScope cache of a mirror repository), with the rule that
decides whether a file found there is accepted::

    {"folder": "vae", "path": "vae-ft-mse-840000-ema-pruned.safetensors",   # a folder key + a path inside it
     "accept": "any",                                # any | size | sha256 | keys
     "layout": "ldm",                                # tensor layout when it differs from the canonical file's
     "note": "ComfyUI's usual name for the same VAE (LDM layout)"}
    {"cache": "hf", "repo_id": "runwayml/stable-diffusion-v1-5",             # or "modelscope"
     "path": "v1-5-pruned-emaonly.safetensors", "accept": "any"}
    {"folder": "insightface", "path": "models/antelopev2/glintr100.onnx",
     "accept": "sha256", "size": 260665334, "sha256": "4ab1..."}             # size first (cheap), then the hash
    {"folder": "audio_encoders", "path": "wav2vec2-base-960h/model.safetensors",
     "accept": "keys", "keys": [{"name": "wav2vec2.feature_projection.projection.weight", "shape": [768, 512]}]}

"any" is for names that identify the weights on their own; a generic name needs a size, hash or key probe. An alternate
folder key may be any ComfyUI models sub-folder (``wav2vec``, ``insightface`` ...), registered or not.

A manifest may carry a top-level ``"unavailable": "<why>"``: its files are then never downloaded (nothing in the pack
can run them yet), though they are still found where users keep them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

MANIFEST_DIR = Path(__file__).parent / "manifests"

# folder_paths keys the manifests may name. "portrait_animation" is the pack's own folder; the others are ComfyUI's
# standard folders, used where the file is a standard model users may already have.
KNOWN_FOLDERS = ("portrait_animation", "checkpoints", "vae", "clip_vision", "audio_encoders", "text_encoders",
                 "diffusion_models", "loras")

ACCEPT_RULES = ("any", "size", "sha256", "keys")
CACHE_KINDS = ("hf", "modelscope")
HUB_URL = "https://huggingface.co"


def _is_sha256(text: str | None) -> bool:
    return text is not None and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _is_safe_relative(path: str) -> bool:
    return bool(path) and not path.startswith("/") and ".." not in Path(path).parts


@dataclass(frozen=True)
class KeyProbe:
    """A tensor the file must contain (and its shape, when given): cheap to read from a safetensors header."""
    name: str
    shape: tuple[int, ...] | None = None

    def describe(self) -> str:
        return self.name + (f" {list(self.shape)}" if self.shape is not None else "")


@dataclass(frozen=True)
class Alternate:
    """Another place where the same weights may already be, and how a file found there is accepted.

    Either ``folder`` (a ComfyUI models folder key) + ``path`` inside it, or ``cache`` ("hf" / "modelscope") +
    ``repo_id`` + ``path`` inside that repository.
    """
    path: str
    accept: str = "any"
    folder: str | None = None
    cache: str | None = None
    repo_id: str | None = None
    size: int | None = None
    sha256: str | None = None
    keys: tuple[KeyProbe, ...] = ()
    layout: str | None = None
    note: str = ""

    @property
    def kind(self) -> str:
        return f"{self.cache}_cache" if self.cache else "alternate"

    @property
    def where(self) -> str:
        """Where this alternate lives, for messages (relative to ComfyUI's models folder or the cache)."""
        if self.cache:
            return f"{'Hugging Face' if self.cache == 'hf' else 'ModelScope'} cache {self.repo_id}/{self.path}"
        return f"models/{self.folder}/{self.path}"

    @staticmethod
    def from_dict(d: dict, where: str) -> "Alternate":
        fields = set(Alternate.__dataclass_fields__)
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"{where}: alternate has unknown fields {sorted(unknown)}")
        d = dict(d)
        d["keys"] = tuple(KeyProbe(k["name"], tuple(k["shape"]) if k.get("shape") is not None else None)
                          for k in d.get("keys") or ())
        alt = Alternate(**d)
        alt.validate(where)
        return alt

    def validate(self, where: str) -> None:
        where = f"{where}: alternate {self.where!r}"
        if bool(self.folder) == bool(self.cache):
            raise ValueError(f"{where} needs exactly one of folder or cache")
        if self.cache and (self.cache not in CACHE_KINDS or not self.repo_id or self.repo_id.count("/") != 1):
            raise ValueError(f"{where}: a cache alternate needs cache in {CACHE_KINDS} and an org/name repo_id")
        if self.folder and (not self.folder.replace("_", "").isalnum() or self.repo_id):
            raise ValueError(f"{where}: folder must be a plain models sub-folder name (and no repo_id)")
        if not _is_safe_relative(self.path):
            raise ValueError(f"{where} has an unsafe path")
        if self.accept not in ACCEPT_RULES:
            raise ValueError(f"{where}: accept must be one of {ACCEPT_RULES}")
        if self.accept == "size" and self.size is None:
            raise ValueError(f"{where}: accept 'size' needs a size")
        if self.accept == "sha256" and not _is_sha256(self.sha256):
            raise ValueError(f"{where}: accept 'sha256' needs a well-formed sha256")
        if self.accept == "keys" and not self.keys:
            raise ValueError(f"{where}: accept 'keys' needs keys")
        if self.accept == "any" and (self.size is not None or self.sha256 or self.keys):
            raise ValueError(f"{where}: accept 'any' takes no size, sha256 or keys (use the matching rule)")
        if self.sha256 is not None and not _is_sha256(self.sha256):
            raise ValueError(f"{where} has a malformed sha256")


@dataclass(frozen=True)
class ModelFile:
    id: str
    folder: str
    dest: str
    repo_id: str | None = None
    path: str | None = None
    url: str | None = None
    revision: str = "main"
    size: int | None = None
    sha256: str | None = None
    groups: tuple[str, ...] = ()
    description: str = ""
    family: str = ""
    alternates: tuple[Alternate, ...] = ()
    # why the file is never downloaded (set from the manifest's "unavailable"); None: downloads allowed
    unavailable: str | None = None

    @property
    def source(self) -> str:
        """The download URL (a ``resolve/`` link that serves the file itself, not the hub's HTML page)."""
        if self.url:
            return self.url
        return f"{HUB_URL}/{self.repo_id}/resolve/{self.revision or 'main'}/{self.path}"

    @property
    def destination(self) -> str:
        """Where the file goes, relative to ComfyUI's models folder (the default location of ``folder``)."""
        return f"models/{self.folder}/{self.dest}"

    @staticmethod
    def from_dict(d: dict, family: str = "") -> "ModelFile":
        unknown = set(d) - {f for f in ModelFile.__dataclass_fields__}
        if unknown:
            raise ValueError(f"manifest {family}: file {d.get('id')!r} has unknown fields {sorted(unknown)}")
        d = dict(d)
        d["groups"] = tuple(d.get("groups") or ())
        d["alternates"] = tuple(Alternate.from_dict(a, f"manifest {family}: file {d.get('id')!r}")
                                for a in d.get("alternates") or ())
        d.setdefault("family", family)
        f = ModelFile(**d)
        f.validate()
        return f

    def validate(self) -> None:
        where = f"manifest {self.family}: file {self.id!r}"
        if bool(self.url) == bool(self.repo_id):
            raise ValueError(f"{where} needs exactly one of repo_id or url")
        if self.repo_id and not self.path:
            raise ValueError(f"{where} has a repo_id but no path")
        if self.folder not in KNOWN_FOLDERS:
            raise ValueError(f"{where} names unknown folder {self.folder!r} (known: {', '.join(KNOWN_FOLDERS)})")
        if not _is_safe_relative(self.dest):
            raise ValueError(f"{where} has an unsafe dest {self.dest!r}")
        if self.sha256 is not None and not _is_sha256(self.sha256):
            raise ValueError(f"{where} has a malformed sha256")


@dataclass(frozen=True)
class Manifest:
    family: str
    files: tuple[ModelFile, ...]
    description: str = ""
    notes: dict = field(default_factory=dict)
    unavailable: str | None = None  # why nothing of this family is downloaded (see the module docstring)

    def file(self, file_id: str) -> ModelFile:
        for f in self.files:
            if f.id == file_id:
                return f
        raise KeyError(f"manifest {self.family} has no file {file_id!r}")

    def select(self, groups: Iterable[str] | None = None, ids: Iterable[str] | None = None) -> list[ModelFile]:
        """Files in any of ``groups`` (all files when both are None), plus the files named in ``ids``."""
        if groups is None and ids is None:
            return list(self.files)
        groups = set(groups or ())
        ids = set(ids or ())
        missing = ids - {f.id for f in self.files}
        if missing:
            raise KeyError(f"manifest {self.family} has no files {sorted(missing)}")
        return [f for f in self.files if f.id in ids or groups.intersection(f.groups)]

    @property
    def groups(self) -> list[str]:
        return sorted({g for f in self.files for g in f.groups})

    def select_spec(self, spec: str) -> list[ModelFile]:
        """Files for a user's group text: "all" (or empty) for every file, else comma-separated group names."""
        wanted = [g.strip() for g in (spec or "").split(",") if g.strip()]
        if not wanted or wanted == ["all"]:
            return self.select()
        unknown = set(wanted) - set(self.groups)
        if unknown:
            raise ValueError(f"groups {sorted(unknown)} do not exist for {self.family}; "
                             f"known groups: {', '.join(self.groups)}")
        return self.select(groups=wanted)


def parse_manifest(data: dict) -> Manifest:
    family = data["family"]
    unavailable = data.get("unavailable") or None
    files = tuple(ModelFile.from_dict(dict(f, unavailable=unavailable) if unavailable else f, family)
                  for f in data["files"])
    ids = [f.id for f in files]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ValueError(f"manifest {family}: duplicate file ids {sorted(dupes)}")
    dests = [(f.folder, f.dest) for f in files]
    clash = {d for d in dests if dests.count(d) > 1}
    if clash:
        raise ValueError(f"manifest {family}: several files share a destination {sorted(clash)}")
    return Manifest(family=family, files=files, description=data.get("description", ""), notes=data.get("notes", {}),
                    unavailable=unavailable)


@lru_cache(maxsize=None)
def load_manifest(family: str) -> Manifest:
    path = MANIFEST_DIR / f"{family}.json"
    if not path.is_file():
        known = ", ".join(available_families()) or "none"
        raise KeyError(f"no model manifest for {family!r} (known: {known})")
    return parse_manifest(json.loads(path.read_text()))


def available_families(downloadable_only: bool = False) -> list[str]:
    """Families with a manifest; ``downloadable_only`` leaves out those marked "unavailable" (e.g. HunyuanPortrait
    while nothing in the pack can run it), which is what the Model Files node offers."""
    names = sorted(p.stem for p in MANIFEST_DIR.glob("*.json"))
    if downloadable_only:
        names = [n for n in names if load_manifest(n).unavailable is None]
    return names
