"""tools/queue_batch.py without ComfyUI: job parsing and substitution, workflow checks, the whole upload / queue /
poll / download flow against a small fake ComfyUI HTTP server running in a thread, and starting / stopping a local
"ComfyUI" (a fake main.py serving that fake) when no --server is given."""
from __future__ import annotations

import email.parser
import email.policy
import importlib.util
import json
import os
import subprocess
import sys
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "queue_batch.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("queue_batch_under_test", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


qb = _load_tool()

WORKFLOW = {
    "10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}, "_meta": {"title": "Load Image"}},
    "11": {"class_type": "ImageInvert", "inputs": {"image": ["10", 0]}, "_meta": {"title": "Invert"}},
    "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "out"},
           "_meta": {"title": "Save Image"}},
    "13": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}, "_meta": {"title": "Preview"}},
}


@pytest.fixture
def wf(tmp_path) -> Path:
    path = tmp_path / "wf_api.json"
    path.write_text(json.dumps({"_comment": "top-level keys starting with _ are ignored", **WORKFLOW}))
    return path


def jobs_for(wf: Path, *argv: str):
    args = qb.parse_args([str(wf), *argv])
    graph = qb.load_workflow(wf)
    jobs = qb.build_jobs(graph, args)
    runner = qb.Runner(graph, args, qb.upload_names(jobs))
    return jobs, {j.name: runner.prompt_for(j, None) for j in jobs}


# ---- workflow checks and references ------------------------------------------------------------------------------
def test_ui_format_is_rejected_with_export_hint(tmp_path):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"last_node_id": 3, "nodes": [{"id": 1, "type": "LoadImage"}], "links": [],
                              "version": 0.4}))
    with pytest.raises(qb.UsageError, match=r"UI-format.*Export \(API\)"):
        qb.load_workflow(ui)
    # and from the command line, standalone (the tool must not import the pack): exit status 2, message on stderr
    proc = subprocess.run([sys.executable, str(TOOL), str(ui), "--dry-run"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Export (API)" in proc.stderr and proc.stdout == ""


def test_non_api_workflow_is_rejected(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"inputs": {}}}))
    with pytest.raises(qb.UsageError, match="not an API-format workflow"):
        qb.load_workflow(bad)
    bad.write_text("{not json")
    with pytest.raises(qb.UsageError, match="cannot read workflow"):
        qb.load_workflow(bad)


def test_references_by_id_title_and_class_type():
    graph = json.loads(json.dumps(WORKFLOW))
    assert qb.resolve_ref(graph, "10.image") == qb.Ref("10", "image")
    assert qb.resolve_ref(graph, "Load Image.image") == qb.Ref("10", "image")
    assert qb.resolve_ref(graph, "SaveImage.filename_prefix") == qb.Ref("12", "filename_prefix")
    with pytest.raises(qb.UsageError, match=r"no node .*'Load Imag'.*10 \(Load Image\)"):
        qb.resolve_ref(graph, "Load Imag.image")
    with pytest.raises(qb.UsageError, match=r"node 10 \(LoadImage\) has no input 'imag'; its inputs: image"):
        qb.resolve_ref(graph, "10.imag")
    with pytest.raises(qb.UsageError, match="NODE.INPUT"):
        qb.resolve_ref(graph, "image")
    graph["13"]["_meta"]["title"] = "Invert"
    with pytest.raises(qb.UsageError, match="several nodes"):
        qb.resolve_ref(graph, "Invert.images")


def test_jobs_file_substitution_by_id_and_title(wf, tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "harris.jpg").write_bytes(b"jpeg")
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps([
        {"name": "harris", "set": {"Load Image.image": "media/harris.jpg", "12.filename_prefix": "h"}},
        {"name": "remote", "10.image": "already_on_server.png", "Save Image.filename_prefix": "r"},
    ]))
    jobs, prompts = jobs_for(wf, "--jobs", str(jobs_file), "--set", "Save Image.filename_prefix=all")
    assert [j.name for j in jobs] == ["harris", "remote"]
    # a local media file (relative to the jobs file) becomes an upload; the prompt carries the uploaded name
    assert jobs[0].settings[qb.Ref("10", "image")] == qb.Upload((tmp_path / "media" / "harris.jpg").resolve())
    assert prompts["harris"]["10"]["inputs"]["image"] == "harris.jpg"
    assert prompts["remote"]["10"]["inputs"]["image"] == "already_on_server.png"
    # --set applies to every job, over the job's own values; other nodes are untouched
    assert {p["12"]["inputs"]["filename_prefix"] for p in prompts.values()} == {"all"}
    assert prompts["harris"]["11"] == WORKFLOW["11"] and "_comment" not in prompts["harris"]


