#!/usr/bin/env python3
"""Run an API-format workflow for a batch of inputs on one or more ComfyUI servers and download the results.

    python tools/queue_batch.py WORKFLOW.json [options] [--comfy-args ARG...]     (the workflow comes first)

WORKFLOW.json must be in API format (in ComfyUI: Workflow > Export (API)). Each job is that workflow with some
inputs replaced. An input is named NODE.INPUT: NODE is a node id ("12"), its title (``_meta.title``, e.g.
"Load Image") or a class_type that occurs once.

Jobs come from any mix of these sources, combined as a cross product (default) or pairwise (``--combine zip``:
the sources must have the same length, or length 1):
  --jobs FILE                   JSON list, JSONL or CSV. JSON/JSONL entries look like
                                {"name": "harris", "set": {"12.image": "harris.jpg", "3.seed": 42}}
                                (the inputs may also sit beside "name" without "set"); CSV: a "name" column and one
                                column per input, empty cells are left alone.
  --media NODE.INPUT FILE...    one job per file (repeatable)
  --seeds NODE.INPUT N...       one job per value (repeatable)
  --set NODE.INPUT=VALUE        applied to every job, after (so over) the job's own values (repeatable)
VALUEs from the command line and CSV cells are parsed as JSON when they parse (42, 1.5, true), else kept as text.

Uploads: every --media file that exists here, and every job value naming an existing local image/video/audio file
(relative to the jobs file's folder for --jobs, else to the current folder), is sent to each server with
POST /upload/image (type=input, overwrite=true, --subfolder) and replaced by its uploaded name. Other values are
sent as they are, e.g. the name of a file already in the server's input folder.

Servers: without --server the tool starts the ComfyUI it is installed in (this file lives in
ComfyUI/custom_nodes/<pack>/tools/), or the one in --comfyui DIR / $COMFYUI_PATH, headless on a free loopback port with
that install's Python ($COMFYUI_PYTHON, else its .venv/venv/python_embeded, else this interpreter); --cpu and the
arguments after --comfy-args go to its main.py. Its log is written to --out DIR/comfyui_server.log, and it is stopped
when the jobs are done, on an error or on Ctrl-C. With --server the tool uses servers that are already running.

Old node ids: a node whose class_type the server no longer runs but lists in its node replacements
(GET /node_replacements, ComfyUI 0.33+: the pack's renamed ids and other packs' nodes it replaces) is sent as the new
node, as the editor's "Replace" does: the mapped inputs, the new node's defaults (GET /object_info) for the others,
links from its outputs renumbered; NODE.INPUT may name the old input. The server's own rewrite keeps only the mapped
inputs and fails with "required input missing".

Jobs are spread over the --server URLs (each takes the next job when one of its --max-in-flight slots is free);
progress comes over the WebSocket (websocket-client), or by polling /history when that is missing or drops. The
files in each finished prompt's outputs are saved under --out DIR/<job name>/ (non-"output" types under a folder
named after the type). The quality metric nodes' JSON summaries (Portrait Animation/Metrics) are printed and, with
--summary, listed under each job's "metrics" (node id, title, metric, mean, per-frame values...).

Examples:
    python custom_nodes/<pack>/tools/queue_batch.py wf_api.json --media "Load Image.image" in/*.jpg --out results
    python tools/queue_batch.py wf_api.json --media 12.image a.png --comfyui ~/ComfyUI --cpu --comfy-args --lowvram
    python tools/queue_batch.py wf_api.json --jobs jobs.json --seeds KSampler.seed 1 2 3 --set 9.filename_prefix=b \\
        --server http://gpu1:8188 --server http://gpu2:8188 --max-in-flight 2 --summary summary.json
    python tools/queue_batch.py wf_api.json --media 12.image a.png b.png --dry-run

Exit status: 0 when every job succeeded, 1 when some job failed, 2 for bad arguments or workflow, no server, or a
ComfyUI that did not start; 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import mimetypes
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    import websocket  # websocket-client, optional
except ImportError:
    websocket = None

MEDIA_SUFFIXES = {".mkv", ".webm", ".flac", ".opus", ".ogg", ".m4a", ".exr"}  # where mimetypes may not know them
_print_lock = threading.Lock()


def log(msg: str, file=None) -> None:
    """Progress goes to stdout, notes and warnings (``file=sys.stderr``) to stderr."""
    with _print_lock:
        print(msg, file=file or sys.stdout, flush=True)


class UsageError(Exception):
    """Bad workflow, jobs file or option (exit status 2)."""


class JobFailed(Exception):
    """One job failed; the others go on."""


# ---- workflow and input references ------------------------------------------------------------------------------
def load_workflow(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read workflow {path}: {e}") from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise UsageError(f"{path} is a UI-format workflow (it has 'nodes' and 'links'), but the server only runs the "
                         "API format: open it in ComfyUI and save it with Workflow > Export (API)")
    graph = {k: v for k, v in data.items() if not k.startswith("_")} if isinstance(data, dict) else {}
    bad = [k for k, v in graph.items() if not (isinstance(v, dict) and "class_type" in v
                                               and isinstance(v.get("inputs"), dict))]
    if not graph or bad:
        raise UsageError(f"{path} is not an API-format workflow (expected {{node id: {{class_type, inputs}}}}; "
                         f"bad entries: {bad[:5]})")
    return graph


@dataclass(frozen=True)
class Ref:
    node: str
    input: str


def find_node(graph: dict, key: str) -> str:
    if key in graph:
        return key
    for get in (lambda n: n.get("_meta", {}).get("title"), lambda n: n["class_type"]):
        hits = [nid for nid, node in graph.items() if get(node) == key]
        if len(hits) > 1:
            raise UsageError(f"{key!r} matches several nodes ({', '.join(hits)}): use a node id")
        if hits:
            return hits[0]
    known = ", ".join(f"{nid} ({n.get('_meta', {}).get('title') or n['class_type']})" for nid, n in graph.items())
    raise UsageError(f"no node with id, title or class_type {key!r}; the workflow has: {known}")


def resolve_ref(graph: dict, ref: str) -> Ref:
    node_key, dot, name = ref.rpartition(".")
    if not (dot and node_key and name):
        raise UsageError(f"bad input reference {ref!r}: use NODE.INPUT, e.g. 12.image or 'Load Image.image'")
    node = find_node(graph, node_key)
    if name not in graph[node]["inputs"]:
        raise UsageError(f"node {node} ({graph[node]['class_type']}) has no input {name!r}; "
                         f"its inputs: {', '.join(sorted(graph[node]['inputs']))}")
    return Ref(node, name)


# ---- jobs ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upload:
    """A local file to upload; the job's value becomes the uploaded name."""
    path: Path


