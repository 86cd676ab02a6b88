"""Weight equalization: one pair against the closed formula (grouped conv), a chain of three convs equalized to
convergence, ReLU6 chains skipped, and float equivalence on EfficientNet-Lite0."""
from __future__ import annotations

import numpy as np
import pytest

from tpu_cal.graph import Graph, Node
from tpu_cal.interp.core import Interpreter
from tpu_cal.optimize.weight_equalization import equalize


def conv(name, x, w, b, shape, k, group=1):
    return Node("top.conv", name, [x, w, b], {"kernel_shape": [k, k], "strides": [1, 1], "pads": [k // 2] * 4,
                                               "dilations": [1, 1], "group": group}, shape)


def chain(rng, act2="top.leaky_relu"):
    """x [1,3,6,6] -> conv 3x3 (4) -> relu -> grouped conv 3x3 (group 2, 6 out) -> act2 -> conv 1x1 (5)."""
    w = {"w1": rng.normal(0, 1, (4, 3, 3, 3)) * rng.uniform(0.05, 3, (4, 1, 1, 1)), "b1": rng.normal(0, 1, 4),
         "w2": rng.normal(0, 1, (6, 2, 3, 3)) * rng.uniform(0.05, 3, (1, 2, 1, 1)), "b2": rng.normal(0, 1, 6),
         "w3": rng.normal(0, 1, (5, 6, 1, 1)) * rng.uniform(0.05, 3, (1, 6, 1, 1))}
    w = {k: np.asarray(v, np.float32) for k, v in w.items()}
    nodes = [Node("top.input", "x", [], {}, (1, 3, 6, 6))]
    nodes += [Node("top.weight", k, [], {"name": k}, v.shape) for k, v in w.items()]
    a2 = {"alpha": 0.1} if act2 == "top.leaky_relu" else {"min": 0.0, "max": 6.0}
    nodes += [conv("c1", "x", "w1", "b1", (1, 4, 6, 6), 3), Node("top.relu", "r", ["c1"], {}, (1, 4, 6, 6)),
              conv("c2", "r", "w2", "b2", (1, 6, 6, 6), 3, group=2), Node(act2, "a", ["c2"], a2, (1, 6, 6, 6)),
              conv("c3", "a", "w3", None, (1, 5, 6, 6), 1)]
    return Graph("chain", ["x"], ["c3"], nodes, w)


def weights(g, conv_name, i):
    nodes = g.node_map()
    return g.weights[nodes[nodes[conv_name].inputs[i]].attrs["name"]]


def in_ranges_brute(w2, group):
    """max |w2[o, i mod cin_g]| over the filters o of the group that reads input channel i, channel by channel."""
    cout, cin_g = w2.shape[:2]
    out = []
    for i in range(cin_g * group):
        g_, j = divmod(i, cin_g)
        out.append(max(abs(float(v)) for o in range(g_ * cout // group, (g_ + 1) * cout // group)
                       for v in w2[o, j].ravel()))
    return np.array(out)


def test_pair_matches_closed_formula():
    rng = np.random.default_rng(11)
    g = chain(rng, act2="top.clip")              # c2 -> relu6 -> c3 is skipped: only the first pair
    w0 = {k: v.astype(np.float64) for k, v in g.weights.items()}
    x = rng.normal(0, 1, (2, 3, 6, 6)).astype(np.float32)
    ref = Interpreter(g).run({"x": x})["c3"]
    rows, skipped, sweeps = equalize(g)
    assert [r[:3] for r in rows] == [["c1", "r", "c2"]]
    assert [s[:3] for s in skipped] == [["c2", "a", "c3"]] and "fixed bound" in skipped[0][3]
    r1 = np.abs(w0["w1"]).reshape(4, -1).max(1)
    r2 = in_ranges_brute(w0["w2"], 2)
    s = np.sqrt(r1 / r2)
    np.testing.assert_allclose(weights(g, "c1", 1), w0["w1"] / s[:, None, None, None], rtol=1e-5)
    np.testing.assert_allclose(weights(g, "c1", 2), w0["b1"] / s, rtol=1e-5)
    w2 = w0["w2"].copy()
    for o in range(6):
        for j in range(2):
            w2[o, j] *= s[(o // 3) * 2 + j]
    np.testing.assert_allclose(weights(g, "c2", 1), w2, rtol=1e-5)
    np.testing.assert_allclose(weights(g, "c3", 1), w0["w3"])          # beyond the ReLU6: untouched
    assert rows[0][5] == pytest.approx(1.0) and rows[0][4] > 1.5
    np.testing.assert_allclose(Interpreter(g).run({"x": x})["c3"], ref, rtol=1e-4, atol=1e-5)


def test_chain_converges_to_equal_ranges():
    rng = np.random.default_rng(12)
    g = chain(rng)
    x = rng.normal(0, 1, (2, 3, 6, 6)).astype(np.float32)
    ref = Interpreter(g).run({"x": x})["c3"]
    rows, skipped, sweeps = equalize(g, max_iter=500, tol=1e-6)
    assert [r[:3] for r in rows] == [["c1", "r", "c2"], ["c2", "a", "c3"]] and not skipped
    assert 2 < sweeps < 500
    w1, w2, w3 = (weights(g, c, 1).astype(np.float64) for c in ("c1", "c2", "c3"))
    np.testing.assert_allclose(np.abs(w1).reshape(4, -1).max(1), in_ranges_brute(w2, 2), rtol=1e-4)
    np.testing.assert_allclose(np.abs(w2).reshape(6, -1).max(1), in_ranges_brute(w3, 1), rtol=1e-4)
    np.testing.assert_allclose(Interpreter(g).run({"x": x})["c3"], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.real
def test_efficientnet_float_outputs_unchanged(zoo_model):
    from tpu_cal.frontend.onnx_import import ImportOptions, import_onnx
    from tpu_cal.zoo import efficientnet
    g = import_onnx(zoo_model(efficientnet.efficientnet_lite0), ImportOptions(input_shapes=[[1, 3, 224, 224]]))
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (2, 3, 224, 224)).astype(np.float32)
    ref = Interpreter(g).run({g.inputs[0]: x})[g.outputs[0]]
    rows, skipped, _ = equalize(g)
    # project -> expand without a residual between them, and the last project -> head; every other chain runs
    # through a ReLU6 (clip 0..6) and is skipped with the reason
    assert len(rows) == 2 and all(r[5] == pytest.approx(1.0) for r in rows)
    assert len(skipped) == 32 and all("clip(0.0, 6.0) has a fixed bound" in s[3] for s in skipped)
    out = Interpreter(g).run({g.inputs[0]: x})[g.outputs[0]]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
