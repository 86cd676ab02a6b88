"""Bias correction: the measured per-channel error against a brute-force int8 computation, the error gone after
the correction, and `tpu-cal calibrate --we --bc --save_mlir` -> `tpu-cal export-qdq` run by ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

from clitools import run_cli
from tpu_cal import ir
from tpu_cal.calibration import attach
from tpu_cal.dataset import Dataset
from tpu_cal.graph import Graph, Node
from tpu_cal.interp.core import Interpreter
from tpu_cal.optimize.bias_correction import correct, measure
from tpu_cal.preprocess import Preprocess


def linear(rng, xs_dir) -> tuple[Graph, np.ndarray]:
    """x [1,16,8] (non-negative, like a ReLU's output) -> matmul W [8,6] + b; thresholds attached."""
    w = rng.normal(0, 1, (8, 6)).astype(np.float32)
    b = rng.normal(0, 0.1, 6).astype(np.float32)
    nodes = [Node("top.input", "x", [], {}, (1, 16, 8)), Node("top.weight", "w", [], {"name": "w"}, (8, 6)),
             Node("top.weight", "b", [], {"name": "b"}, (6,)), Node("top.matmul", "y", ["x", "w", "b"], {}, (1, 16, 6))]
    g = Graph("lin", ["x"], ["y"], nodes, {"w": w, "b": b})
    xs = np.abs(rng.normal(0.5, 1, (6, 1, 16, 8))).astype(np.float32)
    for i, x in enumerate(xs):
        np.save(xs_dir / f"s{i}.npy", x)
    th_x = float(xs.max())
    y = Interpreter(g).run({"x": xs.reshape(6, 16, 8)})["y"]
    th_y = float(np.abs(y).max())
    attach(g, {"x": (th_x, 0.0, th_x), "y": (th_y, float(y.min()), float(y.max()))})
    return g, xs.reshape(6, 16, 8)


def brute_force_error(g: Graph, xs: np.ndarray, part: str = "output") -> np.ndarray:
    """int8 by hand: x and y symmetric per tensor, w per output channel, all rounding half away from zero;
    part "weights": only the int8 weights' share, (xq @ (wq - w))."""
    def q(v, scale):
        t = np.asarray(v, np.float64) / scale
        return np.clip(np.sign(t) * np.floor(np.abs(t) + 0.5), -128, 127)
    nodes = g.node_map()
    s_x = nodes["x"].extra["cali.threshold"] / 127
    s_y = nodes["y"].extra["cali.threshold"] / 127
    w = g.weights["w"].astype(np.float64)
    s_w = np.abs(w).max(axis=0) / 127
    xq = q(xs, s_x) * s_x
    acc = xq @ (q(w, s_w) * s_w) + g.weights["b"]
    if part == "weights":
        return (xq @ (q(w, s_w) * s_w - w)).reshape(-1, 6).mean(axis=0)
    yq = q(acc, s_y) * s_y
    return (yq - (xq @ w + g.weights["b"])).reshape(-1, 6).mean(axis=0)


def dataset(g, folder):
    return Dataset([g.node_map()["x"]], Preprocess.from_attrs(None), str(folder))


def test_error_matches_brute_force_and_goes_away(tmp_path):
    rng = np.random.default_rng(21)
    g, xs = linear(rng, tmp_path)
    ds = dataset(g, tmp_path)
    stats = measure(g, ds, ds.take(0), "bm1684x", batch_size=4)
    cos, err = stats["y"]
    ref = brute_force_error(g, xs)
    s_y = g.node_map()["y"].extra["cali.threshold"] / 127
    np.testing.assert_allclose(err, ref, atol=0.02 * s_y)      # requantization by multiplier and shift: < 1 LSB
    assert np.abs(ref).max() > 0.1 * s_y                        # a real bias, not rounding noise
    _, werr = measure(g, ds, ds.take(0), "bm1684x", batch_size=4, part="weights")["y"]
    np.testing.assert_allclose(werr, brute_force_error(g, xs, "weights"), rtol=1e-4, atol=1e-7)
    b0 = g.weights["b"].copy()
    rows = correct(g, stats, min_layer_cos=1.0)                 # every layer is below a cosine of 1
    assert rows[0][5] == "yes"
    nodes = g.node_map()
    np.testing.assert_allclose(g.weights[nodes["b"].attrs["name"]], b0 - err, rtol=1e-6)
    # against the original float layer (bias b0) the corrected int8 layer is unbiased: its error against the
    # float layer with the new bias is still err (the weights' share), and the bias moved by -err
    _, after = measure(g, ds, ds.take(0), "bm1684x", batch_size=4)["y"]
    assert np.abs(after - err).mean() < 0.3 * np.abs(err).mean()
    # above the bar: nothing changes
    g2, _ = linear(np.random.default_rng(21), tmp_path)
    rows = correct(g2, measure(g2, ds, ds.take(0), "bm1684x"), min_layer_cos=0.5)
    assert rows[0][5] == "" and g2.node_map()["b"].attrs["name"] == "b"


def test_calibrate_we_bc_saves_rewritten_weights_and_exports(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from test_optimize_we import chain
    rng = np.random.default_rng(22)
    g = chain(rng)
    mlir = str(tmp_path / "chain.mlir")
    ir.save_graph(g, mlir)
    data = tmp_path / "data"
    data.mkdir()
    xs = rng.normal(0, 1, (4, 1, 3, 6, 6)).astype(np.float32)
    for i, x in enumerate(xs):
        np.save(data / f"s{i}.npy", x)
    rc, out, err = run_cli("calibrate", mlir, "--dataset", data, "--we", "--bc", "--bc_inference_num", "3",
                           "--min_layer_cos", "1.0", "--tune_num", "0", "-o", tmp_path / "t.cali",
                           "--save_mlir", tmp_path / "cal.mlir")
    assert rc == 0, err
    assert "weight equalization: 2 pairs" in out and "bias correction on 3 samples (bm1684x): 3 of 3" in out
    cal = ir.load_graph(str(tmp_path / "cal.mlir"))
    cn = cal.node_map()
    assert cn["w1"].attrs["name"] == "w1_we" and not np.allclose(cal.weights["w1_we"], g.weights["w1"])
    assert cn["c3"].inputs[2] == "c3_bias_bc"                   # c3 had no bias: one was added
    rc, _, err = run_cli("export-qdq", tmp_path / "cal.mlir", "--quantize", "F32", "-o", tmp_path / "f.onnx")
    assert rc == 0, err
    rc, _, err = run_cli("export-qdq", tmp_path / "cal.mlir", "-o", tmp_path / "q.onnx")
    assert rc == 0, err
    so = ort.SessionOptions()
    so.log_severity_level = 3
    x = xs[0]
    ours = Interpreter(cal).run({"x": x})["c3"]
    got = ort.InferenceSession(str(tmp_path / "f.onnx"), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ours, rtol=1e-4, atol=1e-5)
    # the float function moved only by the bias corrections (we is exact): within a few int8 steps
    orig = Interpreter(g).run({"x": x})["c3"]
    assert np.abs(ours - orig).max() < 0.1 * np.abs(orig).max()
    q = ort.InferenceSession(str(tmp_path / "q.onnx"), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.isfinite(q).all()


def test_bad_flags_are_one_line(tmp_path):
    from clitools import assert_clean_error
    rng = np.random.default_rng(23)
    g, _ = linear(rng, tmp_path)
    mlir = str(tmp_path / "lin.mlir")
    ir.save_graph(g, mlir)
    for flags, needle in ((["--bc", "--processor", "nochip"], "nochip"), (["--sq", "--sq_alpha", "1.5"], "--sq_alpha"),
                          (["--bc", "--min_layer_cos", "2"], "--min_layer_cos"),
                          (["--we", "--bc"], "--save_mlir")):
        rc, _, err = run_cli("calibrate", mlir, "--dataset", tmp_path, "-o", tmp_path / "t.cali", *flags)
        assert_clean_error(rc, err, needle)
        assert not (tmp_path / "t.cali").exists()


def test_calibrate_bc_part_weights_folds_only_the_weights_share(tmp_path):
    """`tpu-cal calibrate --bc --bc_part weights`: the bias moves by exactly the int8 weights' mean error
    E[xq (wq - w)] (brute force), which does not depend on the output threshold calibration picks."""
    rng = np.random.default_rng(24)
    data = tmp_path / "data"
    data.mkdir()
    g, xs = linear(rng, data)
    mlir = str(tmp_path / "lin.mlir")
    ir.save_graph(g, mlir)
    rc, out, err = run_cli("calibrate", mlir, "--dataset", data, "--bc", "--bc_part", "weights",
                           "--bc_inference_num", "6", "--min_layer_cos", "1.0", "--tune_num", "0", "--cali_method",
                           "use_max", "-o", tmp_path / "t.cali", "--save_mlir", tmp_path / "cal.mlir")
    assert rc == 0, err
    cal = ir.load_graph(str(tmp_path / "cal.mlir"))
    b = cal.weights[cal.node_map()["b"].attrs["name"]]
    want = g.weights["b"] - brute_force_error(g, xs, "weights")
    np.testing.assert_allclose(b, want, rtol=1e-4, atol=1e-5)            # float32 weights and thresholds
    assert np.abs(b - g.weights["b"]).max() > 5e-3          # it did move, by far more than that
