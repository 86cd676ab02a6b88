"""Converters for convolutional classifiers and detectors (conv family, pools, norms, resize, pad, split, ...).

Three import-time rewrites keep the graph what TPU-MLIR's canonicalization would make of it:
- a constant zero Pad in front of a Conv is folded into the conv's pads (the Pad disappears when nothing else
  reads it);
- a BatchNormalization whose input is a Conv/ConvTranspose read by nothing else, with constant weights, is folded
  into that conv (filter and bias rewritten); the fused op carries the BatchNormalization's output name, which is
  the tensor it produces. Any other BatchNormalization becomes a per-channel top.scale.
- likewise a Mul or Add by a per-channel constant (one value, or one per channel) of such a conv's output
  (PP-LCNetV3's learnable affine blocks: conv, then x * s + b): each would otherwise be one more int8 tensor
  and one more layer for the searches to measure.
"""
from __future__ import annotations

import numpy as np

from ..onnx_import import converter, fusion

F32 = np.float32


# ----------------------------------------------------------------------------------------------- helpers
def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def _state(imp) -> dict:
    """Per-import bookkeeping of this module (conv producers, pads, tensor consumers)."""
    st = getattr(imp, "_nn_state", None)
    if st is None:
        consumers: dict[str, int] = {}
        for n in imp.model.graph.node:
            for i in n.input:
                if i:
                    consumers[i] = consumers.get(i, 0) + 1
        for o in imp.model.graph.output:
            consumers[o.name] = consumers.get(o.name, 0) + 1
        for o in imp.opt.output_names or []:
            consumers[o] = consumers.get(o, 0) + 1
        st = {"convs": {}, "pads": {}, "consumers": consumers}
        imp._nn_state = st
    return st


def _ints(v):
    return [int(a) for a in v]


