"""The example workflows read well from the JSON alone: stages in titled groups, a Note saying what to change, no
node drawn over another, a thumbnail for the template browser, and download links the frontend can fetch.

The real rendering (sizes the frontend grows to fit widgets) is checked by ``tests/integration/test_browser.py``;
here the rectangles are the saved ``pos``/``size`` plus the title bar LiteGraph draws above ``pos``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
UI_WORKFLOWS = sorted(WORKFLOWS.glob("*.json"))
NODE_TITLE_H = 30  # LiteGraph.NODE_TITLE_HEIGHT
STAGES = {"Inputs", "Face", "Model", "Sampling", "Output", "Metrics"}
NOTE_TYPES = {"Note", "MarkdownNote"}


def node_rect(node: dict) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) as drawn: the title bar sits above ``pos``."""
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - NODE_TITLE_H, x + w, y + h


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def overlapping_pairs(nodes: list[dict]) -> list[tuple[str, str]]:
    rects = [(n.get("title") or n["type"], node_rect(n)) for n in nodes]
    return [(ta, tb) for i, (ta, ra) in enumerate(rects) for tb, rb in rects[i + 1:] if overlap(ra, rb)]


def model_entries(wf: dict) -> list[dict]:
    entries = list(wf.get("models") or [])
    for n in wf["nodes"]:
        entries += (n.get("properties") or {}).get("models") or []
    return entries


def test_there_are_examples():
    assert len(UI_WORKFLOWS) >= 6


def test_overlap_check_sees_a_title_bar_collision():
    """A node placed just under another's body but inside its own title bar's reach overlaps."""
    upper = {"title": "a", "pos": [0, 30], "size": [300, 200]}
    lower = {"title": "b", "pos": [0, 30 + 200 + NODE_TITLE_H - 5], "size": [300, 100]}
    assert overlapping_pairs([upper, lower]) == [("a", "b")]
    lower["pos"][1] += 10
    assert overlapping_pairs([upper, lower]) == []


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_nodes_do_not_overlap(path):
    wf = json.loads(path.read_text())
    assert overlapping_pairs(wf["nodes"]) == []


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_stages_are_titled_groups_holding_every_node(path):
    wf = json.loads(path.read_text())
    groups = wf.get("groups") or []
    titles = [g.get("title") for g in groups]
    assert titles and set(titles) <= STAGES, titles
    assert len(set(titles)) == len(titles)
    boxes = [(x, y, x + w, y + h) for x, y, w, h in (g["bounding"] for g in groups)]
    for n in wf["nodes"]:
        if n["type"] in NOTE_TYPES:
            continue
        r = node_rect(n)
        inside = [b for b in boxes if b[0] <= r[0] and b[1] <= r[1] and r[2] <= b[2] and r[3] <= b[3]]
        assert len(inside) == 1, f"{n.get('title')} is in {len(inside)} groups"
    assert not any(overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), "groups overlap"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_one_note_says_what_to_change(path):
    wf = json.loads(path.read_text())
    notes = [n for n in wf["nodes"] if n["type"] in NOTE_TYPES]
    assert len(notes) == 1
    text = (notes[0].get("widgets_values") or [""])[0]
    assert "change" in text.lower() and 80 <= len(text) <= 800, text


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_nodes_have_titles(path):
    wf = json.loads(path.read_text())
    assert all((n.get("title") or "").strip() for n in wf["nodes"])


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_file_name_reads_as_a_template_title(path):
    """The template browser shows a custom node pack's template under its file name (frontends 1.27 and 1.49 have
    no other title for them), so the name is the title: words, not an identifier."""
    assert "_" not in path.stem and " " in path.stem and path.stem[0].isupper(), path.name
    assert (path.parent / "api" / path.name).is_file(), f"no API twin api/{path.name}"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_thumbnail_next_to_the_workflow(path):
    """The template browser asks ``/api/workflow_templates/<pack>/<name>.jpg``."""
    jpg = path.with_suffix(".jpg")
    assert jpg.is_file(), f"no thumbnail {jpg.name}"
    data = jpg.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and 10_000 < len(data) < 150_000


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_model_links_are_downloads(path):
    """The missing-models dialog fetches ``url`` directly: a ``/blob/`` page would save HTML as the model."""
    wf = json.loads(path.read_text())
    for m in model_entries(wf):
        assert m["url"].startswith("https://huggingface.co/") and "/resolve/" in m["url"], m
        assert m["url"].endswith("/" + m["name"]) and m.get("directory"), m


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_core_clip_loader_files_have_a_source(path):
    """A core loader cannot fetch its file: each file it names needs ``models`` metadata and the Note says where
    it comes from."""
    wf = json.loads(path.read_text())
    named = {m["name"] for m in model_entries(wf)}
    note = " ".join((n.get("widgets_values") or [""])[0] for n in wf["nodes"] if n["type"] in NOTE_TYPES)
    for n in wf["nodes"]:
        if n["type"] in ("CLIPLoader", "CheckpointLoaderSimple", "VAELoader"):
            name = n["widgets_values"][0]
            assert name in named, f"{n.get('title')}: no models entry for {name}"
            assert name in note, f"the Note does not say where {name} comes from"
