"""Old node ids this pack still answers to, registered with ComfyUI's node replacement API.

When a workflow names a node type the server does not know but a replacement is registered for, the frontend lists it
under the missing nodes with a "replace" action (it reads ``GET /node_replacements``), and the server rewrites API
prompts it receives (``POST /prompt``) before validating them. ComfyUI added this API after 0.3.64; on a server
without it nothing is registered and the pack loads as before.

``REPLACEMENTS`` is the one table: this pack's own renames now, other packs' node ids later. A row without mappings
is a pure rename (same inputs, widgets and outputs): the frontend then maps every link and widget value by name,
which is the API's intended use for same-structure renames and needs no knowledge of the frontend's widget order.
A row that renames or drops inputs gives ``inputs`` (new input id -> old input id), ``set_values`` (new input id ->
fixed value), ``outputs`` (old output index -> new) and ``old_widget_ids`` (the OLD node's widget ids in the order
its ``widgets_values`` are saved, which is how the frontend finds each old widget value).

Known limit of the server side in ComfyUI 0.33.0: for an API prompt it keeps only the inputs named in ``inputs``
(none for a pure rename) and fails on a mapped input the prompt lacks, so an API-format workflow with an old id gets
a "required input missing" error there; ``tools/queue_batch.py`` renames pure renames itself before queueing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("portrait_animation")


@dataclass(frozen=True)
class Replacement:
    old_id: str
    new_id: str
    inputs: dict[str, str] | None = None  # new input id -> old input id
    set_values: dict[str, Any] | None = None  # new input id -> value
    outputs: dict[int, int] | None = None  # old output index -> new output index
    old_widget_ids: tuple[str, ...] | None = None  # the old node's widgets, in widgets_values order

    def as_kwargs(self) -> dict:
        """Keyword arguments for ``comfy_api.v0_0_2.io.NodeReplace``."""
        mapping = [{"new_id": new, "old_id": old} for new, old in (self.inputs or {}).items()]
        mapping += [{"new_id": new, "set_value": value} for new, value in (self.set_values or {}).items()]
        outputs = [{"old_idx": old, "new_idx": new} for old, new in (self.outputs or {}).items()]
        return {"new_node_id": self.new_id, "old_node_id": self.old_id,
                "old_widget_ids": list(self.old_widget_ids) if self.old_widget_ids else None,
                "input_mapping": mapping or None, "output_mapping": outputs or None}


# Commit b07f5e9 changed this pack's ids from PortraitAnim<Name> to PortraitAnim_<Name>; inputs and outputs stayed.
_UNDERSCORED = ("FaceDetector", "DetectFaceLandmarks", "FaceCrop", "FacePasteBack", "LoadAudio", "PrepareAudio",
                "LoadVideoFrames", "VideoToFrames", "FramesToVideo")

REPLACEMENTS: tuple[Replacement, ...] = (
    *(Replacement(f"PortraitAnim{name}", f"PortraitAnim_{name}") for name in _UNDERSCORED),
)


def _replacement_api():
    """(register coroutine function, NodeReplace class), or None on a ComfyUI without the node replacement API."""
    try:
        from comfy_api.v0_0_2 import ComfyAPI, io
    except ImportError:
        return None
    node_replace = getattr(io, "NodeReplace", None)
    registry = getattr(ComfyAPI(), "node_replacement", None)
    if node_replace is None or registry is None:
        return None
    return registry.register, node_replace


async def register_replacements(node_ids: set[str]) -> int:
    """Register every row whose new node is loaded (``node_ids``); returns how many were registered.

    A row whose new node is missing (its module failed to import) is skipped: offering to swap in a node the server
    cannot run would only trade one missing node for another. Never raises: replacements are a convenience and must
    not take the pack's nodes down with them."""
    api = _replacement_api()
    if api is None:
        return 0
    register, node_replace = api
    count = 0
    for row in REPLACEMENTS:
        if row.new_id not in node_ids:
            continue
        try:
            await register(node_replace(**row.as_kwargs()))
            count += 1
        except Exception as e:  # an API change must not break loading
            log.warning("Portrait Animation: could not register node replacement %s -> %s: %s",
                        row.old_id, row.new_id, e)
    return count