def test_jsonl_and_csv_jobs(wf, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"name": "x", "set": {"12.filename_prefix": "px"}}\n\n'
                                      '{"12.filename_prefix": "py"}\n')
    (tmp_path / "b.csv").write_text("name,Save Image.filename_prefix,10.image\nc1,pc,\nc2,42,in.png\n")
    jobs, prompts = jobs_for(wf, "--jobs", str(tmp_path / "a.jsonl"))
    assert [j.name for j in jobs] == ["x", "job2"]
    assert prompts["job2"]["12"]["inputs"]["filename_prefix"] == "py"
    jobs, prompts = jobs_for(wf, "--jobs", str(tmp_path / "b.csv"))
    assert prompts["c1"]["10"]["inputs"]["image"] == "example.png"  # empty cell: left alone
    assert prompts["c2"]["12"]["inputs"]["filename_prefix"] == 42 and prompts["c2"]["10"]["inputs"]["image"] == "in.png"


def test_media_and_seeds_product_and_zip(wf, tmp_path):
    for n in ("a.png", "b.png"):
        (tmp_path / n).write_bytes(n.encode())
    media = ["--media", "Load Image.image", str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    jobs, prompts = jobs_for(wf, *media, "--seeds", "12.filename_prefix", "1", "2", "3")
    assert [j.name for j in jobs] == ["a_seed1", "a_seed2", "a_seed3", "b_seed1", "b_seed2", "b_seed3"]
    assert prompts["b_seed3"]["10"]["inputs"]["image"] == "b.png"
    assert prompts["b_seed3"]["12"]["inputs"]["filename_prefix"] == 3
    jobs, prompts = jobs_for(wf, *media, "--seeds", "12.filename_prefix", "7", "8", "--combine", "zip")
    assert [(p["10"]["inputs"]["image"], p["12"]["inputs"]["filename_prefix"]) for p in prompts.values()] == \
        [("a.png", 7), ("b.png", 8)]
    with pytest.raises(qb.UsageError, match="equal length"):
        jobs_for(wf, *media, "--seeds", "12.filename_prefix", "1", "2", "3", "--combine", "zip")
    with pytest.raises(qb.UsageError, match="has no input 'seed'"):
        jobs_for(wf, "--seeds", "12.seed", "1")


def test_same_file_name_from_two_folders_gets_distinct_upload_names(wf, tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "face.png").write_bytes(d.encode())
    jobs, prompts = jobs_for(wf, "--media", "10.image", str(tmp_path / "x/face.png"), str(tmp_path / "y/face.png"),
                             "--subfolder", "batch")
    assert [j.name for j in jobs] == ["face", "face-2"]
    names = [p["10"]["inputs"]["image"] for p in prompts.values()]
    assert names[0] == "batch/face.png" and names[1].startswith("batch/face-") and names[1].endswith(".png")


def test_dry_run_prints_prompts_and_contacts_nobody(wf, tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"a")
    rc = qb.main([str(wf), "--media", "10.image", str(tmp_path / "a.png"), "--server", "http://127.0.0.1:9",
                  "--dry-run"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["name"] == "a" and out[0]["prompt"]["10"]["inputs"]["image"] == "a.png"
    assert out[0]["uploads"] == {"a.png": str((tmp_path / "a.png").resolve())}


def test_validation_error_is_summarised():
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
            "node_errors": {"10": {"class_type": "LoadImage", "errors": [
                {"message": "Custom validation failed for node", "details": "image - Invalid image file: x.png"}]}}}
    msg = qb.format_validation_error(body)
    assert msg.startswith("Prompt outputs failed validation; node 10 (LoadImage): Custom validation failed")
    assert "Invalid image file: x.png" in msg


# ---- the whole flow against a fake server --------------------------------------------------------------------------
class FakeComfy:
    """Enough of ComfyUI's HTTP API: /system_stats, /upload/image, /prompt (LoadImage must name an uploaded file, else
    400 with node_errors), /history/{id} (empty on the first poll; prefix "boom" ends in execution_error), /view,
    /queue, /interrupt, /object_info/{type} and, when ``replacements`` is set, /node_replacements. No /ws, so the
    tool must poll."""

    def __init__(self, port: int = 0):
        self.uploads: dict[str, bytes] = {}
        self.prompts: dict[str, dict] = {}
        self.history: dict[str, dict] = {}
        self.files: dict[tuple, bytes] = {}
        self.polls: dict[str, int] = {}
        self.running = self.max_running = 0
        self.hold = False  # True: prompts never finish
        self.replacements: dict | None = None  # GET /node_replacements (None: 404, a server before ComfyUI 0.33)
        self.infos: dict[str, dict] = {}  # GET /object_info/{type} for these types (others: no inputs)
        self.cancels: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status, body):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
                if url.path == "/system_stats":
                    return self.reply(200, {"system": {}})
                if url.path == "/node_replacements" and fake.replacements is not None:
                    return self.reply(200, fake.replacements)
                if url.path.startswith("/object_info/"):  # every node type except the replaced ones
                    name = urllib.parse.unquote(url.path.split("/", 2)[2])
                    return self.reply(200, {} if name in (fake.replacements or {}) else
                                      {name: fake.infos.get(name, {"input": {}})})
                if url.path.startswith("/history/"):
                    return self.reply(200, fake.poll(url.path.rsplit("/", 1)[1]))
                if url.path == "/view":
                    data = fake.files.get((q.get("type"), q.get("subfolder"), q.get("filename")))
                    return self.reply(200, data) if data is not None else self.reply(404, b"")
                self.reply(404, b"not found")

            def do_POST(self):
                if self.path == "/upload/image":
                    return self.reply(200, fake.upload(self.headers["Content-Type"], self.body()))
                if self.path == "/prompt":
                    return self.reply(*fake.queue(json.loads(self.body())))
                if self.path in ("/queue", "/interrupt"):
                    fake.cancels.append((self.path, json.loads(self.body())))
                    return self.reply(200, {})
                self.reply(404, b"not found")

        return Handler

    def upload(self, ctype: str, body: bytes) -> dict:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body)
        fields, name, data = {}, None, None
        for part in msg.iter_parts():
            key = part.get_param("name", header="content-disposition")
            if part.get_filename():
                name, data = part.get_filename(), part.get_payload(decode=True)
            else:
                fields[key] = part.get_payload(decode=True).decode()
        assert fields["type"] == "input" and fields["overwrite"] == "true"
        sub = fields.get("subfolder", "")
        self.uploads[f"{sub}/{name}" if sub else name] = data
        return {"name": name, "subfolder": sub, "type": "input"}

    def queue(self, body: dict) -> tuple[int, dict]:
        prompt = body["prompt"]
        assert body.get("client_id")
        image = prompt["10"]["inputs"]["image"]
        if image not in self.uploads:
            return 400, {"error": {"type": "prompt_outputs_failed_validation",
                                   "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
                         "node_errors": {"10": {"class_type": "LoadImage", "dependent_outputs": ["12"], "errors": [
                             {"type": "custom_validation_failed", "message": "Custom validation failed for node",
                              "details": f"image - Invalid image file: {image}", "extra_info": {}}]}}}
        pid = uuid.uuid4().hex
        with self.lock:
            self.prompts[pid] = prompt
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        return 200, {"prompt_id": pid, "number": len(self.prompts), "node_errors": {}}

    def poll(self, pid: str) -> dict:
        with self.lock:
            self.polls[pid] = self.polls.get(pid, 0) + 1
            if self.polls[pid] == 1 or self.hold:  # still running
                return {}
            if pid not in self.history:
                self.running -= 1
                self.history[pid] = self.finish(pid, self.prompts[pid])
            return {pid: self.history[pid]}

    def finish(self, pid: str, prompt: dict) -> dict:
        prefix = prompt["12"]["inputs"]["filename_prefix"]
        if prefix == "boom":
            return {"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": [
                ["execution_start", {"prompt_id": pid}],
                ["execution_error", {"prompt_id": pid, "node_id": "11", "node_type": "ImageInvert",
                                     "exception_type": "RuntimeError", "exception_message": "boom\n"}]]}}
        pixels, n = self.uploads[prompt["10"]["inputs"]["image"]], len(self.history) + 1  # counters, like SaveImage
        image = {"filename": f"{prefix}_{n:05}_.png", "subfolder": "", "type": "output"}
        video = {"filename": f"{prefix}_{n:05}.mp4", "subfolder": "vids", "type": "output", "format": "video/h264-mp4"}
        preview = {"filename": f"{prefix}_temp_{n:05}.png", "subfolder": "", "type": "temp"}
        for item, tag in ((image, b"inverted:"), (video, b"video:"), (preview, b"preview:")):
            self.files[(item["type"], item["subfolder"], item["filename"])] = tag + pixels
        return {"prompt": [1, pid, prompt, {}, ["12"]],
                "outputs": {"12": {"images": [image], "gifs": [video], "animated": [False], "text": ["hi"]},
                            "13": {"images": [preview]}},
                "status": {"status_str": "success", "completed": True, "messages": []}}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fakes():
    servers = [FakeComfy(), FakeComfy()]
    yield servers
    for s in servers:
        s.close()


