"""Transformer converters and fusions on synthetic ONNX models, checked against ONNX Runtime.

Every model is imported for batch 1 and run by the interpreter on a batch of 2 at once; ONNX Runtime runs each
sample on its own. Outputs must reach cosine >= 0.99999 and max |err| <= 1e-4 of the reference's range.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tpu_cal import ir
from tpu_cal.errors import UserError
from tpu_cal.frontend.onnx_import import ImportOptions, import_onnx
from tpu_cal.interp.core import Interpreter

ort = pytest.importorskip("onnxruntime")

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
R = np.random.default_rng(0)


def c(name, value, dtype=np.float32):
    """A Constant node."""
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype), name))


def model(nodes, inputs, outputs, inits=None, opset=17):
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                          [helper.make_tensor_value_info(o, F, None) for o in outputs],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def close(y, ref, what=""):
    y, ref = np.asarray(y, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    assert y.shape == ref.shape, what
    assert np.isfinite(y).all() and np.isfinite(ref).all(), what
    cos = float(y @ ref / (np.linalg.norm(y) * np.linalg.norm(ref) + 1e-30))
    err, rng = float(np.abs(y - ref).max()), float(ref.max() - ref.min())
    assert cos >= 0.99999, f"{what}: cosine {cos}"
    assert err <= 1e-4 * max(rng, 1e-12), f"{what}: max abs error {err} for a range of {rng}"


def check(m, feeds, tmp_path, batch=2):
    """Imports `m` for its declared batch, runs `feeds` (a batch of `batch` per input) and compares each output with
    ONNX Runtime run sample by sample. Returns the imported graph."""
    path = str(tmp_path / "m.onnx")
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    g = import_onnx(path, ImportOptions())
    with ir.context() as ctx:                    # the module verifies against the IRDL dialect
        ir.parse(g.to_mlir(), ctx)
    out = Interpreter(g).run(feeds)
    # ONNX Runtime's own graph fusions are off: its LayerNorm fusion accepts Pow(x, 4) as a variance (seen with
    # onnxruntime 1.32), so the op-by-op semantics is the reference
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in m.graph.output]
    per = [sess.run(names, {k: v[b:b + 1] if batch > 1 else v for k, v in feeds.items()}) for b in range(batch)]
    for k, (onnx_name, ours) in enumerate(zip(names, g.outputs)):
        ref = np.concatenate([p[k] for p in per], axis=0) if batch > 1 else per[0][k]
        assert out[ours].shape == ref.shape, f"{onnx_name}: {out[ours].shape} vs {ref.shape}"
        close(out[ours], ref, onnx_name)
    return g


def ops(g):
    return [n.op for n in g.compute_nodes()]


def no_shape_arithmetic(g):
    """No integer-valued op is left besides the inputs: shape sub-graphs folded to constants."""
    left = [(n.name, n.op) for n in g.compute_nodes() if n.op != "top.input" and np.issubdtype(np.dtype(n.dtype),
                                                                                                  np.integer)]
    assert not left, left


def randn(*shape, scale=1.0):
    return (R.standard_normal(shape) * scale).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ MatMul
def test_matmul_weight_and_bias_fused(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["mm1"]), helper.make_node("Add", ["b1", "mm1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    m = model(nodes, [("x", F, [1, 6, 8])], ["y"], {"w1": randn(8, 16), "b1": randn(16), "w2": randn(16, 4)})
    g = check(m, {"x": randn(2, 6, 8)}, tmp_path)
    mms = [n for n in g.nodes if n.op == "top.matmul"]
    assert len(mms) == 2 and "top.add" not in ops(g)
    assert mms[0].name == "h_Add" and mms[0].inputs[2] is not None and mms[1].inputs[2] is None


def test_matmul_between_activations_and_broadcast(tmp_path):
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),                 # [1,2,6,6]
             helper.make_node("MatMul", ["s", "q"], ["y1"]),                 # [1,2,6,4]
             helper.make_node("Unsqueeze", ["x", "ax1"], ["xu"]),            # [1,1,6,8]
             helper.make_node("MatMul", ["xu", "w3"], ["y2"]),               # [1,3,6,5] batched weight broadcast
             helper.make_node("MatMul", ["x", "v"], ["y3"]),                 # 1-D right operand: [1,6]
             helper.make_node("MatMul", ["x", "bias_like"], ["mm4"]),        # Add of a non-vector: no fusion
             helper.make_node("Add", ["mm4", "full"], ["y4"])]
    m = model(nodes, [("q", F, [1, 2, 6, 4]), ("k", F, [1, 2, 6, 4]), ("x", F, [1, 6, 8])], ["y1", "y2", "y3", "y4"],
              {"w3": randn(3, 8, 5), "v": randn(8), "bias_like": randn(8, 5), "full": randn(6, 5),
               "ax1": np.array([1], np.int64)})
    g = check(m, {"q": randn(2, 2, 6, 4), "k": randn(2, 2, 6, 4), "x": randn(2, 6, 8)}, tmp_path)
    assert ops(g).count("top.matmul") == 5 and ops(g).count("top.add") == 1


@pytest.mark.parametrize("trans_b,alpha,beta,c_kind", [
    (0, 1.0, 1.0, "vector"), (1, 1.0, 1.0, "row"), (1, 0.5, 2.0, "vector"), (0, 2.0, 0.5, "scalar"),
    (1, 1.0, 1.0, "none"), (0, 1.5, 3.0, "dynamic"), (1, 1.0, 0.0, "vector")])
def test_gemm(tmp_path, trans_b, alpha, beta, c_kind):
    k, n = 8, 5
    w = randn(n, k) if trans_b else randn(k, n)
    inits = {"w": w}
    inputs = [("a", F, [1, k])]
    feeds = {"a": randn(2, k)}
    cin = ""
    if c_kind in ("vector", "row", "scalar"):
        inits["c"] = {"vector": randn(n), "row": randn(1, n), "scalar": randn(1)}[c_kind]
        cin = "c"
    elif c_kind == "dynamic":
        inputs.append(("c", F, [1, n]))
        feeds["c"] = randn(2, n)
        cin = "c"
    nodes = [helper.make_node("Gemm", ["a", "w", cin] if cin else ["a", "w"], ["y"], alpha=alpha, beta=beta,
                              transB=trans_b)]
    g = check(model(nodes, inputs, ["y"], inits, opset=13), feeds, tmp_path)
    if c_kind in ("vector", "row"):
        assert ops(g) == ["top.matmul"]
        assert g.nodes[-1].name == "y_Gemm" and (g.nodes[-1].inputs[2] is not None) == (beta != 0.0)


def test_gemm_trans_a(tmp_path):
    # A transposed and B dynamic: the batch axis is not the first one, so run the declared batch only
    nodes = [helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, alpha=0.25)]
    m = model(nodes, [("b", F, [3, 4])], ["y"], {"a": randn(4, 6), "c": randn(6, 1)}, opset=13)
    g = check(m, {"b": randn(3, 4)}, tmp_path, batch=1)
    assert "top.permute" in ops(g)


# ------------------------------------------------------------------------------------------------------ LayerNorm
@pytest.mark.parametrize("axis,with_bias", [(-1, True), (-1, False), (-2, True)])
def test_layer_normalization_op(tmp_path, axis, with_bias):
    shape = [1, 5, 8]
    norm = shape[axis:]
    inits = {"s": randn(*norm), "b": randn(*norm)}
    nodes = [helper.make_node("LayerNormalization", ["x", "s", "b"] if with_bias else ["x", "s"], ["y"],
                              axis=axis, epsilon=1e-3)]
    g = check(model(nodes, [("x", F, shape)], ["y"], inits), {"x": randn(2, 5, 8, scale=3)}, tmp_path)
    assert ops(g) == ["top.layer_norm"]
    assert g.nodes[-1].attrs == {"axis": axis % 3, "eps": pytest.approx(1e-3)}


def decomposed_ln(variance="pow", div="div", affine="full", opset=17, axes=(-1,), eps=1e-12, exponent=2.0):
    """The exporters' LayerNorm: x -> (x - mean) / sqrt(var + eps) [* gamma] [+ beta]."""
    def reduce(i, o):
        if opset >= 18:
            return helper.make_node("ReduceMean", [i, "axes"], [o])
        return helper.make_node("ReduceMean", [i], [o], axes=list(axes))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), reduce("h", "mean"),
             helper.make_node("Sub", ["h", "mean"], ["d"])]
    if variance == "pow":
        nodes += [c("two", exponent), helper.make_node("Pow", ["d", "two"], ["sq"])]
    else:
        nodes += [helper.make_node("Mul", ["d", "d"], ["sq"])]
    nodes += [reduce("sq", "var"), c("eps", eps), helper.make_node("Add", ["var", "eps"], ["ve"]),
              helper.make_node("Sqrt", ["ve"], ["std"])]
    if div == "div":
        nodes.append(helper.make_node("Div", ["d", "std"], ["n"]))
    else:
        nodes += [helper.make_node("Reciprocal", ["std"], ["rstd"]), helper.make_node("Mul", ["rstd", "d"], ["n"])]
    out = "n"
    if affine in ("full", "gamma"):
        nodes.append(helper.make_node("Mul", ["n", "gamma"], ["ng"]))
        out = "ng"
    if affine in ("full", "beta"):
        nodes.append(helper.make_node("Add", ["beta", out], ["y"]))
        out = "y"
    nodes.append(helper.make_node("Relu", [out], ["out"]))
    norm = [4, 8][-len(axes):]
    inits = {"w": randn(8, 8), "gamma": randn(*norm), "beta": randn(*norm), "axes": np.array(axes, np.int64)}
    return model(nodes, [("x", F, [1, 4, 8])], ["out"], inits, opset=opset), out


