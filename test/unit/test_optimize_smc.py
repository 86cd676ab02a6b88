"""Softmax correction: S and the thresholds against a brute-force reference on a small attention, the int8
division being an exact identity after lowering, and float equivalence on all-MiniLM-L6-v2."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from tpu_cal.graph import Graph, Node
from tpu_cal.interp.core import Interpreter
from tpu_cal.lowering import assign_precision, lower
from tpu_cal.optimize import softmax_correction as smc


def attention(rng) -> tuple[Graph, dict]:
    """scores [1,2,5,5] -> softmax -> where(isnan(p), 0, p) -> matmul with v [1,2,5,3] (the exported guard)."""
    N = lambda op, name, ins, shape, attrs=None, dtype="float32": Node(op, name, ins, attrs or {}, shape, dtype)  # noqa
    nodes = [N("top.input", "s", [], (1, 2, 5, 5)), N("top.input", "v", [], (1, 2, 5, 3)),
             N("top.softmax", "p", ["s"], (1, 2, 5, 5), {"axis": 3}),
             N("top.isnan", "nan", ["p"], (1, 2, 5, 5), dtype="bool"),
             N("top.weight", "zero", [], (1,), {"name": "zero"}),
             N("top.where", "guard", ["nan", "zero", "p"], (1, 2, 5, 5)),
             N("top.matmul", "o", ["guard", "v", None], (1, 2, 5, 3)),
             N("top.relu", "out", ["o"], (1, 2, 5, 3))]
    g = Graph("att", ["s", "v"], ["out"], nodes, {"zero": np.zeros(1, np.float32)})
    feeds = {"s": rng.normal(0, 3, (4, 2, 5, 5)).astype(np.float32), "v": rng.normal(0, 1, (4, 2, 5, 3)).astype(np.float32)}
    return g, feeds


def test_softmax_correction_matches_brute_force():
    rng = np.random.default_rng(7)
    g, feeds = attention(rng)
    ref = Interpreter(g).run(feeds)
    found = smc.find(g)
    assert [(a.softmax, a.chain, a.matmul) for a in found] == [("p", ["p", "guard"], "o")]
    col = smc.MaxProb(["p"])
    Interpreter(g, [col]).run(feeds)
    S = float(col_scale(feeds))
    assert col.scales()["p"] == pytest.approx(S, rel=1e-6)
    rows = smc.rewrite(g, col.scales())
    assert rows == [["p", "o", pytest.approx(S), "p_smc", "o_smc"]]
    nodes = g.node_map()
    assert nodes["o"].inputs[0] == "p_smc" and nodes["p_smc"].inputs[0] == "guard"
    assert nodes["out"].inputs == ["o_smc"]
    assert float(g.weights[nodes[nodes["p_smc"].inputs[1]].attrs["name"]]) == pytest.approx(1 / S, rel=1e-6)
    assert float(g.weights[nodes[nodes["o_smc"].inputs[1]].attrs["name"]]) == pytest.approx(S, rel=1e-6)
    out = Interpreter(g).run(feeds)
    np.testing.assert_allclose(out["out"], ref["out"], rtol=1e-5, atol=1e-6)
    # thresholds: a table calibrated after the rewrite (every op has an entry) keeps the matmul's own
    table = {"s": (9.0, -9, 9), "v": (3.0, -3, 3), "p": (1.0, 0.0, 1.0), "guard": (0.0625, 0.0, 1.0),
             "p_smc": (0.1, 0, 1 / S), "o": (2.0 / S, -1.0, 2.0 / S), "o_smc": (2.0, -1.0, 2.0), "out": (2.0, 0, 2)}
    t = dict(table)
    assert smc.fix_thresholds(g, t) == 1
    assert t["p"] == (pytest.approx(S), 0.0, pytest.approx(S))
    assert t["guard"] == (pytest.approx(S), 0.0, pytest.approx(S))
    assert t["p_smc"] == (1.0, 0.0, 1.0)
    assert t["o"] == table["o"] and t["o_smc"] == table["o_smc"]
    # a table from before the rewrite (no entry for the restoring op): the matmul's range moves there
    t = {k: v for k, v in table.items() if k not in ("p_smc", "o_smc")}
    t["o"] = (2.0, -1.0, 2.0)
    smc.fix_thresholds(g, t)
    assert t["o_smc"] == (2.0, -1.0, 2.0) and t["o"] == pytest.approx((2.0 / S, -1.0 / S, 2.0 / S))


def test_int8_division_is_an_exact_identity():
    """With the fixed thresholds the quantized division reproduces the probabilities' int8 values exactly, so
    the matmul sees prob quantized with step S/127."""
    from tpu_cal.calibration import attach
    from tpu_cal.simulate import run_both
    rng = np.random.default_rng(8)
    g, feeds = attention(rng)
    col = smc.MaxProb(["p"])
    Interpreter(g, [col]).run(feeds)
    smc.rewrite(g, col.scales())
    S = col.scales()["p"]
    table = {"s": (9.0, -9, 9), "v": (3.0, -3, 3), "p": (1.0, 0, 1), "guard": (1.0, 0, 1), "p_smc": (1 / S, 0, 1 / S),
             "o": (3.0 / S, -3 / S, 3 / S), "o_smc": (3.0, -3, 3), "out": (3.0, 0, 3)}
    smc.fix_thresholds(g, table)
    attach(g, table)
    g2 = copy.deepcopy(g)
    assign_precision(g2, "bm1684x", "INT8")
    lw = lower(g2, "bm1684x")
    f, q = run_both(g2, lw, feeds, names=["guard", "p_smc"])
    step = S / 127
    np.testing.assert_allclose(q["p_smc"] * S, q["guard"], atol=1e-6)          # identity on the integers
    np.testing.assert_allclose(q["guard"], np.clip(np.round(f["guard"] / step), 0, 127) * step, atol=1e-6)


@pytest.mark.real
def test_minilm_attention_corrected_float_unchanged(zoo_model):
    from tpu_cal.frontend.onnx_import import import_onnx
    from tpu_cal.zoo import minilm
    g = import_onnx(zoo_model(minilm.minilm_onnx))
    feeds = zoo_model(minilm.samples, 2)
    found = smc.find(g)
    assert len(found) == 6 and all(len(a.chain) == 2 for a in found)      # softmax -> NaN guard -> P @ V
    col = smc.MaxProb([a.softmax for a in found])
    ref = Interpreter(g, [col]).run(feeds)[g.outputs[0]]
    assert all(0 < s < 1 for s in col.scales().values())
    smc.rewrite(g, col.scales())
    out = Interpreter(g).run(feeds)[g.outputs[0]]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_calibrate_smc_saves_the_correction_and_exports(tmp_path):
    """--smc --save_mlir: the saved module holds the division / multiplication with their thresholds, the
    cali_table names them, and export-qdq exports it; ONNX Runtime's float run equals our float run."""
    ort = pytest.importorskip("onnxruntime")
    from clitools import run_cli
    from tpu_cal import ir
    from tpu_cal.formats.cali_table import read_cali_table
    rng = np.random.default_rng(9)
    g, feeds = attention(rng)
    mlir = str(tmp_path / "att.mlir")
    ir.save_graph(g, mlir)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        np.savez(data / f"s{i}.npz", s=feeds["s"][i:i + 1], v=feeds["v"][i:i + 1])
    rc, out, err = run_cli("calibrate", mlir, "--dataset", data, "--smc", "--tune_num", "0", "-o", tmp_path / "t.cali",
                           "--save_mlir", tmp_path / "cal.mlir")
    assert rc == 0, err
    assert "softmax correction: 1 of 1 attention softmaxes" in out
    S = float(col_scale(feeds))
    table = read_cali_table(str(tmp_path / "t.cali")).thresholds
    assert table["p_smc"][0] == 1.0 and table["p"][0] == pytest.approx(S, rel=1e-5)
    cal = ir.load_graph(str(tmp_path / "cal.mlir"))
    cn = cal.node_map()
    assert cn["p_smc"].extra["smc.scale"] == pytest.approx(S, rel=1e-5) and cn["out"].inputs == ["o_smc"]
    for mode in ("F32", "INT8"):
        rc, _, err = run_cli("export-qdq", tmp_path / "cal.mlir", "--quantize", mode, "-o", tmp_path / f"{mode}.onnx")
        assert rc == 0, err
    so = ort.SessionOptions()
    so.log_severity_level = 3
    x = {k: v[:1] for k, v in feeds.items()}
    got = ort.InferenceSession(str(tmp_path / "F32.onnx"), so, providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(got, Interpreter(g).run(x)["out"], rtol=1e-4, atol=1e-6)


def col_scale(feeds) -> float:
    """Brute force: the expected largest probability of a softmax row, from the scores."""
    e = np.exp(feeds["s"].astype(np.float64) - feeds["s"].max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).max(-1).mean()