def test_batch_uploads_queues_polls_downloads_and_reports_failures(wf, tmp_path, fakes, capsys):
    media = []
    for n in ("harris", "dicaprio", "source"):
        media.append(tmp_path / f"{n}.png")
        media[-1].write_bytes(f"pixels of {n}".encode())
    (tmp_path / "jobs.json").write_text(json.dumps([{"name": "exploding", "set": {
        "10.image": "harris.png", "Save Image.filename_prefix": "boom"}}]))
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    argv = [str(wf), "--media", "Load Image.image", *map(str, media), "missing.png",
            "--set", "Save Image.filename_prefix=res", "--subfolder", "qb", "--out", str(out),
            "--summary", str(summary), "--max-in-flight", "2", "--poll-interval", "0.05", "--no-websocket"]
    for fake in fakes:
        argv += ["--server", fake.url]
    assert qb.main(argv) == 1  # some job failed
    assert qb.main([str(wf), "--jobs", str(tmp_path / "jobs.json"), "--server", fakes[0].url, "--out", str(out),
                    "--poll-interval", "0.05", "--no-websocket"]) == 1
    printed = capsys.readouterr().out

    report = json.loads(summary.read_text())
    jobs = {j["name"]: j for j in report["jobs"]}
    assert list(jobs) == ["harris", "dicaprio", "source", "missing"]
    assert (report["succeeded"], report["failed"]) == (3, 1)
    failed = jobs["missing"]
    assert failed["status"] == "failed" and failed["prompt_id"] is None
    assert "node 10 (LoadImage)" in failed["error"] and "Invalid image file: missing.png" in failed["error"]
    for name in ("harris", "dicaprio", "source"):
        job = jobs[name]
        assert job["status"] == "success" and job["error"] is None and job["duration"] > 0
        assert job["server"] in {f.url for f in fakes} and job["prompt_id"]
        pixels = f"pixels of {name}".encode()
        got = {Path(p).relative_to(out / name).parent.as_posix(): Path(p) for p in job["outputs"]}
        assert len(got) == len(job["outputs"]) == 3 and set(got) == {".", "vids", "temp"}
        assert got["."].name.startswith("res_") and got["."].read_bytes() == b"inverted:" + pixels
        assert got["vids"].suffix == ".mp4" and got["vids"].read_bytes() == b"video:" + pixels
        assert got["temp"].read_bytes() == b"preview:" + pixels
    # uploaded names were substituted (with the subfolder); each server got only the files of its own jobs
    queued = [p for f in fakes for p in f.prompts.values()]
    assert sorted(p["10"]["inputs"]["image"] for p in queued) == \
        ["harris.png", "qb/dicaprio.png", "qb/harris.png", "qb/source.png"]  # the last run had no --subfolder
    for fake in fakes:
        assert all(k.startswith("qb/") or k == "harris.png" for k in fake.uploads)
        assert fake.max_running <= 2
    assert all(f.prompts for f in fakes), "jobs were not spread over both servers"
    # the execution error of the second run
    assert "[exploding] failed" in printed and "execution error in node 11 (ImageInvert): RuntimeError: boom" in printed


