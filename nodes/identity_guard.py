"""Identity Guard: the option node behind the MEMO and HunyuanPortrait samplers' optional 'identity_guard' input."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..metrics.identity_guard import ACTIONS, STATISTICS, IdentityGuard
from .common import CATEGORY, PREFIX

IdentityGuardType = io.Custom("PA_IDENTITY_GUARD")  # metrics.identity_guard.IdentityGuard

GUARD_TOOLTIP = ("Optional: Identity Guard (Portrait Animation). Scores every window's ArcFace similarity to the "
                 "reference and reports (or re-anchors) the windows below its threshold. Not connected: no scoring, "
                 "the unguarded run.")


def guard_input():
    return IdentityGuardType.Input("identity_guard", optional=True, tooltip=GUARD_TOOLTIP)


def active_guard(identity_guard) -> IdentityGuard | None:
    """The connected guard when it is on (threshold > 0), else None (the unguarded run)."""
    return identity_guard if identity_guard is not None and identity_guard.active else None


class IdentityGuardNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}_IdentityGuard",
            display_name="Identity Guard (Portrait Animation)",
            category=f"{CATEGORY}/Models",
            description=("Watches identity drift in MEMO and HunyuanPortrait: every window (a MEMO clip, a "
                         "HunyuanPortrait sampling window of frames) is scored by ArcFace similarity to the reference; "
                         "windows below the threshold are listed with their frame ranges, or made again anchored on "
                         "the reference (MEMO: the clip restarts from the reference as the first clip does, with new "
                         "noise; HunyuanPortrait: the frame range is generated again with a new seed and stronger "
                         "appearance guidance and cross-faded in), keeping the better attempt. Connect to the "
                         "sampler's 'identity_guard' input; the report comes out of the sampler."),
            inputs=[
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="A window whose similarity to the reference is below this fails. 0 turns the "
                                       "guard off (the unguarded run). Same-person ArcFace similarities are "
                                       "typically 0.4-0.8; read the sampler's report to pick a value."),
                io.Combo.Input("action", options=list(ACTIONS), default="re-anchor",
                               tooltip="re-anchor: make failing windows again anchored on the reference and keep the "
                                       "better attempt (costs one window's sampling per retry). report: only list "
                                       "them with their frame ranges."),
                io.Int.Input("max_retries", default=1, min=0, max=5,
                             tooltip="Attempts per failing window after the first (re-anchor); stops early once an "
                                     "attempt passes."),
                io.Combo.Input("statistic", options=list(STATISTICS), default="mean",
                               tooltip="A window's score: the mean of its frames' similarities, or the worst frame "
                                       "(min: catches a short drop)."),
                io.Float.Input("guidance_boost", default=0.5, min=0.0, max=5.0, step=0.05,
                               tooltip="Added to the guidance on each retry: MEMO's cfg, HunyuanPortrait's "
                                       "appearance guidance. 0: only the re-anchoring and a new noise draw."),
                io.Int.Input("blend_frames", default=4, min=0, max=32,
                             tooltip="HunyuanPortrait: frames cross-faded at each edge of a regenerated range into "
                                     "its neighbours (also the real driving frames generated on each side for "
                                     "context). MEMO clips follow each other and need none."),
            ],
            outputs=[IdentityGuardType.Output(display_name="identity_guard",
                                              tooltip="Connect to a MEMO or HunyuanPortrait sampler's "
                                                      "'identity_guard' input.")],
        )

    @classmethod
    def execute(cls, threshold: float, action: str, max_retries: int, statistic: str, guidance_boost: float,
                blend_frames: int) -> io.NodeOutput:
        return io.NodeOutput(IdentityGuard(threshold=threshold, action=action, max_retries=max_retries,
                                           statistic=statistic, guidance_boost=guidance_boost,
                                           blend_frames=blend_frames))


NODES = [IdentityGuardNode]
