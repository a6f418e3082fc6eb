"""The node replacement table (nodes/replacements.py) against this pack's node schemas and the other packs' recorded
node signatures (tests/peers/signatures.json), without ComfyUI.

The pack's schemas are read through a stand-in ``comfy_api.v0_0_2`` that records what ``define_schema`` declares.
Every row must name a node and inputs the pack has; every peer row must name inputs the peer node has, list the peer
node's widgets in the order its ``widgets_values`` are saved, carry links to links and values to widgets of a kind
that takes them, and account for every peer input and output it does not carry. Every peer node is either mapped or
listed as not mapping, with a reason. The fixture workflows under tests/peers/ follow the recorded signatures.
"""
from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import pytest

from helpers.comfy_stub import forget_stub_nodes, install_stub_comfy_api, load_file_module

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).parent / "peers"
SIGNATURES = json.loads((PEERS / "signatures.json").read_text())
PEER_NODES = SIGNATURES["nodes"]
NODE_MODULES = ("models", "speed", "face", "media", "hellomeme", "memo", "hunyuan_portrait")
CONTROL = "control_after_generate"
# peer widget kind -> the pack's input kinds that take its saved value unchanged
VALUE_KINDS = {"INT": {"Int", "Float"}, "FLOAT": {"Float"}, "BOOLEAN": {"Boolean"}, "COMBO": {"Combo"},
               "STRING": {"String"}}


TABLE = load_file_module(ROOT / "nodes" / "replacements.py", "_pa_replacements_table")
PEER_ROWS = [r for r in TABLE.REPLACEMENTS if r.source != "this pack"]


@pytest.fixture(scope="module")
def schemas():
    """node id -> {"inputs": {id: declared input}, "outputs": [declared output]} for every node of the pack."""
    mp = pytest.MonkeyPatch()
    install_stub_comfy_api(mp)
    if "folder_paths" not in sys.modules:
        folder_paths = types.ModuleType("folder_paths")
        folder_paths.get_filename_list = lambda *_: []
        folder_paths.get_input_directory = lambda: str(ROOT)
        folder_paths.filter_files_content_types = lambda names, kinds: names
        mp.setitem(sys.modules, "folder_paths", folder_paths)
    out = {}
    try:
        for name in NODE_MODULES:
            module = importlib.import_module(f"portrait_animation.nodes.{name}")
            for node in module.NODES:
                schema = node.define_schema()
                out[schema["node_id"]] = {"inputs": {i["id"]: i for i in schema["inputs"]},
                                          "outputs": list(schema.get("outputs") or [])}
    finally:
        forget_stub_nodes()
        mp.undo()
    return out


def widget_order(signature: dict) -> list[str]:
    """The peer node's widgets as its ``widgets_values`` are saved."""
    order = []
    for i in signature["inputs"]:
        if i["widget"]:
            order.append(i["name"])
            if i.get("control_after_generate"):
                order.append(CONTROL)
    return order


def is_widget_kind(declared: dict) -> bool:
    return declared["kind"] in {"Int", "Float", "Boolean", "Combo", "String"} and not declared.get("force_input")


def peer_input(row, name: str) -> dict:
    return next(i for i in PEER_NODES[row.old_id]["inputs"] if i["name"] == name)


def test_every_row_names_pack_nodes_and_inputs(schemas):
    for row in TABLE.REPLACEMENTS:
        assert row.new_id in schemas, f"{row.old_id} -> {row.new_id}: no such node in the pack"
        target = schemas[row.new_id]
        named = set(row.inputs or {}) | set(row.set_values or {})
        assert named <= set(target["inputs"]), f"{row.old_id}: {named - set(target['inputs'])} not on {row.new_id}"
        for old_idx, new_idx in (row.outputs or {}).items():
            assert 0 <= new_idx < len(target["outputs"]), f"{row.old_id}: output {new_idx} of {row.new_id}"
        if row.source == "this pack":
            assert row.old_id not in schemas, f"{row.old_id} is still a node of the pack"


def test_old_ids_are_unique_and_not_the_packs():
    old = [r.old_id for r in TABLE.REPLACEMENTS]
    assert len(old) == len(set(old))
    assert not set(old) & set(TABLE.NOT_MAPPED)
    assert all(not o.startswith("PortraitAnim_") for o in old)


def test_every_peer_node_is_mapped_or_listed_with_a_reason():
    mapped = {r.old_id for r in PEER_ROWS}
    assert mapped | set(TABLE.NOT_MAPPED) == set(PEER_NODES), "peer nodes neither mapped nor listed"
    for old_id, (source, reason) in TABLE.NOT_MAPPED.items():
        assert source == PEER_NODES[old_id]["pack"] and source in TABLE.PEER_PACKS
        assert len(reason) > 40, f"{old_id}: say why it does not map"
    assert set(SIGNATURES["packs"]) == set(TABLE.PEER_PACKS)


@pytest.mark.parametrize("row", PEER_ROWS, ids=lambda r: r.old_id)
def test_peer_row_follows_the_recorded_signature(row):
    signature = PEER_NODES[row.old_id]
    assert row.source == signature["pack"]
    names = [i["name"] for i in signature["inputs"]]
    assert set((row.inputs or {}).values()) <= set(names), f"{row.old_id}: maps inputs it does not have"
    assert list(row.old_widget_ids or []) == widget_order(signature), \
        f"{row.old_id}: old_widget_ids must list its widgets in widgets_values order"
    for old_idx in row.outputs or {}:
        assert 0 <= old_idx < len(signature["outputs"]), f"{row.old_id}: output {old_idx}"
    # every input and output not carried is accounted for, and nothing else
    carried = set((row.inputs or {}).values())
    outputs_left = {f"output {o['name']}" for k, o in enumerate(signature["outputs"]) if k not in (row.outputs or {})}
    assert set(row.dropped or {}) == (set(names) - carried) | outputs_left, f"{row.old_id}: dropped list"
    assert all(len(why) > 20 for why in (row.dropped or {}).values())


