"""The samplers' preflight is a safeguard: a refusal stops the run before any work, but a trace that cannot follow a
run's code (an estimate that fails for any other reason) is logged and the run goes on unchecked."""
from __future__ import annotations

import logging
import types

import pytest

from portrait_animation.runtime import preflight as pf


def test_refusal_propagates():
    def refuse():
        raise pf.PreflightError("HelloMeme will not fit")

    with pytest.raises(pf.PreflightError, match="will not fit"):
        pf.advisory("HelloMeme", refuse)


def test_a_failing_trace_is_logged_and_the_fallback_returned(caplog):
    def broken():
        raise IndexError("index 0 is out of bounds for dimension 0 with size 0")

    with caplog.at_level(logging.WARNING, logger=pf.__name__):
        assert pf.advisory("HelloMeme", broken, fallback="unchecked") == "unchecked"
    assert "HelloMeme preflight: could not estimate this run (IndexError: index 0 is out of bounds" in caplog.text
    assert pf.advisory("MEMO", lambda: 42) == 42


def test_hunyuan_auto_decode_chunk_falls_back_to_the_released_chunk_and_refusals_still_stop(monkeypatch):
    from helpers.comfy_stub import forget_stub_nodes, install_stub_comfy_api

    from portrait_animation.hunyuan_portrait import preflight as hp
    from portrait_animation.hunyuan_portrait.pipeline import PortraitSettings

    install_stub_comfy_api(monkeypatch)
    import importlib

    node = importlib.import_module("portrait_animation.nodes.hunyuan_portrait")
    seen = []

    def cannot_trace(*args, **kwargs):
        raise RuntimeError("data-dependent shape")

    monkeypatch.setattr(hp, "auto_decode_chunk", cannot_trace)
    monkeypatch.setattr(hp, "ensure", lambda bundle, conditions, settings, rt, full_size=None, speed=None:
                        seen.append(settings))
    conditions = types.SimpleNamespace(num_frames=10, original=None)
    asked = PortraitSettings(decode_chunk_size=8)  # what the node builds for decode_chunk 0 (auto)
    settings = node.preflight_settings(None, conditions, asked, None, auto_decode=True, full=False)
    assert settings is asked and settings.decode_chunk_size == 8 and seen == [settings]

    def refuse(*args, **kwargs):
        raise pf.PreflightError("HunyuanPortrait will not fit")

    monkeypatch.setattr(hp, "ensure", refuse)
    with pytest.raises(pf.PreflightError):
        node.preflight_settings(None, conditions, PortraitSettings(decode_chunk_size=4), None, auto_decode=False,
                                full=False)
    forget_stub_nodes()