@pytest.mark.parametrize("variance,div,affine,opset,axes", [
    ("pow", "div", "full", 17, (-1,)), ("mul", "div", "full", 13, (2,)), ("pow", "reciprocal", "full", 18, (-1,)),
    ("pow", "div", "none", 17, (-1,)), ("pow", "div", "gamma", 17, (-1,)), ("pow", "div", "beta", 17, (-1,)),
    ("pow", "div", "full", 18, (-2, -1))])
def test_decomposed_layer_norm_is_fused(tmp_path, variance, div, affine, opset, axes):
    m, last = decomposed_ln(variance, div, affine, opset, axes)
    g = check(m, {"x": randn(2, 4, 8, scale=2)}, tmp_path)
    assert ops(g) == ["top.matmul", "top.layer_norm", "top.relu"], ops(g)
    ln = next(n for n in g.nodes if n.op == "top.layer_norm")
    assert ln.name == f"{last}_LayerNorm"
    assert ln.attrs["axis"] == 3 - len(axes) and ln.attrs["eps"] == pytest.approx(1e-12)
    assert [i is not None for i in ln.inputs[1:]] == [affine in ("full", "gamma"), affine in ("full", "beta")]


@pytest.mark.parametrize("what", ["axes", "exponent"])
def test_layer_norm_lookalikes_are_not_fused(tmp_path, what):
    m, _ = decomposed_ln(axes=(1,) if what == "axes" else (-1,), exponent=4.0 if what == "exponent" else 2.0)
    g = check(m, {"x": randn(2, 4, 8, scale=0.5)}, tmp_path)
    assert "top.layer_norm" not in ops(g) and "top.reduce" in ops(g)


