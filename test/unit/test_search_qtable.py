"""search_qtable, run_sensitive_layer and the evaluation engine, on a small model whose answer is known by
construction: conv `c2_Conv` has, in every output channel, one weight 100x larger than the others on an input
channel that is zero, so per-channel int8 weights round its useful weights coarsely (no threshold can
fix that); every other layer quantizes well. So c2_Conv is the most sensitive layer, and the one float layer
worth having.

Scores are checked against an independent computation (clitools.independent_cos): the module lowered as
`tpu-cal lower` does and run in full, cosine per sample by `metrics.cosine`.
"""
from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from clitools import assert_clean_error, independent_cos, run_cli, search_engine

HW = 8
N = 12
OUTLIER = "c2_Conv"
LAYER = "r2_Relu"       # the search's name for c2_Conv and its ReLU: one layer, as TPU-MLIR's fused op


def make_model(path: str) -> str:
    """x -> c1 (3x3) -> relu -> c2 (1x1, outlier weights) -> relu -> c3 (1x1) -> relu -> c4 (1x1) = out."""
    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w1[0] = 0.0                          # channel 0 of r1 is 0 ...
    b1[0] = 0.0
    w2 = (rng.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32)
    w2[:, 0] = 30.0                      # ... that c2 reads with a weight 100x the others in every channel
    w3 = (rng.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32)
    w4 = (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32)
    inits = [nh.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (w3, "w3"), (w4, "w4"))]
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2"], ["c2"]),
             h.make_node("Relu", ["c2"], ["r2"]),
             h.make_node("Conv", ["r2", "w3"], ["c3"]),
             h.make_node("Relu", ["c3"], ["r3"]),
             h.make_node("Conv", ["r3", "w4"], ["out"])]
    g = h.make_graph(nodes, "outlier", [h.make_tensor_value_info("x", T.FLOAT, [1, 4, HW, HW])],
                     [h.make_tensor_value_info("out", T.FLOAT, [1, 4, HW, HW])], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("search")
    onnx_path = make_model(str(d / "m.onnx"))
    rc, _, err = run_cli("transform", "--model_name", "m", "--model_def", onnx_path, "--mlir", d / "m.mlir")
    assert rc == 0, err
    ds = d / "ds"
    ds.mkdir()
    rng = np.random.default_rng(3)
    for i in range(N):
        np.save(ds / f"s{i:02d}.npy", rng.standard_normal((1, 4, HW, HW)).astype(np.float32))
    return d


def _engine(model, workers=1, **kw):
    return search_engine(model, "mse", 3, workers, **kw)


def test_downstream_scores_equal_full_runs(model):
    from tpu_cal.search.engine import Candidate
    g, res, feeds, eng = _engine(model)
    ref = eng.reference(Candidate())
    assert ref.score.cos == pytest.approx(independent_cos(g, res.table, feeds, {}), abs=1e-12)
    for name in ("c1_Conv", OUTLIER, "r3_Relu", "out_Conv"):
        alone = eng.score(Candidate(modes={name: "INT8"}, default="F32"))
        assert alone.cos == pytest.approx(independent_cos(g, res.table, feeds, {name: "INT8"}, "F32"), abs=1e-12)
        mixed = eng.score(Candidate(modes={name: "F16"}), ref)
        assert mixed.cos == pytest.approx(independent_cos(g, res.table, feeds, {name: "F16"}), abs=1e-12)
        assert mixed.computed < mixed.total      # only part of the graph ran
    # a reference built from another one holds exactly the tensors of a full run
    cand = Candidate(modes={"r2_Relu": "F16"})
    inc, whole = eng.reference(cand, base=ref), eng.reference(cand)
    assert inc.score.cos == whole.score.cos and inc.score.computed < whole.score.computed
    for b in range(len(whole.values)):
        for n in whole.graph.nodes:
            if n.op != "top.none":
                np.testing.assert_array_equal(inc.values[b][n.name], whole.values[b][n.name], err_msg=n.name)
    # a changed threshold is seen downstream of its layer only
    th = {"r2_Relu": res.table["r2_Relu"][0] * 0.5}
    s = eng.score(type(Candidate())(thresholds=th), ref)
    t2 = dict(res.table)
    t2["r2_Relu"] = (th["r2_Relu"],) + tuple(res.table["r2_Relu"][1:])
    assert s.cos == pytest.approx(independent_cos(g, t2, feeds, {}), abs=1e-12)


def test_workers_and_cache_budget_give_the_same_scores(model):
    from tpu_cal.search.engine import Candidate
    cands = [Candidate(modes={n: "INT8"}, default="F32") for n in ("c1_Conv", OUTLIER, "c3_Conv", "out_Conv")]
    whole = _engine(model, 1)[3]
    one = [s.cos for s in whole.evaluate(cands)]
    assert len(whole.float_ref.groups) == 1
    two = [s.cos for s in _engine(model, 2)[3].evaluate(cands)]
    assert one == two
    cached = whole.evaluate(cands)
    mix = Candidate(modes={"r2_Relu": "F16"})
    mixed = whole.reference(mix, base=whole.reference(Candidate()))
    per_sample = whole.cache_bytes(whole.float_ref.graph) / whole.n_samples
    # the budget of 4 float samples: every candidate runs on one group of samples after the other (3 and 3 and 2
    # samples: batches of 3), each group's float tensors all cached; int8 tensors take a quarter: one group
    eng = _engine(model, 2, cache_budget=int(4.5 * per_sample))[3]
    assert [sum(eng.samples[b] for b in g) for g in eng.float_ref.groups] == [3, 3, 2]
    grouped = eng.evaluate(cands)
    assert [s.cos for s in grouped] == one and [s.computed for s in grouped] == [s.computed for s in cached]
    base = eng.reference(Candidate())
    assert len(base.groups) == 1 and len(base.values) == len(eng.batches)
    assert eng.reference(mix, base=base).score.cos == mixed.score.cos
    assert [s.cos for s in eng.evaluate([Candidate(modes={"r2_Relu": "F16"})], base)] == \
        [s.cos for s in whole.evaluate([Candidate(modes={"r2_Relu": "F16"})], whole.reference(Candidate()))]
    # at most one group of the references with several in memory at a time, over all of them
    held = [b for r in eng._holding if len(r.groups) > 1 for b in r.values]
    assert len(held) <= 1 and len(eng.float_ref.values) <= 1
    # no tensor cached (one sample over the budget): candidates run every op of the graph, same scores
    eng = _engine(model, 1, cache_budget=0)[3]
    full = eng.evaluate(cands)
    ops = [sum(n.op not in ("top.weight", "top.none", "top.input") for n in eng.lowered(c).nodes) for c in cands]
    assert [s.cos for s in full] == one and all(s.computed >= k for s, k in zip(full, ops))   # (+ new weights)
    # part of one sample's tensors cached: what a candidate reads and is not cached is recomputed; same scores
    eng = _engine(model, 1, cache_budget=int(per_sample // 2))[3]
    assert len(eng.float_ref.groups) == eng.n_samples
    assert 0 < len(eng.float_ref.values[len(eng.batches) - 1]) < len(whole.float_ref.values[0])
    part = eng.evaluate(cands)
    assert [s.cos for s in part] == one
    assert all(c.computed <= p.computed <= f.computed for c, p, f in zip(cached, part, full))
    assert any(c.computed < p.computed for c, p in zip(cached, part))
    assert eng.reference(mix, base=eng.reference(Candidate())).score.cos == mixed.score.cos


def test_post_process_and_compare_layers_change_what_is_compared(model):
    from tpu_cal.search import qtable as qs
    g, res, feeds, _ = _engine(model)
    # PostProcess that zeroes the outputs: every model compares equal, nothing needs to be float
    _, _, _, eng = _engine(model, post_process=lambda d: d * 0.0)
    r = qs.run(eng, g, res.stats, res.op_types, qs.QtableConfig(["mse"], 0.99, 3), "m.mlir")
    assert r.int8_cos == 1.0 and r.qtable == {} and r.reached
    # comparing r1 (upstream of c2): layers downstream of r1 alone in int8 cannot change it
    _, _, _, eng = _engine(model, compare=[("r1_Relu", 1.0)])
    r = qs.run(eng, g, res.stats, res.op_types, qs.QtableConfig(["mse"], 0.99, 3), "m.mlir")
    loss = {x.name: x.loss for x in r.layers}
    assert max(loss[LAYER], loss["r3_Relu"], loss["out_Conv"]) < 1e-12
    assert loss["r1_Relu"] > 1e-6


def _run_search(model, tmp_path, *flags):
    out = tmp_path / "cali"
    rc, stdout, err = run_cli("calibrate", model / "m.mlir", "--dataset", model / "ds", "--tune_num", "0",
                              "--cali_method", "use_mse", "--inference_num", "8", "--workers", "1",
                              "--search", "search_qtable", "--quantize_table", tmp_path / "qtable", "-o", out, *flags)
    assert "Traceback" not in err, err
    return rc, stdout, err


def test_search_qtable_keeps_the_outlier_layer_in_float(model, tmp_path):
    from tpu_cal.formats.cali_table import read_cali_table
    from tpu_cal.formats.qtable import read_qtable
    rc, out, err = _run_search(model, tmp_path, "--expected_cos", "0.999", "--max_float_layers", "2",
                               "--quantize_method_list", "KL,MSE,MAX")
    assert rc == 0, err
    q = read_qtable(str(tmp_path / "qtable"))
    assert q.modes == {LAYER: "F16"}                     # auto on bm1684x
    first = re.search(r"the layer (\S+) is 0 sensitive layer, loss is (\S+), type is top.conv", out)
    assert first and first.group(1) == LAYER
    cos = {k: float(v) for k, v in re.findall(r"^(int8 outputs_cos|mix model outputs_cos):([0-9.]+)", out, re.M)}
    assert cos["int8 outputs_cos"] < 0.999 <= cos["mix model outputs_cos"]
    assert "success search qtable" in out
    log = (tmp_path / "Search_Qtable").read_text()
    assert "INFO:root:quantize_method_list =['KL', 'MSE', 'MAX']" in log
    assert f"INFO:root:start to handle layer: {LAYER}, type: top.conv" in log
    # every method's threshold and loss per layer; the best is the smallest loss, and it is in the new table
    m = re.findall(rf"adjust layer {re.escape(LAYER)} th, with method (\w+), and threshlod (\S+)\n"
                   rf"INFO:root:run int8 mode: m.mlir\nINFO:root:outputs_cos_los = (\S+)", log)
    assert [x[0] for x in m] == ["KL", "MSE", "MAX"]
    best = min(m, key=lambda x: float(x[2]))
    assert re.search(rf"layer {re.escape(LAYER)}, layer type is top.conv, best_th = {re.escape(best[1])}, "
                     rf"best_method = {best[0]}, best_cos_loss = {re.escape(best[2])}", log)
    new = read_cali_table(str(tmp_path / "new_cali_table.txt"))
    base = read_cali_table(str(tmp_path / "cali"))
    # the searched thresholds, unless the calibration table's measure better together (the log says which)
    kept = "the calibration table's thresholds measure better together" in log
    want = base.thresholds[LAYER][0] if kept else float(best[1])
    assert new.thresholds[LAYER][0] == pytest.approx(want, rel=1e-6)


def test_search_qtable_honours_the_cap(model, tmp_path):
    from tpu_cal.formats.qtable import read_qtable
    rc, out, err = _run_search(model, tmp_path, "--expected_cos", "1.0", "--max_float_layers", "2")
    assert rc == 1
    assert "not reached within --max_float_layers 2" in err and len(err.strip().splitlines()) == 1
    q = read_qtable(str(tmp_path / "qtable"))
    assert 1 <= len(q.modes) <= 2 and LAYER in q.modes        # the best found is written
    assert os.path.exists(tmp_path / "new_cali_table.txt") and os.path.exists(tmp_path / "cali")


def test_search_threshold_picks_the_best_measured_method(model, tmp_path):
    from tpu_cal.formats.cali_table import read_cali_table
    out = tmp_path / "cali"
    rc, stdout, err = run_cli("calibrate", model / "m.mlir", "--dataset", model / "ds", "--tune_num", "2",
                              "--inference_num", "8", "--workers", "1", "--search", "search_threshold", "-o", out)
    assert rc == 0, err
    log = (tmp_path / "Search_Threshold").read_text()
    got = dict(re.findall(r"method (\S+): outputs_cos = (\S+)", log))
    assert list(got) == ["kl+tune", "mse", "max", "percentile9999"]
    best = max(got, key=lambda k: float(got[k]))
    t = read_cali_table(str(out))
    assert t.method == best
    g, res, feeds, _ = _engine(model)
    assert float(got[best]) == pytest.approx(independent_cos(g, t.thresholds, feeds, {}), abs=1e-9)


def test_sensitive_command(model, tmp_path):
    from tpu_cal.formats.qtable import read_qtable
    cali = tmp_path / "cali"
    rc, _, err = run_cli("calibrate", model / "m.mlir", "--dataset", model / "ds", "--tune_num", "0", "-o", cali)
    assert rc == 0, err
    rc, out, err = run_cli("sensitive", model / "m.mlir", "--dataset", model / "ds", "--calibration_table", cali,
                           "--inference_num", "8", "--tune_num", "2", "--workers", "1", "--max_float_layers", "1",
                           "--expected_cos", "0.999", "-o", tmp_path / "q")
    assert rc == 0, err
    assert read_qtable(str(tmp_path / "q")).modes == {LAYER: "F16"}
    assert re.search(rf"the layer {re.escape(LAYER)} is 0 sensitive layer", out)
    assert "success sensitive layer search" in out
    log = (tmp_path / "SensitiveLayerSearch").read_text()
    assert re.findall(rf"adjust layer {re.escape(LAYER)} th, with method (\w+)", log) == \
        ["MAX", "Percentile9999", "KL"]
    assert (tmp_path / "new_cali_table.txt").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--expected_cos", "1.5"], "--expected_cos 1.5 is outside [0, 1]"),
    (["--global_compare_layers", "r1_Relu:0.5,c9_Conv"], "'c9_Conv'"),
    (["--post_process", "PP"], "no function PostProcess"),
    (["--quantize_method_list", "KL,FOO"], "'FOO'"),
])
def test_bad_search_input(model, tmp_path, flags, needle):
    (tmp_path / "pp.py").write_text("def post_process(data):\n    return data\n")
    flags = [str(tmp_path / "pp.py") if f == "PP" else f for f in flags]
    rc, out, err = _run_search(model, tmp_path, *flags)
    assert_clean_error(rc, err, needle)
    assert sorted(os.listdir(tmp_path)) == ["pp.py"]       # nothing written


def test_fixed_qtable_entries_are_kept_and_not_searched(model):
    from tpu_cal.search import qtable as qs
    from tpu_cal.search.engine import Candidate
    g, res, feeds, eng = _engine(model, fixed={OUTLIER: "F32"})
    assert eng.reference(Candidate()).score.cos == pytest.approx(
        independent_cos(g, res.table, feeds, {OUTLIER: "F32"}), abs=1e-12)
    r = qs.run(eng, g, res.stats, res.op_types, qs.QtableConfig(["mse"], 0.99, 2), "m.mlir", fixed={OUTLIER: "F32"})
    assert not {OUTLIER, LAYER} & ({x.name for x in r.layers} | set(r.qtable))


def test_transformer_searches_only_mac_layers_and_cluster_splits_by_loss(model):
    from tpu_cal.search import qtable as qs
    g, res, feeds, eng = _engine(model)
    r = qs.run(eng, g, res.stats, res.op_types, qs.QtableConfig(["mse"], 0.99, 1, transformer=True), "m.mlir")
    assert sorted(x.name for x in r.layers) == ["out_Conv", "r1_Relu", "r2_Relu", "r3_Relu"]
    high = qs._two_means(np.array([0.0, 0.1, 0.2, 5.0, 5.1]))
    assert high.tolist() == [False, False, False, True, True]


def test_mix_mode_4_8_needs_an_int4_chip(model, tmp_path):
    rc, out, err = _run_search(model, tmp_path, "--mix_mode", "4_8", "--processor", "bm1684x")
    assert_clean_error(rc, err, "--mix_mode 4_8: bm1684x has no INT4")


def test_per_sample_metrics_match_the_reference_formulas():
    from tpu_cal.metrics import cosine, snr_db
    from tpu_cal.search.engine import SNR_CAP_DB, per_sample_cosines, per_sample_snr
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 3, 4)).astype(np.float32)
    b = a + rng.standard_normal(a.shape).astype(np.float32) * 0.1
    b[2] = a[2]                      # an exact sample
    np.testing.assert_allclose(per_sample_cosines(a, b, 3), [cosine(a[2 * i:2 * i + 2], b[2 * i:2 * i + 2])
                                                             for i in range(3)], rtol=1e-12)
    got = per_sample_snr(a, b, 6)
    want = [snr_db(a[i], b[i]) for i in range(6)]
    assert got[2] == SNR_CAP_DB and want[2] == float("inf")
    np.testing.assert_allclose(np.delete(got, 2), np.delete(want, 2), rtol=1e-12)


