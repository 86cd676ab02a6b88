"""Precision assignment and lowering top -> tpu (docs/lowering.md), judged independently of the implementation.

Expected precisions are written out by hand (synthetic graph) or derived from the op types (PP-OCR cls); the casts
a lowered graph must hold are re-derived here from the precision map alone (an edge whose two ends hold different
types needs exactly one cast per (producer, type)); quantized weights are checked by dequantizing them; scales
against `exact_scale(th / 127)`; bf16 rounding against ml_dtypes. Bad input through the CLI must end as one line
on stderr, exit code 2, and no file written.
"""
from __future__ import annotations

import copy
import os
import subprocess

import numpy as np
import pytest

from tpu_cal import ir, lowering, quant
from tpu_cal.errors import UserError
from tpu_cal.formats.qtable import parse_qtable
from tpu_cal.graph import Graph, Node
from clitools import assert_clean_error, calibrated_cls, run_cli, run_opt

KIND = {"INT8": "i8", "INT4": "i4", "F32": "f32", "F16": "f16", "BF16": "bf16"}
TH, LO, HI = "cali.threshold", "cali.min", "cali.max"


# ----------------------------------------------------------------------------- independent checks
def kind_of_type(node: Node) -> str:
    """The kind of a lowered value from its type text alone."""
    text = node.type_text
    q = quant.parse_qtype(text)
    if q is not None:
        return q.storage
    elem = text[text.rindex("x") + 1:-1] if "x" in text else text[len("tensor<"):-1]
    return {"f32": "f32", "f16": "f16", "bf16": "bf16"}.get(elem, "raw")


def expected_casts(g: Graph, prec: dict, float_kind: str = "f32") -> set:
    """(producer, kind) pairs that need a cast, from the precision map: each activation edge whose producer's
    kind differs from the kind its consumer reads, plus float outputs not in f32."""
    nodes = g.node_map()
    produced = {}
    for n in g.nodes:
        if n.op == "top.input":
            produced[n.name] = "f32"
        elif n.op != "top.weight":
            produced[n.name] = KIND.get(prec[n.name])          # None: NONE ops hold integers
    need = set()
    for n in g.compute_nodes():
        want = KIND.get(prec[n.name], float_kind)
        for s in n.inputs:
            if s is None or nodes[s].op == "top.weight" or produced[s] is None:
                continue
            if produced[s] != want:
                need.add((s, want))
    for o in g.outputs:
        if produced.get(o) not in (None, "f32"):
            need.add((o, "f32"))
    return need


def check_casts(g: Graph, low: Graph, prec: dict, float_kind: str = "f32"):
    """Exactly the expected casts, each named <producer>_<kind>, and every consumer edge type-consistent."""
    lnodes = low.node_map()
    casts = [n for n in low.nodes if n.op == "tpu.cast" and "precision" not in n.extra]
    seen = {(c.inputs[0], kind_of_type(c)) for c in casts}
    assert len(seen) == len(casts), "two casts for the same (producer, type)"
    assert seen == expected_casts(g, prec, float_kind)
    for c in casts:
        assert c.name == f"{c.inputs[0]}_{kind_of_type(c)}"
    # every activation operand of a lowered op arrives in the kind the op reads
    for n in low.nodes:
        if "precision" not in n.extra:
            continue
        want = KIND.get(n.extra["precision"], float_kind)
        for s in n.inputs:
            if s is None or lnodes[s].op == "top.weight":
                continue
            k = kind_of_type(lnodes[s])
            assert k in ("raw", want), f"{n.name} reads {s} as {k}, wants {want}"
    # outputs: same number, float ones in f32
    assert len(low.outputs) == len(g.outputs)
    for o in low.outputs:
        assert kind_of_type(lnodes[o]) in ("f32", "raw")
    return casts


def check_per_channel(w: np.ndarray, ints: np.ndarray, q: quant.QType, axis: int):
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red)
    assert q.axis == axis
    np.testing.assert_array_equal(np.asarray(q.scale), quant.exact_scale(np.where(amax > 0, amax / 127, 1.0)))
    shape = [1] * w.ndim
    shape[axis] = -1
    s = np.asarray(q.scale).reshape(shape)
    assert ints.dtype == np.int8
    err = np.abs(ints.astype(np.float64) * s - w)
    assert (err <= s / 2 * (1 + 1e-6) + 1e-12).all(), float((err / s).max())


def weight_of(low: Graph, name: str):
    n = low.node_map()[name]
    assert n.op == "top.weight"
    return low.weights[n.attrs["name"]], n


