"""Model-file nodes: check what a family needs, say which file each entry uses, and download on demand."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..loaders.manifest import available_families, load_manifest
from ..loaders.store import ModelStore, check_model_files
from .common import CAT_MODELS, PREFIX, node_runtime


class ModelFiles(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        families = available_families(downloadable_only=True)  # HunyuanPortrait is not offered while nothing runs it
        return io.Schema(
            node_id=f"{PREFIX}_ModelFiles",
            display_name="Model Files (check / download)",
            category=CAT_MODELS,
            description=("Checks that every official file a model family needs is in ComfyUI's models folder (or "
                         "already on this machine under another known name, or in the Hugging Face / ModelScope "
                         "cache) and intact, and downloads the missing ones when 'download' is on. The report says "
                         "which file each entry uses and why. With downloading off, the error lists each missing "
                         "file, its download URL and where it goes."),
            is_output_node=True,
            inputs=[
                io.Combo.Input("family", options=families, default=families[0] if families else None,
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
                                      tooltip="One line per file: the file it uses and why (canonical, alternate "
                                              "name, HF or ModelScope cache), or where a missing file goes.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, family: str, groups: str, download: bool, verify_checksums: bool) -> io.NodeOutput:
        files = load_manifest(family).select_spec(groups)
        total = sum(f.size or 0 for f in files) or 1
        with node_runtime(cls).progress(total) as bar:
            done_before: dict[str, int] = {}

            def on_bytes(f, done, _total):
                bar.update(done - done_before.get(f.id, 0))
                done_before[f.id] = done

            report = check_model_files(ModelStore.default(), files, download=download, progress=on_bytes,
                                       deep_check=verify_checksums)
        return io.NodeOutput(report, ui={"text": [report]})


NODES = [ModelFiles]
