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
     "description": "HelloMeme v5 reference adapter"}
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

    @property
    def source(self) -> str:
        """Human-readable origin, used in error messages."""
        if self.url:
            return self.url
        return f"https://huggingface.co/{self.repo_id}/blob/{self.revision or 'main'}/{self.path}"

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
        if self.dest.startswith("/") or ".." in Path(self.dest).parts:
            raise ValueError(f"{where} has an unsafe dest {self.dest!r}")
        if self.sha256 is not None and (len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256)):
            raise ValueError(f"{where} has a malformed sha256")


@dataclass(frozen=True)
class Manifest:
    family: str
    files: tuple[ModelFile, ...]
    description: str = ""
    notes: dict = field(default_factory=dict)

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


def parse_manifest(data: dict) -> Manifest:
    family = data["family"]
    files = tuple(ModelFile.from_dict(f, family) for f in data["files"])
    ids = [f.id for f in files]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ValueError(f"manifest {family}: duplicate file ids {sorted(dupes)}")
    dests = [(f.folder, f.dest) for f in files]
    clash = {d for d in dests if dests.count(d) > 1}
    if clash:
        raise ValueError(f"manifest {family}: several files share a destination {sorted(clash)}")
    return Manifest(family=family, files=files, description=data.get("description", ""), notes=data.get("notes", {}))


@lru_cache(maxsize=None)
def load_manifest(family: str) -> Manifest:
    path = MANIFEST_DIR / f"{family}.json"
    if not path.is_file():
        known = ", ".join(available_families()) or "none"
        raise KeyError(f"no model manifest for {family!r} (known: {known})")
    return parse_manifest(json.loads(path.read_text()))


def available_families() -> list[str]:
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.json"))