def assert_same_graph(a: Graph, b: Graph, rtol: float = 0.0):
    """Same nodes, types, precisions and weights; scales equal within `rtol` (0: exactly)."""
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]
    assert a.inputs == b.inputs and a.outputs == b.outputs
    for x, y in zip(a.nodes, b.nodes):
        assert (x.op, x.inputs, tuple(x.shape), x.dtype) == (y.op, y.inputs, tuple(y.shape), y.dtype), x.name
        assert x.extra.get("precision") == y.extra.get("precision"), x.name
        qx, qy = x.qtype, y.qtype
        assert (qx is None) == (qy is None), x.name
        if qx is not None:
            assert (qx.storage, qx.axis) == (qy.storage, qy.axis)
            np.testing.assert_allclose(qx.scale, qy.scale, rtol=rtol, atol=0)
            np.testing.assert_array_equal(qx.zero_point, qy.zero_point)
        else:
            assert kind_of_type(x) == kind_of_type(y), x.name
    for n in a.nodes:
        if n.op == "top.weight":
            k = n.attrs["name"]
            assert a.weights[k].dtype == b.weights[k].dtype
            if rtol and a.weights[k].dtype == np.int32:         # biases scale with s_in
                np.testing.assert_allclose(a.weights[k], b.weights[k], rtol=rtol, atol=1)
            else:
                np.testing.assert_array_equal(a.weights[k], b.weights[k])


# ----------------------------------------------------------------------------- a synthetic graph
_POOL = dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], dilations=[1, 1], ceil_mode=False,
             count_include_pad=False)


def synthetic() -> Graph:
    """x -> conv c1 -> relu r1 -> maxpool mp -> reshape rs -> matmul mm -> softmax sm (out)
                              r1 -> deconv dc (out)        mm + k -> a1 ; argmax am (out) ; gather gt (rs, am) (out)
       a1 > k -> gr (bool) ; where wh (gr, a1, mm) ; concat cc (a1, wh) (out)"""
    rng = np.random.default_rng(0)
    W = {"cw": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
         "cb": rng.standard_normal(4).astype(np.float32),
         "mw": rng.standard_normal((64, 10)).astype(np.float32),
         "mb": rng.standard_normal(10).astype(np.float32),
         "k": np.array(3.0, np.float32),
         "dw": rng.standard_normal((4, 2, 2, 2)).astype(np.float32),
         "db": rng.standard_normal(4).astype(np.float32)}
    W["cw"][2] = 0.0                                   # an all-zero output channel

    def cal(th, lo=None, hi=None):
        return {TH: th, LO: -th if lo is None else lo, HI: th if hi is None else hi}

    def wnode(name):
        return Node("top.weight", name, [], {"name": name}, W[name].shape)

    conv = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1)
    deconv = dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], dilations=[1, 1], group=2,
                  output_padding=[0, 0])
    nodes = [
        Node("top.input", "x", [], {}, (1, 3, 8, 8), extra=cal(2.5, -2.0, 2.5)),
        wnode("cw"), wnode("cb"),
        Node("top.conv", "c1", ["x", "cw", "cb"], conv, (1, 4, 8, 8), extra=cal(5.0, -4.0, 5.0)),
        Node("top.relu", "r1", ["c1"], {}, (1, 4, 8, 8), extra=cal(4.0, 0.0, 4.0)),
        Node("top.maxpool", "mp", ["r1"], dict(_POOL), (1, 4, 4, 4), extra=cal(100.0)),
        Node("top.reshape", "rs", ["mp"], {}, (1, 64), extra=cal(100.0)),
        wnode("mw"), wnode("mb"),
        Node("top.matmul", "mm", ["rs", "mw", "mb"], {}, (1, 10), extra=cal(7.0, -6.0, 7.0)),
        Node("top.softmax", "sm", ["mm"], {"axis": 1}, (1, 10), extra=cal(1.0, 0.0, 1.0)),
        wnode("k"),
        Node("top.add", "a1", ["mm", "k"], {}, (1, 10), extra=cal(9.0, -3.0, 9.0)),
        Node("top.arg", "am", ["mm"], {"mode": "max", "axis": 1, "keepdims": True}, (1, 1), "int64"),
        Node("top.gather", "gt", ["rs", "am"], {"axis": 1}, (1, 1), extra=cal(50.0)),
        Node("top.greater", "gr", ["a1", "k"], {}, (1, 10), "bool"),
        Node("top.where", "wh", ["gr", "a1", "mm"], {}, (1, 10), extra=cal(8.0, -6.0, 8.0)),
        Node("top.concat", "cc", ["a1", "wh"], {"axis": 1}, (1, 20), extra=cal(10.0, -6.0, 10.0)),
        wnode("dw"), wnode("db"),
        Node("top.deconv", "dc", ["r1", "dw", "db"], deconv, (1, 4, 16, 16), extra=cal(3.0, -2.0, 3.0)),
    ]
    return Graph("syn", ["x"], ["sm", "cc", "am", "gt", "dc"], nodes, W, {"name": "syn", "state": "calibrated"})


