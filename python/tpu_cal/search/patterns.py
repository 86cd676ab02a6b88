"""Pattern-match (seed 002, "pattern-match"): experience-based qtables for YOLO detectors and transformers, and
the shape-computation ops, found from the structure of the graph. `tpu-cal calibrate` runs it after every
calibration (no flag switches it on, as in TPU-MLIR).

    r = match(graph)          # MatchResult(family, blocks, float_ops, log) or None
    shape_ops(graph)          # real-valued ops whose values only feed integer results (indices, masks, shapes)

TPU-MLIR finds its patterns by searching the concatenated op-type names of the whole model for fixed strings,
which depends on the exporter's op order and on op spellings we do not share (MulConst, Squeeze). Here each
pattern is a small tree of ops matched on the graph itself (commutative operands in either order, a constant is
a `top.weight`), so the same detector matches whatever order the exporter wrote.

YOLO (v5 .. v12): a model is a YOLO detector when it holds SPPF — three chained stride-1 max-pools whose input
and outputs meet in one concat (or SPP's three parallel pools) — or, for the versions without SPPF, the anchor-free box decoding itself. Then
the first post-processing family (in the order below) that occurs gives the ops kept in float: the box decoding
arithmetic with the anchor grids and strides, and every op after it (the final concats; TopK and gathers for
v10). The families, in TPU-MLIR's names and with its op lists:

    yolov5            xy = (sig*2 + grid) * stride, wh = (sig*2)^2 * anchor, concat, reshape   (per head)
    yolov7            xy = sig*k + grid', wh = sig^2 * anchor', concat, reshape                  (per head)
    yolov6_8_9_11_12  x1y1 = a - lt, x2y2 = a + rb, concat((x1y1+x2y2)/2, x2y2-x1y1) * strides, concat with cls
    yolov10           concat(a - lt, a + rb) * strides, concat with cls (then TopK post-processing)

Transformers (a softmax between two activation matmuls is an attention; the family decides the extra rules):

    bert   token-id inputs (an embedding gather on a graph input)
    cswin  a convolution added to the attention output (LePE)
    eva    SwiGLU: silu(x) * matmul -> matmul
    detr   a convolutional backbone, and one add feeding both the query and the key projection
    swin   a constant (relative position bias) added to the attention scores
    deit   two learned tokens (class + distillation) concatenated to the patches
    vit    the other attention models

Every family keeps in float: each SiLU and GELU, and each add that feeds a layer_norm (the residual sums, whose
range is the model's widest). Then, as seed 002 lists: vit — the matmul after each softmax (with 20 or more
attention blocks, the matmul after each GELU instead); bert — the matmul after each GELU; eva — every add and the
matmul after silu -> mul; swin — every add, every depth_to_space, and the permute before reshape -> layer_norm;
detr — every op except conv, scale, reshape and the matmuls reading a layer_norm or reshape.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import Graph
from ..lowering import is_float

COMMUTATIVE = frozenset({"add", "mul", "max", "min"})


@dataclass
class MatchResult:
    family: str                  # "yolov5", "yolov6_8_9_11_12", "bert", "vit", ...
    kind: str                    # "yolo" or "transformer"
    blocks: int                  # SPPF / post-processing blocks, or attention blocks
    float_ops: list[str]         # graph order
    log: list[str] = field(default_factory=list)


class View:
    """The graph with users, short op names and constant tests, for matching."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.nodes = graph.node_map()
        self.users = {k: [u.name for u in v] for k, v in graph.users().items()}
        self.order = {n.name: k for k, n in enumerate(graph.nodes)}

    def op(self, name) -> str:
        return self.nodes[name].op.split(".", 1)[1] if name in self.nodes else "none"

    def const(self, name) -> bool:
        return name is not None and self.nodes[name].op == "top.weight"

    def acts(self, name) -> list[str]:
        """The activation (non-constant) operands of an op."""
        return [i for i in self.nodes[name].inputs if i is not None and not self.const(i)]

    def of(self, *ops) -> list[str]:
        return [n.name for n in self.g.nodes if n.op.split(".", 1)[1] in ops and n.op.startswith("top.")]

    def sorted(self, names) -> list[str]:
        return sorted(set(names), key=self.order.__getitem__)


