"""Precision assignment and lowering top -> tpu, on `Graph` objects (docs/lowering.md is the contract).

    assign_precision(graph, chip, mode="INT8", qtable=None)   # node.extra["precision"] on every compute op
    lowered = lower(graph, chip, asym_ops=())                  # a new Graph in the tpu dialect

`assign_precision` decides each op's precision (qtable entry, else the chip's float ops in an integer mode, else
the mode; non-float results get NONE) and checks that every tensor that will be held in int8/int4 has a
calibration threshold. `lower` turns the annotated graph into tpu ops with quantized result types, quantized or
rounded weights (new arrays in `lowered.weights`), and a `tpu.cast` wherever a value crosses precisions. The
passes `top-assign-precision` / `top-to-tpu` and `tpu-cal lower` are thin wrappers around these two functions.

Value types in a lowered graph, by "kind": `f32`, `f16`, `bf16` (float; f16/bf16 arrays are float32 holding
values representable in the type), `i8`, `i4` (quantized, `!quant.uniform`), or the original integer/bool type
of a non-float tensor (indices, masks, shapes), which never changes and is never cast.
"""
from __future__ import annotations

import difflib
from collections import Counter

import numpy as np

from . import quant
from .calibration import ATTR_MAX, ATTR_MIN, ATTR_TH
from .chips import Chip, chip as get_chip
from .errors import UserError
from .formats.qtable import MODES, QTable
from .graph import Graph, Node, unique_name

ATTR_PRECISION = "precision"
# tpu ops keep the same attribute; it cannot be called `mode`: arg, reduce, pad, resize and depth_to_space declare
# an attribute of that name already
ATTR_MODE = ATTR_PRECISION
INT_MODES = ("INT8", "INT4")
FLOAT_MODES = ("F32", "F16", "BF16")
NONE = "NONE"

# storage kind of each integer precision, element kind of each float one
STORAGE_OF = {"INT8": "i8", "INT4": "i4"}
ELEM_OF = {"F32": "f32", "F16": "f16", "BF16": "bf16"}

# Ops with integer MAC arrays: their constant weight operand is quantized per output channel (axis of the
# filter), their bias becomes int32 with scale s_in * s_w[c]. Operand order: input, weight, bias.
MAC_WEIGHT_AXIS = {"conv": 0, "deconv": 1, "matmul": -1}
# Ops that only move (or select) data: in INT8/INT4 they keep the type of their data operand (operand 0) when it
# is an activation, so they never requantize. concat is not here: its inputs have different scales, it takes
# its own threshold and requantizes them.
KEEP_SCALE_OPS = frozenset({"reshape", "permute", "slice", "pad", "maxpool", "expand", "tile", "depth_to_space",
                            "space_to_depth", "gather"})
SHARED = ("top.input", "top.weight", "top.none")
# Integer MAC ops absorb a following ReLU / ReLU6 as TPU-MLIR's conv `do_relu` / `relu_limit` do: the accumulator
# is requantized straight to the activation's output type and clamped there, so the pre-activation tensor is never
# held in int8 (its clipped-away range would cost a whole requantization step for nothing).
FUSE_MAC_OPS = ("top.conv", "top.deconv", "top.matmul")
ATTR_DO_RELU, ATTR_RELU_LIMIT = "do_relu", "relu_limit"
_DROP_EXTRA = (ATTR_PRECISION, ATTR_TH, ATTR_MIN, ATTR_MAX)


# ------------------------------------------------------------------------------------------------ helpers
def as_chip(c) -> Chip:
    return c if isinstance(c, Chip) else get_chip(str(c))


def short(op: str) -> str:
    return op.split(".", 1)[1]


def is_float(node: Node) -> bool:
    """A tensor holding real numbers (not indices, masks or shapes)."""
    if node.op == "top.none":
        return False
    if node.result_type and node.qtype is not None:
        return True
    return np.dtype(node.dtype).kind == "f"


def round_float(x: np.ndarray, elem: str) -> np.ndarray:
    """float32 array whose values are `x` rounded to `elem` (f32, f16 or bf16), round to nearest even."""
    x = np.asarray(x, np.float32)
    if elem == "f32":
        return x.copy()
    if elem == "f16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float32)
    if elem == "bf16":
        b = x.view(np.uint32).astype(np.uint64)
        lsb = (b >> 16) & 1
        r = ((b + 0x7FFF + lsb) & 0xFFFF0000).astype(np.uint32).view(np.float32)
        return np.where(np.isnan(x), x, r).astype(np.float32)
    raise ValueError(f"unknown float type {elem!r}")