ALL_INT8 = {"c1": "INT8", "r1": "INT8", "mp": "INT8", "rs": "INT8", "mm": "INT8", "sm": "F32", "a1": "INT8",
            "am": "NONE", "gt": "INT8", "gr": "NONE", "wh": "INT8", "cc": "INT8", "dc": "INT8"}


def test_int8_precisions_chip_float_ops_and_none():
    g = synthetic()
    got = lowering.assign_precision(g, "bm1684x", "INT8")
    assert got == ALL_INT8
    assert {n.name: n.extra["precision"] for n in g.compute_nodes()} == ALL_INT8
    assert (g.attrs["chip"], g.attrs["quantize"]) == ("bm1684x", "INT8")


def test_qtable_overrides_and_float_mode_keeps_float_ops_in_the_mode():
    g = synthetic()
    q = parse_qtable("# op_name mode\nc1 F16\nsm INT8\na1 F32\nam F16\nx BF16\n", "q.txt")
    got = lowering.assign_precision(g, "bm1684x", "INT8", q)
    # am stays NONE; the input is not lowered; r1, the ReLU that alone reads c1, is one layer with it
    assert got == dict(ALL_INT8, c1="F16", r1="F16", sm="INT8", a1="F32")
    # naming both of a conv + ReLU pair keeps each entry
    g = synthetic()
    got = lowering.assign_precision(g, "bm1684x", "INT8", parse_qtable("c1 F16\nr1 INT8\n"))
    assert got == dict(ALL_INT8, c1="F16")
    g = synthetic()
    assert lowering.assign_precision(g, "bm1684x", "INT8", parse_qtable("r1 BF16\n")) == \
        dict(ALL_INT8, c1="BF16", r1="BF16")
    g = synthetic()
    got = lowering.assign_precision(g, "bm1684x", "F16")
    assert got == {k: ("NONE" if v == "NONE" else "F16") for k, v in ALL_INT8.items()}


def test_cv18xx_maps_f16_to_bf16_and_keeps_float_ops_in_bf16():
    g = synthetic()
    got = lowering.assign_precision(g, "cv183x", "INT8", parse_qtable("c1 F16\nmm F32\n"))
    assert got == dict(ALL_INT8, c1="BF16", r1="BF16", mm="BF16", sm="BF16")
    g = synthetic()
    got = lowering.assign_precision(g, "cv183x", "F16")
    assert set(got.values()) == {"BF16", "NONE"}
    assert g.attrs["quantize"] == "BF16"


def test_impossible_requests_name_the_op_or_the_mode():
    with pytest.raises(UserError, match=r"q\.txt:2: op 'mm': bm1684 cannot compute BF16"):
        lowering.assign_precision(synthetic(), "bm1684", "INT8", parse_qtable("c1 F32\nmm BF16\n", "q.txt"))
    # an entry for the ReLU of a conv + ReLU pair names its own line when the conv (first in order) cannot
    with pytest.raises(UserError, match=r"q\.txt:2: op 'c1': bm1684 cannot compute F16"):
        lowering.assign_precision(synthetic(), "bm1684", "INT8", parse_qtable("mm F32\nr1 F16\n", "q.txt"))
    with pytest.raises(UserError, match="INT4.*bm1684x cannot compute INT4"):
        lowering.assign_precision(synthetic(), "bm1684x", "INT4")
    with pytest.raises(UserError, match="unknown processor 'bm9999'"):
        lowering.assign_precision(synthetic(), "bm9999", "INT8")


def test_unknown_qtable_names_list_the_closest():
    with pytest.raises(UserError) as e:
        lowering.assign_precision(synthetic(), "bm1684x", "INT8", parse_qtable("c1 F16\nrelu_1 F32\nconcat F16\n",
                                                                               "q.txt"))
    msg = str(e.value)
    assert "q.txt" in msg and "2 op name(s)" in msg
    assert "line 2: 'relu_1'" in msg and "line 3: 'concat'" in msg


