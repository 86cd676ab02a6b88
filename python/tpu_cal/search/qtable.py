"""search_qtable (and run_sensitive_layer, which is the same search with other methods and log name).

1. Per layer, per threshold method of --quantize_method_list: the loss (1 - output cosine) of the module with
   that layer alone in int8 (every other op in float) and that method's threshold for it; the best method gives
   the layer's threshold (new_cali_table.txt) and its loss ranks the layers (the printed sensitive-layer list).
2. The whole module in int8 with those thresholds is the start. While its cosine is below --expected_cos and
   fewer than --max_float_layers layers are float: each candidate layer (the most sensitive ones, or with
   --cluster the high-loss cluster) is measured as the next float layer of the current mix, exactly; the best
   is kept (greedy forward selection). The first round measures every candidate; later rounds re-measure the
   few best of the previous round, whose gains change little when another layer goes float, and the neighbours
   of the float layers, whose gains change most (two adjacent float layers drop the int8 tensor between them). The cap is a
   cap: when the target is not reached, the best mix found within it is written and the result says so.

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
from ..lowering import KEEP_SCALE_OPS, is_float, short
from ..report import table as text_table
from .common import LOG_NAMES, Log
from .engine import Candidate, Engine, Score

POOL_MIN = 8           # float-layer candidates measured in the first round (at least; 2 per allowed layer)
RECHECK = 3            # candidates re-measured in later rounds
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
    fixed by the user's qtable); with `transformer` only the matmul/conv family."""
    nodes = graph.node_map()
    comp = graph.compute_nodes()
    not_float = [n for n in comp if is_float(n) and short(n.op) not in chip.float_ops and n.name not in fixed]
    out = []
    for n in not_float:
        data_moves = short(n.op) in KEEP_SCALE_OPS and n.inputs and n.inputs[0] is not None \
            and nodes[n.inputs[0]].op != "top.weight"
        if data_moves or n.name not in table:
            continue
        if transformer and short(n.op) not in MAC_OPS:
            continue
        out.append(n)
    return out, len(comp), len(not_float)


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
        r = results.setdefault(n.name, LayerResult(n.name, n.op, {}, m, th, math.inf))
        loss = scores[k].loss
        r.losses[m] = (th, loss)
        if loss < r.loss:
            r.loss, r.best_method, r.best_th = loss, m, th
    for n in layers:
        r = results[n.name]
        log.info(f"start to handle layer: {n.name}, type: {n.op}")
        for m in cfg.methods:
            th, loss = r.losses[m]
            log.info(f"adjust layer {n.name} th, with method {LOG_NAMES[m]}, and threshlod {th}")
            log.info(f"run int8 mode: {model}")
            log.info(f"outputs_cos_los = {loss}")
        log.info(f"layer {n.name}, layer type is {n.op}, best_th = {r.best_th}, best_method = "
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
    gains: dict[str, float] = {}
    # the producers and consumers of a float layer gain most from it (together they drop the int8 tensor between
    # them), so they join the candidates of the next rounds
    searchable = {n.name for n in layers}
    users = graph.users()
    nodes = graph.node_map()
    near: list[str] = []
    while cur.cos < cfg.expected_cos and len(chosen) < cfg.max_float_layers and pool:
        todo = pool if not gains else sorted(pool, key=lambda p: -gains[p])[:RECHECK]
        todo += [p for p in near if p not in todo and p not in chosen]

        def mix(extra):
            modes = {c: cfg.float_mode for c in chosen + [extra]}
            return Candidate(modes=modes, thresholds=best_th, default=cfg.base_mode)
        sc = engine.evaluate([mix(p) for p in todo], ref, desc=f"float layer {len(chosen) + 1}")
        for p, s in zip(todo, sc):
            gains[p] = s.cos
            log.info(f"try float layers {chosen + [p]}: outputs_cos = {s.cos}")
        best = max(todo, key=lambda p: (gains[p], -todo.index(p)))
        rest = [p for p in pool if p not in todo]
        if gains[best] <= cur.cos and rest:
            # stale gains can mislead: before giving up, measure every remaining candidate on the current mix
            sc = engine.evaluate([mix(p) for p in rest], ref, desc=f"float layer {len(chosen) + 1} (all)")
            for p, s in zip(rest, sc):
                gains[p] = s.cos
                log.info(f"try float layers {chosen + [p]}: outputs_cos = {s.cos}")
            todo = todo + rest
            best = max(todo, key=lambda p: (gains[p], -todo.index(p)))
        if gains[best] <= cur.cos:
            log.info("no candidate layer improves the outputs any more")
            break
        chosen.append(best)
        if best in pool:
            pool.remove(best)
        for nb in [i for i in nodes[best].inputs if i is not None] + [u.name for u in users[best]]:
            if nb in searchable and nb not in chosen and nb not in near:
                near.append(nb)
        ref = engine.reference(Candidate(modes={c: cfg.float_mode for c in chosen}, thresholds=best_th,
                                         default=cfg.base_mode), base=ref)
        cur = ref.score
        steps.append((best, cur.cos))
        log.info(f"set layer {best} to {cfg.float_mode}: outputs_cos = {cur.cos}")
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
