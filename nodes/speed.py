"""Speed Options: the opt-in accelerations every sampler of the pack takes on its optional 'speed' input."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..runtime.speed import ATTENTION_CHOICES, COMPILE_CHOICES, SpeedOptions
from .common import CATEGORY, PREFIX

SpeedOptionsType = io.Custom("PA_SPEED_OPTIONS")  # runtime.speed.SpeedOptions

SPEED_TOOLTIP = ("Optional: Speed Options (attention kernel, torch.compile, feature reuse). Not connected: the exact "
                 "path, which reproduces the original model.")


def speed_input():
    return SpeedOptionsType.Input("speed", optional=True, tooltip=SPEED_TOOLTIP)


class SpeedOptionsNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}_SpeedOptions",
            display_name="Speed Options (Portrait Animation)",
            category=f"{CATEGORY}/Models",
            description=("Trades a little exactness for speed in the samplers of this pack (HelloMeme, MEMO, "
                         "HunyuanPortrait). Leave the samplers' 'speed' input unconnected for the exact path. The "
                         "README lists the measured speed-up and difference of each option. Precision (fp16/bf16) "
                         "is the loaders' dtype."),
            inputs=[
                io.Combo.Input("attention", options=list(ATTENTION_CHOICES), default="sdpa",
                               tooltip="Attention kernel. sdpa: PyTorch's, best backend it finds (exact path). "
                                       "sdpa_flash / sdpa_efficient / sdpa_cudnn / sdpa_math: one SDPA backend only "
                                       "(errors where it cannot run a call). sage: SageAttention (pip install "
                                       "sageattention; CUDA, fp16/bf16) where the head size is 64/96/128, SDPA "
                                       "elsewhere. comfy: the attention ComfyUI was started with "
                                       "(--use-sage-attention, --use-flash-attention, xformers...)."),
                io.Combo.Input("compile", options=list(COMPILE_CHOICES), default="off",
                               tooltip="torch.compile each block of the denoiser. The first run of a size compiles "
                                       "(minutes); later runs of the same size are faster. Needs a working Triton "
                                       "on CUDA (a C++ compiler on CPU)."),
                io.Int.Input("cache_interval", default=1, min=1, max=10,
                             tooltip="Feature reuse across steps (DeepCache-style), HelloMeme and MEMO: every "
                                     "n-th step runs the whole UNet, the steps between rerun only its outermost "
                                     "blocks on the stored deep features (about n-fold fewer deep-block calls; the "
                                     "result drifts from the exact one as n grows). 1 = off. The reference pass "
                                     "always runs whole, and so does MEMO's first step of each clip (its temporal "
                                     "memory update)."),
            ],
            outputs=[SpeedOptionsType.Output(display_name="speed",
                                             tooltip="Connect to a sampler's 'speed' input.")],
        )

    @classmethod
    def validate_inputs(cls, attention=None):  # named: only this skips the built-in checks
        if attention == "sage":
            import importlib.util

            if importlib.util.find_spec("sageattention") is None:
                return ("attention 'sage' needs SageAttention, which is not installed in ComfyUI's Python: "
                        "pip install sageattention (CUDA only), or pick 'sdpa' or 'comfy'")
        return True

    @classmethod
    def execute(cls, attention: str, compile: str, cache_interval: int = 1) -> io.NodeOutput:
        return io.NodeOutput(SpeedOptions(attention=attention, compile=compile, cache_interval=cache_interval))


NODES = [SpeedOptionsNode]