def test_int8_tensor_without_threshold_is_named():
    g = synthetic()
    del g.node_map()["a1"].extra[TH]
    with pytest.raises(UserError, match=r"'a1' \(top.add, INT8\)"):
        lowering.assign_precision(g, "bm1684x", "INT8")
    # a float graph input read by an int8 op needs one too
    g = synthetic()
    del g.node_map()["x"].extra[TH]
    with pytest.raises(UserError, match=r"'x' \(top.input, read by INT8 op 'c1'\)"):
        lowering.assign_precision(g, "bm1684x", "INT8")
    # data movement borrows its input's scale: no threshold of its own needed; float modes need none at all
    g = synthetic()
    for name in ("mp", "rs", "gt"):
        del g.node_map()[name].extra[TH]
    lowering.assign_precision(g, "bm1684x", "INT8")
    g = synthetic()
    for n in g.nodes:
        n.extra.clear()
    lowering.assign_precision(g, "bm1684x", "F32")
    # an F32 op read by an INT8 op is cast with its own threshold
    g = synthetic()
    del g.node_map()["a1"].extra[TH]
    with pytest.raises(UserError, match=r"'a1' \(top.add, read by INT8 op 'wh'\)"):
        lowering.assign_precision(g, "bm1684x", "INT8", parse_qtable("a1 F32\n"))


@pytest.fixture
def lowered_int8():
    g = synthetic()
    lowering.assign_precision(g, "bm1684x", "INT8")
    before = copy.deepcopy(g)
    low = lowering.lower(g, "bm1684x")
    assert_same_graph(g, before)                                  # the input graph is left alone
    return g, low


def test_int8_casts_exactly_at_the_borders(lowered_int8):
    g, low = lowered_int8
    casts = check_casts(g, low, ALL_INT8)
    assert {c.name for c in casts} == {"x_i8", "mm_f32", "a1_f32", "cc_f32", "gt_f32", "dc_f32"}
    assert low.outputs == ["sm", "cc_f32", "am", "gt_f32", "dc_f32"]
    # shared: argmax and softmax read the same f32 cast of mm; the comparison reads a1_f32 and the f32 constant
    nodes = low.node_map()
    assert nodes["sm"].inputs == ["mm_f32"] and nodes["am"].inputs == ["mm_f32"]
    assert nodes["gr"].inputs == ["a1_f32", "k"]
    assert (low.attrs["state"], low.attrs["chip"], low.attrs["quantize"]) == ("lowered", "bm1684x", "INT8")


def test_int8_result_scales_and_data_movement(lowered_int8):
    g, low = lowered_int8
    nodes = low.node_map()
    for n in low.nodes:
        assert n.op.startswith("tpu.") or n.op in ("top.input", "top.weight"), n.op
        if n.extra.get("precision") == "INT8":
            q = n.qtype
            # data movement keeps the scale of r1 (threshold 4), not its own threshold of 100 / 50
            th = 4.0 if n.name in ("mp", "rs", "gt") else g.node_map()[n.name].extra[TH]
            assert (q.storage, q.zero_point, q.axis) == ("i8", 0, None)
            assert q.scale == quant.exact_scale(th / 127), n.name
            assert n.dtype == "int8"
    assert nodes["x_i8"].qtype.scale == quant.exact_scale(2.5 / 127)
    # gather keeps its integer indices as they are; where its bool condition
    assert nodes["gt"].inputs == ["rs", "am"] and nodes["am"].dtype == "int64"
    assert nodes["wh"].inputs == ["gr", "a1", "mm"] and nodes["gr"].dtype == "bool"
    assert nodes["am"].extra["precision"] == "NONE" and nodes["gr"].extra["precision"] == "NONE"
    # calibration attributes do not survive; declared `mode` attributes (argmax's) are untouched
    assert all(TH not in n.extra for n in low.nodes)
    assert nodes["am"].attrs["mode"] == "max"