def _dims(shape) -> str:
    return "".join(f"{int(d)}x" for d in shape)


def type_text(shape, kind: str, q: quant.QType | None = None) -> str:
    if q is not None:
        return f"tensor<{_dims(shape)}{q.text()}>"
    return f"tensor<{_dims(shape)}{kind}>"


def _closest(name: str, pool) -> str:
    close = difflib.get_close_matches(name, sorted(pool), n=3, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else ""


# ---------------------------------------------------------------------------------------- precision assignment
def resolve_mode(chip: Chip, mode: str) -> str:
    """The precision `mode` (the --quantize flag) means on `chip`; an error naming the mode when impossible."""
    m = str(mode).upper()
    if m not in MODES:
        raise UserError(f"unknown quantize mode '{mode}' (expected one of {', '.join(MODES)})")
    if m in chip.precisions:
        return m
    if m in chip.fallback:
        return chip.fallback[m]
    raise UserError(f"quantize mode {m}: {chip.name} cannot compute {m} (it has {', '.join(chip.precisions)})")


def assign_precision(graph: Graph, chip, mode: str = "INT8", qtable: QTable | None = None) -> dict[str, str]:
    """Sets `node.extra["precision"]` on every compute op (docs/lowering.md, "Precision assignment") and records
    the chip and the default mode in `graph.attrs`; returns op name -> precision.

    Order: the qtable entry (mapped by `chip.resolve`: F16 -> BF16 on cv18xx, an error naming the op where no
    mapping exists); in an integer mode, the chip's float-by-default ops take the chip's float type; otherwise
    the mode. Non-float results get NONE. Raises UserError for qtable names the graph lacks (with the closest
    names), impossible requests, and tensors that would be held in int8/int4 without a `cali.threshold`."""
    chip = as_chip(chip)
    if graph.attrs.get("state") == "lowered" or any(n.op.startswith("tpu.") for n in graph.nodes):
        raise UserError("the module is already lowered to the tpu dialect; give the float (top) module")
    default = resolve_mode(chip, mode)
    if qtable is not None:
        qtable.check_names(n.name for n in graph.nodes)
    integer = default in INT_MODES
    modes = with_pairs(graph, qtable.modes) if qtable is not None else {}
    partner = {x: y for a, m in activation_pairs(graph).items() for x, y in ((a, m), (m, a))}
    out = {}
    for n in graph.compute_nodes():
        if not is_float(n):
            p = NONE
        elif n.name in modes:
            try:
                p = chip.resolve(modes[n.name], n.name)
            except UserError as e:
                line = qtable.lines.get(n.name, qtable.lines.get(partner.get(n.name), "?"))
                raise UserError(f"{qtable.source}:{line}: {e}") from None
        elif integer and short(n.op) in chip.float_ops:
            p = chip.float_type
        else:
            p = default
        n.extra[ATTR_PRECISION] = p
        out[n.name] = p
    graph.attrs["chip"] = chip.name
    graph.attrs["quantize"] = default
    check_thresholds(graph)
    return out


def precisions(graph: Graph) -> dict[str, str]:
    """op name -> precision of every compute op; an error naming the first op without one."""
    out = {}
    for n in graph.compute_nodes():
        p = n.extra.get(ATTR_PRECISION)
        if p is None:
            raise UserError(f"op '{n.name}' ({n.op}) has no precision: run top-assign-precision (or "
                            f"lowering.assign_precision) first")
        p = str(p).upper()
        if p not in MODES and p != NONE:
            raise UserError(f"op '{n.name}': unknown precision '{p}'")
        out[n.name] = p
    return out


def _keeps_scale(n: Node, prec: dict, nodes: dict) -> bool:
    """An INT8/INT4 data-movement op whose data operand is an activation: it keeps that operand's type."""
    if short(n.op) not in KEEP_SCALE_OPS or prec.get(n.name) not in INT_MODES or not n.inputs:
        return False
    src = n.inputs[0]
    return src is not None and nodes[src].op != "top.weight" and is_float(nodes[src])


def check_thresholds(graph: Graph, asym_ops=()) -> None:
    """Every tensor held in int8/int4 gets its scale from a threshold: INT8/INT4 ops (except data movement that
    keeps its input's scale) and every float tensor cast to an integer type for an INT8/INT4 consumer. Raises one
    UserError naming all ops that lack `cali.threshold` (or `cali.min`/`cali.max` for asymmetric ones)."""
    nodes = graph.node_map()
    prec = precisions(graph)
    need: dict[str, str] = {}          # op name -> why
    for n in graph.compute_nodes():
        if prec[n.name] not in INT_MODES:
            continue
        if not _keeps_scale(n, prec, nodes):
            need.setdefault(n.name, prec[n.name])
        for src in n.inputs:
            if src is None:
                continue
            s = nodes[src]
            if s.op == "top.weight" or not is_float(s):
                continue
            if prec.get(src) not in INT_MODES:       # a float tensor (graph input or float op) cast to int
                need.setdefault(src, f"read by {prec[n.name]} op '{n.name}'")
    asym = set(asym_ops)
    missing, bad = [], []
    for name, why in need.items():
        e = nodes[name].extra
        th = e.get(ATTR_TH)
        if th is None:
            missing.append(f"'{name}' ({nodes[name].op}, {why})")
        elif not (np.isfinite(float(th)) and float(th) > 0):
            bad.append(f"'{name}' (threshold {th})")
        elif name in asym and (e.get(ATTR_MIN) is None or e.get(ATTR_MAX) is None):
            missing.append(f"'{name}' (asymmetric: needs cali.min and cali.max)")
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UserError(f"{len(missing)} op(s) need a calibration threshold for int8 but have none: "
                        f"{', '.join(missing[:5])}{more}; give a calibration table (or calibrate the module)")
    if bad:
        raise UserError(f"threshold not positive and finite for {', '.join(bad[:5])}")


def activation_pairs(graph: Graph) -> dict[str, str]:
    """activation op name -> its MAC op: a relu, or a clip with min 0 and a positive max, whose only input is a
    conv/deconv/matmul that nothing else reads and that is not a graph output (what lowering can fuse)."""
    nodes = graph.node_map()
    users = graph.users()
    outputs = set(graph.outputs)
    out = {}
    for n in graph.nodes:
        relu6 = n.op == "top.clip" and float(n.attrs["min"]) == 0.0 and float(n.attrs["max"]) > 0.0
        if n.op != "top.relu" and not relu6:
            continue
        src = nodes.get(n.inputs[0]) if n.inputs and n.inputs[0] is not None else None
        if src is None or src.op not in FUSE_MAC_OPS or src.name in outputs:
            continue
        if [u.name for u in users.get(src.name, [])] != [n.name]:
            continue
        out[n.name] = src.name
    return out


def with_pairs(graph: Graph, modes: dict[str, str]) -> dict[str, str]:
    """qtable entries with each one given to its `activation_pairs` partner too, unless the partner has its own:
    a MAC op and the ReLU/ReLU6 that alone reads it are one layer (one op after fusion, as in TPU-MLIR, whose
    fused op has the activation's name)."""
    out = dict(modes)
    for act, mac in activation_pairs(graph).items():
        if (act in modes) != (mac in modes):
            out[mac if act in modes else act] = modes[act if act in modes else mac]
    return out


def fusable_activations(graph: Graph, prec: dict[str, str], asym=()) -> dict[str, str]:
    """activation op name -> the conv/deconv/matmul it is fused into at lowering: an `activation_pairs` pair of
    the same integer precision, neither of them asymmetric."""
    return {act: mac for act, mac in activation_pairs(graph).items()
            if prec.get(act) in INT_MODES and prec.get(mac) == prec.get(act) and act not in asym and mac not in asym}


# --------------------------------------------------------------------------------------------------- lowering
def lower(graph: Graph, chip, asym_ops=(), fuse_activations: bool = True) -> Graph:
    """The tpu-dialect Graph of a graph whose compute ops carry `precision` (see `assign_precision`).

    The input graph is not modified. `asym_ops` names ops whose INT8/INT4 results use asymmetric types
    (quant.asymmetric(cali.min, cali.max)); it is an error on chips without asymmetric int8.
    `fuse_activations=False` keeps every conv's own int8 result (bias correction measures the error there)."""
    return _Lowering(graph, as_chip(chip), asym_ops, fuse_activations).run()


class _Lowering:
    def __init__(self, graph: Graph, chip: Chip, asym_ops, fuse_activations: bool = True):
        self.g = graph
        self.chip = chip
        self.nodes = graph.node_map()
        if graph.attrs.get("state") == "lowered" or any(n.op.startswith("tpu.") for n in graph.nodes):
            raise UserError("the module is already lowered to the tpu dialect")
        self.prec = precisions(graph)
        assigned = graph.attrs.get("chip")
        if assigned and str(assigned).lower() != chip.name:
            raise UserError(f"precisions were assigned for {assigned}, but lowering is for {chip.name}")
        for name, p in self.prec.items():
            if p not in (NONE,) and p not in chip.precisions:
                raise UserError(f"op '{name}': {chip.name} cannot compute {p} (it has {', '.join(chip.precisions)})")
        self.asym = set(asym_ops)
        unknown = sorted(self.asym - set(self.nodes))
        if unknown:
            raise UserError("asymmetric op(s) not in the module: "
                            + "; ".join(f"'{u}'{_closest(u, self.nodes)}" for u in unknown[:5]))
        for name in sorted(self.asym):
            if self.prec.get(name) in INT_MODES and not chip.asymmetric:
                raise UserError(f"op '{name}' is listed as asymmetric (#asym_op), but {chip.name} has no "
                                f"asymmetric int8")
        check_thresholds(graph, [a for a in self.asym if self.prec.get(a) in INT_MODES])
        self.float_elem = ELEM_OF[chip.float_type]        # what NONE ops read float operands as
        self.out: list[Node] = []
        self.kind: dict[str, str] = {}                    # lowered value name -> kind
        self.qt: dict[str, quant.QType] = {}              # lowered value name -> its QType (quantized values)
        self.names = {n.name for n in graph.nodes}
        self.keys = set(graph.weights)
        self.weights: dict[str, np.ndarray] = {}
        self.wforms: dict[tuple, str] = {}                # (weight node, form...) -> lowered node name
        self.casts: dict[tuple[str, str], str] = {}       # (producer, kind) -> cast node name
        self.value: dict[str, str] = {}                   # original name -> lowered name holding its value
        self._tq: dict[tuple[str, str], quant.QType] = {}
        self.n_casts = 0
        # activation name -> the MAC op lowered with it
        self.fused = fusable_activations(graph, self.prec, self.asym) if fuse_activations else {}
        self.absorbed = set(self.fused.values())

    # ----- quantized types of tensors
    def tensor_q(self, name: str, storage: str) -> quant.QType:
        """The quantized type tensor `name` has when held in `storage` (i8 or i4)."""
        key = (name, storage)
        if key not in self._tq:
            n = self.nodes[name]
            if n.op != "top.input" and n.op != "top.weight" and _keeps_scale(n, self.prec, self.nodes):
                q = self.tensor_q(n.inputs[0], storage)
            else:
                e = n.extra
                if name in self.asym and self.prec.get(name) in INT_MODES:
                    q = quant.asymmetric(float(e[ATTR_MIN]), float(e[ATTR_MAX]), storage)
                else:
                    q = quant.symmetric(float(e[ATTR_TH]), storage)
            self._tq[key] = q
        return self._tq[key]

    # ----- emitting nodes
    def _emit(self, node: Node, kind: str, q: quant.QType | None = None) -> str:
        self.out.append(node)
        self.kind[node.name] = kind
        if q is not None:
            self.qt[node.name] = q
        return node.name

    def _set_type(self, node: Node, shape, kind: str, orig: Node, q=None):
        node.shape = tuple(shape)
        if q is not None:
            node.dtype = np.dtype(q.dtype).name
            node.result_type = type_text(shape, kind, q)
        elif kind in ("f32", "f16", "bf16"):
            node.dtype = "float32"
            node.result_type = None if kind == "f32" else type_text(shape, kind)
        else:                                           # unchanged non-float type
            node.dtype, node.result_type = orig.dtype, orig.result_type

    def _kind_of_orig(self, n: Node) -> str:
        return "f32" if is_float(n) else "raw"

    def convert(self, src: str, kind: str) -> str:
        """The lowered value of original tensor `src` as `kind`, casting (once per producer and kind)."""
        have = self.value[src]
        hk = self.kind[have]
        if hk == "raw" or hk == kind:
            return have
        key = (src, kind)
        if key in self.casts:
            return self.casts[key]
        orig = self.nodes[src]
        name = unique_name(f"{src}_{kind}", self.names)
        c = Node("tpu.cast", name, [have], {}, orig.shape)
        q = self.tensor_q(src, kind) if kind in ("i8", "i4") else None
        self._set_type(c, orig.shape, kind, orig, q)
        self._emit(c, kind, q)
        self.casts[key] = name
        self.n_casts += 1
        return name

    def weight(self, wname: str, form: tuple, make) -> str:
        """A lowered weight node for original weight `wname` in `form`; `make()` -> (array, kind, qtype, suffix)."""
        key = (wname,) + form
        if key in self.wforms:
            return self.wforms[key]
        w = self.nodes[wname]
        arr, kind, q, suffix = make(self.g.weights[w.attrs["name"]])
        if suffix is None:                               # the original array, unchanged
            name, wkey = wname, w.attrs["name"]
            self.names.add(name)
        else:
            name = unique_name(f"{wname}_{suffix}", self.names)
            wkey = unique_name(f"{w.attrs['name']}_{suffix}", self.keys)
        node = Node("top.weight", name, [], {"name": wkey}, w.shape, w.dtype, {})
        self._set_type(node, w.shape, kind, w, q)
        self.weights[wkey] = arr
        self._emit(node, kind, q)
        self.wforms[key] = name
        return name

    def weight_plain(self, wname: str, elem: str) -> str:
        """A float weight rounded to `elem` (the original for f32), or a non-float weight as is."""
        w = self.nodes[wname]
        if not is_float(w):
            return self.weight(wname, ("raw",), lambda a: (a, "raw", None, None))
        if elem == "f32":
            return self.weight(wname, ("f32",), lambda a: (a, "f32", None, None))
        return self.weight(wname, (elem,), lambda a: (round_float(a, elem), elem, None, elem))

    def weight_quant(self, wname: str, storage: str, axis: int | None) -> str:
        """A float weight quantized symmetrically: per channel along `axis`, or per tensor (abs-max)."""
        suffix = {"i8": "int8", "i4": "int4"}[storage]

        def make(a):
            a = np.asarray(a, np.float32)
            if axis is None:
                qmax = quant.STORAGE[storage][2]
                amax = float(np.abs(a).max()) if a.size else 0.0
                q = quant.QType(storage, quant.exact_scale(amax / qmax if amax > 0 else 1.0))
                return quant.quantize(a, q), storage, q, suffix
            ints, q = quant.per_channel_weight(a, axis, storage)
            return ints, storage, q, suffix
        return self.weight(wname, ("q", storage, axis), make)

    def weight_bias(self, wname: str, scale, consumer: str) -> str:
        """A bias quantized to int32 with the given scale (per channel along axis 0, or per tensor)."""
        scale = quant.exact_scale(np.asarray(scale, np.float64))
        b = self.nodes[wname]
        per_channel = np.ndim(scale) > 0 and np.size(scale) > 1
        if per_channel and (len(b.shape) != 1 or b.shape[0] != np.size(scale)):
            raise UserError(f"op '{consumer}': bias '{wname}' of shape {list(b.shape)} cannot be quantized per "
                            f"output channel ({np.size(scale)} channels)")
        if np.ndim(scale) > 0 and not per_channel:
            scale = float(np.ravel(scale)[0])
        q = quant.QType("i32", scale, 0, 0 if per_channel else None)

        def make(a):
            return quant.quantize(np.asarray(a, np.float64), q), "i32", q, "int32"
        return self.weight(wname, ("bias", np.asarray(scale).tobytes()), make)

    # ----- the pass over the graph
    def run(self) -> Graph:
        g = self.g
        for n in g.nodes:
            if n.op == "top.weight":
                continue
            if n.op == "top.input":
                node = Node("top.input", n.name, [], dict(n.attrs), n.shape, n.dtype, self._extra(n),
                            n.result_type)
                self.value[n.name] = self._emit(node, self._kind_of_orig(n))
                continue
            if n.name in self.absorbed:              # lowered with its activation, under the activation's name
                continue
            mac = self.fused.get(n.name)
            self.value[n.name] = self.lower_op(n if mac is None else self._fused(self.nodes[mac], n))
        outputs = []
        for o in g.outputs:
            if is_float(self.nodes[o]):
                if self.nodes[o].op == "top.weight":
                    outputs.append(self.weight_plain(o, "f32"))
                else:
                    outputs.append(self.convert(o, "f32"))
            else:
                outputs.append(self.value[o] if o in self.value else self.weight_plain(o, "f32"))
        attrs = dict(g.attrs)
        attrs.update(state="lowered", chip=self.chip.name,
                     quantize=str(g.attrs.get("quantize") or self._most_common()))
        return Graph(g.name, list(g.inputs), outputs, self.out, self.weights, attrs)

    @staticmethod
    def _fused(mac: Node, act: Node) -> Node:
        """The MAC op `mac` computing `act(mac)` under the activation's name, shape and calibration."""
        extra = {k: v for k, v in mac.extra.items() if k not in _DROP_EXTRA}
        extra.update({k: act.extra[k] for k in _DROP_EXTRA if k in act.extra})
        extra[ATTR_DO_RELU] = True
        extra[ATTR_RELU_LIMIT] = float(act.attrs["max"]) if act.op == "top.clip" else -1.0
        return Node(mac.op, act.name, list(mac.inputs), dict(mac.attrs), act.shape, act.dtype, extra)

    def _most_common(self) -> str:
        c = Counter(p for p in self.prec.values() if p != NONE)
        return c.most_common(1)[0][0] if c else "F32"

    @staticmethod
    def _extra(n: Node) -> dict:
        return {k: v for k, v in n.extra.items() if k not in _DROP_EXTRA}

    def lower_op(self, n: Node) -> str:
        p = self.prec[n.name]
        op = short(n.op)
        integer = p in INT_MODES
        storage = STORAGE_OF.get(p)
        elem = ELEM_OF.get(p, self.float_elem)            # float precisions, and what NONE ops read
        ins: list = [None] * len(n.inputs)
        mac = integer and op in MAC_WEIGHT_AXIS

        def activation(src):
            s = self.nodes[src]
            if not is_float(s):
                return self.value[src]
            return self.convert(src, storage if integer else elem)

        for i in range(len(n.inputs)):
            src = n.inputs[i]
            if src is None or (mac and i == 2):
                continue
            s = self.nodes[src]
            if s.op == "top.weight":
                if not is_float(s):
                    ins[i] = self.weight_plain(src, "f32")
                elif mac and i == 1:
                    w = self.g.weights[s.attrs["name"]]
                    axis = MAC_WEIGHT_AXIS[op]
                    if op == "matmul":
                        axis = w.ndim - 1 if w.ndim >= 2 else None
                    ins[i] = self.weight_quant(src, storage, axis)
                elif mac and i == 0:
                    ins[i] = self.weight_quant(src, storage, None)
                elif integer:
                    # constants of other INT8 ops stay exact f32: dequantize is the identity on them
                    ins[i] = self.weight_plain(src, "f32")
                else:
                    ins[i] = self.weight_plain(src, elem)
            else:
                ins[i] = activation(src)
        if mac and len(n.inputs) > 2 and n.inputs[2] is not None:
            src = n.inputs[2]
            s = self.nodes[src]
            if s.op == "top.weight" and is_float(s) and ins[0] in self.qt and ins[1] in self.qt:
                ins[2] = self.weight_bias(src, self._bias_scale(n, ins[0], ins[1]), n.name)
            elif s.op == "top.weight":
                ins[2] = self.weight_plain(src, "f32")
            else:
                ins[2] = activation(src)

        node = Node("tpu." + op, n.name, ins, dict(n.attrs), n.shape, n.dtype, self._extra(n))
        node.extra[ATTR_MODE] = p
        if p == NONE:
            self._set_type(node, n.shape, "raw", n)
            return self._emit(node, "raw")
        if integer:
            q = self.tensor_q(n.name, storage)
            self._set_type(node, n.shape, storage, n, q)
            return self._emit(node, storage, q)
        self._set_type(node, n.shape, elem, n)
        return self._emit(node, elem)

    def _bias_scale(self, n: Node, x: str, w: str):
        s_in = float(self.qt[x].scale)
        qw = self.qt[w]
        s_w = np.asarray(qw.scale, np.float64)
        if qw.axis is None:
            return s_in * float(s_w)
        if short(n.op) == "deconv":
            s_w = np.tile(s_w, int(n.attrs.get("group", 1)))
        return s_in * s_w


# ------------------------------------------------------------------------------------------------- summaries
def summary(lowered: Graph) -> dict:
    """Counts of a lowered graph: ops per mode, inserted casts, quantized weight arrays."""
    modes = Counter()
    casts = 0
    for n in lowered.nodes:
        if n.op in SHARED:
            continue
        if n.op == "tpu.cast" and ATTR_MODE not in n.extra:
            casts += 1
        else:
            modes[str(n.extra.get(ATTR_MODE))] += 1
    return {"modes": dict(modes), "casts": casts, "weights": len(lowered.weights)}
