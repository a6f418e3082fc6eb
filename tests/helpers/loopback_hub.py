"""A minimal Hugging Face Hub look-alike on 127.0.0.1, enough for ``huggingface_hub.hf_hub_download``.

Serves ``/{repo_id}/resolve/{revision}/{path}`` (HEAD and GET, with Range) and plain URL paths (``add_plain``) from an
in-memory file table, with the headers the client reads (X-Repo-Commit, ETag/X-Linked-Etag as the sha256,
Content-Length/X-Linked-Size). Files can be registered as corrupt (served bytes differ from the advertised checksum)
or truncated (the connection drops early), and every request is logged so tests can assert what was fetched.
"""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    data: bytes
    advertised_sha256: str | None = None  # defaults to the real sha256 of data
    drop_after: int | None = None  # close the connection after this many bytes


@dataclass
class LoopbackHub:
    files: dict[tuple[str, str], HubFile] = field(default_factory=dict)  # (repo_id, path) -> file
    requests: list[tuple[str, str]] = field(default_factory=list)

    plain: dict[str, HubFile] = field(default_factory=dict)  # URL path -> file, served as is

    def add(self, repo_id: str, path: str, data: bytes, **kw) -> None:
        self.files[(repo_id, path)] = HubFile(data, **kw)

    def add_plain(self, url_path: str, data: bytes, **kw) -> None:
        """Serve ``data`` at ``url_path`` (starting with ``/``), for files the pack fetches by plain URL."""
        self.plain[url_path] = HubFile(data, **kw)

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _lookup(self):
                path = self.path.split("?")[0]
                if path in hub.plain:  # a plain URL (a mirror of a file that is not on the Hub)
                    return hub.plain[path]
                m = re.match(r"^/(?:models/)?(.+?)/resolve/([^/]+)/(.+)$", path)
                if not m:
                    return None
                return hub.files.get((m.group(1), m.group(3)))

            def _headers(self, f: HubFile, status=200, length=None, extra=None):
                sha = f.advertised_sha256 or hashlib.sha256(f.data).hexdigest()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(f.data) if length is None else length))
                self.send_header("ETag", f'"{sha}"')
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(f.data)))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Accept-Ranges", "bytes")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()

            def _missing(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path))
                f = self._lookup()
                if f is None:
                    return self._missing()
                self._headers(f)

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                f = self._lookup()
                if f is None:
                    return self._missing()
                start = 0
                rng = self.headers.get("Range")
                if rng and (m := re.match(r"bytes=(\d+)-", rng)):
                    start = int(m.group(1))
                body = f.data[start:]
                if start:
                    self._headers(f, status=206, length=len(body),
                                  extra={"Content-Range": f"bytes {start}-{len(f.data) - 1}/{len(f.data)}"})
                else:
                    self._headers(f)
                if f.drop_after is not None:
                    self.wfile.write(body[: max(0, f.drop_after - start)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
