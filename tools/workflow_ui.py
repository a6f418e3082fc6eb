"""Convert ComfyUI workflows between API format (what /prompt runs) and UI format (what the editor and the template
browser load), using a server's ``/object_info`` to know each node's inputs, widgets and outputs.

    python tools/workflow_ui.py to-ui   workflows/api/x.json  workflows/x.json  --server http://127.0.0.1:8188
    python tools/workflow_ui.py to-api  workflows/x.json      x_api.json        --object-info info.json

UI format, as the ComfyUI frontends write it (checked against frontends 1.27.10 and 1.49.6 by
``tests/integration/test_browser.py``): ``widgets_values`` are positional in the node's input order; an INT widget
with ``control_after_generate`` is followed by its "fixed" value; a dynamic combo (``COMFY_DYNAMICCOMBO_V3``, e.g.
SaveVideo's ``format`` in ComfyUI 0.33) is followed by the widgets of its selected option, named
``parent.child`` in the API graph; an upload button (``image_upload`` ...) comes after ALL other widgets of the node,
not after its combo, because the frontends add it once the node's other widgets exist.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections import defaultdict

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
UPLOAD_FLAGS = {"image_upload": "image", "video_upload": "video", "audio_upload": "audio"}


def _section_inputs(section_specs: dict, order: dict | None = None) -> list[tuple[str, object, dict]]:
    """(name, type, options) for the required then optional inputs of one ``input`` dict."""
    specs = {}
    for section in ("required", "optional"):
        for name, spec in section_specs.get(section, {}).items():
            specs[name] = (spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    names = [n for s in ("required", "optional") for n in (order or {}).get(s, [])] or list(specs)
    return [(n, *specs[n]) for n in names if n in specs]


def _inputs(info: dict) -> list[tuple[str, object, dict]]:
    """(name, type, options) for every required/optional input, in the node's input order."""
    return _section_inputs(info["input"], info.get("input_order"))


def is_widget(type_, opts: dict) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(type_, list) or type_ in WIDGET_TYPES or type_ == DYNAMIC_COMBO


def _dynamic_options(opts: dict) -> list[dict]:
    return [o for o in opts.get("options") or [] if isinstance(o, dict) and "key" in o]


def default_value(type_, opts: dict):
    """What the editor shows for a widget the API graph leaves out: its default, else a combo's first option."""
    if "default" in opts:
        return opts["default"]
    if type_ == DYNAMIC_COMBO:
        keys = [o["key"] for o in _dynamic_options(opts)]
        return keys[0] if keys else None
    options = type_ if isinstance(type_, list) else opts.get("options")
    return options[0] if options else None


def _nested(type_, opts: dict, value, prefix: str) -> list[tuple[str, object, dict]]:
    """The inputs a dynamic combo adds for its selected option ``value``, named ``prefix.child``."""
    if type_ != DYNAMIC_COMBO:
        return []
    for option in _dynamic_options(opts):
        if option["key"] == value:
            return [(f"{prefix}.{n}", t, o) for n, t, o in _section_inputs(option.get("inputs") or {})]
    return []


def widget_specs(info: dict) -> dict[str, tuple[object, dict]]:
    """Every widget name a node can have in an API graph, nested dynamic-combo inputs of every option included."""
    out = {}

    def walk(items):
        for name, type_, opts in items:
            out[name] = (type_, opts)
            for option in _dynamic_options(opts) if type_ == DYNAMIC_COMBO else []:
                walk([(f"{name}.{n}", t, o) for n, t, o in _section_inputs(option.get("inputs") or {})])

    walk(_inputs(info))
    return out


def _upload_values(info: dict) -> list:
    """The upload buttons' values, which the frontends append after every other widget."""
    return [kind for _, type_, opts in _inputs(info) for flag, kind in UPLOAD_FLAGS.items() if opts.get(flag)]


def _widget_values(name, type_, opts, value) -> list:
    vals = [value]
    if type_ == "INT" and opts.get("control_after_generate"):
        vals.append("fixed")
    return vals


