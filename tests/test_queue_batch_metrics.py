"""tools/queue_batch.py gathers the quality metric nodes' summaries (UI output ``pa_metrics``) into each job's
``metrics`` in the --summary file."""
from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("queue_batch_metrics_under_test", ROOT / "tools" / "queue_batch.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_metric_summaries_are_collected_with_node_and_title():
    qb = _tool()
    prompt = {"7": {"class_type": "PortraitAnim_FlickerMetric", "_meta": {"title": "Flicker"}},
              "12": {"class_type": "PortraitAnim_SeamMetric", "inputs": {}}}
    flicker = {"metric": "flicker", "mean": 1.5, "unit": "levels", "values": [1.0, 2.0]}
    entry = {"outputs": {"12": {"pa_metrics": [json.dumps({"metric": "seam", "mean": 1.1})]},
                         "3": {"images": [{"filename": "a.png"}]},
                         "7": {"pa_metrics": [flicker], "text": ["x"]},
                         "9": {"pa_metrics": ["not json", 3]}}}
    got = qb.collect_metrics(entry, prompt)
    assert got == [{"node": "7", "title": "Flicker", **flicker},
                   {"node": "12", "title": None, "metric": "seam", "mean": 1.1}]
    assert qb.collect_metrics({"outputs": {}}, prompt) == []
    assert qb.METRICS_UI_KEY == "pa_metrics"
    res = qb.Result("job", metrics=got)
    assert asdict(res)["metrics"] == got  # what --summary writes per job