# ------------------------------------------------------------------------------------------------------ GELU
def gelu_nodes(form, k=0.5):
    s2 = math.sqrt(2.0)
    if form == "erf_hf":        # x * 0.5 * (1 + erf(x / sqrt2))
        return [c("half", k), helper.make_node("Mul", ["x1", "half"], ["xh"]), c("s2", s2),
                helper.make_node("Div", ["x1", "s2"], ["xs"]), helper.make_node("Erf", ["xs"], ["e"]),
                c("one", 1.0), helper.make_node("Add", ["e", "one"], ["e1"]),
                helper.make_node("Mul", ["xh", "e1"], ["g"])]
    if form == "erf_torch":     # ((1 + erf(x * 1/sqrt2)) * x) * 0.5
        return [c("is2", 1 / s2), helper.make_node("Mul", ["x1", "is2"], ["xs"]), helper.make_node("Erf", ["xs"], ["e"]),
                c("one", 1.0), helper.make_node("Add", ["one", "e"], ["e1"]),
                helper.make_node("Mul", ["e1", "x1"], ["xe"]), c("half", k), helper.make_node("Mul", ["xe", "half"], ["g"])]
    a, b = math.sqrt(2 / math.pi), 0.044715
    if form == "tanh_torch":    # as torch.onnx exports gelu(approximate='tanh')
        return [helper.make_node("Mul", ["x1", "x1"], ["x2"]), helper.make_node("Mul", ["x1", "x2"], ["x3"]),
                c("b", b), helper.make_node("Mul", ["b", "x3"], ["bx3"]),
                helper.make_node("Add", ["x1", "bx3"], ["inner"]), c("a", a),
                helper.make_node("Mul", ["a", "inner"], ["ai"]), helper.make_node("Tanh", ["ai"], ["t"]),
                c("one", 1.0), helper.make_node("Add", ["one", "t"], ["t1"]),
                helper.make_node("Mul", ["x1", "t1"], ["xt"]), c("half", k), helper.make_node("Mul", ["half", "xt"], ["g"])]
    if form == "tanh_hf":       # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * pow(x, 3))))
        return [c("half", k), helper.make_node("Mul", ["half", "x1"], ["hx"]), c("three", 3.0),
                helper.make_node("Pow", ["x1", "three"], ["x3"]), c("b", b), helper.make_node("Mul", ["x3", "b"], ["bx3"]),
                helper.make_node("Add", ["x1", "bx3"], ["inner"]), c("a", a),
                helper.make_node("Mul", ["inner", "a"], ["ai"]), helper.make_node("Tanh", ["ai"], ["t"]),
                c("one", 1.0), helper.make_node("Add", ["t", "one"], ["t1"]), helper.make_node("Mul", ["hx", "t1"], ["g"])]
    raise ValueError(form)