def test_search_after_bias_correction_matches_the_original_float_model(model, tmp_path):
    """`--bc` changes the float function (that is its point: int8(corrected) ~ float(original)); the search that
    follows measures against the original module: its all-int8 cosine is the corrected module lowered and
    simulated, compared with the uncorrected float module on the inference samples, computed here in full."""
    from tpu_cal import ir
    from tpu_cal.dataset import Dataset
    from tpu_cal.formats.cali_table import read_cali_table
    from tpu_cal.interp.core import Interpreter
    from tpu_cal.lowering import assign_precision, lower
    from tpu_cal.metrics import cosine
    from tpu_cal.preprocess import Preprocess
    from tpu_cal.search.common import inference_feeds
    from tpu_cal.simulate import real_value
    # no float layer allowed: the module written keeps every correction (float layers get theirs taken back,
    # test_search_regions.py)
    rc, out, err = _run_search(model, tmp_path, "--expected_cos", "0.999", "--max_float_layers", "0", "--bc",
                               "--bc_part", "weights", "--bc_inference_num", "8", "--min_layer_cos", "1.0",
                               "--save_mlir", tmp_path / "cal.mlir")
    assert rc in (0, 1), err
    printed = float(re.search(r"^int8 outputs_cos:([0-9.]+)", out, re.M).group(1))
    orig = ir.load_graph(str(model / "m.mlir"))
    cal = ir.load_graph(str(tmp_path / "cal.mlir"))
    assert any(not np.array_equal(cal.weights[n.attrs["name"]], orig.weights.get(n.attrs["name"], np.zeros(0)))
               for n in cal.nodes if n.op == "top.weight")                         # the biases did move
    feeds, n = inference_feeds(Dataset([orig.node_map()["x"]], Preprocess.from_attrs(None), str(model / "ds")), 8)
    t = read_cali_table(str(tmp_path / "new_cali_table.txt")).thresholds
    for nd in cal.nodes:
        e = t.get(nd.name)
        if e is not None and nd.op not in ("top.weight", "top.none"):
            nd.extra["cali.threshold"], nd.extra["cali.min"], nd.extra["cali.max"] = e
    assign_precision(cal, "bm1684x", "INT8")
    low = lower(cal, "bm1684x")
    o = orig.outputs[0]
    ref = Interpreter(orig).run(feeds)[o]
    q = real_value(low.node_map()[low.outputs[0]], Interpreter(low).run(feeds)[low.outputs[0]])
    want = float(np.mean([cosine(ref[i], q[i]) for i in range(n)]))
    assert printed == pytest.approx(want, abs=2e-6)
    bc_float = Interpreter(cal).run(feeds)[o]
    assert abs(float(np.mean([cosine(bc_float[i], q[i]) for i in range(n)])) - want) > 1e-5  # a different reference


