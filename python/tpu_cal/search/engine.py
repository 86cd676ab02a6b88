"""The evaluation engine every search shares: what a candidate scores is the quantized simulation of the module
lowered exactly as `tpu-cal lower` lowers it, so what is searched is what is deployed.

    eng = Engine(float_graph, table, "bm1684x", feeds, compare=[("logits", 1.0)], workers=2)
    ref = eng.reference(Candidate())                          # full INT8: every tensor cached
    scores = eng.evaluate([Candidate(modes={"conv1": "F16"}), ...], ref)

A `Candidate` is a precision per op over a default mode (a qtable) plus threshold overrides. Evaluating it
lowers the float module with `lowering.assign_precision` + `lowering.lower` (0.1 s for EfficientNet-Lite0), then
compares the lowered graph with a `Reference`'s, node by node: a node with the same name, op, attributes, type
and inputs (and, for weights, the same array) whose inputs are all such nodes computes the same values, so it is
taken from the reference's cache; only the rest, the part downstream of what the candidate changed, is run
(`Interpreter.run_from`). That is exact: the dirty nodes see exactly the operands a full run would give them.

After bias correction (`calibrate --bc`) the engine is given the corrections: a layer a candidate runs in
float gets its uncorrected bias back (`bias_correction.uncorrect`), since the correction was made for the int8
error it no longer has; the deployed module gets the same for the layers the search leaves in float.

The float activations of the inference samples are computed once (`Engine.float_ref`, the all-F32 lowering)
and are both the reference the per-layer searches start from and what every score compares against.
A reference whose tensors would exceed `cache_budget` (default a sixth of the machine's memory) keeps a share of
them spread over the program, and a candidate recomputes what it reads from the nearest cached tensors
(`_kept`, `_closure`): slower, same scores.
Independent candidates run in forked worker processes (`workers`, default all cores), which share the caches
copy-on-write; results come back in candidate order, so a search is deterministic whatever the worker count.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from ..calibration import ATTR_MAX, ATTR_MIN, ATTR_TH, progress
from ..chips import Chip
from ..formats.qtable import QTable
from ..graph import Graph
from ..interp.core import Interpreter
from ..lowering import FLOAT_MODES, as_chip, assign_precision, lower
from ..optimize.bias_correction import uncorrect
from ..simulate import real_value


@dataclass
class Candidate:
    """A configuration to measure: `modes` (op -> F32/F16/BF16/INT8/INT4) over `default`, and thresholds."""
    modes: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    default: str = "INT8"


@dataclass
class Score:
    cos: float                          # weighted mean over the compared tensors of the mean per-sample cosine
                                        # (of the SNR in dB with metric="snr")
    per_tensor: dict[str, float]
    computed: int = 0                   # ops run for this score (the others came from the reference's cache)
    total: int = 0

    @property
    def loss(self) -> float:
        return 1.0 - self.cos


@dataclass
class Reference:
    """A lowered graph and every value it computes on the inference samples, one dict per batch."""
    graph: Graph
    values: list[dict]
    sig: dict[str, tuple]
    score: Score


def _per_sample(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two batched tensors as [n, -1] float64 rows (one row when the tensor has no batch axis of n samples)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim == 0 or a.shape[0] % n:
        n = 1
    return a.reshape(n, -1), b.reshape(n, -1)


def per_sample_cosines(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Cosine of each of the n samples of two batched tensors (the whole tensor when it has no batch axis)."""
    a, b = _per_sample(a, b, n)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = dot / (na * nb)
    c = np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, c))
    return c


SNR_CAP_DB = 200.0        # an exact tensor's SNR is infinite; capped so that means stay finite