@pytest.mark.parametrize("form", ["erf_hf", "erf_torch", "tanh_torch", "tanh_hf"])
def test_gelu_is_fused(tmp_path, form):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["x1"])] + gelu_nodes(form) + \
            [helper.make_node("MatMul", ["g", "w2"], ["y"])]
    m = model(nodes, [("x", F, [1, 6, 8])], ["y"], {"w": randn(8, 16, scale=0.8), "w2": randn(16, 4)}, opset=14)
    g = check(m, {"x": randn(2, 6, 8)}, tmp_path)
    assert ops(g) == ["top.matmul", "top.gelu", "top.matmul"], ops(g)
    gelu = next(n for n in g.nodes if n.op == "top.gelu")
    assert gelu.name == "g_Gelu" and gelu.attrs["approximate"] == ("tanh" if "tanh" in form else "none")


def test_gelu_lookalike_is_not_fused(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["x1"])] + gelu_nodes("erf_hf", k=0.6) + \
            [helper.make_node("MatMul", ["g", "w2"], ["y"])]
    m = model(nodes, [("x", F, [1, 6, 8])], ["y"], {"w": randn(8, 16), "w2": randn(16, 4)}, opset=14)
    g = check(m, {"x": randn(2, 6, 8)}, tmp_path)
    assert "top.gelu" not in ops(g) and "top.erf" in ops(g)


