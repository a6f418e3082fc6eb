"""Every UI workflow in a real browser against the live server, as a new user would open it.

Headless Chromium from the distribution (``apt-get install chromium``; Playwright's own browser download is never
used) driven by Playwright's Python client. For each ``workflows/*.json`` the page loads the file through the
frontend (``app.loadGraphData``, what opening a file does) and the checks read the frontend's own state: no
missing-node dialog or error toast, no node flagged with errors, every widget value valid for its input, no console
error from the pack, no overlapping nodes, and the prompt the frontend builds equals ``workflows/api/<name>.json``.
Then the workflow is queued from the UI (with the tests' CPU-speed settings typed into its widgets; a MEMO talking
head that drives HelloMeme gets the stand-in face of ``comfy.standin_talking_head`` in the posted prompt, a MEMO
Loader feeding a guarded sampler its identity models back: ``comfy.guarded_memo_identity``) and must succeed with
the stand-in models; its result is checked as ``example_checks.check_example_result`` says (this is where every
example runs: finite, not constant, the original's size, the expected frame count, the face changed). A screenshot
of each loaded workflow is saved in the test's tmp dir (``<basetemp>/<test>/<version>-<workflow>.png``).

Both frontends are covered: 1.27.10 (ComfyUI 0.3.64) and 1.49.6 (ComfyUI 0.33.0).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest

from .comfy import FAST_OVERRIDES, ROOT, guarded_memo_identity, load_api_workflow, standin_talking_head
from .conftest import comfy_version
from .example_checks import check_example_result

UI_WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
PACK_MARKERS = ("portraitanim", "portrait_animation", "portrait animation")


def _need_browser():
    """Skip (with the reason shown) without Playwright or Chromium; under CI both must be there."""
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        msg = "Playwright's Python client is not installed (pip install playwright; never 'playwright install')"
        pytest.fail(msg) if in_ci else pytest.skip(msg)
    if not CHROMIUM.is_file():
        msg = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)"
        pytest.fail(msg) if in_ci else pytest.skip(msg)


@pytest.fixture(scope="module")
def browser():
    """Module scope: Playwright's sync API allows one running instance per thread, so it stops before other modules
    (which may start their own)."""
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class Frontend:
    """One page of the server's web UI, with its console messages."""

    def __init__(self, page, server):
        self.page, self.server = page, server
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def open(self) -> "Frontend":
        # a returning user: no first-run template browser over the canvas (it would hide the screenshots)
        self.server.request("POST", "/settings/Comfy.TutorialCompleted", True)
        self.page.goto(self.server.url, wait_until="domcontentloaded", timeout=120_000)
        self.page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        self.page.wait_for_timeout(2000)  # extensions register after the graph exists
        self.page.keyboard.press("Escape")
        return self

    def version(self) -> str:
        return self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || 'unknown'")

    def load(self, workflow: dict) -> None:
        self.page.evaluate("async (w) => { await window.app.loadGraphData(w); }", workflow)
        self.page.wait_for_timeout(1500)

    def nodes(self) -> list[dict]:
        """Each node's frontend state: type known, error flags, bounding box, widgets with their options."""
        return self.page.evaluate(NODES_JS)

    def visible_problems(self) -> list[str]:
        """Texts of open dialogs and toasts that report missing nodes or errors."""
        return self.page.evaluate(PROBLEMS_JS)

    def prompt(self) -> dict:
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def set_widgets(self, by_type: dict) -> None:
        self.page.evaluate(SET_WIDGETS_JS, by_type)

    def node_errors(self):
        """The validation errors the server sent back for the last queued prompt (shown as red nodes)."""
        return self.page.evaluate("() => window.app.lastNodeErrors || null")

    def queue(self) -> None:
        self.page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")

    def queue_with_standins(self) -> None:
        """Queue as the user does; the prompt the frontend posts gets the tests' stand-in face over a MEMO talking
        head that drives HelloMeme (``comfy.standin_talking_head``: the stand-in MEMO draws no face), and a guarded
        MEMO sampler's loader its identity models back (``comfy.guarded_memo_identity``)."""
        def adapt(route, request):
            if request.method != "POST":
                return route.continue_()
            body = json.loads(request.post_data)
            body["prompt"] = guarded_memo_identity(standin_talking_head(body["prompt"]))
            route.continue_(post_data=json.dumps(body))

        self.page.route("**/prompt", adapt)
        try:
            self.queue()
        finally:
            self.page.unroute("**/prompt", adapt)


