"""onnxruntime sessions are shared between owners with identical settings and freed with their last owner
(issue 7, item 7: a server that builds a toolkit, an identity embedder or a vocal separator per job)."""
from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from portrait_animation.motion.hellomeme import toolkit  # noqa: E402
from portrait_animation.runtime import onnx as onnx_sessions  # noqa: E402


def write_scale_model(path, factor: float):
    """A one-node ONNX model ``y = x * factor`` (x: float32 [1, 4])."""
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])], "scale",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.numpy_helper.from_array(np.array([factor], np.float32), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(autouse=True)
def empty_cache():
    onnx_sessions.clear_shared_sessions()
    yield
    onnx_sessions.clear_shared_sessions()


def run(session, value: float = 1.0) -> float:
    return float(session.run(None, {"x": np.full((1, 4), value, np.float32)})[0][0, 0])


def test_identical_settings_share_a_session(tmp_path):
    path = write_scale_model(tmp_path / "a.onnx", 2.0)
    first = onnx_sessions.create_session(path, "cpu")
    assert onnx_sessions.create_session(tmp_path / "." / "a.onnx", "cpu") is first  # same file, other spelling
    other = write_scale_model(tmp_path / "b.onnx", 3.0)
    assert onnx_sessions.create_session(other, "cpu") is not first
    assert run(onnx_sessions.create_session(other, "cpu")) == 3.0
    # the wrappers the toolkit builds per owner share it too
    a = toolkit.LandmarkModel.from_file(path, "cpu")
    b = toolkit.LandmarkModel.from_file(path, "cpu")
    assert a.session is b.session is first


def test_a_replaced_file_gets_a_new_session(tmp_path):
    path = write_scale_model(tmp_path / "m.onnx", 2.0)
    old = onnx_sessions.create_session(path, "cpu")
    write_scale_model(path, 5.0)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a distinct modification time
    new = onnx_sessions.create_session(path, "cpu")
    assert new is not old and run(new) == 5.0 and run(old) == 2.0


def test_sessions_are_freed_with_their_last_owner(tmp_path):
    """The cache keeps a bounded number of sessions referenced; one it dropped lives while an owner holds it and is
    freed at once (no garbage collection needed) when the owner goes."""
    limit = onnx_sessions.SHARED_SESSIONS
    path = write_scale_model(tmp_path / "held.onnx", 2.0)
    owner = toolkit.LandmarkModel.from_file(path, "cpu")
    ref = weakref.ref(owner.session)
    for i in range(limit + 2):  # push it out of the cache
        onnx_sessions.create_session(write_scale_model(tmp_path / f"m{i}.onnx", float(i)), "cpu")
    assert len(onnx_sessions._sessions) == limit
    assert ref() is not None and run(owner.session) == 2.0  # the owner still holds it
    gc.disable()
    try:
        del owner
        assert ref() is None
    finally:
        gc.enable()


def test_vocal_separation_shares_its_session(tmp_path, monkeypatch):
    from portrait_animation.audio import separation

    path = write_scale_model(tmp_path / "mdx.onnx", 4.0)
    built = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    first = separation.onnx_spec_model(path)
    second = separation.onnx_spec_model(path)
    assert len(built) == 1
    x = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(first(x), second(x))
    np.testing.assert_array_equal(first(x), np.full((1, 4), 4.0, np.float32))