# ------------------------------------------------------------------------------------------------------ embeddings
def test_embeddings_with_shape_subgraph(tmp_path):
    vocab, seq, dim = 50, 7, 16
    nodes = [helper.make_node("Gather", ["word", "ids"], ["we"]),
             helper.make_node("Gather", ["types", "tt"], ["te"]),
             helper.make_node("Shape", ["ids"], ["shp"]), c("one_i", 1, np.int64),
             helper.make_node("Gather", ["shp", "one_i"], ["len"], axis=0), c("zero_i", 0, np.int64),
             helper.make_node("Range", ["zero_i", "len", "one_i"], ["pos_ids"]),
             c("ax0", [0], np.int64), helper.make_node("Unsqueeze", ["pos_ids", "ax0"], ["pos2"]),
             helper.make_node("Gather", ["pos", "pos2"], ["pe"]),
             helper.make_node("Add", ["we", "te"], ["e1"]), helper.make_node("Add", ["e1", "pe"], ["e2"]),
             helper.make_node("LayerNormalization", ["e2", "lnw", "lnb"], ["y"], epsilon=1e-12)]
    inits = {"word": randn(vocab, dim), "types": randn(2, dim), "pos": randn(16, dim), "lnw": randn(dim),
             "lnb": randn(dim)}
    m = model(nodes, [("ids", I64, [1, seq]), ("tt", I64, [1, seq])], ["y"], inits)
    ids = R.integers(-vocab, vocab, (2, seq)).astype(np.int64)   # negative ids count from the end, as in ONNX
    g = check(m, {"ids": ids, "tt": R.integers(0, 2, (2, seq)).astype(np.int64)}, tmp_path)
    assert ops(g).count("top.gather") == 2
    no_shape_arithmetic(g)


