"""What the ComfyUI frontend does when the user clicks "Replace" on missing nodes, on a UI-format workflow dict.

Follows frontend 1.49.6 (ComfyUI 0.33.0's ``comfyui_frontend_package``, ``useNodeReplacement``): for every node whose
type the server does not know and that ``GET /node_replacements`` lists, the first replacement's new node is created
with its defaults and the same id, position and title, then

* a row with an input or output mapping is applied as given: each ``{"new_id", "old_id"}`` moves the old input's link
  to the new input of that name and copies the old widget's saved value (found by the old id's position in
  ``old_widget_ids``, taken from ``widgets_values``) onto the new widget of that name; ``{"new_id", "set_value"}``
  sets a widget; each output pair moves the old output's links; ids with a dot (dynamic inputs) are skipped;
* a row with neither uses the frontend's default mapping: links and widget values by name, outputs by name, with the
  NEW node's widget names as ``old_widget_ids``.

Links that are not moved stay as they were (the frontend leaves them too): a link into a replaced node's unmapped
input is no longer referenced by it, and a link out of an unmapped output keeps its old slot number.
The new node's widgets are built from ``/object_info`` as the frontend builds them (``tools/workflow_ui.py``): in input
order, an INT with ``control_after_generate`` followed by its control value.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import workflow_ui  # noqa: E402

CONTROL = "control_after_generate"


def new_node(node_id, new_type: str, info: dict) -> dict:
    """A node as the frontend creates it from ``/object_info`` (defaults everywhere, nothing linked)."""
    inputs, names, values = [], [], []
    for name, type_, opts in workflow_ui._inputs(info):
        widget = workflow_ui.is_widget(type_, opts)
        slot = {"name": name, "type": "COMBO" if isinstance(type_, list) else type_, "link": None}
        if widget:
            slot["widget"] = {"name": name}
            names.append(name)
            values.append(workflow_ui.default_value(type_, opts))
            if type_ == "INT" and opts.get("control_after_generate"):
                names.append(CONTROL)
                values.append("randomize")
        inputs.append(slot)
    outputs = [{"name": n, "type": t, "links": []}
               for n, t in zip(info.get("output_name") or info["output"], info["output"])]
    return {"id": node_id, "type": new_type, "inputs": inputs, "outputs": outputs, "widget_names": names,
            "widgets_values": values, "properties": {"Node name for S&R": new_type}}


def _default_mapping(old: dict, new: dict) -> dict:
    old_inputs = {i["name"] for i in old.get("inputs", [])}
    mapping = [{"old_id": i["name"], "new_id": i["name"]} for i in new["inputs"] if i["name"] in old_inputs]
    mapping += [{"old_id": n, "new_id": n} for n in new["widget_names"] if n not in old_inputs]
    outputs = []
    for idx, out in enumerate(old.get("outputs", [])):
        names = [o["name"] for o in new["outputs"]]
        if out["name"] in names:
            outputs.append({"old_idx": idx, "new_idx": names.index(out["name"])})
    return {"input_mapping": mapping or None, "output_mapping": outputs or None,
            "old_widget_ids": list(new["widget_names"]) or None}


def replace_missing(ui: dict, table: dict, object_info: dict) -> tuple[dict, list[str]]:
    """(the workflow after "Replace all", the old types replaced). ``ui`` is not changed."""
    ui = copy.deepcopy(ui)
    links = {link[0]: link for link in ui["links"]}
    replaced = []
    for pos, old in enumerate(ui["nodes"]):
        rows = table.get(old["type"])
        if old["type"] in object_info or not rows or rows[0]["new_node_id"] not in object_info:
            continue
        row = rows[0]
        new = new_node(old["id"], row["new_node_id"], object_info[row["new_node_id"]])
        for key in ("pos", "size", "order", "mode", "flags", "title"):
            if key in old:
                new[key] = copy.deepcopy(old[key])
        if row.get("input_mapping") is None and row.get("output_mapping") is None:
            row = {**row, **_default_mapping(old, new)}
        old_inputs = {i["name"]: i for i in old.get("inputs", [])}
        new_inputs = {i["name"]: (k, i) for k, i in enumerate(new["inputs"])}
        for entry in row.get("input_mapping") or []:
            if "." in entry["new_id"]:
                continue
            if "old_id" not in entry:
                _set_widget(new, entry["new_id"], entry["set_value"])
                continue
            source = old_inputs.get(entry["old_id"])
            if source is not None and source.get("link") is not None and entry["new_id"] in new_inputs:
                slot, target = new_inputs[entry["new_id"]]
                link = links.get(source["link"])
                if link is not None:
                    link[4] = slot
                    target["link"] = source["link"]
                    source["link"] = None
            widget_ids = row.get("old_widget_ids") or []
            saved = old.get("widgets_values")
            if isinstance(saved, list) and entry["old_id"] in widget_ids:
                k = widget_ids.index(entry["old_id"])
                if k < len(saved) and saved[k] is not None:
                    _set_widget(new, entry["new_id"], saved[k])
        for entry in row.get("output_mapping") or []:
            if entry["old_idx"] >= len(old.get("outputs", [])) or entry["new_idx"] >= len(new["outputs"]):
                continue
            moved = old["outputs"][entry["old_idx"]].get("links") or []
            for link_id in moved:
                if link_id in links:
                    links[link_id][2] = entry["new_idx"]
            new["outputs"][entry["new_idx"]]["links"] = list(moved)
            old["outputs"][entry["old_idx"]]["links"] = []
        ui["nodes"][pos] = new
        if old["type"] not in replaced:
            replaced.append(old["type"])
    ui["links"] = list(links.values())
    return ui, replaced


def _set_widget(node: dict, name: str, value) -> None:
    if name in node["widget_names"]:
        node["widgets_values"][node["widget_names"].index(name)] = value