@dataclass
class Part:
    name: str
    values: dict[str, Any]


@dataclass
class Job:
    name: str
    settings: dict[Ref, Any]


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def is_media(path: Path) -> bool:
    kind = mimetypes.guess_type(path.name)[0] or ""
    return kind.startswith(("image/", "video/", "audio/")) or path.suffix.lower() in MEDIA_SUFFIXES


def local_value(value: Any, base: Path, force: bool = False) -> Any:
    if isinstance(value, str) and value:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if path.is_file() and (force or is_media(path)):
            return Upload(path.resolve())
    return value


def read_jobs_file(path: Path) -> list[Part]:
    try:
        text = path.read_text()
        if path.suffix.lower() == ".csv":
            entries = [{k: parse_value(v) for k, v in row.items() if k and v not in ("", None)}
                       for row in csv.DictReader(io.StringIO(text))]
        elif path.suffix.lower() == ".jsonl":
            entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            entries = json.loads(text)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read jobs file {path}: {e}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError(f"jobs file {path} must hold a list of objects like {{\"name\": ..., \"set\": {{...}}}}")
    parts = []
    for i, entry in enumerate(entries, 1):
        values = entry.get("set", {k: v for k, v in entry.items() if k != "name"})
        if not isinstance(values, dict):
            raise UsageError(f"jobs file {path}, job {i}: 'set' must be an object of NODE.INPUT: value")
        base = path.parent
        parts.append(Part(str(entry.get("name") or f"job{i}"), {k: local_value(v, base) for k, v in values.items()}))
    return parts


def media_parts(spec: list[str]) -> list[Part]:
    if len(spec) < 2:
        raise UsageError("--media needs NODE.INPUT and at least one file")
    parts = []
    for name in spec[1:]:
        value = local_value(name, Path.cwd(), force=True)
        if not isinstance(value, Upload):
            log(f"note: {name} is not a local file; sending it as a name in the server's input folder", sys.stderr)
        parts.append(Part(Path(name).stem, {spec[0]: value}))
    return parts


def seed_parts(spec: list[str]) -> list[Part]:
    if len(spec) < 2:
        raise UsageError("--seeds needs NODE.INPUT and at least one value")
    return [Part(f"seed{v}", {spec[0]: parse_value(v)}) for v in spec[1:]]