# ------------------------------------------------------------------------------------------- tree patterns
class P:
    """Matches an op of type `op` (a name or a tuple of names) whose operands match `inputs`, in order (or
    swapped, for a commutative op with two operands). `tag` binds the op, so a later REF must be the same op."""

    def __init__(self, op, *inputs, tag=None):
        self.ops = (op,) if isinstance(op, str) else tuple(op)
        self.inputs, self.tag = inputs, tag


class _Any:
    """Any activation (not a constant)."""


class _Const:
    """A constant (`top.weight`)."""


class REF:
    """The op already bound to `tag`."""

    def __init__(self, tag):
        self.tag = tag


class ALT:
    """The first alternative that matches (no backtracking into the others once one has matched)."""

    def __init__(self, *alternatives):
        self.alternatives = alternatives


ANY, CONST = _Any(), _Const()


def MULC(x):
    """Multiplication or division by a constant (TPU-MLIR's MulConst)."""
    return P(("mul", "div"), x, CONST)


def SQUARE(x, tag):
    """x^2, written as pow(x, 2) or x * x (`tag` names the base, which both operands of the mul must be)."""
    return ALT(P("pow", x, CONST), P("mul", _Bind(x, tag), REF(tag)))


class _Bind:
    """Matches `inner` and binds the matched op to `tag`."""

    def __init__(self, inner, tag):
        self.inner, self.tag = inner, tag


def _match(pat, name, v: View, env: dict):
    """A new binding env (tag -> op name, "_ops" -> matched op names) or None."""
    if name is None:
        return None
    if isinstance(pat, _Const):
        return env if v.const(name) else None
    if isinstance(pat, _Any):
        return env if not v.const(name) else None
    if isinstance(pat, REF):
        return env if env.get(pat.tag) == name else None
    if isinstance(pat, _Bind):
        e = _match(pat.inner, name, v, env)
        return None if e is None else {**e, pat.tag: name}
    if isinstance(pat, ALT):
        for alt in pat.alternatives:
            e = _match(alt, name, v, env)
            if e is not None:
                return e
        return None
    op = v.op(name)
    if op not in pat.ops or v.const(name):
        return None
    if pat.tag and pat.tag in env:
        return env if env[pat.tag] == name else None
    ins = v.nodes[name].inputs
    if len(ins) != len(pat.inputs):
        return None
    orders = [ins] + ([ins[::-1]] if op in COMMUTATIVE and len(ins) == 2 else [])
    for order in orders:
        e = {**env, "_ops": env.get("_ops", ()) + (name,)}
        if pat.tag:
            e[pat.tag] = name
        for sub, i in zip(pat.inputs, order):
            e = _match(sub, i, v, e)
            if e is None:
                break
        if e is not None:
            return e
    return None


def find(pat, v: View, roots=None) -> list[tuple[str, tuple]]:
    """(root, matched op names) for every op where `pat` matches."""
    out = []
    for name in roots if roots is not None else [n.name for n in v.g.nodes]:
        e = _match(pat, name, v, {})
        if e is not None:
            out.append((name, e["_ops"]))
    return out


# ------------------------------------------------------------------------------------------------ YOLO
def _stride1_pool(v: View, name) -> bool:
    n = v.nodes[name]
    return v.op(name) == "maxpool" and all(s == 1 for s in n.attrs.get("strides", [1]))


def sppf_blocks(v: View) -> list[str]:
    """Concats joining three stride-1 max-pools with the first pool's input: chained (SPPF, YOLOv5 6.0 on) or
    side by side on one input (SPP, older YOLOv5 and YOLOv3-SPP), which TPU-MLIR's op-string search also finds."""
    out = []
    for c in v.of("concat"):
        ins = v.nodes[c].inputs
        pools = [i for i in ins if _stride1_pool(v, i)]
        src = {p: v.nodes[p].inputs[0] for p in pools}          # each pool's input
        chained = any(src[m3] in src and src[src[m3]] in src and src[src[src[m3]]] in ins for m3 in pools)
        src = list(src.values())
        parallel = len(pools) >= 3 and any(src.count(x) >= 3 and x in ins for x in set(src))
        if chained or parallel:
            out.append(c)
    return out


