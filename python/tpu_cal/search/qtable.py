"""search_qtable (and run_sensitive_layer, which is the same search with other methods and log name).

1. Per layer, per threshold method of --quantize_method_list: the loss (1 - output cosine) of the module with
   that layer alone in int8 (every other op in float) and that method's threshold for it; the best method gives
   the layer's threshold (new_cali_table.txt) and its loss ranks the layers (the printed sensitive-layer list).
2. The whole module in int8 with those thresholds is the start. While its cosine is below --expected_cos and
   fewer than --max_float_layers layers are float: each candidate layer (the most sensitive ones, or with
   --cluster the high-loss cluster) is measured as the next float layer of the current mix, exactly; the best
   is kept (greedy forward selection). The first round measures every candidate; later rounds re-measure the
   few best of the previous round, whose gains change little when another layer goes float, and the neighbours
   of the float layers, whose gains change most (two adjacent float layers drop the int8 tensor between them).
   When no single layer reaches the target, runs of 2-3 consecutive layers around the most sensitive ones are
   measured too (on EfficientNet-Lite0 the stem and block 0's depthwise layer in float together remove most of
   the int8 error; either alone does little); as with single layers, a run measured in an earlier round is
   measured again only when it was among the best or touches the last move. A run that reaches the target with
   the fewest layers wins, else the move with the most gain per layer. The cap is a cap: when the target is not
   reached, the best mix found within it is written and the result says so.
A conv and the ReLU/ReLU6 that alone reads it are one layer, named by the activation, as TPU-MLIR's fused op is.

Every measurement is a lowered module in the quantized simulation (`search.engine`): only the part downstream
of the changed layer runs, the rest comes from cached tensors, and independent measurements run on worker
processes.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..calibration import method_table
from ..chips import Chip
from ..errors import UserError
from ..graph import Graph
from ..lowering import KEEP_SCALE_OPS, activation_pairs, is_float, short
from ..report import table as text_table
from .common import LOG_NAMES, Log
from .engine import Candidate, Engine, Score

POOL_MIN = 8           # float-layer candidates measured in the first round (at least; 2 per allowed layer)
RECHECK = 3            # candidates re-measured in later rounds
WINDOW_ANCHORS = 3     # most sensitive layers around which runs of consecutive float layers are tried
WINDOW_MAX = 3         # the longest run tried at once
MAC_OPS = ("conv", "deconv", "matmul")


@dataclass
class QtableConfig:
    methods: list[str]                    # method keys (kl, mse, max, percentile9999), in the user's order
    expected_cos: float = 0.99
    max_float_layers: int = 5
    float_mode: str = "F16"               # precision of float layers (8_16), INT8 for 4_8
    base_mode: str = "INT8"               # precision of the rest (INT4 for 4_8)
    transformer: bool = False             # search only the matmul/conv layers (attention models: the rest is
                                          # float by default or cheap data movement)
    cluster: bool = False
    title: str = "search qtable"          # "success search qtable" / "success sensitive layer search"


@dataclass
class LayerResult:
    name: str
    op: str
    losses: dict[str, tuple[float, float]]    # method -> (threshold, loss)
    best_method: str
    best_th: float
    loss: float


@dataclass
class QtableResult:
    qtable: dict[str, str]                    # the float layers -> their precision
    new_table: dict[str, tuple[float, float, float]]
    layers: list[LayerResult]                 # most sensitive first
    int8_cos: float                           # all int8, the original table
    int8_best_cos: float                      # all int8, the searched thresholds (measured, used or not)
    mix_cos: float
    reached: bool
    steps: list[tuple[str, float]] = field(default_factory=list)    # (layer added, cosine after)
    evaluations: int = 0
    seconds: float = 0.0
    log: Log = field(default_factory=Log)
    kept_calibration: bool = False            # the searched thresholds measured worse together: not used


def search_layers(graph: Graph, chip: Chip, table: dict, fixed: dict, transformer: bool) -> tuple[list, int, int]:
    """(layers to search, all layer number, all layer number no float): every op that would be int8 with a
    threshold of its own (not the chip's float ops, not data movement that borrows its input's scale, not
    fixed by the user's qtable); with `transformer` only the matmul/conv family. A conv and the ReLU/ReLU6 that
    alone reads it are one layer, named by the activation (TPU-MLIR's fused op; `lowering.activation_pairs`)."""
    nodes = graph.node_map()
    comp = graph.compute_nodes()
    not_float = [n for n in comp if is_float(n) and short(n.op) not in chip.float_ops and n.name not in fixed]
    pairs = {mac: act for act, mac in activation_pairs(graph).items()}
    # a qtable entry for either of a pair fixes both (lowering.assign_precision)
    fixed_pair = {x for mac, act in pairs.items() if act in fixed or mac in fixed for x in (act, mac)}
    out = []
    for n in not_float:
        data_moves = short(n.op) in KEEP_SCALE_OPS and n.inputs and n.inputs[0] is not None \
            and nodes[n.inputs[0]].op != "top.weight"
        if data_moves or n.name not in table or n.name in fixed_pair:
            continue
        if n.name in pairs and pairs[n.name] in table:
            continue                    # searched as its activation
        if transformer and short(n.op) not in MAC_OPS and n.name not in pairs.values():
            continue
        out.append(n)
    return out, len(comp), len(not_float)


class Chains:
    """Which searched layers follow which: a layer's producer is the layer of its data input, its consumer the
    only layer reading it. Windows of consecutive layers are the float regions a search tries together: two
    adjacent float layers keep the tensor between them in float, which neither does alone."""

    def __init__(self, graph: Graph, layers: list):
        names = {n.name for n in layers}
        pairs = activation_pairs(graph)
        layer_of = {mac: act for act, mac in pairs.items() if act in names}
        layer_of.update({n: n for n in names})
        nodes = graph.node_map()
        users = graph.users()
        self.prev: dict[str, str] = {}
        self.next: dict[str, str] = {}
        for name in names:
            first = nodes[pairs[name]] if name in pairs and pairs[name] not in names else nodes[name]
            src = first.inputs[0] if first.inputs else None
            if src is not None and layer_of.get(src) in names:
                self.prev[name] = layer_of[src]
            readers = {layer_of.get(u.name) for u in users.get(name, [])}
            if len(readers) == 1 and None not in readers:
                self.next[name] = readers.pop()

    def neighbours(self, name: str) -> list[str]:
        return [x for x in (self.prev.get(name), self.next.get(name)) if x is not None]

    def windows(self, anchor: str, size: int) -> list[tuple[str, ...]]:
        """The runs of `size` consecutive layers that hold `anchor`."""
        back, fwd = [anchor], [anchor]
        while len(back) < size and back[-1] in self.prev and self.prev[back[-1]] not in back:
            back.append(self.prev[back[-1]])
        while len(fwd) < size and fwd[-1] in self.next and self.next[fwd[-1]] not in fwd:
            fwd.append(self.next[fwd[-1]])
        line = back[::-1] + fwd[1:]
        k = len(back) - 1
        return [tuple(line[i:i + size]) for i in range(max(0, k - size + 1), min(k, len(line) - size) + 1)]


def _two_means(values: np.ndarray) -> np.ndarray:
    """1-D 2-means (deterministic: starts at the extremes); True for the high cluster."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-12:
        return np.ones(len(values), bool)
    for _ in range(100):
        high = np.abs(values - hi) < np.abs(values - lo)
        nlo, nhi = float(values[~high].mean()), float(values[high].mean())
        if nlo == lo and nhi == hi:
            break
        lo, hi = nlo, nhi
    return high


def run(engine: Engine, graph: Graph, stats: dict, op_types: dict, cfg: QtableConfig, model: str,
        fixed: dict | None = None, tables: dict | None = None) -> QtableResult:
    """The search on `engine` (built on the base table and the inference samples). `stats`/`op_types` give each
    method's thresholds, except for the methods `tables` gives (an auto-tuned KL table)."""
    t0 = time.time()
    log = Log()
    fixed = dict(fixed or {})
    bits = 4 if cfg.base_mode == "INT4" else 8
    log.info(f"quantize_method_list ={[LOG_NAMES[m] for m in cfg.methods]}")
    tables = {m: (tables or {}).get(m) or method_table(graph, stats, op_types, m, bits=bits) for m in cfg.methods}
    log.info(f"run float mode: {model}")
    log.info(f"run int8 mode: {model}")
    base_ref = engine.reference(Candidate(default=cfg.base_mode))
    int8_cos = base_ref.score.cos
    log.info(f"all_int8_cos={int8_cos}")
    layers, n_all, n_nofloat = search_layers(graph, engine.chip, engine.table, fixed, cfg.transformer)
    log.info("layer name check pass !")
    log.info(f"all layer number: {n_all}")
    log.info(f"all layer number no float: {n_nofloat}")
    log.info(f"transformer model: {cfg.transformer}, all search layer number: {len(layers)}")
    log.info(f"Global metrics layer is : {None if engine.compare == [(o, 1.0) for o in graph.outputs] else engine.compare}")
    if not layers:
        raise UserError(f"{model}: no layer to search (every op is float or borrows its input's scale)")

    macs = activation_pairs(graph)
    gnodes = graph.node_map()

    def op_of(n):       # a fused layer is its conv (TPU-MLIR's type for it)
        return gnodes[macs[n.name]].op if n.name in macs else n.op

    # 1. each layer alone in int8, each method's threshold (equal thresholds are measured once)
    cands, index = [], []
    for n in layers:
        seen: dict[float, int] = {}
        for m in cfg.methods:
            th = float(tables[m][n.name][0])
            if th not in seen:
                seen[th] = len(cands)
                cands.append(Candidate(modes={n.name: cfg.base_mode}, thresholds={n.name: th}, default="F32"))
            index.append((n, m, th, seen[th]))
    scores = engine.evaluate(cands, desc="layers alone in int8")
    results: dict[str, LayerResult] = {}
    for n, m, th, k in index:
        r = results.setdefault(n.name, LayerResult(n.name, op_of(n), {}, m, th, math.inf))
        loss = scores[k].loss
        r.losses[m] = (th, loss)
        if loss < r.loss:
            r.loss, r.best_method, r.best_th = loss, m, th
    for n in layers:
        r = results[n.name]
        log.info(f"start to handle layer: {n.name}, type: {op_of(n)}")
        for m in cfg.methods:
            th, loss = r.losses[m]
            log.info(f"adjust layer {n.name} th, with method {LOG_NAMES[m]}, and threshlod {th}")
            log.info(f"run int8 mode: {model}")
            log.info(f"outputs_cos_los = {loss}")
        log.info(f"layer {n.name}, layer type is {op_of(n)}, best_th = {r.best_th}, best_method = "
                 f"{LOG_NAMES[r.best_method]}, best_cos_loss = {r.loss}")
    ranked = sorted(results.values(), key=lambda r: (-r.loss, r.name))
    best_th = {r.name: r.best_th for r in ranked}
    new_table = dict(engine.table)
    for r in ranked:
        new_table[r.name] = tables[r.best_method][r.name]

    # 2. the mix: greedy forward selection of float layers, within the cap
    ref = engine.reference(Candidate(thresholds=best_th, default=cfg.base_mode), base=base_ref)
    start_cos = searched_cos = ref.score.cos
    log.info(f"all int8 with the searched thresholds: outputs_cos = {start_cos}")
    kept = start_cos < int8_cos
    if kept:
        # each layer's best threshold alone need not be best together; the table that measures better wins
        log.info("the calibration table's thresholds measure better together: the mix keeps them")
        best_th, new_table = {}, dict(engine.table)
        ref = base_ref
        start_cos = ref.score.cos
    del base_ref
    chosen: list[str] = []
    steps: list[tuple[str, float]] = []
    pool = [r.name for r in ranked if r.loss > 0]
    if cfg.cluster and len(pool) > 2:
        losses = np.log10(np.maximum([results[p].loss for p in pool], 1e-12))
        high = _two_means(losses)
        pool = [p for p, h in zip(pool, high) if h]
        log.info(f"cluster: {len(pool)} sensitive layer(s) in the high-loss cluster")
    pool = pool[:max(POOL_MIN, 2 * cfg.max_float_layers)]
    cur: Score = ref.score
    gains: dict[str, float] = {}            # layer -> cos with it float, when last measured
    run_gains: dict[tuple, float] = {}      # run of layers -> cos with it float, when last measured
    chains = Chains(graph, layers)
    # the producers and consumers of a float layer gain most from it (together they drop the int8 tensor between
    # them), so they join the candidates of the next rounds
    near: list[str] = []
    last_near: list[str] = []               # the neighbours of the last move's layers

    def mix(extra) -> Candidate:
        return Candidate(modes={c: cfg.float_mode for c in chosen + list(extra)}, thresholds=best_th,
                         default=cfg.base_mode)

    def measure(moves: list[tuple[str, ...]], what: str) -> dict[tuple[str, ...], float]:
        sc = engine.evaluate([mix(m) for m in moves], ref, desc=f"float layer {len(chosen) + 1}{what}")
        for m, x in zip(moves, sc):
            log.info(f"try float layers {chosen + list(m)}: outputs_cos = {x.cos}")
            (gains if len(m) == 1 else run_gains)[m if len(m) > 1 else m[0]] = x.cos
        return {m: x.cos for m, x in zip(moves, sc)}

    def pick(scores: dict) -> tuple[str, ...] | None:
        """The fewest layers that reach the target (the best of those), else the most gain per layer."""
        hit = [m for m, c in scores.items() if c >= cfg.expected_cos]
        if hit:
            return min(hit, key=lambda m: (len(m), -scores[m]))
        best = max(scores, key=lambda m: (scores[m] - cur.cos) / len(m))
        return best if scores[best] > cur.cos else None

    while cur.cos < cfg.expected_cos and len(chosen) < cfg.max_float_layers and pool:
        todo = pool if not gains else sorted(pool, key=lambda p: -gains[p])[:RECHECK]
        todo += [p for p in near if p not in todo and p not in chosen]
        scores = measure([(p,) for p in todo], "")
        rest = [p for p in pool if p not in todo]
        room = cfg.max_float_layers - len(chosen)
        if max(scores.values()) < cfg.expected_cos and room >= 2:
            # no single layer reaches the target: runs of consecutive layers around the most sensitive ones and
            # this round's best, which can keep whole stretches of tensors in float
            anchors = [r.name for r in ranked if r.name not in chosen][:WINDOW_ANCHORS]
            anchors += [m[0] for m in sorted(scores, key=lambda m: -scores[m])[:2]]
            wins = []
            for an in dict.fromkeys(anchors):
                for size in range(2, min(WINDOW_MAX, room) + 1):
                    wins += [w for w in chains.windows(an, size) if not set(w) & set(chosen) and w not in wins]
            # as for single layers: runs measured in an earlier round are re-measured only when among the best
            # then (their gains change little when a layer elsewhere goes float) or next to the last move (they
            # change most); new runs are all measured
            fresh = [w for w in wins if w not in run_gains or set(w) & set(last_near)]
            old = sorted((w for w in wins if w not in fresh), key=lambda w: -run_gains[w])
            wins = fresh + old[:RECHECK]
            if wins:
                scores.update(measure(wins, " (runs of layers)"))
        best = pick(scores)
        if best is None and rest:
            # stale gains can mislead: before giving up, measure every remaining candidate on the current mix
            scores.update(measure([(p,) for p in rest], " (all)"))
            best = pick(scores)
        if best is None:
            log.info("no candidate layer improves the outputs any more")
            break
        for layer in best:
            chosen.append(layer)
            if layer in pool:
                pool.remove(layer)
        last_near = [nb for layer in best for nb in chains.neighbours(layer) if nb not in chosen]
        near += [nb for nb in dict.fromkeys(last_near) if nb not in near]
        ref = engine.reference(mix(()), base=ref)
        cur = ref.score
        for layer in best:
            steps.append((layer, cur.cos))
        log.info(f"set layer{'s' if len(best) > 1 else ''} {', '.join(best)} to {cfg.float_mode}: "
                 f"outputs_cos = {cur.cos}")
    reached = cur.cos >= cfg.expected_cos
    log.info(f"mix model outputs_cos = {cur.cos}, float layers: {len(chosen)}, expected_cos {cfg.expected_cos} "
             f"{'reached' if reached else 'not reached'}")
    return QtableResult({c: cfg.float_mode for c in chosen}, new_table, ranked, int8_cos, searched_cos, cur.cos,
                        reached, steps, engine.evaluations, time.time() - t0, log, kept)


def report(res: QtableResult, qtable_path: str, cfg: QtableConfig) -> str:
    """The console text: TPU-MLIR's sensitive-layer lines and run result, then our tables."""
    out = [f"the layer {r.name} is {k} sensitive layer, loss is {r.loss}, type is {r.op}"
           for k, r in enumerate(res.layers)]
    out.append(text_table(["float layer", "precision", "outputs cos after"],
                          [[name, res.qtable[name], cos] for name, cos in res.steps],
                          title=f"float layers ({len(res.steps)} of at most {cfg.max_float_layers}):"))
    out.append(text_table(["model", "outputs cos"],
                          [[f"all {cfg.base_mode.lower()}, calibration table", res.int8_cos],
                           [f"all {cfg.base_mode.lower()}, searched thresholds"
                            + (" (worse together: not used)" if res.kept_calibration else ""), res.int8_best_cos],
                           [f"mix, {len(res.qtable)} float layer(s)", res.mix_cos]],
                          title=f"run result ({res.evaluations} evaluations in {res.seconds:.1f}s, "
                                f"{res.evaluations / max(res.seconds, 1e-9):.2f}/s):"))
    out.append("run result:")
    out.append(f"int8 outputs_cos:{res.int8_cos:.6f} old")
    out.append(f"mix model outputs_cos:{res.mix_cos:.6f}")
    out.append(f"Output mix quantization table to {qtable_path}")
    out.append(f"total time:{res.seconds}")
    return "\n".join(out)