def _depths(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(nid, stack=()):
        if nid in depth:
            return depth[nid]
        if nid in stack:
            raise ValueError(f"cycle at node {nid}")
        parents = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
        depth[nid] = 1 + max((visit(p, stack + (nid,)) for p in parents), default=-1)
        return depth[nid]

    for nid in api:
        visit(nid)
    return depth


def api_to_ui(api: dict, object_info: dict) -> dict:
    api = {k: v for k, v in api.items() if not k.startswith("_")}
    depth = _depths(api)
    column_rows: dict[int, int] = defaultdict(int)
    nodes, links = [], []
    out_links: dict[tuple[str, int], list[int]] = defaultdict(list)
    link_id = 0
    for nid in sorted(api, key=lambda n: (depth[n], int(n) if n.isdigit() else n)):
        node = api[nid]
        info = object_info[node["class_type"]]
        ui_inputs, widgets = [], []
        pending = list(_inputs(info))
        while pending:
            name, type_, opts = pending.pop(0)
            value = node["inputs"].get(name)
            if type_ == DYNAMIC_COMBO:  # its selected option's widgets follow it
                pending[:0] = _nested(type_, opts, default_value(type_, opts) if value is None else value, name)
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                link_id += 1
                src, slot = value
                src_type = object_info[api[src]["class_type"]]["output"][slot]
                links.append([link_id, int(src), slot, int(nid), len(ui_inputs), src_type])
                out_links[(src, slot)].append(link_id)
                entry = {"name": name, "type": src_type, "link": link_id}
                if is_widget(type_, opts):
                    entry["widget"] = {"name": name}
                    widgets.extend(_widget_values(name, type_, opts, None))
                ui_inputs.append(entry)
            elif is_widget(type_, opts):
                if value is None:
                    value = default_value(type_, opts)
                widgets.extend(_widget_values(name, type_, opts, value))
            elif value is None:
                ui_inputs.append({"name": name, "type": type_ if isinstance(type_, str) else "COMBO", "link": None})
        widgets.extend(_upload_values(info))
        col = depth[nid]
        row = column_rows[col]
        column_rows[col] += 1
        nodes.append({
            "id": int(nid), "type": node["class_type"], "pos": [40 + 360 * col, 40 + 300 * row], "size": [320, 260],
            "flags": {}, "order": 0, "mode": 0, "inputs": ui_inputs,
            "outputs": [{"name": n, "type": t, "slot_index": i, "links": []}
                        for i, (n, t) in enumerate(zip(info.get("output_name", info["output"]), info["output"]))],
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets,
            **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title") else {}),
        })
    for n in nodes:
        for out in n["outputs"]:
            out["links"] = out_links.get((str(n["id"]), out["slot_index"]), [])
    for i, n in enumerate(sorted(nodes, key=lambda n: (depth[str(n["id"])], n["id"]))):
        n["order"] = i
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def same_graph(api: dict, converted: dict, object_info: dict) -> bool:
    """``converted`` equals ``api`` except for optional widgets ``api`` leaves out, present at their defaults."""
    api = {k: v for k, v in api.items() if not k.startswith("_")}
    if set(api) != set(converted):
        return False
    for nid, node in api.items():
        other = converted[nid]
        if node["class_type"] != other["class_type"] or node.get("_meta") != other.get("_meta"):
            return False
        specs = widget_specs(object_info[node["class_type"]])
        for name, value in other["inputs"].items():
            if name in node["inputs"]:
                if node["inputs"][name] != value:
                    return False
            elif name not in specs or value != default_value(*specs[name]):
                return False
        if set(node["inputs"]) - set(other["inputs"]):
            return False
    return True


def ui_to_api(ui: dict, object_info: dict) -> dict:
    links = {l[0]: l for l in ui["links"]}
    api = {}
    for n in ui["nodes"]:
        if n.get("mode", 0) in (2, 4) or n["type"] not in object_info:
            continue
        info = object_info[n["type"]]
        by_name = {i["name"]: i for i in n.get("inputs", [])}
        values = list(n.get("widgets_values") or [])
        inputs = {}
        pending = list(_inputs(info))
        while pending:
            name, type_, opts = pending.pop(0)
            linked = by_name.get(name, {}).get("link")
            if is_widget(type_, opts):
                consumed = _widget_values(name, type_, opts, None)
                # a file saved before a widget existed (e.g. by an older ComfyUI) has fewer values: the frontend
                # then shows the widget's default
                value = values[0] if values else default_value(type_, opts)
                values = values[len(consumed):]
                if type_ == DYNAMIC_COMBO:
                    pending[:0] = _nested(type_, opts, value, name)
                if linked is None:
                    inputs[name] = value
                    continue
            if linked is not None:
                l = links[linked]
                inputs[name] = [str(l[1]), l[2]]
        api[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
        if n.get("title"):
            api[str(n["id"])]["_meta"] = {"title": n["title"]}
    return api


def fetch_object_info(server: str) -> dict:
    with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=60) as r:
        return json.loads(r.read())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("direction", choices=("to-ui", "to-api"))
    ap.add_argument("src")
    ap.add_argument("dst")
    src_info = ap.add_mutually_exclusive_group(required=True)
    src_info.add_argument("--server", help="ComfyUI server to read /object_info from")
    src_info.add_argument("--object-info", help="a saved /object_info JSON")
    args = ap.parse_args(argv)
    info = fetch_object_info(args.server) if args.server else json.load(open(args.object_info))
    data = json.load(open(args.src))
    out = api_to_ui(data, info) if args.direction == "to-ui" else ui_to_api(data, info)
    with open(args.dst, "w") as fh:
        json.dump(out, fh, indent=2)
        fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
