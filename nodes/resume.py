"""Resume Options: where the samplers keep finished segments so a cancelled or crashed run continues (the optional
'resume' input of MEMO Talking Portrait, HelloMeme Video and HunyuanPortrait Sampler)."""
from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ..runtime.resume import DEFAULT_MAX_GB, ResumeOptions
from .common import CATEGORY, PREFIX

ResumeOptionsType = io.Custom("PA_RESUME_OPTIONS")  # runtime.resume.ResumeOptions

DEFAULT_SUBFOLDER = os.path.join("portrait_animation", "resume")  # under ComfyUI's output folder (kept at restart)

RESUME_TOOLTIP = ("Optional: Resume Options (Portrait Animation). Not connected: resume is on, finished segments go "
                  "to output/portrait_animation/resume and are deleted when the run completes.")


def resume_input():
    return ResumeOptionsType.Input("resume", optional=True, tooltip=RESUME_TOOLTIP)


def default_folder() -> str | None:
    """ComfyUI's output folder + portrait_animation/resume (None outside ComfyUI)."""
    try:
        import folder_paths
    except ImportError:
        return None
    return os.path.join(folder_paths.get_output_directory(), DEFAULT_SUBFOLDER)


def resume_options(resume: ResumeOptions | None) -> ResumeOptions | None:
    """What a sampler uses: the connected options, or the default (on, in the output folder)."""
    if resume is not None:
        return resume
    folder = default_folder()
    return ResumeOptions(folder=folder) if folder else None


class ResumeOptionsNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}_ResumeOptions",
            display_name="Resume Options (Portrait Animation)",
            category=f"{CATEGORY}/Models",
            description=("Long runs continue where they stopped. MEMO saves every finished clip, HunyuanPortrait and "
                         "HelloMeme video the whole-sequence state after every denoising step, in a cache folder "
                         "keyed by everything that determines the frames (inputs, settings, seed, model weights, "
                         "precision, device). Queue the same prompt again after a cancel, a crash or a server "
                         "restart and the sampler skips the finished part; the frames are the same as an "
                         "uninterrupted run's. Without this node the samplers resume with the defaults below."),
            inputs=[
                io.Boolean.Input("enabled", default=True,
                                 tooltip="Off: nothing is saved or resumed (the samplers' behaviour before resume)."),
                io.String.Input("folder", default="",
                                tooltip="Cache folder. Empty: output/portrait_animation/resume. A relative path is "
                                        "under ComfyUI's output folder. Not the temp folder: ComfyUI empties it at "
                                        "start, which would lose the segments on a restart."),
                io.Boolean.Input("keep", default=False,
                                 tooltip="Keep a job's segments after it completes (a re-queue of the same job then "
                                         "only decodes). Off: deleted when the run finishes."),
                io.Float.Input("max_gb", default=DEFAULT_MAX_GB, min=0.1, max=1024.0, step=0.5,
                               tooltip="Size cap of the whole cache folder; the oldest jobs are deleted first."),
            ],
            outputs=[ResumeOptionsType.Output(display_name="resume",
                                              tooltip="Connect to a sampler's 'resume' input.")],
        )

    @classmethod
    def execute(cls, enabled: bool, folder: str, keep: bool, max_gb: float = DEFAULT_MAX_GB) -> io.NodeOutput:
        folder = (folder or "").strip()
        base = default_folder()
        if not folder:
            folder = base
        elif not os.path.isabs(folder):
            try:
                import folder_paths

                folder = os.path.join(folder_paths.get_output_directory(), folder)
            except ImportError:
                folder = os.path.abspath(folder)
        return io.NodeOutput(ResumeOptions(folder=folder, enabled=bool(enabled), keep=bool(keep),
                                           max_gb=float(max_gb)))


NODES = [ResumeOptionsNode]