def test_text_mask_post_process_example_compares_masks():
    """examples/ppocr_det/text_mask_post.py: the search compares PP-OCR's binarized text masks (at 0.3)."""
    from pathlib import Path
    from tpu_cal.search.common import load_post_process
    from tpu_cal.search.engine import per_sample_cosines
    pp = load_post_process(str(Path(__file__).resolve().parents[2] / "examples" / "ppocr_det" / "text_mask_post.py"))
    f = np.full((1, 1, 8, 8), 0.05, np.float32)
    f[0, 0, 2:4, 2:6] = 0.9                      # 8 text pixels
    q = f + 0.1                                  # background noise stays below 0.3: the same mask
    q[0, 0, 2, 2] = 0.29                         # one text pixel lost
    assert set(np.unique(pp(f))) == {0.0, 1.0}
    assert per_sample_cosines(pp(f), pp(q), 1)[0] == pytest.approx(7 / np.sqrt(8 * 7))
    empty = np.full((1, 1, 8, 8), 0.01, np.float32)
    assert per_sample_cosines(pp(empty), pp(empty * 20), 1)[0] == 1.0        # two empty masks agree
    assert per_sample_cosines(empty, empty + np.eye(8, dtype=np.float32) * 0.02, 1)[0] < 0.9  # raw: noise-led