@pytest.mark.parametrize("row", PEER_ROWS, ids=lambda r: r.old_id)
def test_peer_row_carries_links_to_links_and_values_to_widgets_that_take_them(row, schemas):
    target = schemas[row.new_id]["inputs"]
    for new, old in (row.inputs or {}).items():
        source, declared = peer_input(row, old), target[new]
        where = f"{row.old_id}.{old} -> {row.new_id}.{new}"
        if not source["widget"]:
            assert not is_widget_kind(declared), f"{where}: a link onto a widget"
            continue
        assert is_widget_kind(declared), f"{where}: a value onto a link input"
        assert declared["kind"] in VALUE_KINDS[source["type"]], f"{where}: {source['type']} -> {declared['kind']}"
        if source["type"] == "COMBO":
            options = [o for o in source["options"] if not o.startswith("<") and o != "..."]
            assert set(options) <= set(declared["options"]), f"{where}: {set(options) - set(declared['options'])}"
        elif source["type"] in ("INT", "FLOAT"):
            lo, hi = declared.get("min", float("-inf")), declared.get("max", float("inf"))
            assert lo <= source["default"] <= hi, f"{where}: the peer default {source['default']} is out of range"


@pytest.mark.parametrize("row", PEER_ROWS, ids=lambda r: r.old_id)
def test_peer_row_leaves_no_required_link_unwired(row, schemas):
    """The rule for mapping a peer node: the new node runs on what the old graph gives it (each required link comes
    from one of the old node's links; widgets it does not get keep their defaults)."""
    target = schemas[row.new_id]["inputs"]
    fed = set(row.inputs or {})
    for name, declared in target.items():
        if not is_widget_kind(declared) and not declared.get("optional"):
            assert name in fed, f"{row.old_id} -> {row.new_id}: required link {name!r} would stay unwired"
            assert not peer_input(row, row.inputs[name])["widget"]
    for name, value in (row.set_values or {}).items():
        declared = target[name]
        if declared["kind"] == "Combo":
            assert value in declared["options"], f"{row.old_id}: {name}={value!r}"
        else:
            assert declared["kind"] == {bool: "Boolean", int: "Int", float: "Float", str: "String"}[type(value)]


def test_as_kwargs_is_what_the_api_takes():
    for row in TABLE.REPLACEMENTS:
        kw = row.as_kwargs()
        assert set(kw) == {"new_node_id", "old_node_id", "old_widget_ids", "input_mapping", "output_mapping"}
        for entry in kw["input_mapping"] or []:
            assert set(entry) in ({"new_id", "old_id"}, {"new_id", "set_value"})
        for entry in kw["output_mapping"] or []:
            assert set(entry) == {"old_idx", "new_idx"}
        if row.source != "this pack":  # a peer row is never applied by the frontend's name-only default mapping
            assert kw["output_mapping"] and kw["old_widget_ids"]


FIXTURES = sorted(PEERS.glob("* (*).json"))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_workflows_follow_the_signatures(path):
    ui = json.loads(path.read_text())
    links = {link[0]: link for link in ui["links"]}
    peers = [n for n in ui["nodes"] if n["type"] in PEER_NODES]
    assert peers, f"{path.name} uses no peer node"
    for node in peers:
        sig = PEER_NODES[node["type"]]
        links_in = [(i["name"], i["type"]) for i in node["inputs"]]
        assert links_in == [(i["name"], i["type"]) for i in sig["inputs"] if not i["widget"]], node["type"]
        assert [(o["name"], o["type"]) for o in node["outputs"]] == [(o["name"], o["type"]) for o in sig["outputs"]]
        assert len(node["widgets_values"]) == len(widget_order(sig)), node["type"]
        for slot, i in enumerate(node["inputs"]):
            if i["link"] is not None:
                assert links[i["link"]][3:5] == [node["id"], slot]
        for k, o in enumerate(node["outputs"]):
            for link_id in o["links"]:
                assert links[link_id][1:3] == [node["id"], k]


API_FIXTURES = sorted((PEERS / "api").glob("*.json"))


@pytest.mark.parametrize("path", API_FIXTURES, ids=lambda p: p.stem)
def test_api_fixture_is_its_ui_workflow_exported(path):
    """tests/peers/api/<name>.json is the UI fixture of the same name as the peer pack's Export (API) writes it: each
    peer node's widget values under their input names (no control_after_generate) and its links."""
    ui = json.loads((PEERS / path.name).read_text())
    api = json.loads(path.read_text())
    links = {link[0]: link for link in ui["links"]}
    assert set(api) == {str(n["id"]) for n in ui["nodes"]}
    for node in ui["nodes"]:
        got = api[str(node["id"])]
        assert got["class_type"] == node["type"]
        expected = {i["name"]: [str(links[i["link"]][1]), links[i["link"]][2]]
                    for i in node.get("inputs", []) if i.get("link") is not None}
        if node["type"] in PEER_NODES:
            values = dict(zip(widget_order(PEER_NODES[node["type"]]), node["widgets_values"]))
            values.pop(CONTROL, None)
            expected.update(values)
            assert got["inputs"] == expected, node["type"]
        else:
            assert {k: v for k, v in got["inputs"].items() if isinstance(v, list)} == expected, node["type"]
