"""search_qtable's float runs and fused layers, and bias correction taken back from float layers.

The model: x -> c1 -> relu -> c2 -> relu (r2) -> c3 -> relu -> c4 = out, where channel 0 of r2 is 500x the other
channels and c3 does not read it, so per-tensor int8 on r2 rounds every channel that matters to zero. That error is in the tensor between the layers r2 (c2 + its ReLU) and r3 (c3 + its ReLU): lifting either
alone to float changes nothing (r2 is still cast to int8 for c3, or c3 still reads the int8 r2); only both
together keep r2 in float. So no single float layer helps and the run (r2, r3) fixes nearly everything.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from clitools import independent_cos, run_cli, search_engine

HW = 6
N = 10


def make_model(path: str) -> str:
    rng = np.random.default_rng(11)
    w1 = (rng.standard_normal((8, 4, 1, 1)) * 0.5).astype(np.float32)
    w2 = (rng.standard_normal((8, 8, 1, 1)) * 0.4).astype(np.float32)
    w2[0] = np.abs(w2[0]) * 500.0              # r2's channel 0: 500x the others (and positive: the ReLU keeps it)
    b2 = np.full(8, 0.2, np.float32)
    w3 = (rng.standard_normal((8, 8, 1, 1)) * 0.4).astype(np.float32)
    w3[:, 0] = 0.0                             # and nothing reads it: it only sets r2's threshold
    w4 = (rng.standard_normal((4, 8, 1, 1)) * 0.4).astype(np.float32)
    inits = [nh.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (w4, "w4"))]
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"]), h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2", "b2"], ["c2"]), h.make_node("Relu", ["c2"], ["r2"]),
             h.make_node("Conv", ["r2", "w3"], ["c3"]), h.make_node("Relu", ["c3"], ["r3"]),
             h.make_node("Conv", ["r3", "w4"], ["out"])]
    g = h.make_graph(nodes, "run", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, HW, HW])],
                     [h.make_tensor_value_info("out", T.FLOAT, [1, 4, HW, HW])], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("regions")
    rc, _, err = run_cli("transform", "--model_name", "m", "--model_def", make_model(str(d / "m.onnx")),
                         "--mlir", d / "m.mlir")
    assert rc == 0, err
    (d / "ds").mkdir()
    rng = np.random.default_rng(5)
    for i in range(N):
        np.save(d / "ds" / f"s{i:02d}.npy", np.abs(rng.standard_normal((1, 4, HW, HW))).astype(np.float32))
    return d


def _setup(model, **kw):
    return search_engine(model, "max", 4, **kw)


def test_windows_are_the_runs_that_hold_the_anchor(model):
    from tpu_cal.search.qtable import Chains, search_layers
    from tpu_cal.chips import chip
    g, res, _, _ = _setup(model)
    layers, _, _ = search_layers(g, chip("bm1684x"), res.table, {}, False)
    names = [n.name for n in layers]
    assert names == ["r1_Relu", "r2_Relu", "r3_Relu", "out_Conv"]      # each conv + ReLU is one layer
    ch = Chains(g, layers)
    assert ch.prev == {"r2_Relu": "r1_Relu", "r3_Relu": "r2_Relu", "out_Conv": "r3_Relu"}
    for anchor in names:
        for size in (1, 2, 3, 4, 5):
            brute = [tuple(names[i:i + size]) for i in range(len(names) - size + 1)
                     if anchor in names[i:i + size]]
            assert ch.windows(anchor, size) == brute, (anchor, size)


def test_search_finds_the_float_run_no_single_layer_gives(model):
    from tpu_cal.search import qtable as qs
    from tpu_cal.search.engine import Candidate
    g, res, feeds, eng = _setup(model)
    int8 = eng.reference(Candidate()).score.cos
    singles = {n: eng.score(Candidate(modes={n: "F16"})).cos for n in ("r1_Relu", "r2_Relu", "r3_Relu", "out_Conv")}
    both = eng.score(Candidate(modes={"r2_Relu": "F16", "r3_Relu": "F16"})).cos
    assert both == pytest.approx(independent_cos(g, res.table, feeds, {"r2_Relu": "F16", "r3_Relu": "F16"}),
                                 abs=1e-12)
    assert int8 < 0.99 and max(singles.values()) < int8 + 0.01 and both > 0.999, (int8, singles, both)
    r = qs.run(eng, g, res.stats, res.op_types, qs.QtableConfig(["max"], 0.999, 3), "m.mlir")
    assert r.reached and r.qtable == {"r2_Relu": "F16", "r3_Relu": "F16"}
    assert "try float layers ['r2_Relu', 'r3_Relu']" in "\n".join(r.log.lines)


def test_bias_correction_is_taken_back_from_float_layers(model, tmp_path):
    from tpu_cal import ir
    from tpu_cal.formats.qtable import read_qtable
    from tpu_cal.optimize.bias_correction import uncorrect
    from tpu_cal.search.engine import Candidate, Engine
    saved = tmp_path / "bc.mlir"
    rc, out, err = run_cli("calibrate", model / "m.mlir", "--dataset", model / "ds", "--tune_num", "0",
                           "--cali_method", "use_max", "--bc", "--min_layer_cos", "1.0", "--inference_num", "8",
                           "--workers", "1", "--search", "search_qtable", "--expected_cos", "0.999",
                           "--max_float_layers", "3", "--quantize_method_list", "MAX", "--quantize_table",
                           tmp_path / "q", "--save_mlir", saved, "-o", tmp_path / "cali")
    assert rc == 0, err
    floats = set(read_qtable(str(tmp_path / "q")).modes)
    assert floats == {"r2_Relu", "r3_Relu"}
    assert "bias correction taken back from 2 float layer(s): c2_Conv, c3_Conv" in out
    orig, bc = ir.load_graph(str(model / "m.mlir")), ir.load_graph(str(saved))

    def bias(g, name):
        nodes = g.node_map()
        b = nodes[name].inputs[2] if len(nodes[name].inputs) > 2 else None
        return g.weights[nodes[b].attrs["name"]] if b else np.zeros(nodes[name].shape[1], np.float32)
    # c2 and c3 (float with their ReLUs r2, r3) have their own biases back; c1 (int8) keeps its correction
    for name in ("c2_Conv", "c3_Conv"):
        np.testing.assert_allclose(bias(bc, name), bias(orig, name), rtol=0, atol=1e-6)
    assert np.abs(bias(bc, "c1_Conv") - bias(orig, "c1_Conv")).max() > 1e-6
    # what the search printed for the mix is what the written module with the qtable gives
    import re
    from tpu_cal.formats.cali_table import read_cali_table
    printed = float(re.search(r"^mix model outputs_cos:([0-9.]+)", out, re.M).group(1))
    feeds = _setup(model)[2]
    table = read_cali_table(str(tmp_path / "new_cali_table.txt")).thresholds
    assert printed == pytest.approx(independent_cos(bc, table, feeds, {n: "F16" for n in floats},
                                                      reference=orig), abs=2e-6)
    # the engine scores a float layer with its correction taken back, as a full computation of that module does
    g, res, feeds, _ = _setup(model)
    from tpu_cal.dataset import Dataset
    from tpu_cal.optimize import run_bias_correction
    from tpu_cal.calibration import attach
    from tpu_cal.preprocess import Preprocess
    nodes = g.node_map()
    ds = Dataset([nodes[i] for i in g.inputs], Preprocess.from_attrs(g.attrs.get("preprocess")), str(model / "ds"))
    original = copy.deepcopy(g)
    attach(g, res.table)
    corr = run_bias_correction(g, ds, 8, 4, "bm1684x", 1.0)
    assert set(corr) == {"c1_Conv", "c2_Conv", "c3_Conv", "out_Conv"}
    eng = Engine(g, res.table, "bm1684x", feeds, workers=1, batch_size=4, show_progress=False,
                 reference_graph=original, bias_corrections=corr)
    modes = {"r1_Relu": "F16", "r2_Relu": "F16", "r3_Relu": "F16"}      # only out_Conv in int8
    undone = copy.deepcopy(g)
    assert uncorrect(undone, corr, ["c1_Conv", "c2_Conv", "c3_Conv"]) == ["c1_Conv", "c2_Conv", "c3_Conv"]
    want = independent_cos(undone, res.table, feeds, modes, reference=original)
    assert eng.score(Candidate(modes=modes)).cos == pytest.approx(want, abs=1e-12)
    kept = independent_cos(g, res.table, feeds, modes, reference=original)
    assert abs(kept - want) > 1e-9          # the correction kept would measure something else