def test_websocket_missing_falls_back_to_polling(wf, tmp_path, fakes, capsys):
    (tmp_path / "a.png").write_bytes(b"a")
    rc = qb.main([str(wf), "--media", "10.image", str(tmp_path / "a.png"), "--server", fakes[0].url,
                  "--out", str(tmp_path / "out"), "--poll-interval", "0.05"])
    assert rc == 0, capsys.readouterr()
    assert (tmp_path / "out" / "a" / "out_00001_.png").read_bytes() == b"inverted:a"  # first prompt on that server
    if qb.websocket is not None:
        assert "polling /history" in capsys.readouterr().err


def test_timeout_cancels_the_prompt(wf, tmp_path, fakes, capsys):
    (tmp_path / "a.png").write_bytes(b"a")
    fakes[0].hold = True
    rc = qb.main([str(wf), "--media", "10.image", str(tmp_path / "a.png"), "--server", fakes[0].url, "--timeout", "0.3",
                  "--out", str(tmp_path / "out"), "--poll-interval", "0.05", "--no-websocket"])
    assert rc == 1 and "timed out after 0.3s" in capsys.readouterr().out
    (pid,) = fakes[0].prompts
    assert fakes[0].cancels == [("/queue", {"delete": [pid]}), ("/interrupt", {"prompt_id": pid})]


