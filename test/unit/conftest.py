"""Shared pytest fixtures: `onnx_check` imports an ONNX model for batch 1, runs a larger batch through our
interpreter and ONNX Runtime, and compares them; `zoo_model` turns ModelUnavailable into a skip with the reason."""
from __future__ import annotations

import numpy as np
import pytest


def compare(ours: np.ndarray, ref: np.ndarray, what: str, cos_min=0.99999, rel_err=1e-4):
    """Cosine similarity and max abs error relative to the reference's range."""
    ours = np.asarray(ours)
    ref = np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != reference {ref.shape}"
    if ref.dtype.kind in "biu":
        assert np.array_equal(ours, ref), f"{what}: integer outputs differ"
        return
    a, b = ours.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    assert np.isfinite(a).all(), f"{what}: non-finite values"
    rng = float(b.max() - b.min()) if b.size else 0.0
    err = float(np.abs(a - b).max()) if b.size else 0.0
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = 1.0 if na == nb == 0 else float(a @ b / max(na * nb, 1e-300))
    assert cos >= cos_min, f"{what}: cosine {cos:.8f} < {cos_min}"
    assert err <= rel_err * max(rng, 1e-6), f"{what}: max abs error {err:.3g} > {rel_err} x range {rng:.3g}"


def ort_run(path: str, feeds: dict) -> list:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.fixture
def onnx_check(tmp_path):
    """check(model_or_path, feeds, input_shapes=None, roundtrip=True) -> (graph, our outputs).

    `feeds` holds the full batch; the model is imported for a batch of 1 (the first sample is the import sample)
    and the whole batch runs at once. Outputs must match ONNX Runtime; the MLIR round trip must give the same."""
    from tpu_cal.frontend.onnx_import import ImportOptions, import_onnx
    from tpu_cal.interp.core import Interpreter
    from tpu_cal.ir import load_graph, save_graph

    def check(model, feeds: dict, input_shapes=None, roundtrip=True, cos_min=0.99999, rel_err=1e-4):
        if isinstance(model, str):
            path = model
        else:
            import onnx
            path = str(tmp_path / "model.onnx")
            onnx.save(model, path)
        if input_shapes is None:
            input_shapes = [(1,) + tuple(v.shape[1:]) for v in feeds.values()]
        sample = {k: v[:1] for k, v in feeds.items()}
        g = import_onnx(path, ImportOptions(input_shapes=input_shapes, test_input=sample))
        ours = Interpreter(g).run(dict(feeds))
        refs = ort_run(path, feeds)
        outs = [ours[o] for o in g.outputs]
        assert len(outs) == len(refs)
        for k, (o, r) in enumerate(zip(outs, refs)):
            compare(o, r, f"output {k} ({g.outputs[k]})", cos_min, rel_err)
        if roundtrip:
            mlir = str(tmp_path / "model.mlir")
            save_graph(g, mlir)
            g2 = load_graph(mlir)
            again = Interpreter(g2).run(dict(feeds))
            for o in g.outputs:
                np.testing.assert_array_equal(again[o], ours[o], err_msg=f"round trip changed {o}")
        return g, outs

    return check


@pytest.fixture
def zoo_model():
    """zoo_model(fn, *args) -> fn(*args), skipping with the reason when the model cannot be had here."""
    from tpu_cal.zoo import ModelUnavailable

    def get(fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except ModelUnavailable as e:
            pytest.skip(f"model unavailable: {e}")

    return get


@pytest.fixture(params=["native", "numpy"])
def either_path(request, monkeypatch):
    """Runs a test once with the C kernels of tpu_cal.native, once with the numpy paths (TPU_CAL_NO_NATIVE)."""
    from clitools import require_native
    if request.param == "native":
        require_native()
    else:
        monkeypatch.setenv("TPU_CAL_NO_NATIVE", "1")
    return request.param
