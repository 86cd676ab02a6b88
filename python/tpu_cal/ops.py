"""The op tables of the `top` and `tpu` dialects.

One table is the single source of truth: `dialects/generate.py` turns it into the IRDL files, the frontend
emits ops from it (every declared attribute is always present, so the IRDL verifier checks them all), and the
interpreter has one kernel per entry.

Operand spec: `name` a tensor; `name?` anything (a tensor, or the `none` result of `top.none` when absent);
`name*` variadic — IRDL unifies the types of a variadic group, so variadic operands are emitted as VARIADIC_SLOTS
optional slots with an `operandSegmentSizes` attribute (see MLIR_NOTES.md).

Attribute kinds: i (integer), f (float), s (string), b (bool), ints / floats (dense arrays).
Attributes that merely repeat the result type (a reshape's target shape, a cast's dtype) are not stored.
"""
from __future__ import annotations

from dataclasses import dataclass, field

VARIADIC_SLOTS = 32


@dataclass(frozen=True)
class OpDef:
    name: str                   # without dialect prefix
    operands: tuple[str, ...]
    attrs: dict = field(default_factory=dict)
    doc: str = ""

    def operand_names(self):
        return [o.rstrip("?*") for o in self.operands]

    @property
    def variadic(self) -> bool:
        return any(o.endswith("*") for o in self.operands)


def _unary(name, doc, **attrs):
    return OpDef(name, ("input",), attrs, doc)


def _binary(name, doc):
    return OpDef(name, ("lhs", "rhs"), {}, doc + " (numpy broadcasting)")


_POOL = dict(kernel_shape="ints", strides="ints", pads="ints", dilations="ints", ceil_mode="b",
             count_include_pad="b")
_CONV = dict(kernel_shape="ints", strides="ints", pads="ints", dilations="ints", group="i")