NODES_JS = """() => window.app.graph._nodes.map(n => {
    const linked = new Set((n.inputs || []).filter(i => i.link != null && i.widget).map(i => i.widget.name));
    const b = n.getBounding ? Array.from(n.getBounding()) : [n.pos[0], n.pos[1], n.size[0], n.size[1]];
    return {
        id: String(n.id), type: n.type, title: n.title, known: !!window.LiteGraph.registered_node_types[n.type],
        has_errors: !!n.has_errors, bound: b,
        widgets: (n.widgets || []).map(w => {
            let values = w.options && w.options.values;
            if (typeof values === "function") values = values();
            return {name: w.name, type: w.type, value: w.value, linked: linked.has(w.name),
                    hidden: !!(w.hidden || (w.options && w.options.hidden)),
                    min: w.options ? w.options.min : undefined, max: w.options ? w.options.max : undefined,
                    values: Array.isArray(values) ? values : null};
        }),
    };
})"""

PROBLEMS_JS = """() => Array.from(document.querySelectorAll(
        '.p-dialog, .comfy-modal, .p-toast-message, [role=dialog], [role=alert]'))
    .filter(e => e.offsetParent !== null || getComputedStyle(e).display !== 'none')
    .map(e => e.innerText.trim())
    .filter(t => /missing|error/i.test(t))"""

SET_WIDGETS_JS = """(byType) => { for (const n of window.app.graph._nodes) {
    const over = byType[n.type]; if (!over) continue;
    for (const w of n.widgets || []) if (w.name in over) { w.value = over[w.name]; if (w.callback) w.callback(w.value); }
} window.app.graph.setDirtyCanvas(true, true); }"""


@pytest.fixture(scope="module")
def frontend(browser, comfy_server):
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    yield Frontend(page, comfy_server).open()
    page.close()


def widget_problems(node: dict) -> list[str]:
    """Widget values the backend would reject or the user could not pick."""
    bad = []
    for w in node["widgets"]:
        if w["linked"] or w["type"] == "button":
            continue
        where = f"node {node['id']} ({node['type']}) widget {w['name']}={w['value']!r}"
        if w["type"] == "number" or isinstance(w["value"], (int, float)) and not isinstance(w["value"], bool):
            v = w["value"]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                bad.append(f"{where}: not a finite number")
                continue
            if w["min"] is not None and v < w["min"] or w["max"] is not None and v > w["max"]:
                bad.append(f"{where}: outside [{w['min']}, {w['max']}]")
        elif w["type"] == "combo" and w["values"] is not None and w["value"] not in w["values"]:
            bad.append(f"{where}: not one of {w['values'][:12]}")
    return bad