def _window_attrs(imp, x_shape, kernel, what="kernel"):
    """strides, dilations and explicit pads ([begin..., end...]) of a Conv/pool node, auto_pad resolved."""
    nsp = len(x_shape) - 2
    k = _ints(kernel)
    if len(k) != nsp:
        imp.fail(f"{what} has {len(k)} spatial dims but the input has {nsp} (shape {list(x_shape)})")
    s = _ints(imp.attr("strides", [1] * nsp))
    d = _ints(imp.attr("dilations", [1] * nsp))
    if len(s) != nsp or len(d) != nsp:
        imp.fail(f"strides {s} / dilations {d} do not match {nsp} spatial dims")
    if any(v <= 0 for v in s + d + k):
        imp.fail(f"kernel {k}, strides {s} and dilations {d} must be positive")
    auto = _s(imp.attr("auto_pad", "NOTSET")) or "NOTSET"
    if auto == "NOTSET":
        p = _ints(imp.attr("pads", [0] * (2 * nsp)))
        if len(p) != 2 * nsp:
            imp.fail(f"pads {p} must have 2 x {nsp} values")
        if any(v < 0 for v in p):
            imp.fail(f"negative pads {p} are not supported")
    elif auto == "VALID":
        p = [0] * (2 * nsp)
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        p = [0] * (2 * nsp)
        for i in range(nsp):
            n = x_shape[2 + i]
            o = -(-n // s[i])
            total = max(0, (o - 1) * s[i] + (k[i] - 1) * d[i] + 1 - n)
            small, big = total // 2, total - total // 2
            p[i], p[i + nsp] = (small, big) if auto == "SAME_UPPER" else (big, small)
    else:
        imp.fail(f"unknown auto_pad {auto!r}")
    return s, d, p


def _rank_at_least(imp, x, n, what="input"):
    if len(x.shape) < n:
        imp.fail(f"{what} must have rank >= {n}, got shape {list(x.shape)}")


# ----------------------------------------------------------------------------------------------- conv family
@converter("Conv")
def conv(imp, node):
    x, w, b = imp.input(0), imp.input(1), imp.input(2)
    _rank_at_least(imp, x, 3)
    if len(w.shape) != len(x.shape):
        imp.fail(f"filter shape {list(w.shape)} does not fit input shape {list(x.shape)}")
    g = int(imp.attr("group", 1))
    k = imp.attr("kernel_shape", list(w.shape[2:]))
    if _ints(k) != list(w.shape[2:]):
        imp.fail(f"kernel_shape {list(k)} disagrees with the filter shape {list(w.shape)}")
    if g <= 0 or x.shape[1] != w.shape[1] * g or w.shape[0] % g:
        imp.fail(f"group {g} does not fit input channels {x.shape[1]} and filter shape {list(w.shape)}")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        imp.fail(f"bias shape {list(b.shape)} should be [{w.shape[0]}]")
    s, d, p = _window_attrs(imp, x.shape, k)
    x, p = _absorb_pad(imp, x, p)
    attrs = dict(kernel_shape=_ints(k), strides=s, pads=p, dilations=d, group=g)
    y = imp.emit("top.conv", [x, w, b], attrs)
    _state(imp)["convs"][y.name] = ("top.conv", x, w, b, attrs)
    return y


def _absorb_pad(imp, x, p):
    """Folds a constant-zero Pad of the spatial axes that produced `x` into the conv pads."""
    info = _state(imp)["pads"].get(x.name) if not x.const else None
    if info is None:
        return x, p
    src, pads, mode, value = info
    r = len(src.shape)
    nsp = r - 2
    if mode != "constant" or value != 0 or any(v < 0 for v in pads) or any(pads[i] or pads[i + r] for i in (0, 1)):
        return x, p
    extra = [pads[2 + i] for i in range(nsp)] + [pads[r + 2 + i] for i in range(nsp)]
    return src, [a + b for a, b in zip(p, extra)]


@converter("ConvTranspose")
def conv_transpose(imp, node):
    x, w, b = imp.input(0), imp.input(1), imp.input(2)
    _rank_at_least(imp, x, 3)
    nsp = len(x.shape) - 2
    g = int(imp.attr("group", 1))
    if len(w.shape) != len(x.shape) or g <= 0 or x.shape[1] != w.shape[0] or w.shape[0] % g:
        imp.fail(f"filter shape {list(w.shape)} and group {g} do not fit input shape {list(x.shape)}")
    co = w.shape[1] * g
    if b is not None and tuple(b.shape) != (co,):
        imp.fail(f"bias shape {list(b.shape)} should be [{co}]")
    k = _ints(imp.attr("kernel_shape", list(w.shape[2:])))
    if k != list(w.shape[2:]):
        imp.fail(f"kernel_shape {k} disagrees with the filter shape {list(w.shape)}")
    s = _ints(imp.attr("strides", [1] * nsp))
    d = _ints(imp.attr("dilations", [1] * nsp))
    adj = _ints(imp.attr("output_padding", [0] * nsp))
    if len(s) != nsp or len(d) != nsp or len(adj) != nsp:
        imp.fail("strides, dilations and output_padding must have one value per spatial axis")
    auto = _s(imp.attr("auto_pad", "NOTSET")) or "NOTSET"
    out_shape = imp.attr("output_shape")
    p = _ints(imp.attr("pads", [0] * (2 * nsp)))
    if len(p) != 2 * nsp or any(v < 0 for v in p):
        imp.fail(f"pads {p} must be 2 x {nsp} non-negative values")
    if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        imp.fail(f"unknown auto_pad {auto!r}")
    for i in range(nsp):
        n = x.shape[2 + i]
        natural = (n - 1) * s[i] + adj[i] + (k[i] - 1) * d[i] + 1
        if out_shape is not None:
            want = list(out_shape)[-nsp:][i]
            total = natural - int(want)
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            total = max(0, natural - n * s[i])
        else:
            if auto == "VALID":
                p[i] = p[i + nsp] = 0
            continue
        if total < 0:   # asked for more than the transposed conv produces: zeros (plus bias) at the end
            p[i], p[i + nsp] = 0, 0
            adj[i] -= total
            continue
        if auto == "SAME_UPPER":   # the ONNX rule, as ONNX Runtime applies it
            p[i], p[i + nsp] = total // 2, total - total // 2
        else:
            p[i], p[i + nsp] = total - total // 2, total // 2
    for i in range(nsp):
        if (x.shape[2 + i] - 1) * s[i] + adj[i] + (k[i] - 1) * d[i] + 1 - p[i] - p[i + nsp] <= 0:
            imp.fail(f"output would be empty on spatial axis {i}")
    attrs = dict(kernel_shape=k, strides=s, pads=p, dilations=d, group=g, output_padding=adj)
    y = imp.emit("top.deconv", [x, w, b], attrs)
    _state(imp)["convs"][y.name] = ("top.deconv", x, w, b, attrs)
    return y


@converter("BatchNormalization")
def batch_norm(imp, node):
    x = imp.input(0)
    _rank_at_least(imp, x, 2)
    if imp.attr("training_mode", 0) or any(o for o in node.output[1:]):
        imp.fail("training-mode BatchNormalization (running statistics outputs) is not supported")
    if imp.attr("spatial", 1) == 0:
        imp.fail("BatchNormalization with spatial=0 is not supported")
    vals = [imp.const_input(i, n) for i, n in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var"))]
    c = x.shape[1]
    for v, n in zip(vals, ("scale", "bias", "mean", "var")):
        if v is None or v.size != c:
            imp.fail(f"{n} must have {c} values (one per channel)")
    gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(c) for v in vals)
    eps = float(imp.attr("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    bias = beta - mean * scale
    folded = _fold_into_conv(imp, node.input[0], x, scale, bias)
    if folded is not None:
        return folded
    dt = x.dtype
    return imp.emit("top.scale", [x, imp.const(scale.astype(dt), imp.out_name() + "_scale"),
                                  imp.const(bias.astype(dt), imp.out_name() + "_bias")])


@fusion("Mul", "Add")
def affine_into_conv(imp, node):
    """Mul/Add of a conv's output by a per-channel constant, folded into the conv (module docstring)."""
    a, b = imp.input(0), imp.input(1)
    if a is None or b is None or a.const == b.const or len(node.input) != 2:
        return None
    k = 1 if a.const else 0
    x, c = (b, a) if a.const else (a, b)
    per = _per_channel(c.data, x.shape)
    if per is None or np.dtype(x.dtype).kind != "f":
        return None
    scale, bias = (per, np.zeros_like(per)) if node.op_type == "Mul" else (np.ones_like(per), per)
    return _fold_into_conv(imp, node.input[k], x, scale, bias)


def _per_channel(c: np.ndarray, shape) -> np.ndarray | None:
    """`c` as one float64 value per channel (axis 1) of a tensor of `shape`, when broadcasting it against that
    tensor multiplies or adds per channel only and leaves the shape as it is; else None."""
    c = np.asarray(c)
    if len(shape) < 2 or c.ndim > len(shape) or np.dtype(c.dtype).kind != "f":
        return None
    full = (1,) * (len(shape) - c.ndim) + tuple(c.shape)
    ch = int(shape[1])
    if any(d != 1 for i, d in enumerate(full) if i != 1) or full[1] not in (1, ch):
        return None
    return np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (ch,)) if full[1] == ch else \
        np.full(ch, float(c.reshape(-1)[0]))


def _fold_into_conv(imp, src: str, x, scale, bias):
    """Folds y = x * scale + bias (per channel) into the conv producing x, when nothing else reads x (the ONNX
    tensor `src`); returns the folded conv's value, else None."""
    st = _state(imp)
    info = st["convs"].get(x.name) if not x.const else None
    if info is None or st["consumers"].get(src, 0) != 1:
        return None
    op, cx, w, b, attrs = info
    if not w.const or (b is not None and not b.const):
        return None
    pos = next((i for i in range(len(imp.nodes) - 1, -1, -1) if imp.nodes[i].name == x.name), None)
    if pos is None:
        return None
    wd = np.asarray(w.data, np.float64)
    bd = np.zeros(scale.shape) if b is None else np.asarray(b.data, np.float64)
    if op == "top.conv":
        wn = wd * scale.reshape((-1,) + (1,) * (wd.ndim - 1))
    else:   # deconv filter [Cin, Cout/g, k...]: output channel g*Cout/g + j
        g = attrs["group"]
        cin, cog = wd.shape[:2]
        wn = (wd.reshape((g, cin // g, cog) + wd.shape[2:]) *
              scale.reshape((g, 1, cog) + (1,) * (wd.ndim - 2))).reshape(wd.shape)
    bn = bd * scale + bias
    del imp.nodes[pos]
    st["convs"].pop(x.name, None)
    name = imp.out_name()
    dt = cx.dtype
    y = imp.emit(op, [cx, imp.const(wn.astype(dt), name + "_filter"), imp.const(bn.astype(dt), name + "_bias")],
                 attrs)
    st["convs"][y.name] = (op, cx, imp.const(wn.astype(dt)), imp.const(bn.astype(dt)), attrs)
    return y


# ----------------------------------------------------------------------------------------------- pooling
def _pool_attrs(imp, x, op_type):
    k = imp.attr("kernel_shape")
    if k is None:
        imp.fail("kernel_shape is required")
    s, d, p = _window_attrs(imp, x.shape, k)
    ceil = bool(imp.attr("ceil_mode", 0))
    cip = bool(imp.attr("count_include_pad", 0)) if op_type == "AveragePool" else False
    nsp = len(x.shape) - 2
    if nsp not in (1, 2):
        imp.fail(f"{op_type} on {nsp}-D inputs is not supported (1-D and 2-D are)")
    return dict(kernel_shape=_ints(k), strides=s, pads=p, dilations=d, ceil_mode=ceil, count_include_pad=cip)


@converter("MaxPool", "AveragePool")
def pool(imp, node):
    x = imp.input(0)
    _rank_at_least(imp, x, 3)
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        imp.fail("MaxPool indices output is not supported")
    attrs = _pool_attrs(imp, x, node.op_type)
    return imp.emit("top.maxpool" if node.op_type == "MaxPool" else "top.avgpool", [x], attrs)


@converter("GlobalAveragePool", "GlobalMaxPool")
def global_pool(imp, node):
    x = imp.input(0)
    _rank_at_least(imp, x, 3)
    nsp = len(x.shape) - 2
    attrs = dict(kernel_shape=list(x.shape[2:]), strides=[1] * nsp, pads=[0] * (2 * nsp), dilations=[1] * nsp,
                 ceil_mode=False, count_include_pad=False)
    return imp.emit("top.avgpool" if node.op_type == "GlobalAveragePool" else "top.maxpool", [x], attrs)


# ----------------------------------------------------------------------------------------------- activations, norms
@converter("Clip")
def clip(imp, node):
    x = imp.input(0)
    if imp.opset < 11:
        lo, hi = imp.attr("min"), imp.attr("max")
        lo_v = hi_v = None
    else:
        lo_v, hi_v = imp.input(1), imp.input(2)
        lo = hi = None
        if lo_v is not None and lo_v.const:
            lo, lo_v = float(np.asarray(lo_v.data).reshape(-1)[0]), None
        if hi_v is not None and hi_v.const:
            hi, hi_v = float(np.asarray(hi_v.data).reshape(-1)[0]), None
    y = x
    if lo_v is not None or hi_v is not None:   # bounds computed from the inputs: max/min ops
        steps = [("top.max", lo_v), ("top.min", hi_v)]
        steps = [(op, v) for op, v in steps if v is not None]
        last_is_clip = lo is not None or hi is not None
        for k, (op, v) in enumerate(steps):
            final = k == len(steps) - 1 and not last_is_clip
            y = imp.emit(op, [y, v], name=None if final else f"{imp.out_name()}_{op[4:]}")
        if not last_is_clip:
            return y
    lo = -np.inf if lo is None else float(lo)
    hi = np.inf if hi is None else float(hi)
    return imp.emit("top.clip", [y], {"min": lo, "max": hi})


@converter("PRelu")
def prelu(imp, node):
    x, slope = imp.input(0), imp.input(1)
    try:
        np.broadcast_shapes(x.shape, slope.shape)
    except ValueError:
        imp.fail(f"slope shape {list(slope.shape)} does not broadcast to {list(x.shape)}")
    if slope.const and slope.dtype != x.dtype:
        slope = imp.const(slope.data.astype(x.dtype), slope.label)
    return imp.emit("top.prelu", [x, slope])


@converter("InstanceNormalization")
def instance_norm(imp, node):
    x = imp.input(0)
    _rank_at_least(imp, x, 3)
    c = x.shape[1]
    sc, b = imp.input(1), imp.input(2)
    for v, n in ((sc, "scale"), (b, "B")):
        if v is None or tuple(v.shape) != (c,):
            imp.fail(f"{n} must have shape [{c}]")
    return imp.emit("top.group_norm", [x, sc, b], {"num_groups": c, "eps": float(imp.attr("epsilon", 1e-5))})


@converter("GroupNormalization")
def group_norm(imp, node):
    x = imp.input(0)
    _rank_at_least(imp, x, 3)
    c = x.shape[1]
    g = imp.attr("num_groups")
    if g is None or g <= 0 or c % g:
        imp.fail(f"num_groups {g} must divide the {c} channels")
    vals = []
    for i, n in ((1, "scale"), (2, "bias")):
        v = imp.input(i)
        if v is None:
            vals.append(None)
            continue
        if v.shape == (g,) and g != c:   # opset 18: one value per group
            if not v.const:
                imp.fail(f"per-group {n} must be a constant")
            v = imp.const(np.repeat(v.data, c // g), v.label)
        elif v.shape != (c,):
            imp.fail(f"{n} must have shape [{c}] or [{g}]")
        vals.append(v)
    return imp.emit("top.group_norm", [x] + vals, {"num_groups": int(g), "eps": float(imp.attr("epsilon", 1e-5))})


# ----------------------------------------------------------------------------------------------- data movement
@converter("Pad")
def pad(imp, node):
    x = imp.input(0)
    r = len(x.shape)
    mode = _s(imp.attr("mode", "constant")) or "constant"
    if mode not in ("constant", "reflect", "edge", "wrap"):
        imp.fail(f"pad mode {mode!r} is not supported")
    if imp.opset < 11:
        pads = imp.attr("pads", imp.attr("paddings"))
        value = float(imp.attr("value", 0.0))
        axes = None
    else:
        pads = imp.const_input(1, "pads")
        cv = imp.const_input(2, "constant_value")
        value = 0.0 if cv is None or np.asarray(cv).size == 0 else float(np.asarray(cv).reshape(-1)[0])
        axes = imp.const_input(3, "axes")
    if pads is None:
        imp.fail("pads are missing")
    pads = _ints(np.asarray(pads).reshape(-1))
    if axes is not None:
        axes = [int(a) % r for a in np.asarray(axes).reshape(-1)]
        if len(pads) != 2 * len(axes):
            imp.fail(f"pads {pads} must have 2 x {len(axes)} values for axes {axes}")
        full = [0] * (2 * r)
        for k, a in enumerate(axes):
            full[a], full[a + r] = pads[k], pads[k + len(axes)]
        pads = full
    if len(pads) != 2 * r:
        imp.fail(f"pads {pads} must have 2 x {r} values")
    if pads[0] or pads[r]:
        imp.fail("padding the batch axis is not supported")
    if mode == "reflect" and any(max(pads[i], pads[i + r]) >= x.shape[i] for i in range(r)):
        imp.fail(f"reflect padding {pads} needs every pad smaller than its axis {list(x.shape)}")
    if not any(pads):
        return x
    y = imp.emit("top.pad", [x], {"pads": pads, "mode": mode, "value": value})
    if not y.const:
        _state(imp)["pads"][y.name] = (x, pads, mode, value)
    return y


@converter("Split")
def split(imp, node):
    x = imp.input(0)
    r = len(x.shape)
    axis = int(imp.attr("axis", 0))
    if not -r <= axis < r:
        imp.fail(f"axis {axis} out of range for rank {r}")
    axis %= r
    n_out = len(node.output)
    if imp.opset < 13:
        sizes = imp.attr("split")
    else:
        sizes = imp.const_input(1, "split")
    dim = x.shape[axis]
    if sizes is None or len(sizes) == 0:
        parts = int(imp.attr("num_outputs", n_out))
        each = -(-dim // parts)
        sizes = [min(each, dim - each * i) for i in range(parts)]
    sizes = _ints(np.asarray(sizes).reshape(-1))
    if sum(sizes) != dim or len(sizes) != n_out or any(v < 0 for v in sizes):
        imp.fail(f"split sizes {sizes} do not divide axis {axis} of size {dim} into {n_out} outputs")
    outs, start = [], 0
    for k, sz in enumerate(sizes):
        if not node.output[k]:
            outs.append(None)
        else:
            outs.append(imp.emit("top.slice", [x], {"starts": [start], "ends": [start + sz], "steps": [1],
                                                    "axes": [axis]}, name=imp.out_name(k)))
        start += sz
    return outs


@converter("DepthToSpace", "SpaceToDepth")
def depth_space(imp, node):
    x = imp.input(0)
    if len(x.shape) != 4:
        imp.fail(f"{node.op_type} needs a 4-D input, got shape {list(x.shape)}")
    bs = int(imp.attr("blocksize", 0))
    if bs <= 0:
        imp.fail("blocksize must be positive")
    n, c, h, w = x.shape
    if node.op_type == "DepthToSpace":
        if c % (bs * bs):
            imp.fail(f"channels {c} not divisible by blocksize^2 = {bs * bs}")
        mode = _s(imp.attr("mode", "DCR")) or "DCR"
        if mode not in ("DCR", "CRD"):
            imp.fail(f"unknown mode {mode!r}")
        return imp.emit("top.depth_to_space", [x], {"blocksize": bs, "mode": mode})
    if h % bs or w % bs:
        imp.fail(f"spatial size {h}x{w} not divisible by blocksize {bs}")
    return imp.emit("top.space_to_depth", [x], {"blocksize": bs})


# ----------------------------------------------------------------------------------------------- resize
_COORD_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@converter("Resize", "Upsample")
def resize(imp, node):
    x = imp.input(0)
    r = len(x.shape)
    mode = _s(imp.attr("mode", "nearest")) or "nearest"
    mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)
    if mode not in ("nearest", "linear", "cubic") or (mode == "cubic" and node.op_type == "Upsample"):
        imp.fail(f"resize mode {mode!r} is not supported")
    legacy = node.op_type == "Upsample" or imp.opset < 11
    if legacy:
        cmode, nmode, cubic_a, excl = "asymmetric", "simple", -0.75, False
        if node.op_type == "Upsample" and imp.opset < 9:
            scales = imp.attr("scales")
        else:
            scales = imp.const_input(1, "scales")
        sizes = None
    else:
        cmode = _s(imp.attr("coordinate_transformation_mode", "half_pixel"))
        nmode = _s(imp.attr("nearest_mode", "round_prefer_floor"))
        cubic_a = float(imp.attr("cubic_coeff_a", -0.75))
        excl = bool(imp.attr("exclude_outside", 0))
        if cmode == "tf_crop_and_resize":
            imp.fail("coordinate_transformation_mode tf_crop_and_resize is not supported")
        if cmode not in _COORD_MODES:
            imp.fail(f"unknown coordinate_transformation_mode {cmode!r}")
        if mode == "nearest" and nmode not in _NEAREST_MODES:
            imp.fail(f"unknown nearest_mode {nmode!r}")
        scales = imp.const_input(2, "scales")
        sizes = imp.const_input(3, "sizes")
    if scales is not None and np.asarray(scales).size == 0:
        scales = None
    if sizes is not None and np.asarray(sizes).size == 0:
        sizes = None
    axes = imp.attr("axes")
    axes = list(range(r)) if axes is None else [int(a) % r for a in axes]
    in_shape = list(x.shape)
    full_scales = [1.0] * r
    out_shape = list(in_shape)
    if sizes is not None:
        sizes = _ints(np.asarray(sizes).reshape(-1))
        if len(sizes) != len(axes):
            imp.fail(f"sizes {sizes} must have one value per axis {axes}")
        policy = _s(imp.attr("keep_aspect_ratio_policy", "stretch")) or "stretch"
        if policy == "stretch":
            for a, sz in zip(axes, sizes):
                out_shape[a] = sz
                full_scales[a] = float(F32(sz) / F32(in_shape[a]))
        elif policy in ("not_larger", "not_smaller"):
            ratios = [F32(sz) / F32(in_shape[a]) for a, sz in zip(axes, sizes)]
            sc = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                out_shape[a] = int(np.floor(F32(in_shape[a]) * sc + F32(0.5)))
                full_scales[a] = float(sc)
        else:
            imp.fail(f"unknown keep_aspect_ratio_policy {policy!r}")
    elif scales is not None:
        scales = [float(v) for v in np.asarray(scales, F32).reshape(-1)]
        if len(scales) != len(axes):
            imp.fail(f"scales {scales} must have one value per axis {axes}")
        for a, sc in zip(axes, scales):
            if sc <= 0:
                imp.fail(f"scale {sc} must be positive")
            full_scales[a] = float(F32(sc))
            out_shape[a] = int(np.floor(F32(sc) * F32(in_shape[a])))
    else:
        imp.fail("neither scales nor sizes is given")
    if out_shape[0] != in_shape[0] or full_scales[0] != 1.0:
        imp.fail("resizing the batch axis is not supported")
    if any(v <= 0 for v in out_shape):
        imp.fail(f"output shape {out_shape} would be empty")
    if imp.attr("antialias", 0) and mode != "nearest" and any(o < i for o, i in zip(out_shape, in_shape)):
        imp.fail("antialiased downsampling is not supported")
    if out_shape == in_shape and all(v == 1.0 for v in full_scales):
        return x
    attrs = {"mode": mode, "coord_mode": cmode, "nearest_mode": nmode,
             "cubic_coeff": cubic_a, "exclude_outside": excl, "scales": full_scales}
    return imp.emit("top.resize", [x], attrs, shape=out_shape)