def combine(axes: list[list[Part]], mode: str) -> list[Part]:
    if not axes:
        return [Part("job", {})]
    if mode == "zip":
        n = max(len(a) for a in axes)
        if any(len(a) not in (1, n) for a in axes):
            raise UsageError(f"--combine zip needs sources of equal length (or 1); got {[len(a) for a in axes]}")
        rows = [[a[i] if len(a) > 1 else a[0] for a in axes] for i in range(n)]
    else:
        rows = list(itertools.product(*axes))
    return [Part("_".join(p.name for p in row if p.name), {k: v for p in row for k, v in p.values.items()})
            for row in rows]


def safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "job"


def build_jobs(graph: dict, args) -> list[Job]:
    axes = [read_jobs_file(Path(f)) for f in args.jobs or []]
    axes += [media_parts(s) for s in args.media or []] + [seed_parts(s) for s in args.seeds or []]
    fixed = {}
    for item in args.set or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"--set {item!r}: use NODE.INPUT=VALUE")
        fixed[key] = local_value(parse_value(value), Path.cwd())
    jobs, seen = [], {}
    for part in combine(axes, args.combine):
        name = safe_name(part.name)
        seen[name] = seen.get(name, 0) + 1
        name = name if seen[name] == 1 else f"{name}-{seen[name]}"
        jobs.append(Job(name, {resolve_ref(graph, k): v for k, v in {**part.values, **fixed}.items()}))
    return jobs


# ---- HTTP ---------------------------------------------------------------------------------------------------------
def multipart(fields: dict[str, str], file_field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
              f"Content-Type: {ctype}\r\n\r\n".encode())
    out.write(data + f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


@dataclass(eq=False)
class Server:
    url: str
    timeout: float = 120
    uploaded: dict = field(default_factory=dict)  # local path -> value for the workflow
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, method: str, path: str, data: bytes | None = None, ctype: str | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": ctype} if ctype else {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        status, raw = self.request(method, path, data, "application/json" if data else None)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        if status != 200:
            raise JobFailed(f"GET {path} on {self.url} -> HTTP {status}: {str(body)[:300]}")
        return body

    def upload(self, path: Path, name: str, subfolder: str) -> str:
        with self.lock:
            if path not in self.uploaded:
                fields = {"type": "input", "overwrite": "true", "subfolder": subfolder}
                data, ctype = multipart(fields, "image", name, path.read_bytes())
                status, raw = self.request("POST", "/upload/image", data, ctype)
                if status != 200:
                    raise JobFailed(f"upload of {path} to {self.url} failed: HTTP {status} {raw[:200]!r}")
                info = json.loads(raw)
                self.uploaded[path] = f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]
            return self.uploaded[path]

    def view(self, item: dict) -> bytes:
        query = urllib.parse.urlencode({k: item.get(k) or "" for k in ("filename", "subfolder", "type")})
        status, raw = self.request("GET", f"/view?{query}")
        if status != 200:
            raise JobFailed(f"download of {item.get('filename')} failed: HTTP {status}")
        return raw

    def knows(self, class_type: str) -> bool:
        status, body = self.call("GET", f"/object_info/{urllib.parse.quote(class_type, safe='')}")
        return status == 200 and isinstance(body, dict) and class_type in body

    def replacements(self, class_types: set[str]) -> dict[str, dict]:
        """Old node id -> (the replacement the server would use, the new node's ``/object_info`` entry) for the
        ``class_types`` this server lists in its node replacements (``GET /node_replacements``, ComfyUI 0.33+), no
        longer runs itself, and whose new node it runs. The prompt is rewritten here with them (``replace_old_ids``):
        the server's own rewrite of API prompts (ComfyUI 0.33.0) keeps only the mapped inputs (none for a pure
        rename) and fills no defaults, so the prompt would fail with "required input missing"."""
        status, table = self.call("GET", "/node_replacements")
        if status != 200 or not isinstance(table, dict):
            return {}
        out = {}
        for class_type in sorted(class_types):
            options = table.get(class_type)
            if not (isinstance(options, list) and options and isinstance(options[0], dict)):
                continue
            first = options[0]  # the one the server would use
            new_id = first.get("new_node_id")
            if not new_id or self.knows(class_type):
                continue
            status, info = self.call("GET", f"/object_info/{urllib.parse.quote(new_id, safe='')}")
            if status == 200 and isinstance(info, dict) and isinstance(info.get(new_id), dict):
                out[class_type] = {**first, "new_node_info": info[new_id]}
        return out

    def ws_url(self, client_id: str) -> str:
        return re.sub(r"^http", "ws", self.url) + f"/ws?clientId={client_id}"


