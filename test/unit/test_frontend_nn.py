"""Conv-family ONNX converters and kernels against ONNX Runtime, on small synthetic models.

Every model declares a symbolic batch; it is imported for batch 1 and a batch of 2 runs at once. `onnx_check`
(conftest.py) compares with ORT (cosine >= 0.99999, max abs error <= 1e-4 of the output range) and checks that
the MLIR round trip gives the same results.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tpu_cal.errors import UserError

RNG = np.random.default_rng(1234)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def make(nodes, inputs, outputs, inits=None, opset=17):
    """inputs: {name: shape without batch}; outputs: names. Initializers: {name: array}."""
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N"] + list(s)) for n, s in inputs.items()]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    g = helper.make_graph(nodes, "t", ins, outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def feeds_for(inputs, batch=2):
    return {n: rand(batch, *s) for n, s in inputs.items()}


def single(op, attrs=None, x_shape=(3, 9, 9), inits=None, extra_inputs=(), opset=17, n_out=1):
    inputs = {"x": x_shape}
    names = ["x"] + list(extra_inputs)
    outs = [f"y{k}" for k in range(n_out)]
    node = helper.make_node(op, names, outs, name="n0", **(attrs or {}))
    return make([node], inputs, outs, inits, opset), inputs


def ops_of(g):
    return [n.op for n in g.compute_nodes()]


# ----------------------------------------------------------------------------------------------- Conv
CONV_CASES = {
    "basic3x3": dict(c=3, co=4, k=(3, 3), attrs=dict(pads=[1, 1, 1, 1])),
    "asym_pads": dict(c=3, co=4, k=(3, 3), attrs=dict(pads=[0, 1, 2, 0])),
    "dilation": dict(c=3, co=5, k=(3, 3), attrs=dict(dilations=[2, 2], pads=[2, 1, 2, 1])),
    "stride2_odd": dict(c=3, co=4, k=(3, 3), attrs=dict(strides=[2, 2], pads=[1, 1, 1, 1]), hw=(11, 9)),
    "stride_rect": dict(c=2, co=3, k=(2, 4), attrs=dict(strides=[1, 3], pads=[1, 0, 0, 2])),
    "groups2": dict(c=4, co=6, k=(3, 3), g=2, attrs=dict(pads=[1, 1, 1, 1])),
    "depthwise": dict(c=6, co=6, k=(3, 3), g=6, attrs=dict(pads=[1, 1, 1, 1])),
    "depthwise_s2_5x5": dict(c=6, co=6, k=(5, 5), g=6, attrs=dict(strides=[2, 2], pads=[1, 2, 2, 1])),
    "depthwise_dil": dict(c=5, co=5, k=(3, 3), g=5, attrs=dict(dilations=[2, 1], pads=[2, 0, 1, 1])),
    "depthwise_mult2": dict(c=3, co=6, k=(3, 3), g=3, attrs=dict(pads=[1, 1, 1, 1])),
    "depthwise_wide": dict(c=2, co=2, k=(3, 3), g=2, attrs=dict(pads=[1, 1, 1, 1]), hw=(64, 70)),
    "depthwise_wide_s2": dict(c=2, co=2, k=(3, 3), g=2, attrs=dict(strides=[2, 2], pads=[0, 0, 1, 1]), hw=(64, 70)),
    "depthwise_narrow": dict(c=64, co=64, k=(5, 5), g=64, attrs=dict(pads=[2, 2, 2, 2]), hw=(7, 7)),
    "same_upper": dict(c=3, co=4, k=(3, 3), attrs=dict(auto_pad="SAME_UPPER", strides=[2, 2]), hw=(10, 9)),
    "same_lower": dict(c=3, co=4, k=(4, 4), attrs=dict(auto_pad="SAME_LOWER", strides=[2, 2]), hw=(10, 9)),
    "valid": dict(c=3, co=4, k=(3, 3), attrs=dict(auto_pad="VALID", strides=[2, 1])),
    "pointwise": dict(c=8, co=5, k=(1, 1), attrs={}),
    "pointwise_s2": dict(c=8, co=5, k=(1, 1), attrs=dict(strides=[2, 2]), hw=(9, 8)),
    "nobias": dict(c=3, co=4, k=(3, 3), attrs=dict(pads=[1, 1, 1, 1]), bias=False),
    "conv1d": dict(c=3, co=4, k=(3,), attrs=dict(pads=[2, 1], strides=[2]), hw=(17,)),
    "conv1d_dw": dict(c=4, co=4, k=(5,), g=4, attrs=dict(pads=[2, 2], dilations=[2]), hw=(20,)),
    "conv3d": dict(c=2, co=3, k=(2, 3, 3), attrs=dict(pads=[1, 1, 1, 0, 1, 1], strides=[1, 2, 1]), hw=(5, 7, 6)),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(onnx_check, case):
    c = CONV_CASES[case]
    g = c.get("g", 1)
    hw = c.get("hw", (9, 10))
    w = rand(c["co"], c["c"] // g, *c["k"])
    inits = {"w": w}
    names = ["x", "w"]
    if c.get("bias", True):
        inits["b"] = rand(c["co"])
        names.append("b")
    node = helper.make_node("Conv", names, ["y"], name="conv0", group=g, **c["attrs"])
    m = make([node], {"x": (c["c"],) + hw}, ["y"], inits)
    graph, _ = onnx_check(m, {"x": rand(2, c["c"], *hw)})
    assert ops_of(graph) == ["top.conv"]
    assert graph.outputs == ["y_Conv"]


@pytest.mark.parametrize("s,p,d", [((1, 1), (1, 1, 1, 1), (1, 1)), ((2, 2), (0, 1, 2, 1), (1, 1)),
                                   ((1, 2), (2, 2, 2, 2), (2, 2)), ((2, 1), (0, 0, 0, 0), (1, 3))])
@pytest.mark.parametrize("hw", [(7, 7), (30, 33)])
def test_depthwise_methods_agree(s, p, d, hw):
    """Every depthwise method (banded Toeplitz matmuls, flat multiply-adds, the C kernel) against a float64
    im2col reference."""
    from tpu_cal import native
    from tpu_cal.interp.kernels import nn as K
    x = rand(2, 5, *hw)
    w = rand(5, 3, 3)
    b = rand(5)
    k = [3, 3]
    OH = K.out_size(hw[0], 3, s[0], d[0], p[0], p[2])
    OW = K.out_size(hw[1], 3, s[1], d[1], p[1], p[3])
    ref = K._im2col_conv(x.astype(np.float64), w.reshape(5, 1, 3, 3).astype(np.float64), b.astype(np.float64),
                         k, list(s), list(p), list(d), 5, OH, OW)
    runs = {"flat": lambda: K._dw_flat(x, w, b, k, list(s), list(p), list(d), OH, OW),
            "flat_nobias": lambda: K._dw_flat(x, w, None, k, list(s), list(p), list(d), OH, OW) + b[:, None, None]}
    for bh in (1, 2, 3, OH):
        runs[f"band{bh}"] = lambda bh=bh: K._dw_band(x, w, b, k, list(s), list(p), list(d), OH, OW, bh)
    lib = native.stats_library()
    if lib is None:
        print(f"depthwise C kernel not tested: {native.unavailable_reason()}")
    else:
        runs["native"] = lambda: K._dw_native(lib, x, w, b, k, list(s), list(p), list(d), OH, OW)
        runs["native_nobias"] = lambda: K._dw_native(lib, x, w, None, k, list(s), list(p), list(d), OH, OW) + \
            b[:, None, None]
    for name, fn in runs.items():
        y = fn()
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, ref, atol=2e-5, err_msg=name)


# ----------------------------------------------------------------------------------------------- ConvTranspose
DECONV_CASES = {
    "k2s2": dict(c=4, co=3, k=(2, 2), attrs=dict(strides=[2, 2])),
    "k2s2_groups_pads": dict(c=4, co=6, k=(2, 2), g=2, attrs=dict(strides=[2, 2], pads=[1, 0, 0, 1])),
    "k3s3": dict(c=3, co=2, k=(3, 3), attrs=dict(strides=[3, 3])),
    "k3s2_pad_outpad": dict(c=3, co=4, k=(3, 3), attrs=dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    "asym": dict(c=3, co=2, k=(3, 4), attrs=dict(strides=[2, 3], pads=[0, 1, 2, 0])),
    "groups": dict(c=4, co=6, k=(3, 3), g=2, attrs=dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "dilation": dict(c=2, co=3, k=(3, 3), attrs=dict(dilations=[2, 2], strides=[1, 2])),
    "output_shape": dict(c=3, co=2, k=(3, 3), attrs=dict(strides=[2, 2], output_shape=[13, 12])),
    "output_shape_upper": dict(c=3, co=2, k=(3, 3), attrs=dict(strides=[2, 2], output_shape=[12, 14],
                                                               auto_pad="SAME_UPPER")),
    "output_shape_larger": dict(c=3, co=2, k=(3, 3), attrs=dict(strides=[2, 2], output_shape=[14, 16])),
    "same_upper": dict(c=3, co=2, k=(3, 3), attrs=dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower": dict(c=3, co=2, k=(4, 4), attrs=dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "nobias": dict(c=3, co=2, k=(3, 3), attrs=dict(strides=[1, 1]), bias=False),
    "deconv1d": dict(c=3, co=2, k=(4,), attrs=dict(strides=[2], pads=[1, 1]), hw=(9,)),
}


@pytest.mark.parametrize("case", sorted(DECONV_CASES))
def test_conv_transpose(onnx_check, case):
    c = DECONV_CASES[case]
    g = c.get("g", 1)
    hw = c.get("hw", (6, 7))
    inits = {"w": rand(c["c"], c["co"] // g, *c["k"])}
    names = ["x", "w"]
    if c.get("bias", True):
        inits["b"] = rand(c["co"])
        names.append("b")
    node = helper.make_node("ConvTranspose", names, ["y"], name="dc", group=g, **c["attrs"])
    m = make([node], {"x": (c["c"],) + hw}, ["y"], inits)
    graph, _ = onnx_check(m, {"x": rand(2, c["c"], *hw)})
    assert ops_of(graph) == ["top.deconv"]


# ----------------------------------------------------------------------------------------------- pooling
POOL_CASES = {
    "max_k3s2p1": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "max_ceil": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "max_ceil_pad": ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1)),
    "max_dil": ("MaxPool", dict(kernel_shape=[2, 3], dilations=[2, 2], pads=[1, 1, 0, 1])),
    "max_sppf": ("MaxPool", dict(kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])),
    "max_same_upper": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "avg_excl": ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "avg_incl": ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
    "avg_ceil": ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "avg_ceil_incl": ("AveragePool", dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1,
                                          count_include_pad=1)),
    "avg_asym": ("AveragePool", dict(kernel_shape=[2, 2], strides=[1, 2], pads=[0, 1, 1, 0])),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pool(onnx_check, case):
    op, attrs = POOL_CASES[case]
    m, ins = single(op, attrs, x_shape=(3, 9, 10), opset=19 if "dil" in case else 17)
    onnx_check(m, feeds_for(ins))


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_1d(onnx_check, op):
    m, ins = single(op, dict(kernel_shape=[3], strides=[2], pads=[1, 1]), x_shape=(3, 12))
    onnx_check(m, feeds_for(ins))


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(onnx_check, op):
    m, ins = single(op, x_shape=(5, 7, 6))
    g, _ = onnx_check(m, feeds_for(ins))
    assert ops_of(g) == ["top.avgpool" if "Average" in op else "top.maxpool"]


# ----------------------------------------------------------------------------------------------- BatchNorm and norms
def _bn_inits(c, prefix="bn"):
    return {f"{prefix}_s": rand(c) + 1, f"{prefix}_b": rand(c), f"{prefix}_m": rand(c),
            f"{prefix}_v": np.abs(rand(c)) + 0.5}


def _bn(x, y, prefix="bn"):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{k}" for k in "sbmv"], [y], name=prefix,
                            epsilon=1e-3)


def test_bn_folded_into_conv(onnx_check):
    inits = {"w": rand(4, 3, 3, 3), **_bn_inits(4)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), _bn("c", "y")]
    m = make(nodes, {"x": (3, 8, 8)}, ["y"], inits)
    g, _ = onnx_check(m, {"x": rand(2, 3, 8, 8)})
    assert ops_of(g) == ["top.conv"]
    assert g.outputs == ["y_BatchNormalization"]


def test_bn_folded_into_deconv(onnx_check):
    inits = {"w": rand(4, 3, 2, 2), "b": rand(6), **_bn_inits(6)}
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], strides=[2, 2], group=2), _bn("c", "y")]
    m = make(nodes, {"x": (4, 5, 5)}, ["y"], inits)
    g, _ = onnx_check(m, {"x": rand(2, 4, 5, 5)})
    assert ops_of(g) == ["top.deconv"]


def test_bn_not_folded_when_conv_has_other_users(onnx_check):
    inits = {"w": rand(4, 3, 3, 3), "b": rand(4), **_bn_inits(4)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), _bn("c", "y"),
             helper.make_node("Relu", ["c"], ["r"])]
    m = make(nodes, {"x": (3, 8, 8)}, ["y", "r"], inits)
    g, _ = onnx_check(m, {"x": rand(2, 3, 8, 8)})
    assert sorted(ops_of(g)) == ["top.conv", "top.relu", "top.scale"]


@pytest.mark.parametrize("const_shape", [(1,), (), (4, 1, 1), (1, 4, 1, 1)])
def test_learnable_affine_folded_into_conv(onnx_check, const_shape):
    # PP-LCNetV3: conv, then s * x + b with one value or one per channel (the constant first or second)
    inits = {"w": rand(4, 3, 3, 3), "b": rand(4), "s": rand(*const_shape) + 2, "t": rand(*const_shape)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["s", "c"], ["m"]), helper.make_node("Add", ["m", "t"], ["y"])]
    m = make(nodes, {"x": (3, 8, 8)}, ["y"], inits)
    g, _ = onnx_check(m, {"x": rand(2, 3, 8, 8)})
    assert ops_of(g) == ["top.conv"] and g.outputs == ["y_Add"]


@pytest.mark.parametrize("case", ["conv_read_twice", "spatial_constant", "tensor_operand"])
def test_affine_not_folded(onnx_check, case):
    inits = {"w": rand(4, 3, 1, 1), "s": rand(1, 4, 1, 1) + 2}
    if case == "spatial_constant":
        inits["s"] = rand(1, 1, 8, 8) + 2           # varies over space: not a per-channel scale
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "x2" if case ==
                                                                               "tensor_operand" else "s"], ["y"])]
    outs = ["y", "c"] if case == "conv_read_twice" else ["y"]
    inputs = {"x": (3, 8, 8), "x2": (4, 8, 8)} if case == "tensor_operand" else {"x": (3, 8, 8)}
    m = make(nodes, inputs, outs, inits)
    g, _ = onnx_check(m, feeds_for(inputs))
    assert sorted(ops_of(g)) == ["top.conv", "top.mul"]


@pytest.mark.parametrize("order", ["x_first", "clip_first", "mul_sixth"])
def test_exported_hard_swish_is_one_op(onnx_check, order):
    # PaddlePaddle's export of hardswish: x * clip(x + 3, 0, 6) / 6
    inits = {"three": np.float32(3), "zero": np.float32(0), "six": np.float32(6), "sixth": np.float32(1 / 6)}
    prod = ["x", "cl"] if order != "clip_first" else ["cl", "x"]
    last = helper.make_node("Div", ["p", "six"], ["y"]) if order != "mul_sixth" else \
        helper.make_node("Mul", ["p", "sixth"], ["y"])
    nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["cl"]),
             helper.make_node("Mul", prod, ["p"]), last]
    m = make(nodes, {"x": (3, 8, 8)}, ["y"], inits)
    x = rand(2, 3, 8, 8, scale=4)
    g, _ = onnx_check(m, {"x": x})
    assert ops_of(g) == ["top.hardswish"]


def test_hard_swish_pattern_with_other_bounds_is_kept(onnx_check):
    inits = {"three": np.float32(3), "zero": np.float32(0), "five": np.float32(5), "six": np.float32(6)}
    nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "five"], ["cl"]),
             helper.make_node("Mul", ["x", "cl"], ["p"]), helper.make_node("Div", ["p", "six"], ["y"])]
    m = make(nodes, {"x": (3, 8, 8)}, ["y"], inits)
    g, _ = onnx_check(m, {"x": rand(2, 3, 8, 8, scale=4)})
    assert "top.hardswish" not in ops_of(g)


@pytest.mark.parametrize("shape", [(4, 6, 5), (4,), (4, 9)])
def test_bn_standalone(onnx_check, shape):
    m = make([_bn("x", "y")], {"x": shape}, ["y"], _bn_inits(shape[0]))
    g, _ = onnx_check(m, {"x": rand(2, *shape)})
    assert ops_of(g) == ["top.scale"]


def test_instance_norm(onnx_check):
    m, ins = single("InstanceNormalization", dict(epsilon=1e-4), x_shape=(4, 6, 7),
                    inits={"s": rand(4), "b": rand(4)}, extra_inputs=["s", "b"])
    onnx_check(m, {"x": rand(2, 4, 6, 7, scale=3) + 1})


def test_group_norm(onnx_check):
    m, ins = single("GroupNormalization", dict(epsilon=1e-5, num_groups=3), x_shape=(6, 5, 4),
                    inits={"s": rand(6), "b": rand(6)}, extra_inputs=["s", "b"], opset=21)
    onnx_check(m, {"x": rand(2, 6, 5, 4, scale=2) - 1})


@pytest.mark.parametrize("slope_shape", [(3, 1, 1), (1,), (3, 5, 1)])
def test_prelu(onnx_check, slope_shape):
    m, ins = single("PRelu", x_shape=(3, 5, 4), inits={"slope": rand(*slope_shape)}, extra_inputs=["slope"])
    onnx_check(m, feeds_for(ins))


@pytest.mark.parametrize("variant", ["relu6", "min_only", "max_only", "attrs_opset6", "none"])
def test_clip(onnx_check, variant):
    if variant == "attrs_opset6":
        m, ins = single("Clip", dict(min=-0.5, max=0.7), x_shape=(3, 4), opset=6)
    else:
        lo = {"relu6": 0.0, "min_only": -0.3}.get(variant)
        hi = {"relu6": 6.0, "max_only": 0.4}.get(variant)
        inits, extra = {}, []
        extra.append("lo" if lo is not None else "")
        extra.append("hi" if hi is not None else "")
        if lo is not None:
            inits["lo"] = np.array(lo, np.float32)
        if hi is not None:
            inits["hi"] = np.array(hi, np.float32)
        while extra and not extra[-1]:
            extra.pop()
        m, ins = single("Clip", x_shape=(3, 4), inits=inits, extra_inputs=extra)
    onnx_check(m, {"x": rand(2, 3, 4, scale=5)})


def test_hardsigmoid_hardswish(onnx_check):
    nodes = [helper.make_node("HardSigmoid", ["x"], ["a"], alpha=0.2, beta=0.5),
             helper.make_node("HardSwish", ["x"], ["b"])]
    m = make(nodes, {"x": (3, 4)}, ["a", "b"], opset=14)
    onnx_check(m, {"x": rand(2, 3, 4, scale=4)})


# ----------------------------------------------------------------------------------------------- Resize / Upsample
def _resize_model(mode, coord, nearest="round_prefer_floor", scales=None, sizes=None, x_shape=(2, 5, 6),
                  opset=13, **extra):
    """sizes are given for the spatial axes only (opset 18 `axes`), so the batch stays free."""
    inits = {"roi": np.zeros(0, np.float32)}
    names = ["x", "roi"]
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
        names.append("scales")
    else:
        inits["scales"] = np.zeros(0, np.float32)
        inits["sizes"] = np.array(sizes, np.int64)
        names += ["scales", "sizes"]
        extra["axes"] = list(range(1 + len(x_shape) - len(sizes), 1 + len(x_shape)))
        opset = max(opset, 18)
    attrs = dict(mode=mode, coordinate_transformation_mode=coord, **extra)
    if mode == "nearest":
        attrs["nearest_mode"] = nearest
    node = helper.make_node("Resize", names, ["y"], name="rs", **attrs)
    return make([node], {"x": x_shape}, ["y"], inits, opset)


COORDS = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"]
RESIZE_TARGETS = {"up2": dict(scales=[1, 1, 2, 2]), "up_frac": dict(scales=[1, 1, 1.5, 2.5]),
                  "down": dict(scales=[1, 1, 0.6, 0.5]), "sizes": dict(sizes=[9, 4]),
                  "sizes_1": dict(sizes=[1, 7]), "sizes_up": dict(sizes=[7, 13])}


@pytest.mark.parametrize("target", sorted(RESIZE_TARGETS))
@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("nearest", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
def test_resize_nearest(onnx_check, target, coord, nearest):
    m = _resize_model("nearest", coord, nearest, **RESIZE_TARGETS[target])
    onnx_check(m, {"x": rand(2, 2, 5, 6)})


@pytest.mark.parametrize("target", sorted(RESIZE_TARGETS))
@pytest.mark.parametrize("coord", COORDS + ["half_pixel_symmetric"])
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_linear_cubic(onnx_check, target, coord, mode):
    t = RESIZE_TARGETS[target]
    x_shape = (2, 5, 6)
    if mode == "cubic" and target in ("down", "sizes", "sizes_1"):
        # ONNX Runtime does bicubic downsampling on 2-D tensors only: resize the last axis of a (N, 6) input
        t = {"scales": [1, 0.6]} if target == "down" else {"sizes": [t["sizes"][-1]]}
        x_shape = (6,)
    m = _resize_model(mode, coord, opset=19 if coord == "half_pixel_symmetric" else 13, x_shape=x_shape, **t)
    onnx_check(m, {"x": rand(2, *x_shape)})


@pytest.mark.parametrize("extra", [dict(cubic_coeff_a=-0.5), dict(exclude_outside=1),
                                   dict(exclude_outside=1, cubic_coeff_a=-0.6)])
def test_resize_cubic_options(onnx_check, extra):
    m = _resize_model("cubic", "half_pixel", scales=[1, 1, 1.7, 0.8], **extra)
    onnx_check(m, {"x": rand(2, 2, 5, 6)})


def test_resize_opset10_and_upsample(onnx_check):
    for mode in ("nearest", "linear"):
        node = helper.make_node("Resize", ["x", "s"], ["y"], mode=mode)
        m = make([node], {"x": (2, 4, 5)}, ["y"], {"s": np.array([1, 1, 2, 3], np.float32)}, opset=10)
        onnx_check(m, {"x": rand(2, 2, 4, 5)})
        node = helper.make_node("Upsample", ["x", "s"], ["y"], mode=mode)
        m = make([node], {"x": (2, 4, 5)}, ["y"], {"s": np.array([1, 1, 2, 1.5], np.float32)}, opset=9)
        onnx_check(m, {"x": rand(2, 2, 4, 5)})


def test_resize_1d_axis_and_channels(onnx_check):
    m = _resize_model("linear", "half_pixel", scales=[1, 2, 1.5], x_shape=(3, 7))
    onnx_check(m, {"x": rand(2, 3, 7)})


# ----------------------------------------------------------------------------------------------- Pad
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("pads", [[0, 0, 1, 2, 0, 1, 0, 3], [0, 1, 2, 0, 0, 0, 1, 1], [0, 0, -1, 2, 0, 0, 1, -2]])
def test_pad(onnx_check, mode, pads):
    inits = {"p": np.array(pads, np.int64)}
    names = ["x", "p"]
    if mode == "constant":
        inits["v"] = np.array(1.5, np.float32)
        names.append("v")
    m, ins = single("Pad", dict(mode=mode), x_shape=(3, 5, 6), inits=inits, extra_inputs=names[1:])
    onnx_check(m, feeds_for(ins))


def test_pad_opset2_attrs(onnx_check):
    m, ins = single("Pad", dict(mode="constant", pads=[0, 0, 1, 1, 0, 0, 2, 0], value=-2.0), x_shape=(3, 4, 4),
                    opset=2)
    onnx_check(m, feeds_for(ins))


def test_pad_folded_into_conv(onnx_check):
    inits = {"p": np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "w": rand(3, 1, 3, 3)}
    nodes = [helper.make_node("Pad", ["x", "p"], ["xp"]),
             helper.make_node("Conv", ["xp", "w"], ["y"], group=3, strides=[2, 2])]
    m = make(nodes, {"x": (3, 8, 8)}, ["y"], inits)
    g, _ = onnx_check(m, {"x": rand(2, 3, 8, 8)})
    assert ops_of(g) == ["top.conv"]
    assert g.node_map()["y_Conv"].attrs["pads"] == [0, 0, 1, 1]


# ----------------------------------------------------------------------------------------------- Split, depth/space
@pytest.mark.parametrize("opset,sizes,attrs", [(11, None, dict(axis=1, split=[1, 3, 2])),
                                               (13, [2, 4], dict(axis=-1)),
                                               (13, None, dict(axis=1)),
                                               (18, None, dict(axis=2, num_outputs=3))])
def test_split(onnx_check, opset, sizes, attrs):
    n_out = len(attrs.get("split", sizes or [0, 0, 0] if opset != 13 else [0, 0]))
    if opset == 18:
        n_out = 3
    inits, extra = {}, []
    if sizes is not None:
        inits["split"] = np.array(sizes, np.int64)
        extra = ["split"]
    m, ins = single("Split", attrs, x_shape=(6, 8, 6), inits=inits, extra_inputs=extra, opset=opset, n_out=n_out)
    g, _ = onnx_check(m, feeds_for(ins))
    assert g.outputs == [f"y{k}_Split" for k in range(n_out)]
    assert set(ops_of(g)) == {"top.slice"}


@pytest.mark.parametrize("op,attrs", [("DepthToSpace", dict(blocksize=2, mode="DCR")),
                                      ("DepthToSpace", dict(blocksize=2, mode="CRD")),
                                      ("SpaceToDepth", dict(blocksize=2))])
def test_depth_space(onnx_check, op, attrs):
    m, ins = single(op, attrs, x_shape=(8, 4, 6))
    onnx_check(m, feeds_for(ins))


# ----------------------------------------------------------------------------------------------- a small CNN
def test_small_cnn_with_broadcasts(onnx_check):
    """Conv-BN-SiLU, residual add, per-channel broadcast multiply, pooling, resize, concat."""
    inits = {"w1": rand(8, 3, 3, 3), **_bn_inits(8, "bn1"), "w2": rand(8, 1, 3, 3), "b2": rand(8),
             "cs": rand(1, 8, 1, 1), "w3": rand(4, 16, 1, 1), "b3": rand(4),
             "sc": np.array([1, 1, 2, 2], np.float32), "roi": np.zeros(0, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        _bn("c1", "b1", "bn1"),
        helper.make_node("Sigmoid", ["b1"], ["s1"]),
        helper.make_node("Mul", ["b1", "s1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Add", ["c2", "a1"], ["r2"]),
        helper.make_node("Mul", ["r2", "cs"], ["m2"]),
        helper.make_node("MaxPool", ["m2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["p2", "roi", "sc"], ["u2"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Concat", ["u2", "m2"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w3", "b3"], ["y"]),
    ]
    m = make(nodes, {"x": (3, 16, 16)}, ["y"], inits)
    g, _ = onnx_check(m, {"x": rand(2, 3, 16, 16)})
    assert "top.scale" not in ops_of(g)


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("op,attrs,inits,extra,msg", [
    ("Conv", dict(auto_pad="WRONG"), {"w": rand(2, 3, 3, 3)}, ["w"], "auto_pad"),
    ("Conv", dict(group=2), {"w": rand(2, 3, 3, 3)}, ["w"], "group"),
    ("MaxPool", {}, {}, [], "kernel_shape"),
    ("Resize", dict(coordinate_transformation_mode="tf_crop_and_resize"),
     {"roi": np.zeros(8, np.float32), "s": np.array([1, 1, 2, 2], np.float32)}, ["roi", "s"], "tf_crop_and_resize"),
    ("Pad", dict(mode="reflect"), {"p": np.array([0, 0, 9, 0, 0, 0, 0, 0], np.int64)}, ["p"], "reflect"),
    ("Split", dict(axis=1, split=[1, 1]), {}, [], "split sizes"),
])
def test_errors_name_the_node(tmp_path, op, attrs, inits, extra, msg):
    from tpu_cal.frontend.onnx_import import ImportOptions, import_onnx
    import onnx
    m, _ = single(op, attrs, x_shape=(3, 6, 6), inits=inits, extra_inputs=extra, opset=11 if op == "Split" else 17,
                  n_out=2 if op == "Split" else 1)
    p = str(tmp_path / "bad.onnx")
    onnx.save(m, p)
    with pytest.raises(UserError) as e:
        import_onnx(p, ImportOptions(input_shapes=[(1, 3, 6, 6)]))
    assert "'n0'" in str(e.value) and msg in str(e.value) and op in str(e.value)


def test_efficientnet_unavailable_names_the_reason(tmp_path, monkeypatch):
    """A missing package is a ModelUnavailable with the reason (tests turn it into a skip that prints it)."""
    import sys
    from tpu_cal.zoo import ModelUnavailable
    from tpu_cal.zoo import efficientnet as eff
    monkeypatch.setenv("TPU_CAL_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)   # import fails
    monkeypatch.setitem(sys.modules, "torch", None)                       # (and fast: torch is not loaded)
    with pytest.raises(ModelUnavailable, match="efficientnet-lite-pytorch"):
        eff.efficientnet_lite0()
    assert not list(tmp_path.rglob("*.onnx"))


def test_efficientnet_preprocess_shape():
    from tpu_cal.zoo import efficientnet as eff
    img = (RNG.random((300, 451, 3)) * 255).astype(np.uint8)
    x = eff.preprocess(img)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