# ------------------------------------------------------------------------------------------------------ attention
def attention_model(seq=6, dim=8, heads=2):
    dh = dim // heads
    n = helper.make_node
    nodes = [
        # --- key mask as the sdpa exporter builds it: flat "batch * seq + position" index into the flattened mask
        n("Cast", ["mask"], ["mb"], to=B), n("Shape", ["mask"], ["shp"]), c("i0", 0, np.int64), c("i1", 1, np.int64),
        n("Gather", ["shp", "i0"], ["nb"], axis=0), n("Gather", ["shp", "i1"], ["ns"], axis=0),
        n("Range", ["i0", "nb", "i1"], ["bidx"]), c("s4", [-1, 1, 1, 1], np.int64),
        n("Reshape", ["bidx", "s4"], ["bidx4"]), n("Mul", ["bidx4", "ns"], ["boff"]),
        n("Range", ["i0", "ns", "i1"], ["kidx"]), c("k4", [1, 1, 1, -1], np.int64), n("Reshape", ["kidx", "k4"], ["kidx4"]),
        n("Add", ["boff", "kidx4"], ["flat"]), n("Flatten", ["mb"], ["mflat"], axis=2),
        n("Gather", ["mflat", "flat"], ["g5"], axis=0), c("m1", [-1], np.int64), n("Reshape", ["g5", "m1"], ["g1"]),
        n("Shape", ["flat"], ["fshape"]), n("Reshape", ["g1", "fshape"], ["keymask"]),
        # --- query side: ConstantOfShape / GreaterOrEqual / And, then Expand with a Where-built target shape
        c("empty", np.zeros(0), np.int64),
        helper.make_node("ConstantOfShape", ["empty"], ["true"], value=numpy_helper.from_array(np.array([True]))),
        c("q4", [1, 1, -1, 1], np.int64), n("Reshape", ["kidx", "q4"], ["qidx"]),
        n("GreaterOrEqual", ["qidx", "i0"], ["qok"]), n("And", ["true", "qok"], ["qok2"]),
        n("And", ["qok2", "keymask"], ["m4"]),
        c("tshape", [1, -1, seq, seq], np.int64), c("four", [4], np.int64),
        helper.make_node("ConstantOfShape", ["four"], ["ones4"], value=numpy_helper.from_array(np.array([1], np.int64))),
        c("mone", -1, np.int64), n("Mul", ["ones4", "mone"], ["neg4"]), n("Equal", ["tshape", "neg4"], ["isneg"]),
        n("Where", ["isneg", "ones4", "tshape"], ["target"]), n("Expand", ["m4", "target"], ["mexp"]),
        n("Not", ["mexp"], ["masked"]), c("ninf", [-np.inf]), c("zero", [0.0]),
        n("Where", ["masked", "ninf", "zero"], ["addmask"]),
        # --- eager-style mask arithmetic, on a second output: x * (mask == 0) * -10000
        n("Equal", ["mask", "i0"], ["pad"]), n("Cast", ["pad"], ["padf"], to=F), c("big", -1e4),
        n("Mul", ["padf", "big"], ["padm"]), c("u2", [2], np.int64), n("Unsqueeze", ["padm", "u2"], ["padm3"]),
        n("Mul", ["x", "padm3"], ["y2"]),
        # --- attention
        n("MatMul", ["x", "wq"], ["q0"]), n("Add", ["q0", "bq"], ["q"]),
        n("MatMul", ["x", "wk"], ["k0"]), n("Add", ["bk", "k0"], ["k"]),
        n("MatMul", ["x", "wv"], ["v"]),
        c("hs", [1, seq, heads, dh], np.int64),
        n("Reshape", ["q", "hs"], ["qh"]), n("Transpose", ["qh"], ["qt"], perm=[0, 2, 1, 3]),
        n("Reshape", ["k", "hs"], ["kh"]), n("Transpose", ["kh"], ["kt"], perm=[0, 2, 3, 1]),
        n("Reshape", ["v", "hs"], ["vh"]), n("Transpose", ["vh"], ["vt"], perm=[0, 2, 1, 3]),
        n("MatMul", ["qt", "kt"], ["sc"]), c("scale", 1 / math.sqrt(dh)), n("Mul", ["sc", "scale"], ["scs"]),
        n("Add", ["scs", "addmask"], ["sm1"]), n("Softmax", ["sm1"], ["p"], axis=-1), n("IsNaN", ["p"], ["pnan"]),
        n("Where", ["pnan", "zero", "p"], ["p2"]), n("MatMul", ["p2", "vt"], ["o"]),
        n("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]), c("os", [1, seq, dim], np.int64),
        n("Reshape", ["ot", "os"], ["y"]),
    ]
    inits = {"wq": randn(dim, dim), "wk": randn(dim, dim), "wv": randn(dim, dim), "bq": randn(dim), "bk": randn(dim)}
    return model(nodes, [("x", F, [1, seq, dim]), ("mask", I64, [1, seq])], ["y", "y2"], inits, opset=14)


def test_attention_with_mask_building(tmp_path):
    seq = 6
    mask = np.array([[1] * seq, [1, 1, 1, 0, 0, 0]], np.int64)   # the second sample is padded: the mask matters
    g = check(attention_model(seq), {"x": randn(2, seq, 8), "mask": mask}, tmp_path)
    no_shape_arithmetic(g)
    o = ops(g)
    assert "top.gather" not in o and "top.expand" not in o       # identity gather became a reshape
    assert o.count("top.matmul") == 5 and o.count("top.softmax") == 1


def test_gather_nd_mask_as_dynamo_exports_it(tmp_path):
    seq = 5
    idx = np.stack(np.broadcast_arrays(np.zeros((1, 1, 1, seq), np.int64), np.arange(seq).reshape(1, 1, 1, seq)), -1)
    nodes = [helper.make_node("Cast", ["mask"], ["mb"], to=B), helper.make_node("GatherND", ["mb", "idx"], ["m4"]),
             c("zero", 0.0), c("ninf", -np.inf), helper.make_node("Where", ["m4", "zero", "ninf"], ["add"]),
             helper.make_node("Add", ["x", "add"], ["s"]), helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    m = model(nodes, [("x", F, [1, 2, seq, seq]), ("mask", I64, [1, seq])], ["y"], {"idx": idx})
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.int64)
    g = check(m, {"x": randn(2, 2, seq, seq), "mask": mask}, tmp_path)
    assert "top.gather" not in ops(g)


def test_gather_nd_rows(tmp_path):
    nodes = [helper.make_node("GatherND", ["x", "idx"], ["y"])]
    m = model(nodes, [("x", F, [3, 4, 5])], ["y"], {"idx": np.array([[2, 1], [0, -1], [-3, 2]], np.int64)})
    g = check(m, {"x": randn(3, 4, 5)}, tmp_path, batch=1)
    assert "top.gather" in ops(g)


def test_cls_token_concat_scaled_batch(tmp_path):
    dim = 4
    n = helper.make_node
    nodes = [n("Shape", ["x"], ["shp"]), c("s0", [0], np.int64), c("s1", [1], np.int64),
             n("Slice", ["shp", "s0", "s1"], ["nb"]), c("rest", [1, dim], np.int64),
             n("Concat", ["nb", "rest"], ["target"], axis=0), n("Expand", ["cls", "target"], ["clsb"]),
             n("Concat", ["clsb", "x"], ["t"], axis=1), n("Add", ["t", "pos"], ["y"])]
    m = model(nodes, [("x", F, [1, 3, dim])], ["y"], {"cls": randn(1, 1, dim), "pos": randn(1, 4, dim)})
    g = check(m, {"x": randn(2, 3, dim)}, tmp_path)
    no_shape_arithmetic(g)


def test_softmax_opset11_flattens(tmp_path):
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=1)]
    check(model(nodes, [("x", F, [1, 3, 4])], ["y"], opset=11), {"x": randn(2, 3, 4, scale=3)}, tmp_path)


