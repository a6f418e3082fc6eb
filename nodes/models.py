"""Model-file nodes: check what a family needs, and download it on demand."""
from __future__ import annotations

from comfy_api.latest import io

from ..loaders.manifest import available_families, load_manifest
from ..loaders.store import ModelStore, human_size
from .common import CAT_MODELS, PREFIX, node_runtime


def _report(rows) -> str:
    lines = []
    for f, path in rows:
        state = f"ok   {path}" if path else f"MISSING -> {ModelStore.default().destination(f)}"
        lines.append(f"{f.family}/{f.id} ({human_size(f.size)}): {state}")
    return "\n".join(lines)


class ModelFiles(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}_ModelFiles",
            display_name="Model Files (check / download)",
            category=CAT_MODELS,
            description=("Checks that every official file a model family needs is in ComfyUI's models folder and "
                         "intact, and downloads the missing ones when 'download' is on. With downloading off, the "
                         "error lists each missing file, where it comes from and where it goes."),
            is_output_node=True,
            inputs=[
                io.Combo.Input("family", options=available_families(), default=available_families()[0]
                               if available_families() else None,
                               tooltip="Model family whose files to check (manifests in loaders/manifests)."),
                io.String.Input("groups", default="all",
                                tooltip="Comma-separated file groups (e.g. 'v5,face_toolkit'), or 'all'. The groups "
                                        "of a family are listed in its manifest."),
                io.Boolean.Input("download", default=False,
                                 tooltip="Download missing files from the Hugging Face Hub into the models folder. "
                                         "Off: only check, and report what is missing."),
                io.Boolean.Input("verify_checksums", default=False,
                                 tooltip="Also hash every file against its known sha256 (slow for large files)."),
            ],
            outputs=[io.String.Output(display_name="report",
                                      tooltip="One line per file: its state and its path or destination.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, family: str, groups: str, download: bool, verify_checksums: bool) -> io.NodeOutput:
        manifest = load_manifest(family)
        wanted = [g.strip() for g in groups.split(",") if g.strip()]
        if not wanted or wanted == ["all"]:
            files = manifest.select()
        else:
            unknown = set(wanted) - set(manifest.groups)
            if unknown:
                raise ValueError(f"groups {sorted(unknown)} do not exist for {family}; "
                                 f"known groups: {', '.join(manifest.groups)}")
            files = manifest.select(groups=wanted)
        store = ModelStore.default()
        total = sum(f.size or 0 for f in files) or 1
        rt = node_runtime(cls)
        with rt.progress(total) as bar:
            done_before: dict[str, int] = {}

            def on_bytes(f, done, _total):
                bar.update(done - done_before.get(f.id, 0))
                done_before[f.id] = done

            store.ensure(files, download=download, progress=on_bytes, deep_check=verify_checksums)
        report = _report(store.status(files))
        return io.NodeOutput(report, ui={"text": [report]})


NODES = [ModelFiles]