_X1Y1 = P("sub", CONST, ANY, tag="x1y1")
_X2Y2 = P("add", CONST, ANY, tag="x2y2")
YOLO_POST = {
    "yolov5": P("reshape", P("concat", MULC(P("add", MULC(ANY), CONST)),
                             P("mul", SQUARE(MULC(ANY), "s"), CONST), ANY)),
    "yolov7": P("reshape", P("concat", P("add", MULC(ANY), CONST), P("mul", SQUARE(ANY, "s"), CONST), ANY)),
    "yolov6_8_9_11_12": P("concat", P("mul", P("concat", MULC(P("add", _X1Y1, _X2Y2)),
                                               P("sub", REF("x2y2"), REF("x1y1"))), CONST), ANY),
    "yolov10": P("concat", P("mul", P("concat", P("sub", CONST, ANY), P("add", CONST, ANY)), CONST), ANY),
}


def match_yolo(v: View) -> MatchResult | None:
    from .fp_forward import descendants
    sppf = sppf_blocks(v)
    log = []
    if sppf:
        log.append(f"['top.maxpool', 'top.maxpool', 'top.maxpool', 'top.concat'] (Name: yolo_block, SPPF) is in the "
                   f"model. Count: {len(sppf)}")
    for family, pat in YOLO_POST.items():
        found = find(pat, v)
        if not found:
            continue
        if not sppf and family != "yolov6_8_9_11_12":
            continue     # without SPPF only the anchor-free decoding (YOLOv12) is distinctive enough
        if not sppf:
            log.append("no SPPF, but the anchor-free box decoding of YOLOv12 (Name: yolo_block_12) is in the model")
        ops = [o for _, m in found for o in m]
        after = descendants(v.g, [r for r, _ in found])
        keep = v.sorted(o for o in set(ops) | after if is_float(v.nodes[o]))
        first = v.sorted(found[0][1])
        log.append(f"The [{family}] post-processing pattern matches this model. Block count: {len(found)}")
        log.append(f"The [{family}] post-processing pattern is: {[v.nodes[o].op for o in first]}")
        return MatchResult(family, "yolo", len(found), keep, log)
    return None


# ------------------------------------------------------------------------------------------- transformers
_TRANSPARENT = ("reshape", "permute", "where")   # where: the isnan guard exporters put after a softmax


def _through(v: View, name, forward: bool) -> list[str]:
    """The ops reached from `name` through reshapes, permutes and isnan guards (users or operands)."""
    out, stack, seen = [], [name], set()
    while stack:
        n = stack.pop()
        for m in (v.users[n] if forward else v.acts(n)):
            if m in seen:
                continue
            seen.add(m)
            (stack if v.op(m) in _TRANSPARENT else out).append(m)
    return out


def _side(v: View, name) -> set[str]:
    """`name` and, when it only moves data, the ops it moves data from."""
    return {name} | (set(_through(v, name, False)) if v.op(name) in _TRANSPARENT else set())


def _act_matmul(v: View, name) -> bool:
    return v.op(name) == "matmul" and len(v.acts(name)) == 2


def attentions(v: View) -> list[tuple[str, str]]:
    """(softmax, scores op) per attention: a softmax read by an activation x activation matmul (attn @ V) and fed,
    through scaling and additive biases or masks, by one (Q @ K^T)."""
    out = []
    for s in v.of("softmax"):
        if not any(_act_matmul(v, u) for u in _through(v, s, True)):
            continue
        src, stack, seen = None, [v.nodes[s].inputs[0]], set()
        while stack and src is None:
            n = stack.pop()
            if n in seen or v.const(n):
                continue
            seen.add(n)
            if _act_matmul(v, n):
                src = n
            elif v.op(n) in ("mul", "div", "add", "reshape", "permute"):
                stack.extend(v.acts(n))
        if src is not None:
            out.append((s, v.nodes[s].inputs[0]))
    return out


def _silu_outputs(v: View) -> list[str]:
    """silu ops and x * sigmoid(x) written out (how torchscript exports SiLU)."""
    out = v.of("silu")
    for m in v.of("mul"):
        a = v.nodes[m].inputs
        if len(a) == 2 and any(v.op(x) == "sigmoid" and v.nodes[x].inputs[0] == y for x, y in (a, a[::-1])):
            out.append(m)
    return out


