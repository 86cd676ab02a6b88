"""SmoothQuant: the rewrite against a brute-force reference on a small module, float equivalence on
all-MiniLM-L6-v2, and `tpu-cal calibrate --sq --save_mlir` -> `tpu-cal export-qdq` judged by ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

from clitools import run_cli
from tpu_cal import ir
from tpu_cal.graph import Graph, Node
from tpu_cal.interp.core import Interpreter
from tpu_cal.optimize.common import ChannelAbsMax
from tpu_cal.optimize.smoothquant import smoothquant, targets


def small_graph(rng) -> Graph:
    """x [1,6,4] -> layer_norm -> (q, k: matmuls; residual add of ln and q) ; x -> conv-free matmul v."""
    K = 4
    w = {"g": rng.uniform(0.5, 3, K), "b": rng.normal(0, 1, K), "wq": rng.normal(0, 1, (K, K)),
         "bq": rng.normal(0, 1, K), "wk": rng.normal(0, 0.1, (K, 3)), "wv": rng.normal(0, 1, (K, 2))}
    w["g"][1] = 20.0            # an outlier channel
    w = {k: np.asarray(v, np.float32) for k, v in w.items()}
    N = lambda op, name, ins, shape, attrs=None: Node(op, name, ins, attrs or {}, shape)  # noqa: E731
    nodes = [N("top.input", "x", [], (1, 6, K))]
    for k, v in w.items():
        nodes.append(Node("top.weight", k, [], {"name": k}, v.shape))
    nodes += [N("top.layer_norm", "ln", ["x", "g", "b"], (1, 6, K), {"axis": 2, "eps": 1e-5}),
              N("top.matmul", "q", ["ln", "wq", "bq"], (1, 6, K)),
              N("top.matmul", "k", ["ln", "wk", None], (1, 6, 3)),
              N("top.add", "res", ["q", "ln"], (1, 6, K)),
              N("top.matmul", "v", ["x", "wv", None], (1, 6, 2))]
    return Graph("small", ["x"], ["res", "k", "v"], nodes, w)


def reference(x: np.ndarray, w: dict, alpha: float):
    """Brute force: the layer norm by its formula, abs-max per channel, s by the paper's formula."""
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    ln = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * w["g"] + w["b"]
    a_ln = np.abs(ln).reshape(-1, ln.shape[-1]).max(0)
    wr = np.maximum(np.abs(w["wq"]).max(1), np.abs(w["wk"]).max(1))
    s_ln = a_ln ** alpha / wr ** (1 - alpha)
    a_x = np.abs(x).reshape(-1, x.shape[-1]).max(0)
    s_x = a_x ** alpha / np.abs(w["wv"]).max(1) ** (1 - alpha)
    return s_ln, s_x


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_smoothquant_matches_brute_force(alpha):
    rng = np.random.default_rng(3)
    g = small_graph(rng)
    w0 = {k: v.copy() for k, v in g.weights.items()}
    x = rng.normal(0, 2, (3, 6, 4)).astype(np.float32)
    ref_out = Interpreter(g).run({"x": x})
    col = ChannelAbsMax({n: t.axis for n, t in targets(g).items()})
    Interpreter(g, [col]).run({"x": x})
    rows = smoothquant(g, col.absmax, alpha)
    s_ln, s_x = reference(x, w0, alpha)
    nodes = g.node_map()

    def wt(name):
        return g.weights[nodes[name].attrs["name"]]

    np.testing.assert_allclose(wt("g"), w0["g"] / s_ln, rtol=1e-5)
    np.testing.assert_allclose(wt("b"), w0["b"] / s_ln, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(wt("wq"), w0["wq"] * s_ln[:, None], rtol=1e-5)
    np.testing.assert_allclose(wt("wk"), w0["wk"] * s_ln[:, None], rtol=1e-5)
    np.testing.assert_allclose(wt("wv"), w0["wv"] * s_x[:, None], rtol=1e-5)
    np.testing.assert_allclose(wt("bq"), w0["bq"])                       # a reader's bias is not scaled
    # the residual add reads ln through a restoring mul by s; v reads x through an inserted mul by 1/s
    assert nodes["res"].inputs[1] == "ln_sq_restore"
    np.testing.assert_allclose(g.weights[nodes[nodes["ln_sq_restore"].inputs[1]].attrs["name"]], s_ln, rtol=1e-5)
    assert nodes["v"].inputs[0] == "x_sq"
    np.testing.assert_allclose(g.weights[nodes[nodes["x_sq"].inputs[1]].attrs["name"]], 1 / s_x, rtol=1e-5)
    assert [r[2] for r in rows] == ["folded into layer_norm gamma/beta", "mul op inserted"]
    # the outlier channel of ln is tamed, and the function is the same
    assert rows[0][6] < rows[0][5]
    out = Interpreter(g).run({"x": x})
    for o in g.outputs:
        np.testing.assert_allclose(out[o], ref_out[o], rtol=1e-4, atol=1e-5)
    # and the module still verifies as MLIR
    with ir.context() as ctx:
        ir.parse(g.to_mlir(), ctx)


def test_smoothquant_without_insert_leaves_unabsorbable_inputs():
    rng = np.random.default_rng(4)
    g = small_graph(rng)
    x = rng.normal(0, 2, (2, 6, 4)).astype(np.float32)
    col = ChannelAbsMax({n: t.axis for n, t in targets(g).items()})
    Interpreter(g, [col]).run({"x": x})
    wv = g.weights["wv"].copy()
    rows = smoothquant(g, col.absmax, 0.5, insert=False)
    assert rows[1][2].startswith("skipped")
    nodes = g.node_map()
    assert nodes["v"].inputs[0] == "x" and np.array_equal(g.weights[nodes["wv"].attrs["name"]], wv)


@pytest.mark.real
def test_minilm_float_outputs_unchanged(zoo_model):
    from tpu_cal.frontend.onnx_import import import_onnx
    from tpu_cal.zoo import minilm
    g = import_onnx(zoo_model(minilm.minilm_onnx))
    feeds = zoo_model(minilm.samples, 3)
    col = ChannelAbsMax({n: t.axis for n, t in targets(g).items()})
    ref = Interpreter(g, [col]).run(feeds)[g.outputs[0]]
    rows = smoothquant(g, col.absmax, 0.5)
    # 13 layer norms feed matmuls: the embedding one and two per layer (before attention and before the FFN)
    # all absorb 1/s; the attention-output and FFN-output matmuls read a reshape and a GELU: inserted scale ops
    hows = [r[2] for r in rows]
    assert hows.count("folded into layer_norm gamma/beta") == 12 and hows.count("mul op inserted") == 12
    out = Interpreter(g).run(feeds)[g.outputs[0]]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_calibrate_sq_saves_rewritten_weights_and_exports(tmp_path):
    """--sq --save_mlir: the saved module holds the smoothed weights, export-qdq exports it, and ONNX Runtime's
    float run of the export equals our float run of the original module."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(5)
    g = small_graph(rng)
    mlir = str(tmp_path / "small.mlir")
    ir.save_graph(g, mlir)
    data = tmp_path / "data"
    data.mkdir()
    xs = rng.normal(0, 2, (4, 1, 6, 4)).astype(np.float32)
    for i, x in enumerate(xs):
        np.save(data / f"s{i}.npy", x)
    rc, out, err = run_cli("calibrate", mlir, "--dataset", data, "--sq", "--sq_alpha", "0.6", "--tune_num", "0",
                           "-o", tmp_path / "t.cali", "--save_mlir", tmp_path / "cal.mlir")
    assert rc == 0, err
    assert "smoothquant (alpha 0.6): 2 activations" in out
    cal = ir.load_graph(str(tmp_path / "cal.mlir"))
    cn = cal.node_map()
    assert cal.weights[cn["g"].attrs["name"]][1] < g.weights["g"][1] / 1.5     # the outlier gamma shrank
    assert "x_sq" in cn and cn["x_sq"].extra.get("cali.threshold")
    for mode in ("F32", "INT8"):
        rc, _, err = run_cli("export-qdq", tmp_path / "cal.mlir", "--quantize", mode, "-o", tmp_path / f"{mode}.onnx")
        assert rc == 0, err
    so = ort.SessionOptions()
    so.log_severity_level = 3
    x = xs.reshape(4, 6, 4)[:1]
    ref = Interpreter(g).run({"x": x})
    sess = ort.InferenceSession(str(tmp_path / "F32.onnx"), so, providers=["CPUExecutionProvider"])
    for name, got in zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})):
        np.testing.assert_allclose(got, ref[name], rtol=1e-4, atol=1e-5)
    q = ort.InferenceSession(str(tmp_path / "INT8.onnx"), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert all(np.isfinite(a).all() for a in q)