def overlaps(nodes: list[dict]) -> list[str]:
    out = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            ax, ay, aw, ah = a["bound"]
            bx, by, bw, bh = b["bound"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                out.append(f"{a['id']} ({a['title']}) and {b['id']} ({b['title']})")
    return out


def known_inputs(prompt: dict, object_info: dict) -> dict:
    """The prompt without the inputs its nodes do not declare, which the server ignores (the frontends add e.g. a
    video preview's state, ``video-preview``, to LoadVideo)."""
    sys.path.insert(0, str(ROOT / "tools"))
    import workflow_ui

    out = {}
    for nid, node in prompt.items():
        specs = workflow_ui.widget_specs(object_info[node["class_type"]])
        out[nid] = {**node, "inputs": {k: v for k, v in node["inputs"].items() if k in specs}}
    return out


def history_ids(server) -> set[str]:
    return set(server.get("/history"))


def wait_new_prompt(server, before: set[str], rejected=lambda: None, timeout: float = 600) -> dict:
    """The history entry of the prompt queued after ``before`` was taken, once it finished; stops early when
    ``rejected()`` returns the server's validation errors (the prompt never reaches the history then)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        new = set(server.get("/history")) - before
        if new:
            return server.wait(new.pop(), timeout=max(1.0, deadline - time.time()))
        errors = rejected()
        assert not errors, f"the server rejected the prompt the frontend queued: {json.dumps(errors)[:3000]}"
        time.sleep(0.5)
    raise TimeoutError(f"no prompt reached /history within {timeout}s:\n{server.log_tail()}")


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_loads_cleanly_and_runs_from_the_ui(frontend, comfy_server, path, tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import workflow_ui

    frontend.console.clear()
    frontend.load(json.loads(path.read_text()))
    shot = tmp_path / f"{comfy_version(comfy_server.comfy_path)}-{path.stem}.png"
    frontend.page.screenshot(path=str(shot))
    nodes = frontend.nodes()
    assert nodes, f"{path.name}: the frontend shows no nodes"
    assert not [n["type"] for n in nodes if not n["known"]], f"{path.name}: missing node types"
    assert not frontend.visible_problems(), f"{path.name}: {frontend.visible_problems()} (screenshot {shot})"
    assert not [n["id"] for n in nodes if n["has_errors"]], f"{path.name}: nodes flagged red (screenshot {shot})"
    bad = [p for n in nodes for p in widget_problems(n)]
    assert not bad, f"{path.name} ({frontend.version()}):\n" + "\n".join(bad)

    # the prompt the frontend builds is the API workflow
    info = comfy_server.get("/object_info")
    api = load_api_workflow(ROOT / "workflows" / "api" / path.name)
    built = known_inputs(frontend.prompt(), info)
    assert workflow_ui.same_graph(api, built, info), (
        f"{path.name}: the frontend ({frontend.version()}) builds a different prompt:\n"
        + "\n".join(f"{k}: {built.get(k, {}).get('inputs')} != {v['inputs']}" for k, v in api.items()
                    if built.get(k, {}).get("inputs") != v["inputs"]))

    # queued from the UI, with the CPU-speed settings typed into the widgets
    frontend.set_widgets(FAST_OVERRIDES)
    before = history_ids(comfy_server)
    frontend.queue_with_standins()
    entry = wait_new_prompt(comfy_server, before, rejected=frontend.node_errors)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    check_example_result(comfy_server, entry["prompt"][2], entry, path.stem)    # the prompt that ran
    pack_errors = [m for m in frontend.console if any(k in m.lower() for k in PACK_MARKERS)]
    assert not pack_errors, f"{path.name}: console errors from the pack: {pack_errors}"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_nodes_do_not_overlap(frontend, path):
    """Node boxes (title bar included) as the frontend lays them out after loading do not overlap."""
    frontend.load(json.loads(path.read_text()))
    found = overlaps(frontend.nodes())
    print(f"{path.stem}: {len(found)} overlapping pairs")
    assert not found, f"{path.name} ({frontend.version()}): overlapping nodes: {found}"


DIALOG_JS = """() => Array.from(document.querySelectorAll('.p-dialog, [role=dialog]'))
    .filter(e => e.offsetParent !== null).map(e => e.innerText.trim())"""


def test_error_dialog_is_titled_with_the_node_name(frontend, comfy_server):
    """A run that stops in a pack node (a picture without a face) names the node as shown on the canvas, never its
    class id: frontend 1.27 opens an error dialog titled with it, 1.49 a "<node> failed" notice whose details (the
    errors panel and its report) carry the name; both show the pack's plain error message."""
    from PIL import Image

    Image.new("RGB", (256, 256), (128, 140, 150)).save(comfy_server.input_dir / "no_face.png")
    frontend.load(json.loads((ROOT / "workflows" / "Face crop and paste back.json").read_text()))
    frontend.set_widgets({"LoadImage": {"image": "no_face.png"}})
    title = next(n for n in frontend.nodes() if n["type"] == "PortraitAnim_DetectFaceLandmarks")["title"]
    before = history_ids(comfy_server)
    frontend.queue()
    entry = wait_new_prompt(comfy_server, before, rejected=frontend.node_errors, timeout=120)
    assert entry["status"]["status_str"] == "error", entry["status"]
    try:
        frontend.page.wait_for_function(
            "(t) => document.body.innerText.includes(t + ' failed') || Array.from(document.querySelectorAll("
            "'.p-dialog, [role=dialog]')).some(e => e.offsetParent !== null && e.innerText.trim().startsWith(t))",
            arg=title, timeout=60_000)
        dialogs = [t for t in frontend.page.evaluate(DIALOG_JS) if "no face found" in t]
        if dialogs:  # frontend 1.27: the error dialog
            first, *rest = [line.strip() for line in dialogs[0].splitlines() if line.strip()]
            assert first == title, f"dialog titled {first!r}, not the node's name {title!r}"
            assert rest and "no face found" in rest[0], dialogs[0][:400]
        else:  # frontend 1.49: "<node> failed", then the errors panel with the report
            frontend.page.get_by_text("View details").first.click()
            frontend.page.wait_for_function("() => document.body.innerText.includes('no face found')", timeout=30_000)
            body = frontend.page.evaluate("() => document.body.innerText")
            assert f"Node Type:** {title}" in body or f"Node Type: {title}" in body, body[:2000]
        shown = frontend.page.evaluate("() => document.body.innerText").splitlines()
        # the class id may appear only inside the serialised workflow attached to 1.49's error report
        named = [line for line in shown if "PortraitAnim_" in line and not line.lstrip().startswith("{")]
        assert not named, named
    finally:
        frontend.page.keyboard.press("Escape")
        frontend.page.wait_for_timeout(500)