def per_sample_snr(ref: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    """SNR in dB of each of the n samples of x against ref (capped at SNR_CAP_DB)."""
    a, b = _per_sample(ref, x, n)
    sig, noise = (a * a).sum(axis=1), ((a - b) ** 2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10 * np.log10(sig / noise)
    db = np.where(noise == 0, SNR_CAP_DB, np.where(sig == 0, -SNR_CAP_DB, db))
    return np.clip(db, -SNR_CAP_DB, SNR_CAP_DB)


def _flat(v) -> np.ndarray:
    """A post-process result (array, list/tuple/dict of arrays, number) as one float64 vector."""
    if isinstance(v, dict):
        v = [v[k] for k in sorted(v)]
    if isinstance(v, (list, tuple)):
        parts = [_flat(x) for x in v]
        return np.concatenate(parts) if parts else np.zeros(0)
    return np.asarray(v, np.float64).ravel()


class Engine:
    """Lowers candidates and scores their quantized simulation against the float module (module docstring)."""

    def __init__(self, graph: Graph, table: dict, chip, feeds: dict[str, np.ndarray], *,
                 compare: list[tuple[str, float]] | None = None, post_process=None, batch_size: int = 16,
                 workers: int = 0, fixed: dict[str, str] | None = None, asym_ops=(), show_progress=True,
                 metric: str = "cos", cache_budget: int | None = None, reference_graph: Graph | None = None,
                 bias_corrections: dict | None = None):
        self.graph = graph
        self.bias_corrections: dict = {}
        # bytes one cached reference may hold: three can be alive at once (the float one, the current mix and
        # the next mix while it is built from it), so a sixth of the machine's memory by default
        self.cache_budget = int(cache_budget if cache_budget is not None else _physical_memory() // 6)
        self._warned = False
        self.metric = {"cos": per_sample_cosines, "snr": per_sample_snr}[metric]
        self.table = dict(table)                       # op -> (threshold, min, max): the base thresholds
        self.chip: Chip = as_chip(chip)
        self.fixed = dict(fixed or {})                 # qtable entries every candidate keeps (user's qtable)
        self.asym = list(asym_ops)
        self.post_process = post_process
        self.workers = max(1, int(workers) or (os.cpu_count() or 1))
        self.show_progress = show_progress
        self.compare = list(compare) if compare else [(o, 1.0) for o in graph.outputs]
        nodes = graph.node_map()
        first = graph.inputs[0]
        declared = nodes[first].shape[0] if nodes[first].shape else 1
        total = np.asarray(feeds[first]).shape[0] // max(declared, 1)
        step = max(1, int(batch_size))
        self.batches = [{k: np.asarray(v)[a * declared:min(total, a + step) * declared] for k, v in feeds.items()}
                        for a in range(0, total, step)]
        self.samples = [min(total, a + step) - a for a in range(0, total, step)]
        self.n_samples = total
        self.evaluations = 0                           # candidate evaluations so far (for the speed report)
        self._float_targets: list[list[np.ndarray]] | None = None
        # what the candidates must match: the float module, or `reference_graph`, the model before a rewrite that
        # changes the float function (bias correction: its point is int8(rewritten) ~ float(original))
        if reference_graph is not None:
            self.graph = reference_graph
        target = self.reference(Candidate(default="F32"))
        self.graph = graph
        # layer -> the error its bias correction subtracted (calibrate --bc), given back when it runs in float
        self.bias_corrections = dict(bias_corrections or {})
        fl = target.graph
        fnodes = fl.node_map()
        self._float_targets = [[self._target(b, name, fl, fnodes, {}, target.values[b])
                                for name, _ in self.compare] for b in range(len(self.batches))]
        # the cached base of the candidates is the float run of the module they are lowered from
        self.float_ref = target if reference_graph is None else self.reference(Candidate(default="F32"))
        del target
        self.float_ref.score = self._score(self.float_ref.graph, self.float_ref.values, self.float_ref.values, 0)

    # ----------------------------------------------------------------------------------------- lowering
    def lowered(self, cand: Candidate) -> Graph:
        """The tpu graph of `cand`: thresholds attached to a copy of the float graph, precisions, lowering."""
        g = self.graph
        modes = dict(self.fixed)
        modes.update(cand.modes)
        # inputs, attrs and weights are copied too: bias_correction.uncorrect may change them below
        nodes = [dataclasses.replace(n, extra=dict(n.extra), inputs=list(n.inputs), attrs=dict(n.attrs))
                 for n in g.nodes]
        copy = Graph(g.name, list(g.inputs), list(g.outputs), nodes, dict(g.weights), dict(g.attrs))
        for n in nodes:
            e = self.table.get(n.name)
            th = cand.thresholds.get(n.name)
            if th is not None:
                lo, hi = (e[1], e[2]) if e is not None else (-th, th)
                e = (th, lo, hi)
            if e is not None and n.op not in ("top.weight", "top.none"):
                n.extra[ATTR_TH], n.extra[ATTR_MIN], n.extra[ATTR_MAX] = (float(v) for v in e)
        prec = assign_precision(copy, self.chip, cand.default, QTable(modes=modes, source="<search candidate>"))
        # float layers get their bias correction back: it was made for the int8 error they no longer have
        uncorrect(copy, self.bias_corrections, [n for n in self.bias_corrections if prec.get(n) in FLOAT_MODES])
        return lower(copy, self.chip, self.asym)

    @staticmethod
    def _signature(graph: Graph) -> dict[str, tuple]:
        return {n.name: (n.op, tuple(n.inputs), repr(sorted(n.attrs.items())), repr(sorted(n.extra.items())),
                         n.result_type, tuple(n.shape), n.dtype) for n in graph.nodes}

    def _dirty(self, lg: Graph, sig: dict, ref: Reference) -> list[str]:
        """Names of the nodes of `lg` that cannot be taken from `ref` (changed, or reading a changed node)."""
        dirty: set[str] = set()
        out = []
        for n in lg.nodes:
            s = sig[n.name]
            same = ref.sig.get(n.name) == s and not any(i in dirty for i in n.inputs if i is not None)
            if same and n.op == "top.weight":
                a, b = lg.weights[n.attrs["name"]], ref.graph.weights.get(n.attrs["name"])
                same = b is not None and (a is b or (a.shape == b.shape and a.dtype == b.dtype
                                                     and np.array_equal(a, b)))
            if not same:
                dirty.add(n.name)
                out.append(n.name)
        return out

    # ----------------------------------------------------------------------------------------- running
    def reference(self, cand: Candidate, base: Reference | None = None) -> Reference:
        """Runs `cand` and caches its tensors (all of them, or the subset `cache_budget` allows: `_kept`), the base
        the next candidates are measured from; with `base`, only what differs from it runs."""
        lg = self.lowered(cand)
        interp = Interpreter(lg)
        sig = self._signature(lg)
        kept = self._kept(lg)
        if base is not None and base.sig:
            dirty = self._dirty(lg, sig, base)
            have = base.values[0]
            want = [name for name in kept if name in dirty or name not in have]
            todo = self._closure(lg, set(dirty) | set(want), have)
            values = []
            for b in range(len(self.batches)):
                env = interp.run_from(base.values[b], todo, keep=want)
                values.append({name: env[name] if name in env else base.values[b][name] for name in kept})
            ref = Reference(lg, values, sig, Score(float("nan"), {}))
            ref.score = self._score(lg, values, values, len(todo))
            return ref
        values = [{name: v for name, v in interp.run(b, keep=kept).items() if name in kept} for b in self.batches]
        ref = Reference(lg, values, sig, Score(float("nan"), {}))
        if self._float_targets is not None:
            ref.score = self._score(lg, values, values, len(lg.nodes))
        return ref

    def _kept(self, lg: Graph) -> list[str]:
        """Names of the tensors of `lg` a reference caches: all of them when they fit `cache_budget`, else the
        inputs, weights and compared tensors and, of the rest, a share spread evenly over the program (a tensor
        is kept while the bytes kept so far stay within budget/total of the bytes seen so far), so that what a
        candidate must recompute from the nearest cached tensors stays short."""
        names = [n.name for n in lg.nodes if n.op != "top.none"]
        total = self.cache_bytes(lg)
        if total <= self.cache_budget:
            return names
        if not self._warned:
            self._warned = True
            print(f"note: the tensors of {self.n_samples} inference samples need {total / 2**30:.1f} GiB, more "
                  f"than the cache budget ({self.cache_budget / 2**30:.1f} GiB): "
                  f"{100 * self.cache_budget / total:.0f} % of them are cached, candidates recompute the rest",
                  file=sys.stderr)
        share = self.cache_budget / total
        per = self.n_samples / self._declared(lg)
        must = set(lg.inputs) | {self._lname(lg, name) for name, _ in self.compare}
        out, seen, held = [], 0.0, 0.0
        for n in lg.nodes:
            if n.op == "top.none":
                continue
            size = 0.0 if n.op == "top.weight" else np.prod(n.shape or (1,)) * np.dtype(n.dtype).itemsize * per
            seen += size
            if n.op == "top.weight" or n.name in must or held + size <= share * seen:
                out.append(n.name)
                held += size
        return out

    @staticmethod
    def _closure(lg: Graph, todo: set, have) -> set:
        """`todo` plus every op whose value an op of it reads and that is neither in it nor in `have` (the cached
        tensors), transitively: what `run_from` must run to compute `todo` from the cache."""
        nodes = lg.node_map()
        out = set(todo)
        stack = list(todo)
        while stack:
            for i in nodes[stack.pop()].inputs:
                if i is not None and i not in out and i not in have:
                    out.add(i)
                    stack.append(i)
        return out

    def cache_bytes(self, lg: Graph) -> int:
        """Bytes of every tensor of `lg` over the inference samples (what a cached reference holds)."""
        per = sum(int(np.prod(n.shape or (1,))) * np.dtype(n.dtype).itemsize
                  for n in lg.nodes if n.op not in ("top.weight", "top.none"))
        return per * self.n_samples // self._declared(lg)

    @staticmethod
    def _declared(lg: Graph) -> int:
        """The module's declared batch (the samples one run of its shapes holds)."""
        n = lg.node_map()[lg.inputs[0]]
        return max(n.shape[0] if n.shape else 1, 1)

    def _lname(self, lg: Graph, name: str) -> str:
        return lg.outputs[self.graph.outputs.index(name)] if name in self.graph.outputs else name

    def _target(self, b: int, name: str, lg: Graph, nodes: dict, env: dict, cached: dict) -> np.ndarray:
        """Compared tensor `name` (a float-graph name) of batch b of lowered graph `lg`, as real numbers: computed
        (`env`) or, when unchanged, the reference's (`cached`)."""
        lname = self._lname(lg, name)
        v = env[lname] if lname in env else cached[lname]
        return real_value(nodes[lname], v)

    def _score(self, lg: Graph, envs: list[dict], cached: list[dict], computed: int) -> Score:
        nodes = lg.node_map()
        sums = {name: 0.0 for name, _ in self.compare}
        for b, n in enumerate(self.samples):
            for k, (name, _) in enumerate(self.compare):
                q = self._target(b, name, lg, nodes, envs[b], cached[b])
                f = self._float_targets[b][k]
                if self.post_process is not None:
                    c = [self.metric(_flat(self.post_process(f[i:i + 1])),
                                     _flat(self.post_process(q[i:i + 1])), 1)[0] for i in range(n)] \
                        if f.ndim and f.shape[0] % n == 0 else \
                        [self.metric(_flat(self.post_process(f)), _flat(self.post_process(q)), 1)[0]] * n
                    sums[name] += float(np.sum(c))
                else:
                    sums[name] += float(self.metric(f, q, n).sum())
        per = {name: s / self.n_samples for name, s in sums.items()}
        wsum = sum(w for _, w in self.compare)
        cos = sum(per[name] * w for name, w in self.compare) / wsum
        return Score(float(cos), per, computed, len(lg.nodes))

    def score(self, cand: Candidate, ref: Reference | None = None) -> Score:
        """Scores one candidate, running only what differs from `ref` (the float reference by default)."""
        ref = ref or self.float_ref
        lg = self.lowered(cand)
        dirty = self._dirty(lg, self._signature(lg), ref)
        interp = Interpreter(lg)
        want = {self._lname(lg, name) for name, _ in self.compare}
        todo = self._closure(lg, set(dirty) | (want - set(ref.values[0])), ref.values[0])
        envs = [interp.run_from(ref.values[b], todo, keep=want) for b in range(len(self.batches))]
        self.evaluations += 1
        return self._score(lg, envs, ref.values, len(todo))

    def evaluate(self, cands: list[Candidate], ref: Reference | None = None, desc: str = "candidates") \
            -> list[Score]:
        """Scores of `cands` in order, on the worker processes when there are several."""
        ref = ref or self.float_ref
        bar = progress(len(cands), desc, unit="candidate") if self.show_progress else None
        out: list[Score] = []
        try:
            if self.workers <= 1 or len(cands) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
                for c in cands:
                    out.append(self.score(c, ref))
                    if bar:
                        bar.update(1)
            else:
                ctx = multiprocessing.get_context("fork")
                # forked children inherit the engine and the caches (copy-on-write): nothing large is pickled
                with ctx.Pool(min(self.workers, len(cands)), initializer=_init_worker, initargs=(self, ref)) as pool:
                    for s in pool.imap(_score_in_worker, cands, chunksize=1):
                        out.append(s)
                        if bar:
                            bar.update(1)
                self.evaluations += len(cands)
        finally:
            if bar:
                bar.close()
        return out


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):      # not POSIX: assume 8 GiB
        return 8 << 30


_WORKER: tuple | None = None        # (engine, reference) of this worker process, set once when it starts


def _init_worker(engine: Engine, ref: Reference) -> None:
    global _WORKER
    _WORKER = (engine, ref)


def _score_in_worker(cand: Candidate) -> Score:
    engine, ref = _WORKER
    return engine.score(cand, ref)