def _from_input(v: View, name) -> bool:
    """`name` is a graph input, or reads one through casts and reshapes only (token ids for an embedding)."""
    while name is not None and name not in v.g.inputs:
        if v.op(name) not in ("cast", "reshape"):
            return False
        name = v.nodes[name].inputs[0]
    return name is not None


def _family(v: View, atts) -> str:
    if any(_from_input(v, v.nodes[n].inputs[1]) for n in v.of("gather")):
        return "bert"
    av = {u for s, _ in atts for u in _through(v, s, True) if _act_matmul(v, u)}
    for a in v.of("add"):
        sides = [_side(v, i) for i in v.acts(a)]
        if len(sides) == 2 and any(s & av for s in sides) and any(any(v.op(x) == "conv" for x in s) for s in sides):
            return "cswin"
    silu = set(_silu_outputs(v))
    for m in v.of("mul"):
        a = v.acts(m)
        if len(a) == 2 and m not in silu and any(x in silu for x in a) and \
                any(v.op(u) == "matmul" for u in v.users[m]):
            return "eva"
    if v.of("conv"):
        for a in v.of("add"):
            proj = [u for u in v.users[a] if v.op(u) == "matmul" and len(v.acts(u)) == 1]
            if len(proj) >= 2 and not any(v.op(u) == "layer_norm" for u in v.users[a]):
                return "detr"
    for _, scores in atts:
        if v.op(scores) == "add" and any(v.const(i) for i in v.nodes[scores].inputs):
            return "swin"
    for c in v.of("concat"):
        if sum(v.const(i) for i in v.nodes[c].inputs) >= 2 and len(v.acts(c)) == 1:
            return "deit"
    return "vit"


def match_transformer(v: View) -> MatchResult | None:
    atts = attentions(v)
    if not atts:
        return None
    family = _family(v, atts)
    count = len(atts)
    keep = set(v.of("silu", "gelu")) | set(_silu_outputs(v))
    keep |= {x for m in _silu_outputs(v) for x in v.nodes[m].inputs if v.op(x) == "sigmoid"}
    for ln in v.of("layer_norm"):
        src = v.nodes[ln].inputs[0]
        if v.op(src) == "add":
            keep.add(src)

    def matmuls_after(names):
        return {u for n in names for u in _through(v, n, True) if v.op(u) == "matmul"}

    if family == "vit":
        keep |= matmuls_after([s for s, _ in atts] if count < 20 else v.of("gelu"))
    elif family == "bert":
        keep |= matmuls_after(v.of("gelu"))
    elif family == "eva":
        keep |= set(v.of("add"))
        silu = set(_silu_outputs(v))
        for m in v.of("mul"):
            if m not in silu and any(x in silu for x in v.acts(m)):
                keep |= {u for u in v.users[m] if v.op(u) == "matmul"}
    elif family == "swin":
        keep |= set(v.of("add", "depth_to_space"))
        for ln in v.of("layer_norm"):
            r = v.nodes[ln].inputs[0]
            if v.op(r) == "reshape" and v.op(v.nodes[r].inputs[0]) == "permute":
                keep.add(v.nodes[r].inputs[0])
    elif family == "detr":
        for n in v.g.compute_nodes():
            op = v.op(n.name)
            if op in ("conv", "scale", "reshape"):
                continue
            if op == "matmul" and len(v.acts(n.name)) == 1 and v.op(v.acts(n.name)[0]) in ("layer_norm", "reshape"):
                continue
            keep.add(n.name)
    keep = v.sorted(k for k in keep if is_float(v.nodes[k]) and v.nodes[k].op != "top.input")
    log = [f"{count} attention block(s) (softmax between two activation matmuls): the [{family}_block] pattern "
           f"matches this model. Count: {count}"]
    return MatchResult(family, "transformer", count, keep, log)


def match(graph: Graph) -> MatchResult | None:
    """The YOLO or transformer pattern of the model, or None."""
    v = View(graph)
    return match_yolo(v) or match_transformer(v)