def test_int8_weights_dequantize_within_half_a_step(lowered_int8):
    g, low = lowered_int8
    W, nodes = g.weights, low.node_map()
    s_x = quant.exact_scale(2.5 / 127)
    s_rs = quant.exact_scale(4.0 / 127)
    s_r1 = s_rs
    # c1 -> r1 (relu) is one fused int8 conv named r1, requantized straight to r1's type (TPU-MLIR's do_relu)
    assert "c1" not in nodes and nodes["r1"].op == "tpu.conv" and nodes["r1"].extra["do_relu"]
    assert nodes["r1"].extra["relu_limit"] == -1.0 and nodes["r1"].qtype == quant.symmetric(4.0, "i8")
    for op, w, b, axis, s_in in (("r1", "cw", "cb", 0, s_x), ("mm", "mw", "mb", 1, s_rs),
                                 ("dc", "dw", "db", 1, s_r1)):
        assert nodes[op].inputs[1:] == [f"{w}_int8", f"{b}_int32"]
        ints, wn = weight_of(low, f"{w}_int8")
        assert wn.attrs["name"] == f"{w}_int8"
        check_per_channel(W[w], ints, wn.qtype, axis)
        bq, bn = weight_of(low, f"{b}_int32")
        assert bq.dtype == np.int32 and bn.qtype.storage == "i32" and bn.qtype.axis == 0
        sw = np.asarray(wn.qtype.scale)
        if op == "dc":
            sw = np.tile(sw, 2)                                    # group 2: channel c uses scale c % 2
        np.testing.assert_array_equal(bn.qtype.scale, quant.exact_scale(s_in * sw))
        err = np.abs(bq * np.asarray(bn.qtype.scale) - W[b])
        assert (err <= np.asarray(bn.qtype.scale) / 2 * (1 + 1e-6)).all()
    ints, _ = weight_of(low, "cw_int8")
    assert (ints[2] == 0).all()
    # a constant read by an ordinary int8 op stays the exact f32 array under its own name, with no cast
    k, kn = weight_of(low, "k")
    assert kn.type_text == "tensor<f32>" and k == np.float32(3.0)
    assert nodes["a1"].inputs == ["mm", "k"]
    assert set(low.weights) == {"cw_int8", "cb_int32", "mw_int8", "mb_int32", "k", "dw_int8", "db_int32"}


