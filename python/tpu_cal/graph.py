"""A plain-Python view of a top/tpu module: what the interpreter runs and the frontend builds.

The MLIR module is the file format and what passes transform; `Graph` is the same content as a list of
single-result nodes in program order, each named by its location (TPU-MLIR's op names). `to_mlir()` prints the
generic MLIR text (parsed and verified by `ir.parse`), `from_module()` reads a parsed module back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .ops import VARIADIC_SLOTS, opdef

_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64",
           "i32": "int32", "i16": "int16", "i8": "int8", "ui8": "uint8", "i1": "bool"}
_ELEM = {v: k for k, v in _DTYPES.items()}


def elem_type(dtype) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in _ELEM:
        raise ValueError(f"no MLIR element type for dtype {name}")
    return _ELEM[name]


def tensor_type(shape, dtype) -> str:
    dims = "x".join(str(int(d)) for d in shape)
    return f"tensor<{dims + 'x' if dims else ''}{elem_type(dtype)}>"


def unique_name(base: str, pool: set) -> str:
    """`base`, or `base_1`, `base_2`, ... : the first not in `pool`, which it is then added to."""
    name, k = base, 1
    while name in pool:
        name = f"{base}_{k}"
        k += 1
    pool.add(name)
    return name


class RawAttr(str):
    """An attribute kept as MLIR text (quant types, nested attributes we do not interpret)."""


@dataclass
class Node:
    op: str                          # full op name, e.g. "top.conv"
    name: str                        # location name, unique in the graph
    inputs: list                     # producer names; None for an absent optional operand
    attrs: dict = field(default_factory=dict)   # declared attributes, Python values
    shape: tuple = ()
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)   # undeclared attributes (calibration, precision, ...)
    result_type: str | None = None   # overrides the tensor type built from shape/dtype (quantized types)

    @property
    def qtype(self):
        """The QType of a quantized result (tpu_cal.quant), else None."""
        from .quant import parse_qtype
        return parse_qtype(self.result_type) if self.result_type else None

    @property
    def type_text(self) -> str:
        if self.op == "top.none":
            return "none"
        return self.result_type or tensor_type(self.shape, self.dtype)


@dataclass
class Graph:
    name: str
    inputs: list[str]                # names of the top.input nodes, in argument order
    outputs: list[str]
    nodes: list[Node]
    weights: dict[str, np.ndarray] = field(default_factory=dict)   # top.weight name -> array
    attrs: dict = field(default_factory=dict)   # module attributes without the "top." prefix

    def node_map(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def users(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                if i is not None:
                    out[i].append(n)
        return out

    def compute_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.op not in ("top.weight", "top.none", "top.input")]

    # ----- printing
    def to_mlir(self) -> str:
        nodes = self.node_map()
        lines = []
        args = []
        for i, name in enumerate(self.inputs):
            args.append(f"%arg{i}: {nodes[name].type_text} loc({_quote(name)})")
        ret_types = ", ".join(nodes[o].type_text for o in self.outputs)
        mod_attrs = ", ".join(f"top.{k} = {format_attr(v)}" for k, v in sorted(self.attrs.items()))
        lines.append(f"module attributes {{{mod_attrs}}} {{")
        lines.append(f"  func.func @main({', '.join(args)}) -> ({ret_types}) {{")
        ssa = {}
        need_none = any(i is None for n in self.nodes for i in n.inputs)
        if need_none:
            lines.append('    %none = "top.none"() : () -> none loc("none")')
        arg_of = {name: f"%arg{i}" for i, name in enumerate(self.inputs)}
        for k, n in enumerate(self.nodes):
            ssa[n.name] = f"%{k}"
            if n.op == "top.input":
                operands = [arg_of[n.name]]
                operand_types = [n.type_text]
            else:
                operands = ["%none" if i is None else ssa[i] for i in n.inputs]
                operand_types = ["none" if i is None else nodes[i].type_text for i in n.inputs]
            attrs = dict(n.attrs)
            d = opdef(n.op)
            if d.variadic:
                if len(n.inputs) > VARIADIC_SLOTS:
                    raise ValueError(f"{n.name}: {n.op} takes at most {VARIADIC_SLOTS} operands")
                fixed = len(d.operands) - 1
                segs = [1] * fixed + [1] * len(n.inputs[fixed:]) + [0] * (VARIADIC_SLOTS - len(n.inputs) + fixed)
                attrs["operandSegmentSizes"] = RawAttr(f"array<i32: {', '.join(map(str, segs))}>")
            attrs.update(n.extra)
            attr_text = (" {" + ", ".join(f"{_key(k)} = {format_attr(v)}" for k, v in attrs.items()) + "}"
                         if attrs else "")
            lines.append(f'    %{k} = "{n.op}"({", ".join(operands)}){attr_text} : '
                         f'({", ".join(operand_types)}) -> {n.type_text} loc({_quote(n.name)})')
        outs = ", ".join(ssa[o] for o in self.outputs)
        lines.append(f"    return {outs} : {ret_types} loc(unknown)")
        lines.append("  } loc(unknown)")
        lines.append("} loc(unknown)")
        return "\n".join(lines) + "\n"

    # ----- reading
    @staticmethod
    def from_module(module, weights: dict[str, np.ndarray] | None = None) -> "Graph":
        from mlir import ir

        mod_op = module.operation
        attrs = {}
        for k in mod_op.attributes:
            key = k.name if hasattr(k, "name") else k
            if key.startswith("top."):
                attrs[key[4:]] = parse_attr(mod_op.attributes[key])
        funcs = [op for op in module.body.operations if op.operation.name == "func.func"]
        if len(funcs) != 1:
            raise ValueError(f"expected one func.func in the module, found {len(funcs)}")
        func = funcs[0]
        block = func.regions[0].blocks[0]
        names: dict = {}
        nodes: list[Node] = []
        inputs_by_arg: dict[int, str] = {}
        outputs: list[str] = []
        used: set[str] = set()
        for k, op in enumerate(block.operations):
            op = op.operation
            if op.name == "func.return":
                outputs = [names[v] for v in op.operands]
                continue
            loc = op.location
            name = loc.name_str if loc.is_a_name() else f"{op.name.split('.')[-1]}_{k}"
            while name in used:   # keep names unique even in hand-written IR
                name += "_"
            used.add(name)
            names[op.results[0]] = name
            if op.name == "top.none":
                names[op.results[0]] = None
                continue
            d = opdef(op.name)
            declared = set(d.attrs)
            n_attrs, extra = {}, {}
            for a in op.attributes:
                key = a.name if hasattr(a, "name") else a
                if key == "operandSegmentSizes":
                    continue
                (n_attrs if key in declared else extra)[key] = parse_attr(op.attributes[key])
            if op.name == "top.input":
                inputs_by_arg[ir.BlockArgument(op.operands[0]).arg_number] = name
                ins = []
            else:
                ins = [names[v] for v in op.operands]
            rtype = op.results[0].type
            shape, dtype, raw = _type_info(rtype)
            nodes.append(Node(op.name, name, ins, n_attrs, shape, dtype, extra, raw))
        inputs = [inputs_by_arg[i] for i in sorted(inputs_by_arg)]
        return Graph(attrs.get("name", "main"), inputs, outputs, nodes, dict(weights or {}), attrs)


def _type_info(t):
    """(shape, numpy dtype name, raw type text or None) of a result type."""
    from mlir import ir

    from .quant import parse_qtype

    rt = ir.RankedTensorType(t)
    et = str(rt.element_type)
    if et in ("f16", "bf16"):
        # held as float32 arrays whose values are rounded to the type (numpy has no bfloat16)
        return tuple(rt.shape), "float32", str(t)
    if et in _DTYPES:
        return tuple(rt.shape), _DTYPES[et], None
    q = parse_qtype(et)
    if q is not None:   # quantized: the array holds the storage integers
        return tuple(rt.shape), np.dtype(q.dtype).name, str(t)
    return tuple(rt.shape), "float32", str(t)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(k: str) -> str:
    return k if k.replace("_", "a").replace(".", "a").isalnum() and not k[0].isdigit() else _quote(k)


def _float(x: float) -> str:
    x = float(x)
    if not math.isfinite(x):
        return "0x" + np.array([x], ">f8").tobytes().hex().upper() + " : f64"
    s = repr(x)
    if "." not in s:
        s = s.replace("e", ".0e") if "e" in s else s + ".0"
    return s + " : f64"


def format_attr(v) -> str:
    """Python value -> MLIR attribute text."""
    if isinstance(v, RawAttr):
        return str(v)
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return f"{int(v)} : i64"
    if isinstance(v, (float, np.floating)):
        return _float(v)
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {format_attr(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple, np.ndarray)):
        vals = list(np.asarray(v).ravel()) if isinstance(v, np.ndarray) else list(v)
        if all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in vals):
            return f"array<i64{': ' if vals else ''}{', '.join(str(int(x)) for x in vals)}>"
        if all(isinstance(x, (int, float, np.integer, np.floating)) for x in vals):
            return f"array<f64{': ' if vals else ''}{', '.join(_float(x)[:-6] for x in vals)}>"
        return "[" + ", ".join(format_attr(x) for x in vals) + "]"
    raise TypeError(f"cannot print {type(v).__name__} as an MLIR attribute")


def parse_attr(a):
    """MLIR attribute -> Python value (RawAttr text for kinds we do not interpret)."""
    from mlir import ir

    for cls, conv in ((ir.BoolAttr, lambda x: bool(x.value)),
                      (ir.IntegerAttr, lambda x: int(x.value)),
                      (ir.FloatAttr, lambda x: float(x.value)),
                      (ir.StringAttr, lambda x: x.value),
                      (ir.DenseI64ArrayAttr, lambda x: [int(e) for e in x]),
                      (ir.DenseF64ArrayAttr, lambda x: [float(e) for e in x])):
        if isinstance(a, cls):
            return conv(a)
    if isinstance(a, ir.DictAttr):
        return {a[i].name: parse_attr(a[i].attr) for i in range(len(a))}
    if isinstance(a, ir.ArrayAttr):
        return [parse_attr(x) for x in a]
    return RawAttr(str(a))
