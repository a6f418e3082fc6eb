"""All three families in one command: seconds per frame, peak accelerator memory, host peak RSS and load time for a
short and a long input, and, given the originals' source trees, the pack's denoiser step beside the original's.

    python benchmarks/run_all.py                                   # CPU, small configs (minutes)
    python benchmarks/run_all.py --quick                           # CI-sized smoke run (seconds per family)
    python benchmarks/run_all.py --original-root ~/originals   # + the originals side by side, one ratio each
    python benchmarks/run_all.py --device cuda                     # real sizes, the originals' steps and guidance
    python benchmarks/run_all.py --json out.json --markdown out.md

Every configuration runs in a fresh process (through each family's script: ``hellomeme_video.py``,
``memo_clips.py``, ``hunyuan_portrait.py``, whose own ``--help`` says what a row measures), so peaks do not mix.
The short / long inputs are 24 / 96 frames (HelloMeme, HunyuanPortrait) and 1 / 16 clips (MEMO): host memory must
stay flat between them. ``--original-root DIR`` holds the originals' trees as ``DIR/HelloMeme``, ``DIR/memo`` and
``DIR/HunyuanPortrait`` (``git archive`` of each repository); ``_originals.py`` builds the original's denoiser and the
pack's on the same small config with the same weights, checks their outputs agree within the parity tolerance and
times one step of each interleaved (min of ``--repeats``); ratio = original / pack (> 1: the pack is faster).
A family whose original cannot run here is reported with the reason, not left out silently.

CPU timings on a shared machine are noisy: each figure is one run (the comparison: the minimum of the repeats);
``--threads 1`` (default) avoids oversubscription; the load average is in the header.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILIES = ("hellomeme", "memo", "hunyuan_portrait")
TREES = {"hellomeme": "HelloMeme", "memo": "memo", "hunyuan_portrait": "HunyuanPortrait"}
SCRIPTS = {"hellomeme": "hellomeme_video.py", "memo": "memo_clips.py", "hunyuan_portrait": "hunyuan_portrait.py"}


def family_args(family: str, mode: str, device: str, threads: int) -> list[str]:
    """The family script's options for ``mode`` (quick / cpu / gpu). gpu: released sizes at 512^2 with the
    original's steps and guidance (HelloMeme v5 video: 25 steps, cfg 1.5; MEMO: memo_clips.py's real preset, 16-frame
    clips, 20 steps, cfg 3.5, bf16; HunyuanPortrait: 25 steps, its official window settings)."""
    t = ["--threads", str(threads)]
    if family == "hellomeme":
        base = {"quick": ["--frames", "4", "8", "--steps", "1", "--size", "128"],
                "cpu": ["--frames", "24", "96", "--steps", "2", "--size", "128"],
                "gpu": ["--frames", "24", "96", "--steps", "25", "--cfg", "1.5", "--real-size", "--size", "512"]}[mode]
        return base + ["--device", device] + t
    if family == "memo":
        base = {"quick": ["--clips", "1", "2", "--steps", "1", "--size", "small", "--image", "64"],
                "cpu": ["--clips", "1", "16", "--steps", "2", "--size", "small", "--image", "128"],
                "gpu": ["--clips", "1", "16", "--size", "real"]}[mode]  # 512^2, 16-frame clips, 20 steps, cfg 3.5
        return base + ["--device", device] + t
    base = {"quick": ["--size", "small", "--frames", "8", "24", "--image", "32", "--steps", "1", "--window", "4",
                      "--overlap", "1", "--pad", "2", "--decode-chunk", "4", "--crop", "32"],
            "cpu": ["--size", "small", "--frames", "24", "96"],
            "gpu": ["--size", "real", "--frames", "24", "96", "750"]}[mode]
    return base + ["--device", device] + t


def comparison_args(mode: str, repeats: int, threads: int) -> list[str]:
    size = ["--frames", "2", "--latent", "8"] if mode == "quick" else ["--frames", "4", "--latent", "16"]
    return size + ["--repeats", str(repeats), "--threads", str(threads)]


def _run(cmd: list[str], timeout: float) -> tuple[bool, str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return done.returncode == 0, done.stdout + ("" if done.returncode == 0 else done.stderr[-2000:])


def run_family(family: str, args, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(HERE / SCRIPTS[family]), *family_args(family, mode, args.device, args.threads),
               "--json", str(out)]
        t0 = time.perf_counter()
        ok, log = _run(cmd, args.timeout)
        if not ok or not out.is_file():
            return {"family": family, "error": log[-1500:], "command": shlex.join(cmd[1:])}
        data = json.loads(out.read_text())
    data.update(family=family, command=shlex.join(["python", *cmd[1:-2]]), wall_s=time.perf_counter() - t0)
    return data


def run_comparison(family: str, args, mode: str) -> dict:
    tree = args.original_root / TREES[family]
    cmd = [sys.executable, str(HERE / "_originals.py"), family, str(tree),
           *comparison_args(mode, args.repeats, args.threads)]
    if family not in COMPARED:
        return {"family": family, "error": "no side-by-side harness for this family in _originals.py"}
    if not tree.is_dir():
        return {"family": family, "error": f"no source tree at {tree}"}
    ok, log = _run(cmd, args.timeout)
    lines = [l for l in log.splitlines() if l.startswith("{")]
    if not ok or not lines:
        return {"family": family, "error": log.strip().splitlines()[-1] if log.strip() else "failed",
                "command": shlex.join(cmd[1:])}
    return {**json.loads(lines[-1]), "command": shlex.join(["python", *cmd[1:]])}


# ---------------------------------------------------------------------------------------------------------------------
# one common row per (family, length)
# ---------------------------------------------------------------------------------------------------------------------
def common_rows(data: dict) -> list[dict]:
    """The family's rows in the common columns: length (frames or clips), frames, s/frame, peak accelerator MB,
    host peak MB, load s (building or loading the networks)."""
    rows = []
    for r in data.get("rows", []):
        length = f"{r['clips']} clips" if "clips" in r else f"{r['frames']} frames"
        rows.append({"family": data["family"], "length": length, "frames": r["frames"], "s_per_frame": r["s_per_frame"],
                     "peak_accel_mb": r.get("peak_gpu_mb"), "peak_host_mb": r["peak_host_mb"],
                     "load_s": r.get("load_s", r.get("build_s"))})
    if len(rows) >= 2:
        first, last = rows[0]["peak_host_mb"], rows[-1]["peak_host_mb"]
        rows[-1]["host_growth_pct"] = 100 * (last - first) / first
    return rows


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Portrait-animation benchmarks, mode `{report['mode']}` on {m['device']} ({m['cpu']}, {m['cpu_count']} "
             f"CPUs{', ' + m['gpu'] if m.get('gpu') else ''}); torch {m['torch']}; {report['threads']} CPU thread(s); "
             f"load average {m['load_average_start']} at the start, {m['load_average_end']} at the end",
             f"command: `{report['command']}`", "",
             "| family | input | s/frame | peak accel MB | host peak MB | host growth | load s | settings |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for fam in report["families"]:
        if "error" in fam:
            lines.append(f"| {fam['family']} | failed | - | - | - | - | - | {fam['error'].splitlines()[-1][:120]} |")
            continue
        s = fam["settings"]
        desc = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("device", "threads") and v not in (None, False))
        for r in common_rows(fam):
            growth = _cell(r.get("host_growth_pct"), "+.1f") + ("%" if "host_growth_pct" in r else "")
            lines.append(f"| {r['family']} | {r['length']} | {r['s_per_frame']:.4f} | "
                         f"{_cell(r['peak_accel_mb'], '.0f')} "
                         f"| {r['peak_host_mb']:.0f} | {growth} | {_cell(r['load_s'], '.2f')} | {desc} |")
    if report.get("comparisons"):
        lines += ["", "Denoiser step, pack vs original (same config, same weights, same inputs; outputs checked within "
                  "the parity tolerance; interleaved, min of N):", "",
                  "| family | step | input | pack s | original s | original / pack | max abs diff | N |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for c in report["comparisons"]:
            if "error" in c:
                lines.append(f"| {c['family']} | not run: {c['error'][:160]} | | | | | | |")
                continue
            shape = "x".join(map(str, c.get("unet_input", []))) or "-"
            lines.append(f"| {c['family']} | {c['step']} | {shape} | {c['pack_s']:.3f} | {c['original_s']:.3f} | "
                         f"**{c['ratio']:.2f}x** | {c['max_abs_diff']:.2e} | {c['repeats']} |")
        shims = sorted({s for c in report["comparisons"] for s in c.get("shimmed", [])})
        if shims:
            lines.append(f"\nshimmed for the originals (benchmark only): {', '.join(shims)}")
    return "\n".join(lines)


def machine(device: str) -> dict:
    import platform

    import torch

    cpu = platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": device,
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    ap.add_argument("--device", default="cpu", help="cpu (small configs) or cuda (released sizes, 512^2)")
    ap.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    ap.add_argument("--original-root", type=Path, help="folder holding HelloMeme/, memo/, HunyuanPortrait/")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the side-by-side step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else ("gpu" if args.device.startswith("cuda") else "cpu")
    command = shlex.join(["python", "benchmarks/run_all.py", *(sys.argv[1:] if argv is None else argv)])
    info = machine(args.device)
    families = [run_family(f, args, mode) for f in args.families]
    comparisons = [run_comparison(f, args, mode) for f in args.families] if args.original_root else []
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"command": command, "mode": mode, "threads": args.threads, "machine": info, "families": families,
              "comparisons": comparisons,
              "table": [r for f in families if "error" not in f for r in common_rows(f)]}
    text = markdown(report)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    return 1 if any("error" in f for f in families) else 0


def _compared() -> tuple[str, ...]:
    sys.path.insert(0, str(HERE))
    from _originals import COMPARISONS

    return tuple(COMPARISONS)


COMPARED = _compared()

if __name__ == "__main__":
    sys.exit(main())