# ------------------------------------------------------------------------------------------------------ errors
def _import_error(m, tmp_path):
    path = str(tmp_path / "bad.onnx")
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    with pytest.raises(UserError) as e:
        import_onnx(path)
    return str(e.value)


def test_error_matmul_integer(tmp_path):
    m = model([helper.make_node("MatMul", ["a", "w"], ["y"], name="mm0")], [("a", I64, [2, 3])], ["y"],
              {"w": np.ones((3, 2), np.int64)})
    msg = _import_error(m, tmp_path)
    assert "'mm0' (MatMul)" in msg and "floating-point" in msg


def test_error_gemm_rank(tmp_path):
    m = model([helper.make_node("Gemm", ["a", "w"], ["y"], name="g0")], [("a", F, [1, 2, 3])], ["y"],
              {"w": randn(3, 2)}, opset=13)
    msg = _import_error(m, tmp_path)
    assert "'g0' (Gemm)" in msg and "2-D" in msg


def test_error_layer_norm_stats_output(tmp_path):
    nodes = [helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean"], name="ln0"),
             helper.make_node("Add", ["y", "mean"], ["z"])]
    msg = _import_error(model(nodes, [("x", F, [1, 4])], ["z"], {"s": randn(4)}), tmp_path)
    assert "'ln0' (LayerNormalization)" in msg and "Mean" in msg


def test_error_dynamic_range(tmp_path):
    nodes = [c("z", 0.0), c("one", 1.0), helper.make_node("ReduceMax", ["x"], ["lim"], keepdims=0),
             helper.make_node("Range", ["z", "lim", "one"], ["y"], name="r0")]
    msg = _import_error(model(nodes, [("x", F, [1, 4])], ["y"], opset=13), tmp_path)
    assert "'r0' (Range)" in msg and "constant" in msg


def test_error_gather_nd_dynamic_indices(tmp_path):
    nodes = [helper.make_node("Cast", ["i"], ["ii"], to=I64), helper.make_node("GatherND", ["x", "ii"], ["y"], name="gnd")]
    msg = _import_error(model(nodes, [("x", F, [3, 4]), ("i", F, [2, 1])], ["y"]), tmp_path)
    assert "'gnd' (GatherND)" in msg and "constant" in msg
