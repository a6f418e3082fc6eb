"""Start a real ComfyUI server for integration tests and talk to it over HTTP and WebSocket.

The pack is exposed to the server through a temporary ``custom_nodes`` folder holding a symlink to the repository
(so the folder name is arbitrary, as after a user's clone) and an ``extra_model_paths.yaml``; the server gets its own
input, output, temp, user and models folders and runs with ``--cpu`` on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACK_LINK_NAME = "portrait_animation_under_test"


def comfy_python(comfy_path: Path) -> str:
    """Interpreter for the server: the install's own venv (each version has its own), else $COMFYUI_PYTHON, else
    this interpreter."""
    for cand in (comfy_path / ".venv/bin/python", comfy_path / "venv/bin/python"):
        if cand.exists():
            return str(cand)
    return os.environ.get("COMFYUI_PYTHON") or sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ComfyServer:
    comfy_path: Path
    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    env: dict = field(default_factory=dict)  # extra environment for the server (e.g. HF_ENDPOINT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def input_dir(self) -> Path:
        return self.workdir / "input"

    @property
    def output_dir(self) -> Path:
        return self.workdir / "output"

    @property
    def models_dir(self) -> Path:
        """ComfyUI's models folder (``--base-directory`` is the work dir)."""
        return self.workdir / "models"

    @property
    def extra_models_dir(self) -> Path:
        """The pack's folder as configured in extra_model_paths.yaml (comes first, receives downloads)."""
        return self.workdir / "extra_models" / "portrait_animation"

    def start(self, timeout: float = 240) -> "ComfyServer":
        nodes = self.workdir / "custom_nodes"
        nodes.mkdir(parents=True, exist_ok=True)
        link = nodes / PACK_LINK_NAME
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        for d in ("input", "output", "temp", "user", "models"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        self.extra_models_dir.mkdir(parents=True, exist_ok=True)
        yaml = self.workdir / "extra_model_paths.yaml"
        yaml.write_text(f"pack_tests:\n  portrait_animation: {self.extra_models_dir}\n")
        self.port = free_port()
        self.log_path = self.workdir / "server.log"
        cmd = [comfy_python(self.comfy_path), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.workdir),
               "--extra-model-paths-config", str(yaml), "--disable-all-custom-nodes",
               "--whitelist-custom-nodes", PACK_LINK_NAME, "--disable-api-nodes", "--disable-auto-launch",
               "--input-directory", str(self.input_dir), "--output-directory", str(self.output_dir),
               "--temp-directory", str(self.workdir / "temp"), "--user-directory", str(self.workdir / "user"),
               "--preview-method", "none"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        env.pop("HF_HUB_OFFLINE", None)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_path, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    # ---- HTTP ---------------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def get(self, path: str, timeout: float = 30):
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {body}")
        return body

    def queue(self, prompt: dict) -> tuple[int, dict]:
        return self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """Poll /history until the prompt finished; returns its history entry."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") in ("success", "error") or entry["status"].get("completed"):
                    return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        status, body = self.queue(prompt)
        if status != 200:
            raise AssertionError(f"/prompt rejected the graph ({status}): {json.dumps(body, indent=1)[:3000]}")
        return self.wait(body["prompt_id"], timeout)

    def ws(self):
        import websocket

        conn = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=60)
        return conn


def status_messages(entry: dict) -> dict[str, dict]:
    return {name: data for name, data in entry.get("status", {}).get("messages", [])}


def load_api_workflow(path: Path) -> dict:
    graph = json.loads(path.read_text())
    return {k: v for k, v in graph.items() if not k.startswith("_")}


def stage_inputs(server: ComfyServer, files) -> None:
    for f in files:
        shutil.copy(f, server.input_dir / Path(f).name)


def write_wav(path: Path, waveform, sample_rate: int) -> None:
    """16-bit PCM WAV from a (channels, samples) float tensor in [-1, 1] (stdlib only)."""
    import wave

    import numpy as np

    pcm = (np.clip(waveform.numpy().T, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())


# Settings that make model workflows quick on the CPU with the small stand-in models (the example files keep the
# real defaults). Applied by class_type to every node of that type.
FAST_OVERRIDES = {
    "PortraitAnim_MemoLoader": {"emotion_model": False, "identity": False, "dtype": "fp32"},
    "PortraitAnim_MemoAudio": {"clip_length": 4, "fps": 12},  # speech_short.wav (1 s): 12 frames, 3 clips
    "PortraitAnim_MemoSampler": {"steps": 1, "resolution": 64, "past_frames": 4, "on_missing_face": "uncond"},
    "PortraitAnim_LoadAudio": {"audio_file": "speech_short.wav"},
    "PortraitAnim_HelloMemeLoader": {"dtype": "fp32"},
    "PortraitAnim_HelloMemeToolkit": {"head_pose": "approximate"},  # the official ONNX toolkit is not available
    "PortraitAnim_HelloMemeImage": {"steps": 1, "width": 128, "height": 128},
    "PortraitAnim_HelloMemeVideo": {"steps": 1, "width": 128, "height": 128},
    "PortraitAnim_LoadVideoFrames": {"frame_cap": 14},
    "PortraitAnim_HunyuanPortraitLoader": {"dtype": "fp32"},
    "PortraitAnim_HunyuanPortraitConditions": {"size": 64, "intensity_chunk": 8},
    "PortraitAnim_HunyuanPortraitSampler": {"steps": 1, "window": 8, "overlap": 1, "pad_frames": 2,
                                            "decode_chunk": 4},
    "PortraitAnim_Preflight": {"size": 64, "steps": 1},  # the estimate of the run the fast settings make
}


def fast(graph: dict) -> dict:
    out = json.loads(json.dumps(graph))
    for node in out.values():
        node["inputs"].update(FAST_OVERRIDES.get(node["class_type"], {}))
    return guarded_memo_identity(standin_talking_head(out))


def guarded_memo_identity(graph: dict) -> dict:
    """A MEMO Loader whose sampler has an Identity Guard connected loads the identity models (the guard scores with
    them; the test server has stand-ins, ``helpers.tiny_insightface``: a face in every frame), although the fast
    settings turn them off everywhere else. Returns ``graph``, changed in place."""
    for node in graph.values():
        guarded = isinstance(node["inputs"].get("identity_guard"), list)
        if node["class_type"] == "PortraitAnim_MemoSampler" and guarded:
            graph[node["inputs"]["memo"][0]]["inputs"]["identity"] = True
    return graph


STANDIN_FACE_BLEND = 0.3  # share of the MEMO stand-in's frames in the driving frames


def standin_talking_head(graph: dict) -> dict:
    """The stand-in MEMO models draw noise, not a face, and HelloMeme's driving conditions find the face in every
    driving frame (MediaPipe): where a MEMO sampler's frames drive HelloMeme (the speech examples), core ImageBlend
    lays them over the sampler's reference (the speaker's face crop) at ``STANDIN_FACE_BLEND``, so the driving frames
    still come from MEMO (their count, fps and change from frame to frame) and hold a face. HunyuanPortrait needs
    nothing (its YOLOv5-face stand-in finds a face anywhere). Returns ``graph``, changed in place."""
    for nid, node in list(graph.items()):
        driving = node["inputs"].get("driving")
        if node["class_type"] != "PortraitAnim_HelloMemeConditions" or not isinstance(driving, list):
            continue
        source = graph[driving[0]]
        if source["class_type"] != "PortraitAnim_MemoSampler" or driving[1] != 0:
            continue
        blend = f"{nid}_standin_face"
        graph[blend] = {"class_type": "ImageBlend",
                        "inputs": {"image1": source["inputs"]["reference"], "image2": driving,
                                   "blend_factor": STANDIN_FACE_BLEND, "blend_mode": "normal"}}
        node["inputs"]["driving"] = [blend, 0]
    return graph


# ---- outputs ------------------------------------------------------------------------------------------------------
def output_files(entry: dict) -> list[tuple[str, dict]]:
    """(node id, file record) for every image/video file a finished prompt lists in its history entry."""
    return [(nid, f) for nid, out in entry["outputs"].items() for key in ("images", "videos", "gifs", "animated")
            for f in out.get(key, []) if isinstance(f, dict) and "filename" in f]


def fetch_view(server: ComfyServer, f: dict) -> bytes:
    """A file the server lists, fetched back through ``/view`` as a browser would."""
    query = urllib.parse.urlencode({"filename": f["filename"], "subfolder": f.get("subfolder", ""),
                                    "type": f.get("type", "output")})
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=60) as r:
        assert r.status == 200, f
        return r.read()


def decode_media(data: bytes, name: str):
    """An image or a video file's frames as float32 [N, H, W, 3] in 0..1 (PyAV decodes both)."""
    import io

    import av
    import numpy as np

    with av.open(io.BytesIO(data)) as container:
        frames = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
    assert frames, f"{name}: no frames"
    return np.stack(frames).astype(np.float32) / 255.0