def widget_default(spec: Any) -> tuple[bool, Any]:
    """(has a value, the value) the editor gives a new node's widget input: its declared default, else a list's first
    choice; (False, None) for a link input (no widget)."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return False, None
    kind, opts = spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False, None
    if "default" in opts:
        return True, opts["default"]
    choices = kind if isinstance(kind, list) else opts.get("options") if kind == "COMBO" else None
    if isinstance(choices, list) and choices:
        return True, choices[0]
    return False, None


def replace_old_ids(prompt: dict, found: dict[str, dict]) -> dict[str, dict[str, str]]:
    """Rewrite, in place, every node of ``prompt`` whose class_type is an old id in ``found`` (``Server.replacements``)
    as the editor's "Replace" does to a UI workflow: the new class_type; each mapped input (``input_mapping``:
    ``old_id`` moves that input's value or link, ``set_value`` sets a value) or, for a pure rename (no mapping), every
    input as it is; the new node's default for each widget input still missing; links from its outputs renumbered by
    ``output_mapping`` (a link from an output it does not map is removed, so the server names the input it leaves
    unfed). Returns node id -> {old input name: new input name} for the inputs carried under another name."""
    renamed: dict[str, dict[str, str]] = {}
    outputs: dict[str, dict[int, int] | None] = {}
    for nid, node in prompt.items():
        entry = found.get(node["class_type"])
        if entry is None:
            continue
        old = node["inputs"]
        mapping, out_map = entry.get("input_mapping"), entry.get("output_mapping")
        if mapping is None and out_map is None:
            inputs = dict(old)
        else:
            inputs, names = {}, {}
            for m in mapping or []:
                if "set_value" in m:
                    inputs[m["new_id"]] = m["set_value"]
                elif m.get("old_id") in old:
                    inputs[m["new_id"]] = json.loads(json.dumps(old[m["old_id"]]))
                    names[m["old_id"]] = m["new_id"]
            renamed[nid] = names
        info = entry["new_node_info"].get("input") or {}
        for group in ("required", "optional"):
            for name, spec in (info.get(group) or {}).items():
                has, value = widget_default(spec)
                if has and name not in inputs:
                    inputs[name] = value
        node["class_type"], node["inputs"] = entry["new_node_id"], inputs
        outputs[nid] = None if out_map is None else {m["old_idx"]: m["new_idx"] for m in out_map}
    for node in prompt.values():
        for name, value in list(node["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in outputs:
                out_map = outputs[str(value[0])]
                if out_map is None:
                    continue
                if value[1] in out_map:
                    node["inputs"][name] = [value[0], out_map[value[1]]]
                else:
                    del node["inputs"][name]
    return renamed


def upload_names(jobs: list[Job]) -> dict[Path, str]:
    """Server-side file name for every local file: its own name, or name-<hash> when two files share one."""
    names: dict[Path, str] = {}
    for value in (v for job in jobs for v in job.settings.values() if isinstance(v, Upload)):
        path = value.path
        if path not in names:
            taken = path.name in names.values()
            names[path] = f"{path.stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}{path.suffix}" \
                if taken else path.name
    return names


def format_validation_error(body: Any) -> str:
    if not isinstance(body, dict):
        return str(body)[:500]
    err = body.get("error")
    parts = [err.get("message", "prompt rejected") if isinstance(err, dict) else str(err or "prompt rejected")]
    for nid, info in (body.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            details = f": {e['details']}" if e.get("details") else ""
            parts.append(f"node {nid} ({info.get('class_type')}): {e.get('message')}{details}")
    return "; ".join(parts)


def execution_failure(entry: dict) -> str | None:
    status = entry.get("status") or {}
    if status.get("status_str", "success") == "success":
        return None
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return (f"execution error in node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}")
        if kind == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return f"prompt ended with status {status.get('status_str')!r}"


# ---- running jobs -------------------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    status: str = "pending"
    server: str = ""
    prompt_id: str | None = None
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    duration: float = 0.0
    metrics: list[dict] = field(default_factory=list)  # the quality metric nodes' summaries (see collect_metrics)


class Events:
    """One worker's client_id and WebSocket, connected lazily; ``conn`` is None when polling."""

    def __init__(self, server: Server, enabled: bool):
        self.server, self.enabled, self.conn = server, enabled and websocket is not None, None
        self.client_id = uuid.uuid4().hex

    def connect(self) -> None:
        if self.conn is None and self.enabled:
            try:
                self.conn = websocket.create_connection(self.server.ws_url(self.client_id), timeout=10)
                self.conn.settimeout(1.0)
            except Exception as e:  # noqa: BLE001 - any failure means: poll instead
                log(f"note: no WebSocket on {self.server.url} ({e}); polling /history", sys.stderr)
                self.enabled = False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Runner:
    def __init__(self, graph: dict, args, names: dict[Path, str]):
        self.graph, self.args, self.names = graph, args, names
        self.in_flight: dict[str, Server] = {}
        self.replaced: dict[Server, dict[str, dict]] = {}
        self.lock = threading.Lock()

    def replacements_on(self, server: Server) -> dict[str, dict]:
        """The old node ids of this workflow that ``server`` replaces, looked up once per server and reported once."""
        with self.lock:
            if server not in self.replaced:
                self.replaced[server] = found = server.replacements({n["class_type"] for n in self.graph.values()})
                for nid, node in self.graph.items():
                    entry = found.get(node["class_type"])
                    if entry is None:
                        continue
                    how = "" if entry.get("input_mapping") is None and entry.get("output_mapping") is None else \
                        ", with the inputs it maps and that node's defaults for the others"
                    log(f"note: node {nid} is {node['class_type']!r}, an old id that {server.url} replaces with "
                        f"{entry['new_node_id']!r}; sending it as that{how} (open the workflow in the editor and "
                        "re-export it to update it)", sys.stderr)
            return self.replaced[server]

    def prompt_for(self, job: Job, server: Server | None) -> dict:
        prompt = json.loads(json.dumps(self.graph))
        renamed = replace_old_ids(prompt, self.replacements_on(server)) if server is not None else {}
        for ref, value in job.settings.items():
            if isinstance(value, Upload):
                name = self.names[value.path]
                value = server.upload(value.path, name, self.args.subfolder) if server else \
                    (f"{self.args.subfolder}/{name}" if self.args.subfolder else name)
            prompt[ref.node]["inputs"][renamed.get(ref.node, {}).get(ref.input, ref.input)] = value
        return prompt

    def worker(self, server: Server, jobs: queue.Queue, results: dict) -> None:
        events = Events(server, not self.args.no_websocket)
        while True:
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                break
            results[job.name] = self.run_job(server, events, job)
        events.close()

    def run_job(self, server: Server, events: Events, job: Job) -> Result:
        res, start = Result(job.name, server=server.url), time.monotonic()
        try:
            prompt = self.prompt_for(job, server)
            events.connect()
            status, body = server.call("POST", "/prompt", {"prompt": prompt, "client_id": events.client_id})
            if status != 200:
                raise JobFailed(f"rejected (HTTP {status}): {format_validation_error(body)}")
            res.prompt_id = body["prompt_id"]
            self.in_flight[res.prompt_id] = server
            log(f"[{job.name}] queued on {server.url} as {res.prompt_id}")
            entry = self.wait(server, events, job, prompt, res.prompt_id)
            error = execution_failure(entry)
            if error:
                raise JobFailed(error)
            res.outputs = self.download(server, entry, Path(self.args.out) / job.name)
            res.metrics = collect_metrics(entry, prompt)
            for m in res.metrics:
                log(f"[{job.name}] {m.get('title') or m.get('node')}: {m.get('metric')} mean {m.get('mean')} "
                    f"{m.get('unit') or ''}".rstrip())
            res.status = "success"
        except Exception as e:  # noqa: BLE001 - report per job and go on with the others
            res.status, res.error = "failed", str(e) if isinstance(e, JobFailed) else f"{type(e).__name__}: {e}"
        self.in_flight.pop(res.prompt_id, None)
        res.duration = round(time.monotonic() - start, 2)
        tail = f"{len(res.outputs)} file(s)" if res.status == "success" else res.error
        log(f"[{job.name}] {res.status} in {res.duration:.1f}s: {tail}")
        return res

    def wait(self, server: Server, events: Events, job: Job, prompt: dict, prompt_id: str) -> dict:
        deadline = time.monotonic() + self.args.timeout
        if events.conn is not None and not self.follow(events, job, prompt, prompt_id, deadline):
            log(f"[{job.name}] WebSocket dropped; polling /history")
            events.close()
        while time.monotonic() < deadline:
            entry = server.get(f"/history/{prompt_id}")
            if isinstance(entry, dict) and prompt_id in entry:
                return entry[prompt_id]
            time.sleep(self.args.poll_interval)
        cancel(server, prompt_id)
        raise JobFailed(f"timed out after {self.args.timeout}s (prompt {prompt_id} cancelled)")

    def follow(self, events: Events, job: Job, prompt: dict, prompt_id: str, deadline: float) -> bool:
        """Print progress from the WebSocket until the prompt ends (True) or the socket fails (False)."""
        last_print = 0.0
        while time.monotonic() < deadline:
            try:
                raw = events.conn.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:  # noqa: BLE001
                return False
            try:
                msg = json.loads(raw) if isinstance(raw, str) else {}  # binary frames are previews
            except ValueError:
                continue
            kind, data = msg.get("type"), msg.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            node = data.get("node")
            label = f"node {node} ({prompt.get(node, {}).get('class_type', '?')})" if node else ""
            if kind in ("execution_success", "execution_error", "execution_interrupted") or \
                    (kind == "executing" and node is None):
                return True
            if kind == "executing":
                log(f"[{job.name}] {label}")
            elif kind == "progress" and (data.get("value") == data.get("max") or time.monotonic() - last_print > 2):
                last_print = time.monotonic()
                log(f"[{job.name}] {label} {data.get('value')}/{data.get('max')}")
        return True  # the history poll reports the timeout

    def download(self, server: Server, entry: dict, dest: Path) -> list[str]:
        files = []
        for ui in (entry.get("outputs") or {}).values():
            for items in ui.values():
                for item in items if isinstance(items, list) else []:
                    if not (isinstance(item, dict) and item.get("filename")):
                        continue
                    kind = item.get("type") or "output"
                    sub = [p for p in Path(item.get("subfolder") or "").parts if p not in ("..", "/", "\\")]
                    path = dest.joinpath(*([] if kind == "output" else [kind]), *sub, Path(item["filename"]).name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(server.view(item))
                    files.append(str(path))
        return files


METRICS_UI_KEY = "pa_metrics"  # the pack's metric nodes put their JSON summary under this key of their UI output


def collect_metrics(entry: dict, prompt: dict) -> list[dict]:
    """Every metric summary in a finished prompt's history outputs, each with the node id and title it came from
    (in node id order)."""
    found = []
    outputs = entry.get("outputs") or {}
    for nid in sorted(outputs, key=lambda k: (len(str(k)), str(k))):
        for item in (outputs[nid] or {}).get(METRICS_UI_KEY) or []:
            if isinstance(item, str):
                try:
                    item = json.loads(item)
                except ValueError:
                    continue
            if isinstance(item, dict):
                title = ((prompt.get(nid) or {}).get("_meta") or {}).get("title")
                found.append({"node": nid, "title": title, **item})
    return found


def cancel(server: Server, prompt_id: str) -> None:
    try:
        server.call("POST", "/queue", {"delete": [prompt_id]})
        server.call("POST", "/interrupt", {"prompt_id": prompt_id})
    except OSError:
        pass


def reachable(servers: list[Server]) -> list[Server]:
    ok = []
    for server in servers:
        try:
            server.get("/system_stats")
            ok.append(server)
        except (OSError, JobFailed) as e:
            log(f"warning: skipping server {server.url}: {e}", sys.stderr)
    return ok


def run_all(runner: Runner, servers: list[Server], jobs: list[Job]) -> list[Result]:
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    results: dict[str, Result] = {}
    threads = [threading.Thread(target=runner.worker, args=(s, todo, results), daemon=True)
               for s in servers for _ in range(max(1, runner.args.max_in_flight))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        log("interrupted: cancelling queued and running prompts")
        while not todo.empty():
            todo.get_nowait()
        for prompt_id, server in list(runner.in_flight.items()):
            cancel(server, prompt_id)
        raise
    return [results.get(j.name) or Result(j.name, status="failed", error="not run") for j in jobs]


# ---- a ComfyUI started for this run ------------------------------------------------------------------------------
class ServerStartError(Exception):
    """The ComfyUI this tool started exited or did not answer in time (exit status 2)."""


def find_comfyui(explicit: str | None) -> Path:
    """The ComfyUI folder to start: --comfyui, else $COMFYUI_PATH, else the install this file sits in.

    The pack is normally a folder (often a symlink) in ComfyUI/custom_nodes, so the tool's own unresolved path is
    tried before the resolved one: a symlinked clone still finds the ComfyUI that loads it.
    """
    env = (os.environ.get("COMFYUI_PATH") or "").split(os.pathsep)[0]  # the test harness allows a list: its first
    for source, value in (("--comfyui", explicit), ("COMFYUI_PATH", env)):
        if value:
            root = Path(value).expanduser().absolute()
            if not (root / "main.py").is_file():
                raise UsageError(f"{source} names {root}, which has no ComfyUI main.py")
            return root
    here = Path(__file__)
    for tool in (here.absolute(), here.resolve()):
        pack = tool.parent.parent  # <pack>/tools/queue_batch.py
        if pack.parent.name == "custom_nodes" and (pack.parent.parent / "main.py").is_file():
            return pack.parent.parent
    raise UsageError("no ComfyUI to start: this tool is not inside ComfyUI/custom_nodes/<pack>/ and neither "
                     "--comfyui nor COMFYUI_PATH is set; pass --comfyui DIR, or --server URL for a running ComfyUI")


def comfy_python(root: Path) -> str:
    """The interpreter ComfyUI runs with: $COMFYUI_PYTHON, else the install's own environment (a venv inside it, or
    the Windows portable build's python_embeded beside it), else this interpreter."""
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    for cand in (root / ".venv/bin/python", root / "venv/bin/python", root / ".venv/Scripts/python.exe",
                 root / "venv/Scripts/python.exe", root.parent / "python_embeded/python.exe"):
        if cand.is_file():
            return str(cand)
    return sys.executable


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalComfy:
    """A headless ComfyUI owned by this run: loopback only, on a free port, logging to a file, stopped by stop().

    It runs in its own process group, so a Ctrl-C in the terminal reaches only this tool, which then cancels its
    prompts and stops the server itself (rather than both dying half-way)."""
    root: Path
    python: str
    extra_args: list[str]
    log_path: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
                *self.extra_args]

    def start(self, timeout: float) -> None:
        self.port = free_loopback_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log(f"starting ComfyUI {self.root} on {self.url} with {self.python} (log: {self.log_path})")
        group = {"start_new_session": True} if os.name == "posix" else \
            {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
        with open(self.log_path, "wb") as log_file:  # the child keeps its own handle
            self.proc = subprocess.Popen(self.command(), cwd=self.root, stdin=subprocess.DEVNULL, stdout=log_file,
                                         stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                         **group)
        server, deadline = Server(self.url, timeout=2), time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"ComfyUI exited with status {self.proc.returncode} before it answered; "
                                       f"the end of its log ({self.log_path}):\n{self.log_tail()}")
            try:
                server.get("/system_stats")
                log(f"ComfyUI is up on {self.url}")
                return
            except (OSError, JobFailed):
                time.sleep(0.5)
        self.stop()
        raise ServerStartError(f"ComfyUI did not answer on {self.url} within {timeout:g}s (--start-timeout); "
                               f"the end of its log ({self.log_path}):\n{self.log_tail()}")

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        log(f"stopping ComfyUI on {self.url}")
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
            self.proc.wait(15)

    def _signal(self, sig) -> None:
        try:
            if os.name == "posix":
                os.killpg(self.proc.pid, sig)  # the server and anything it started
            else:
                self.proc.terminate() if sig == signal.SIGTERM else self.proc.kill()
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(f"    {line}" for line in lines[-n:]) or "    (empty)"


class _StopOnTerm:
    """While a local server runs, SIGTERM to this tool unwinds like Ctrl-C, so the server is stopped too."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGTERM"):
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


# ---- command line -------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options, plus ``comfy_args``: everything after ``--comfy-args``, split off by hand because those are
    ComfyUI's own options (``--lowvram``, ``--base-directory DIR``) that argparse would try to read as ours."""
    argv = list(sys.argv[1:] if argv is None else argv)
    comfy_args = []
    if "--comfy-args" in argv:
        i = argv.index("--comfy-args")
        argv, comfy_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(usage="python tools/queue_batch.py WORKFLOW.json [options] [--comfy-args ARG...]",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workflow", help="API-format workflow JSON (Workflow > Export (API))")
    p.add_argument("--jobs", action="append", metavar="FILE", help="jobs file: JSON list, .jsonl or .csv")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="value for every job")
    p.add_argument("--media", action="append", nargs="+", metavar=("NODE.INPUT", "FILE"), help="one job per file")
    p.add_argument("--seeds", action="append", nargs="+", metavar=("NODE.INPUT", "N"), help="one job per value")
    p.add_argument("--combine", choices=("product", "zip"), default="product",
                   help="how job sources combine (default: product)")
    p.add_argument("--server", action="append", metavar="URL",
                   help="a running ComfyUI (repeatable, e.g. http://127.0.0.1:8188); without it one is started")
    p.add_argument("--comfyui", metavar="DIR", help="ComfyUI folder to start (default: $COMFYUI_PATH, else the "
                   "ComfyUI this pack is installed in)")
    p.add_argument("--cpu", action="store_true", help="start ComfyUI with --cpu")
    p.add_argument("--start-timeout", type=float, default=600, metavar="SEC",
                   help="seconds to wait for a started ComfyUI to answer (default 600)")
    p.add_argument("--comfy-args", dest="_comfy_args_help", nargs=argparse.REMAINDER, metavar="ARG",
                   help="the rest of the command line goes to the started ComfyUI's main.py")
    p.add_argument("--max-in-flight", type=int, default=1, metavar="N", help="prompts queued at once per server")
    p.add_argument("--subfolder", default="", help="input subfolder for uploads")
    p.add_argument("--out", default="batch_outputs", metavar="DIR", help="download folder (default batch_outputs)")
    p.add_argument("--summary", metavar="PATH", help="write a JSON summary of every job (with its metric nodes' results)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per job (default 3600)")
    p.add_argument("--poll-interval", type=float, default=0.5, help="seconds between /history polls")
    p.add_argument("--no-websocket", action="store_true", help="poll /history instead of following the WebSocket")
    p.add_argument("--dry-run", action="store_true", help="print the resolved prompts as JSON and queue nothing")
    args = p.parse_args(argv)
    args.comfy_args = comfy_args
    if args.server and (args.comfyui or args.cpu or comfy_args):
        p.error("--comfyui, --cpu and --comfy-args are for a ComfyUI this tool starts; they do nothing with --server")
    return args


def local_comfy(args) -> LocalComfy:
    root = find_comfyui(args.comfyui)
    extra = (["--cpu"] if args.cpu else []) + args.comfy_args
    return LocalComfy(root, comfy_python(root), extra, Path(args.out).absolute() / "comfyui_server.log")


def run_batch(args, runner: Runner, jobs: list[Job], urls: list[str]) -> int:
    servers = reachable([Server(u.rstrip("/")) for u in urls])
    if not servers:
        print("error: no ComfyUI server answered", file=sys.stderr)
        return 2
    if websocket is None and not args.no_websocket:
        log("note: websocket-client is not installed; polling /history for progress", sys.stderr)
    log(f"{len(jobs)} job(s) on {len(servers)} server(s)")
    started = time.monotonic()
    results = run_all(runner, servers, jobs)
    failed = [r for r in results if r.status != "success"]
    log(f"done in {time.monotonic() - started:.1f}s: {len(results) - len(failed)} succeeded, {len(failed)} failed")
    for r in failed:
        log(f"  FAILED {r.name}: {r.error}")
    if args.summary:
        summary = {"workflow": str(args.workflow), "succeeded": len(results) - len(failed), "failed": len(failed),
                   "jobs": [asdict(r) for r in results]}
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps(summary, indent=1))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        graph = load_workflow(args.workflow)
        jobs = build_jobs(graph, args)
        local = None if args.server or args.dry_run else local_comfy(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runner = Runner(graph, args, upload_names(jobs))
    if args.dry_run:
        print(json.dumps([{"name": j.name, "prompt": runner.prompt_for(j, None),
                           "uploads": {runner.names[v.path]: str(v.path) for v in j.settings.values()
                                       if isinstance(v, Upload)}} for j in jobs], indent=1))
        return 0
    if local is None:
        return run_batch(args, runner, jobs, [u if "://" in u else f"http://{u}" for u in args.server])
    with _StopOnTerm():
        try:
            local.start(args.start_timeout)
            rc = run_batch(args, runner, jobs, [local.url])
            if rc and local.exited() is not None:
                log(f"ComfyUI exited during the run (status {local.exited()}); the end of its log "
                    f"({local.log_path}):\n{local.log_tail()}", sys.stderr)
            elif rc:
                log(f"ComfyUI's log: {local.log_path}", sys.stderr)
            return rc
        except ServerStartError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        finally:
            local.stop()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