TOP_OPS: list[OpDef] = [
    OpDef("input", ("input",), {}, "Names a function argument; calibration statistics of the input attach here."),
    OpDef("weight", (), {"name": "s"}, "A constant read from the module's weight file under `name`."),
    OpDef("none", (), {}, "Stands for an absent optional operand."),
    # --- convolution family; pads are [begin..., end...] per spatial axis, as ONNX
    OpDef("conv", ("input", "filter", "bias?"), dict(_CONV), "N-d convolution (ONNX Conv)."),
    OpDef("deconv", ("input", "filter", "bias?"), dict(_CONV, output_padding="ints"),
          "Transposed convolution (ONNX ConvTranspose); filter is [Cin, Cout/group, k...]."),
    OpDef("maxpool", ("input",), dict(_POOL), "Max pooling; padding never wins."),
    OpDef("avgpool", ("input",), dict(_POOL), "Average pooling; global pools are avgpool over the whole plane."),
    OpDef("scale", ("input", "scale", "bias"), {}, "Per-channel y = x*scale[c] + bias[c] on axis 1 (unfolded BatchNorm)."),
    OpDef("prelu", ("input", "slope"), {}, "PReLU; slope broadcasts as in ONNX."),
    # --- activations and elementwise unary ops
    _unary("relu", "max(x, 0)"),
    _unary("leaky_relu", "x if x>=0 else alpha*x", alpha="f"),
    _unary("clip", "min(max(x, min), max); ReLU6 is clip(0, 6)", min="f", max="f"),
    _unary("sigmoid", "1/(1+exp(-x))"),
    _unary("silu", "x*sigmoid(x)"),
    _unary("hardsigmoid", "clip(alpha*x+beta, 0, 1)", alpha="f", beta="f"),
    _unary("hardswish", "x*clip(x/6+0.5, 0, 1)"),
    _unary("gelu", "GELU; approximate is 'none' (erf) or 'tanh'", approximate="s"),
    _unary("tanh", "tanh(x)"),
    _unary("erf", "erf(x)"),
    _unary("exp", "exp(x)"),
    _unary("log", "log(x)"),
    _unary("sqrt", "sqrt(x)"),
    _unary("abs", "|x|"),
    _unary("neg", "-x"),
    _unary("reciprocal", "1/x"),
    _unary("softplus", "log(1+exp(x))"),
    _unary("mish", "x*tanh(softplus(x))"),
    _unary("floor", "floor(x)"),
    _unary("not", "logical not"),
    _unary("isnan", "x != x"),
    _unary("cast", "element type conversion to the result's element type"),
    _unary("softmax", "softmax over axis", axis="i"),
    _unary("log_softmax", "log-softmax over axis", axis="i"),
    # --- binary elementwise
    _binary("add", "lhs + rhs"),
    _binary("sub", "lhs - rhs"),
    _binary("mul", "lhs * rhs"),
    _binary("div", "lhs / rhs (integer division truncates, as ONNX)"),
    _binary("pow", "lhs ** rhs"),
    _binary("max", "elementwise maximum"),
    _binary("min", "elementwise minimum"),
    _binary("equal", "lhs == rhs"),
    _binary("less", "lhs < rhs"),
    _binary("greater", "lhs > rhs"),
    _binary("and", "logical and"),
    _binary("or", "logical or"),
    OpDef("where", ("cond", "lhs", "rhs"), {}, "cond ? lhs : rhs (numpy broadcasting)"),
    # --- linear algebra and normalization
    OpDef("matmul", ("input", "right", "bias?"), {},
          "ONNX MatMul semantics (batched, broadcast) plus an optional bias on the last axis; Gemm lowers to it."),
    OpDef("layer_norm", ("input", "scale?", "bias?"), {"axis": "i", "eps": "f"},
          "Normalizes over axes [axis, rank); scale and bias broadcast on those axes."),
    OpDef("group_norm", ("input", "scale?", "bias?"), {"num_groups": "i", "eps": "f"},
          "GroupNorm/InstanceNorm over channel groups; scale and bias per channel."),
    # --- data movement
    _unary("reshape", "reshape to the result type's shape (Flatten/Squeeze/Unsqueeze too)"),
    _unary("permute", "transpose by order", order="ints"),
    _unary("slice", "strided slice with normalized static starts/ends/steps on axes",
           starts="ints", ends="ints", steps="ints", axes="ints"),
    OpDef("concat", ("inputs*",), {"axis": "i"}, "concatenation along axis"),
    _unary("pad", "pad by [begin..., end...]; mode constant/reflect/edge", pads="ints", mode="s", value="f"),
    _unary("resize", "resize to the result type's shape; ONNX Resize modes (nearest_mode 'simple' is Upsample's); "
           "scales per axis drive the coordinate transform", mode="s", coord_mode="s", nearest_mode="s",
           cubic_coeff="f", exclude_outside="b", scales="floats"),
    _unary("expand", "broadcast to the result type's shape"),
    _unary("tile", "np.tile by repeats", repeats="ints"),
    _unary("reduce", "reduction; mode mean/max/min/sum/prod/l1/l2/sumsquare/logsumexp",
           mode="s", axes="ints", keepdims="b"),
    _unary("arg", "argmax/argmin (mode max/min) along axis, first occurrence", mode="s", axis="i", keepdims="b"),
    _unary("depth_to_space", "DepthToSpace; mode DCR or CRD", blocksize="i", mode="s"),
    _unary("space_to_depth", "SpaceToDepth", blocksize="i"),
    OpDef("gather", ("input", "indices"), {"axis": "i"}, "np.take along axis (negative indices wrap, as ONNX)"),
]

# Ops that exist in both dialects unchanged (they hold no arithmetic to quantize).
SHARED_OPS = ("input", "weight", "none")

# The tpu dialect: every compute op of top, per precision (the precision lives in the element types and a `mode`
# attribute added by lowering), plus the cast placed at precision borders.
TPU_OPS: list[OpDef] = [d for d in TOP_OPS if d.name not in SHARED_OPS] + [
    OpDef("cast", ("input",), {}, "Converts between precisions (quantize, dequantize, f32<->f16/bf16)."),
]
TPU_OPS = list({d.name: d for d in TPU_OPS}.values())   # tpu.cast replaces the top-level unary cast entry

TOP = {d.name: d for d in TOP_OPS}
TPU = {d.name: d for d in TPU_OPS}


def opdef(full_name: str) -> OpDef:
    dialect, _, name = full_name.partition(".")
    table = {"top": TOP, "tpu": TPU}.get(dialect)
    if table is None or name not in table:
        raise KeyError(f"unknown op '{full_name}'")
    return table[name]