# ------------------------------------------------------------------------------------------- shape ops
def shape_ops(graph: Graph) -> list[str]:
    """Real-valued ops whose values reach no output except through integer or boolean results (a float floor
    cast to indices, a float comparison making a mask): quantizing them moves an index or flips a mask, so they
    stay float. Found backwards: an op is one when all its users are such ops or produce non-real values."""
    v = View(graph)
    outputs = set(graph.outputs)
    shape: set[str] = set()
    for n in reversed(graph.compute_nodes()):
        if not is_float(n) or n.name in outputs or not v.users[n.name]:
            continue
        if all(u in shape or not is_float(v.nodes[u]) for u in v.users[n.name]):
            shape.add(n.name)
    return v.sorted(shape)


# ------------------------------------------------------------------------------- inside `tpu-cal calibrate`
@dataclass
class CalibrationTables:
    """What calibrate writes beside its cali_table: planned from the graph before the long run (so bad options
    fail at once), written after the table. `asym` goes into the table's #asym_op block."""
    qtable_path: str
    float_ops: list[str]
    mode: str
    chip: str
    notes: list[str]
    shape_path: str
    shape: list[str]
    asym: list[str]
    log: list[str]

    def write(self) -> None:
        from .fp_forward import write_float_qtable
        for line in self.log:
            print(line)
        if self.float_ops:
            write_float_qtable(self.qtable_path, self.float_ops, self.mode, self.chip, self.notes)
            print(f"The qtable has been generated in: {self.qtable_path} !!! ({len(self.float_ops)} ops in "
                  f"{self.mode})")
        if self.shape:
            write_float_qtable(self.shape_path, self.shape, self.mode, self.chip, ["shape-computation ops"])
            print(f"{len(self.shape)} shape-computation op(s) set to {self.mode} in {self.shape_path} (merge it "
                  f"by hand with other qtables)")


def plan_tables(graph: Graph, o) -> CalibrationTables:
    """The pattern-match qtable (`<folder of -o>/qtable`, merged with --part_quantize's), the shape-op qtable
    (`<folder of -o>/<model>_shape_ops`) and --part_asymmetric's ops, for calibrate's options `o` (output,
    processor, fp_type, part_quantize, custom_operator, part_asymmetric)."""
    import os

    from ..chips import chip as get_chip, mix_float_type
    from ..errors import UserError
    from .part_quantize import asymmetric_ops, float_ops_part
    chip = get_chip(getattr(o, "processor", None) or "bm1684x")
    mode = mix_float_type(chip, getattr(o, "fp_type", "auto") or "auto")
    part = getattr(o, "part_quantize", None)
    custom = list(getattr(o, "custom_operator", None) or [])
    if custom and part != "custom_mode":
        raise UserError("--custom_operator is used with --part_quantize custom_mode")
    asym = asymmetric_ops(graph) if getattr(o, "part_asymmetric", False) else []
    if getattr(o, "part_asymmetric", False) and not chip.asymmetric:
        raise UserError(f"--part_asymmetric: {chip.name} has no asymmetric int8 (choose another --processor)")
    folder = os.path.dirname(os.path.abspath(o.output))
    # as in TPU-MLIR, search_qtable writes the qtable itself and pattern-match stays out of its way
    r = match(graph) if getattr(o, "search", None) != "search_qtable" else None
    ops, notes, log = set(), [], []
    if r is not None:
        ops |= set(r.float_ops)
        notes.append(f"pattern: {r.family} ({r.blocks} block(s))")
        log += r.log
    if part:
        sel = float_ops_part(graph, part, custom)
        ops |= set(sel)
        notes.append(f"part_quantize {part}")
        log.append(f"--part_quantize {part}: {len(sel)} op(s) left in {mode}")
    if asym:
        log.append(f"--part_asymmetric: {len(asym)} SiLU/GELU op(s) read only by conv/matmul are asymmetric "
                   f"(#asym_op)")
    order = {n.name: k for k, n in enumerate(graph.nodes)}
    return CalibrationTables(os.path.join(folder, "qtable"), sorted(ops, key=order.__getitem__), mode, chip.name,
                             notes, os.path.join(folder, f"{graph.name}_shape_ops"), shape_ops(graph), asym, log)