def test_old_node_ids_that_the_server_replaces_are_sent_as_the_new_node(tmp_path, fakes, capsys):
    """What the editor's "Replace" does, for an API workflow: a pure rename keeps every input; a mapped replacement
    gets its mapped inputs (old_id moves a value or link, set_value sets one), the new node's defaults for the widget
    inputs still missing (required and optional), and its output links renumbered. --set may name an old input."""
    graph = json.loads(json.dumps(WORKFLOW))
    graph["11"]["class_type"] = "OldInvert"  # a pure rename
    graph["13"] = {"class_type": "OldPreview", "inputs": {"pictures": ["11", 0], "dropped": 3, "gain": 2},
                   "_meta": {"title": "Preview"}}
    graph["14"] = {"class_type": "OldSplit", "inputs": {"image": ["10", 0]}, "_meta": {"title": "Split"}}
    graph["15"] = {"class_type": "SaveImage", "inputs": {"images": ["14", 1], "filename_prefix": "r"}}
    graph["16"] = {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": "g"}}
    wf = tmp_path / "old_ids.json"
    wf.write_text(json.dumps(graph))
    fakes[0].replacements = {
        "OldInvert": [{"new_node_id": "ImageInvert", "old_node_id": "OldInvert", "old_widget_ids": None,
                       "input_mapping": None, "output_mapping": None}],
        "OldPreview": [{"new_node_id": "PreviewPlus", "old_node_id": "OldPreview", "old_widget_ids": ["dropped"],
                        "input_mapping": [{"new_id": "images", "old_id": "pictures"},
                                          {"new_id": "strength", "old_id": "gain"},
                                          {"new_id": "mode", "set_value": "fast"}], "output_mapping": None}],
        "OldSplit": [{"new_node_id": "Split", "old_node_id": "OldSplit", "old_widget_ids": None,
                      "input_mapping": [{"new_id": "image", "old_id": "image"}],
                      "output_mapping": [{"old_idx": 1, "new_idx": 0}]}]}
    fakes[0].infos["PreviewPlus"] = {"input": {
        "required": {"images": ["IMAGE"], "strength": ["FLOAT", {"default": 1.0}], "mode": [["slow", "fast"]],
                     "size": ["INT", {"default": 64, "min": 8}], "style": ["COMBO", {"options": ["a", "b"]}]},
        "optional": {"mask": ["MASK"], "label": ["STRING", {"default": "hi"}],
                     "value": ["FLOAT", {"default": 0.5, "forceInput": True}]}}}
    fakes[0].infos["Split"] = {"input": {"required": {"image": ["IMAGE"]}}}
    (tmp_path / "a.png").write_bytes(b"a")
    (tmp_path / "b.png").write_bytes(b"b")
    common = ["--media", "10.image", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out", str(tmp_path / "out"),
              "--poll-interval", "0.05", "--no-websocket", "--set", "13.gain=4"]
    assert qb.main([str(wf), *common, "--server", fakes[0].url]) == 0
    queued = list(fakes[0].prompts.values())
    assert len(queued) == 2
    for prompt in queued:
        assert prompt["11"] == {**WORKFLOW["11"], "class_type": "ImageInvert"}
        assert prompt["13"] == {"class_type": "PreviewPlus", "_meta": {"title": "Preview"}, "inputs": {
            "images": ["11", 0], "strength": 4, "mode": "fast", "size": 64, "style": "a", "label": "hi"}}
        assert prompt["14"] == {"class_type": "Split", "inputs": {"image": ["10", 0]}, "_meta": {"title": "Split"}}
        assert prompt["15"]["inputs"]["images"] == ["14", 0]  # old output 1 is the new output 0
        assert "images" not in prompt["16"]["inputs"]  # old output 0 is not mapped: the server names the gap
    err = capsys.readouterr().err
    assert err.count("'OldInvert', an old id") == 1 and err.count("'OldPreview', an old id") == 1
    assert err.count("that node's defaults for the others") == 2  # the mapped rows, not the rename
    # a server without the replacement API gets the workflow as it is
    assert qb.main([str(wf), *common, "--server", fakes[1].url]) == 0
    assert {p["11"]["class_type"] for p in fakes[1].prompts.values()} == {"OldInvert"}
    assert {p["13"]["inputs"]["gain"] for p in fakes[1].prompts.values()} == {4}


def test_no_server_answers(wf, tmp_path, capsys):
    rc = qb.main([str(wf), "--server", "127.0.0.1:9", "--out", str(tmp_path)])
    assert rc == 2 and "no ComfyUI server answered" in capsys.readouterr().err


# ---- a ComfyUI started by the tool (a fake install whose main.py serves FakeComfy) ---------------------------------
FAKE_MAIN = """\
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
mode = os.environ.get("FAKE_COMFY_MODE", "serve")
print("fake ComfyUI starting", flush=True)
if mode == "crash":
    print("ModuleNotFoundError: No module named 'torch'", flush=True)
    sys.exit(3)
argv = sys.argv[1:]
Path(os.environ["FAKE_COMFY_RECORD"]).write_text(json.dumps(
    {{"argv": argv, "cwd": os.getcwd(), "pid": os.getpid(), "python": os.environ.get("FAKE_COMFY_PYTHON")}}))
if mode == "hang":
    time.sleep(600)
from test_queue_batch import FakeComfy
FakeComfy(port=int(argv[argv.index("--port") + 1]))
print("To see the GUI go to: http://127.0.0.1", flush=True)
while True:
    time.sleep(1)
"""

posix_only = pytest.mark.skipif(os.name != "posix", reason="the fake install's python is a shell script")


def fake_install(root: Path) -> Path:
    """A ComfyUI-like folder: main.py (the fake server), a .venv/bin/python that marks itself in the environment and
    runs this interpreter, and custom_nodes/<pack> -> the repository (a symlink, as after a user's clone)."""
    (root / "custom_nodes").mkdir(parents=True)
    (root / "main.py").write_text(FAKE_MAIN.format(tests=str(Path(__file__).parent)))
    py = root / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(f'#!/bin/sh\nFAKE_COMFY_PYTHON="$0" exec "{sys.executable}" "$@"\n')
    py.chmod(0o755)
    (root / "custom_nodes" / "my_pack").symlink_to(ROOT, target_is_directory=True)
    return root


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def comfy_env(tmp_path, monkeypatch):
    """No inherited COMFYUI_PATH / COMFYUI_PYTHON; the fake server records how it was started here."""
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.delenv("COMFYUI_PYTHON", raising=False)
    record = tmp_path / "started.json"
    monkeypatch.setenv("FAKE_COMFY_RECORD", str(record))
    return record


@posix_only
def test_started_from_the_install_the_pack_sits_in_and_stopped_after(wf, tmp_path, comfy_env):
    comfy = fake_install(tmp_path / "ComfyUI")
    (tmp_path / "a.png").write_bytes(b"a")
    tool = comfy / "custom_nodes" / "my_pack" / "tools" / "queue_batch.py"  # through the symlink, as a user runs it
    proc = subprocess.run([sys.executable, str(tool), str(wf), "--media", "10.image", "a.png", "--out", "out",
                           "--poll-interval", "0.05", "--no-websocket", "--cpu", "--comfy-args", "--lowvram",
                           "--preview-method", "none"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "out" / "a" / "out_00001_.png").read_bytes() == b"inverted:a"
    started = json.loads(comfy_env.read_text())
    assert started["python"] == str(comfy / ".venv" / "bin" / "python")  # the install's own interpreter
    assert Path(started["cwd"]).resolve() == comfy.resolve()
    argv = started["argv"]
    port = argv[argv.index("--port") + 1]
    assert argv[argv.index("--listen") + 1] == "127.0.0.1" and port.isdigit()
    assert argv[-4:] == ["--cpu", "--lowvram", "--preview-method", "none"]  # --cpu, then --comfy-args verbatim
    log_path = (tmp_path / "out" / "comfyui_server.log").resolve()
    assert f"(log: {log_path})" in proc.stdout and f"http://127.0.0.1:{port}" in proc.stdout
    assert "fake ComfyUI starting" in log_path.read_text()
    assert "stopping ComfyUI" in proc.stdout and gone(started["pid"])


@posix_only
def test_comfyui_path_and_comfyui_python_choose_the_install(wf, tmp_path, comfy_env, monkeypatch, capsys):
    comfy = fake_install(tmp_path / "elsewhere")
    other_python = tmp_path / "py" / "python"
    other_python.parent.mkdir()
    other_python.write_text((comfy / ".venv" / "bin" / "python").read_text())
    other_python.chmod(0o755)
    monkeypatch.setenv("COMFYUI_PATH", f"{comfy}{os.pathsep}{tmp_path / 'second'}")  # a list, as the tests use: 1st
    monkeypatch.setenv("COMFYUI_PYTHON", str(other_python))
    (tmp_path / "a.png").write_bytes(b"a")
    rc = qb.main([str(wf), "--media", "10.image", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"),
                  "--poll-interval", "0.05", "--no-websocket"])
    assert rc == 0, capsys.readouterr()
    started = json.loads(comfy_env.read_text())
    assert started["python"] == str(other_python) and Path(started["cwd"]) == comfy
    assert "--cpu" not in started["argv"] and gone(started["pid"])
    # --comfyui wins over COMFYUI_PATH, and a folder without main.py is refused before anything starts
    capsys.readouterr()
    assert qb.main([str(wf), "--comfyui", str(tmp_path / "py"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--comfyui names {tmp_path / 'py'}, which has no ComfyUI main.py" in err


@posix_only
def test_a_server_that_does_not_start_is_reported_with_its_log(wf, tmp_path, comfy_env, monkeypatch, capsys):
    comfy = fake_install(tmp_path / "ComfyUI")
    monkeypatch.setenv("FAKE_COMFY_MODE", "crash")
    rc = qb.main([str(wf), "--comfyui", str(comfy), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "exited with status 3 before it answered" in err
    assert "No module named 'torch'" in err and str(tmp_path / "out" / "comfyui_server.log") in err

    monkeypatch.setenv("FAKE_COMFY_MODE", "hang")  # up, but never answering
    rc = qb.main([str(wf), "--comfyui", str(comfy), "--out", str(tmp_path / "out"), "--start-timeout", "2"])
    assert rc == 2 and "did not answer" in capsys.readouterr().err
    assert gone(json.loads(comfy_env.read_text())["pid"])


@posix_only
def test_ctrl_c_during_the_run_stops_the_server(wf, tmp_path, comfy_env, monkeypatch):
    comfy = fake_install(tmp_path / "ComfyUI")

    def interrupted(runner, servers, jobs):
        raise KeyboardInterrupt

    monkeypatch.setattr(qb, "run_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        qb.main([str(wf), "--comfyui", str(comfy), "--out", str(tmp_path / "out")])
    assert gone(json.loads(comfy_env.read_text())["pid"])


def test_no_install_to_start(wf, tmp_path, comfy_env, capsys):
    # the repository checkout is not inside a ComfyUI/custom_nodes folder, and nothing else names one
    assert ROOT.parent.name != "custom_nodes"
    rc = qb.main([str(wf), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "no ComfyUI to start" in err and "--server URL" in err
    with pytest.raises(SystemExit):  # options for a started server make no sense with --server
        qb.parse_args([str(wf), "--server", "http://127.0.0.1:9", "--cpu"])