def test_lowered_module_verifies_and_round_trips(lowered_int8, tmp_path):
    _, low = lowered_int8
    path = tmp_path / "syn_int8.mlir"
    ir.save_graph(low, str(path))
    assert (tmp_path / "syn_int8_weights.npz").is_file()
    back = ir.load_graph(str(path))
    assert_same_graph(low, back)
    text = path.read_text()
    assert '"tpu.cast"' in text and "!quant.uniform<i8:f32:0, {" in text and "!quant.uniform<i32:f32:0, {" in text
    # stock mlir-opt with the IRDL file accepts it too
    import mlir
    opt = os.path.join(list(mlir.__path__)[0], "bin", "mlir-opt")
    from tpu_cal.dialects import path as dialect_path
    both = tmp_path / "both.irdl.mlir"           # mlir-opt takes one --irdl-file: both dialects in one
    both.write_text(open(dialect_path("top")).read() + open(dialect_path("tpu")).read())
    r = subprocess.run([opt, f"--irdl-file={both}", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_mixed_precision_casts_and_rounded_weights():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is the bf16 reference")
    g = synthetic()
    q = parse_qtable("c1 F16\nr1 INT8\nsm INT8\na1 F32\nrs BF16\n")    # r1 named: not c1's pair here
    prec = lowering.assign_precision(g, "bm1684x", "INT8", q)
    low = lowering.lower(g, "bm1684x")
    casts = check_casts(g, low, prec)
    assert {c.name for c in casts} == {"x_f16", "c1_i8", "mp_bf16", "rs_i8", "mm_f32", "a1_i8", "sm_f32",
                                       "cc_f32", "gt_f32", "dc_f32"}
    nodes = low.node_map()
    assert nodes["c1"].inputs == ["x_f16", "cw_f16", "cb_f16"] and nodes["c1"].type_text == "tensor<1x4x8x8xf16>"
    for w in ("cw", "cb"):
        arr, wn = weight_of(low, f"{w}_f16")
        assert arr.dtype == np.float32 and wn.type_text.endswith("xf16>")
        np.testing.assert_array_equal(arr, g.weights[w].astype(np.float16).astype(np.float32))
    assert nodes["rs"].type_text == "tensor<1x64xbf16>"
    # a1 is F32 now: it reads the original f32 constant, and the comparison reads a1 directly
    assert nodes["a1"].inputs == ["mm_f32", "k"] and nodes["gr"].inputs == ["a1", "k"]
    # the cast into int8 uses the float producer's own threshold
    assert nodes["a1_i8"].qtype.scale == quant.exact_scale(9.0 / 127)
    assert nodes["c1_i8"].qtype.scale == quant.exact_scale(5.0 / 127)
    # bf16 everywhere on cv18xx: weights rounded to nearest even like ml_dtypes
    g = synthetic()
    prec = lowering.assign_precision(g, "cv183x", "BF16")
    low = lowering.lower(g, "cv183x")
    check_casts(g, low, prec, float_kind="bf16")
    arr, wn = weight_of(low, "cw_bf16")
    ref = g.weights["cw"].astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(arr, ref)
    assert wn.type_text == "tensor<4x3x3x3xbf16>"
    # NONE ops on cv18xx read bf16 (the chip has no f32 arithmetic)
    assert low.node_map()["am"].inputs == ["mm"] and low.node_map()["mm"].type_text == "tensor<1x10xbf16>"


def test_round_float_bf16_ties_and_specials():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is the bf16 reference")
    bits = np.array([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x00000001, 0x80008000,
                     0x7F800000, 0x3F800001], np.uint32)
    x = np.concatenate([bits.view(np.float32), np.random.default_rng(0).standard_normal(1000).astype(np.float32)])
    np.testing.assert_array_equal(lowering.round_float(x, "bf16"), x.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert np.isnan(lowering.round_float(np.array([np.nan], np.float32), "bf16")).all()


def test_asymmetric_ops_and_int4():
    g = synthetic()
    lowering.assign_precision(g, "bm1684x", "INT8")
    low = lowering.lower(g, "bm1684x", asym_ops=["r1", "a1", "sm"])
    nodes = low.node_map()
    ref = quant.asymmetric(0.0, 4.0)
    assert nodes["r1"].qtype == ref and ref.zero_point != 0
    assert nodes["mp"].qtype == ref                            # data movement keeps the asymmetric type
    assert nodes["a1"].qtype == quant.asymmetric(-3.0, 9.0)
    assert nodes["sm"].type_text == "tensor<1x10xf32>"         # float op: the flag does not apply
    with pytest.raises(UserError, match="'r1'.*bm1684 has no asymmetric"):
        g = synthetic()
        lowering.assign_precision(g, "bm1684", "INT8")
        lowering.lower(g, "bm1684", asym_ops=["r1"])
    with pytest.raises(UserError, match=r"'relu1'.*closest: r1"):
        g = synthetic()
        lowering.assign_precision(g, "bm1684x", "INT8")
        lowering.lower(g, "bm1684x", asym_ops=["relu1"])
    g = synthetic()
    prec = lowering.assign_precision(g, "bm1688", "INT4", parse_qtable("mm INT8\n"))
    low = lowering.lower(g, "bm1688")
    casts = check_casts(g, low, prec)
    nodes = low.node_map()
    assert "c1" not in nodes and nodes["r1"].op == "tpu.conv"       # fused with its relu, in r1's int4 type
    assert nodes["r1"].qtype == quant.QType("i4", quant.exact_scale(4.0 / 7))
    assert "rs_i8" in {c.name for c in casts} and "mm_i4" in {c.name for c in casts}
    ints, wn = weight_of(low, "cw_int4")
    assert wn.qtype.storage == "i4" and ints.min() >= -8 and ints.max() <= 7


def test_lower_needs_precisions():
    with pytest.raises(UserError, match="op 'c1'.*no precision"):
        lowering.lower(synthetic(), "bm1684x")
    g = synthetic()
    lowering.assign_precision(g, "bm1684x", "INT8")
    with pytest.raises(UserError, match="assigned for bm1684x.*cv183x"):
        lowering.lower(g, "cv183x")


# ----------------------------------------------------------------------------- the real PP-OCR classifier

@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    c = calibrated_cls(tmp_path_factory.mktemp("cls"))
    c.graph = ir.load_graph(str(c.mlir))
    return c


def _lower(cls, out, *flags):
    rc, stdout, err = run_cli("lower", cls.mlir, "--calibration_table", cls.table, "-o", out, *flags)
    assert rc == 0, err
    assert "Traceback" not in err
    return stdout


def _summary(stdout: str) -> dict:
    rows = {}
    for ln in stdout.splitlines():
        parts = [p.strip() for p in ln.split("|")]
        if len(parts) == 2 and parts[1].isdigit():
            rows[parts[0]] = int(parts[1])
    return rows


@pytest.mark.real
def test_cls_int8_precisions_casts_weights(cls, tmp_path):
    out = tmp_path / "cls_int8.mlir"
    stdout = _lower(cls, out, "--quantize", "INT8", "--processor", "bm1684x")
    low = ir.load_graph(str(out))
    g = cls.graph
    table = {ln.split()[0]: float(ln.split()[1]) for ln in open(cls.table) if ln.strip() and ln[0] != "#"}
    expected = {n.name: ("F32" if n.op in ("top.softmax", "top.layer_norm", "top.group_norm",
                                            "top.log_softmax") else "INT8") for n in g.compute_nodes()}
    assert "F32" in expected.values()
    lnodes = low.node_map()
    # each conv followed by its ReLU is one int8 conv under the ReLU's name (do_relu); nothing else is fused
    fused = lowering.fusable_activations(g, expected)
    absorbed = set(fused.values())
    assert len(fused) >= 5 and all(lnodes[a].op == "tpu.conv" and lnodes[a].extra["do_relu"] for a in fused)
    assert not absorbed & set(lnodes)
    kept = {n: p for n, p in expected.items() if n not in absorbed}
    assert {n: lnodes[n].extra["precision"] for n in kept} == kept
    casts = check_casts(g, low, expected)
    rows = _summary(stdout)
    assert rows == {"INT8": list(kept.values()).count("INT8"), "F32": list(kept.values()).count("F32"),
                    "casts": len(casts)}
    keep = {"top.reshape", "top.maxpool"}
    gnodes = g.node_map()
    n_weights = 0
    for n in g.compute_nodes():
        if expected[n.name] != "INT8" or n.name in absorbed:
            continue
        ln = lnodes[n.name]
        src = n.name
        while gnodes[src].op in keep:                          # data movement: its input's threshold
            src = gnodes[src].inputs[0]
        assert ln.qtype.scale == quant.exact_scale(table[src] / 127), n.name
        mac = gnodes[fused.get(n.name, n.name)]
        if mac.op == "top.conv":
            ints, wn = weight_of(low, ln.inputs[1])
            check_per_channel(g.weights[gnodes[mac.inputs[1]].attrs["name"]], ints, wn.qtype, 0)
            n_weights += 1
    assert n_weights == sum(n.op == "top.conv" for n in g.nodes)
    assert low.attrs["weight_file"] == "cls_int8_weights.npz"
    # round trip: save the loaded module again, load it back, nothing changes
    ir.save_graph(low, str(tmp_path / "again.mlir"))
    assert_same_graph(low, ir.load_graph(str(tmp_path / "again.mlir")))


@pytest.mark.real
def test_cls_qtable_and_chips(cls, tmp_path):
    g = cls.graph
    convs = [n.name for n in g.nodes if n.op == "top.conv"]
    reshape = next(n.name for n in g.nodes if n.op == "top.reshape")
    softmax = next(n.name for n in g.nodes if n.op == "top.softmax")
    q = tmp_path / "q.txt"
    q.write_text(f"# mixed\n{convs[0]} F16\n{convs[5]} BF16\n{reshape} F32\n{softmax} INT8\n")
    out = tmp_path / "mix.mlir"
    _lower(cls, out, "--quantize", "INT8", "--chip", "bm1684x", "--quantize_table", q)
    low = ir.load_graph(str(out))
    expected = {n.name: "INT8" for n in g.compute_nodes()}
    expected.update({convs[0]: "F16", convs[5]: "BF16", reshape: "F32"})
    absorbed = set(lowering.fusable_activations(g, expected).values())      # int8 convs fused with a ReLU
    assert convs[0] not in absorbed and convs[5] not in absorbed
    kept = {n: p for n, p in expected.items() if n not in absorbed}
    assert {n: low.node_map()[n].extra["precision"] for n in kept} == kept
    check_casts(g, low, expected)
    # cv18xx has neither F16 nor F32: both become BF16
    out = tmp_path / "cv.mlir"
    _lower(cls, out, "--quantize", "INT8", "--processor", "cv183x", "--quantize_table", q)
    low = ir.load_graph(str(out))
    expected.update({convs[0]: "BF16", reshape: "BF16"})
    kept.update({convs[0]: "BF16", reshape: "BF16"})
    assert {n: low.node_map()[n].extra["precision"] for n in kept} == kept
    check_casts(g, low, expected, float_kind="bf16")


@pytest.mark.real
def test_cls_calibrated_module_needs_no_table_and_passes_agree(cls, tmp_path):
    a, b = tmp_path / "a.mlir", tmp_path / "b.mlir"
    _lower(cls, a, "--quantize", "INT8", "--processor", "bm1684x")
    rc, _, err = run_cli("lower", cls.cal_mlir, "--quantize", "INT8", "--processor", "bm1684x", "-o", b)
    assert rc == 0, err
    ga, gb = ir.load_graph(str(a)), ir.load_graph(str(b))
    # the table holds thresholds to 7 decimals, the calibrated module their full value: scales agree to 1e-6
    assert_same_graph(ga, gb, rtol=1e-6)
    # the same through the passes (tpu-cal-opt), with the weights written next to the old ones
    work = tmp_path / "opt"
    work.mkdir()
    for f in ("cls.mlir", "cls_weights.npz"):
        (work / f).write_bytes((cls.dir / f).read_bytes())
    pipeline = (f"top-import-calibration{{file={cls.table}}},top-assign-precision{{mode=INT8 chip=bm1684x}},"
                f"top-to-tpu{{weight-dir={work}}}")
    rc, _, err = run_opt(work / "cls.mlir", "-p", pipeline, "-o", work / "cls_bm1684x.mlir")
    assert rc == 0, err
    assert (work / "cls_bm1684x_weights.npz").is_file()
    gc = ir.load_graph(str(work / "cls_bm1684x.mlir"))
    assert gc.attrs["weight_file"] == "cls_bm1684x_weights.npz"
    assert_same_graph(ga, gc)
    # a pass after top-to-tpu that fails (a second lowering of the lowered module): no weight file is left
    (work / "cls_bm1684x_weights.npz").unlink()
    (work / "cls_bm1684x.mlir").unlink()
    rc, _, err = run_opt(work / "cls.mlir", "-p", pipeline + f",top-to-tpu{{weight-dir={work}}}",
                         "-o", work / "cls_bm1684x.mlir")
    assert rc != 0 and "error" in err
    assert sorted(os.listdir(work)) == ["cls.mlir", "cls_weights.npz"]


BAD = ["qtable_unknown_names", "mode_chip_lacks", "qtable_mode_chip_lacks", "int8_without_threshold",
       "other_model_table", "unknown_processor", "uncalibrated_no_table", "missing_table", "reference_no_input",
       "output_folder_missing"]


@pytest.mark.real
@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_nothing_written(cls, tmp_path, case):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.mlir"
    convs = [n.name for n in cls.graph.nodes if n.op == "top.conv"]
    flags = ["--quantize", "INT8", "--processor", "bm1684x", "--calibration_table", cls.table]
    mlir = cls.mlir
    if case == "qtable_unknown_names":
        typo = convs[3][:-2]
        (tmp_path / "q.txt").write_text(f"{convs[0]} F16\n{typo} F32\n")
        flags += ["--quantize_table", tmp_path / "q.txt"]
        needles = ["q.txt", "line 2", f"'{typo}'", f"closest: {convs[3]}"]
    elif case == "mode_chip_lacks":
        flags[1], flags[3] = "BF16", "bm1684"
        needles = ["BF16", "bm1684"]
    elif case == "qtable_mode_chip_lacks":
        flags[3] = "bm1684"
        (tmp_path / "q.txt").write_text(f"{convs[2]} F16\n")
        flags += ["--quantize_table", tmp_path / "q.txt"]
        needles = ["q.txt:1", f"'{convs[2]}'", "bm1684 cannot compute F16"]
    elif case == "int8_without_threshold":
        lines = open(cls.table).read().splitlines()
        drop = next(k for k, ln in enumerate(lines) if ln.startswith(convs[4] + " "))
        (tmp_path / "t.cali").write_text("\n".join(lines[:drop] + lines[drop + 1:]) + "\n")
        flags[-1] = tmp_path / "t.cali"
        needles = [f"'{convs[4]}' (top.conv, INT8)", "threshold"]
    elif case == "other_model_table":
        flags[-1] = os.path.join(os.path.dirname(__file__), "..", "lit", "Inputs", "other-model.cali")
        needles = ["other-model.cali", "another model"]
    elif case == "unknown_processor":
        flags[3] = "bm9999"
        needles = ["unknown processor 'bm9999'", "bm1684x"]
    elif case == "uncalibrated_no_table":
        flags = flags[:4]
        needles = ["threshold", f"'{convs[0]}'"]
    elif case == "missing_table":
        flags[-1] = tmp_path / "nope.cali"
        needles = ["nope.cali", "not found"]
    elif case == "reference_no_input":
        flags += ["--test_reference", tmp_path / "ref.npz"]
        needles = ["--test_reference", "--test_input"]
    elif case == "output_folder_missing":
        out = tmp_path / "no_such_dir" / "m.mlir"
        needles = ["no_such_dir"]
    rc, _, err = run_cli("lower", mlir, *flags, "-o", out)
    assert_clean_error(rc, err, *needles)
    assert sorted(os.listdir(out_dir)) == []
