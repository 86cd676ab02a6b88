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
A reference whose tensors would exceed `cache_budget` (default a sixth of the machine's memory) splits the
samples into groups that fit (`_groups`): candidates are measured on one group after the other, and one group of
such references is in memory at a time (`_load`); the per-sample scores are summed in sample order, so the
grouping changes no bit. When a single sample's tensors exceed the budget, a reference keeps a share of them
spread over the program, and a candidate recomputes what it reads from the nearest cached ones (`_kept`,
`_closure`): slower, same scores.
Independent candidates run in forked worker processes (`workers`, default all cores), which share the caches
copy-on-write; results come back in candidate order, so a search is deterministic whatever the worker count.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import weakref
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


@dataclass(eq=False)          # hashed by identity: the engine tracks which references hold tensors
class Reference:
    """A lowered graph and the values it computes on the inference samples: batch index -> tensors (`kept`) for
    the batches in memory. `groups`: the batches in groups whose tensors fit the cache budget; with several, one
    group is in memory at a time (float references of large models: int8 tensors take a quarter of the room)."""
    graph: Graph
    values: dict[int, dict]
    sig: dict[str, tuple]
    score: Score
    kept: list[str]
    groups: list[list[int]]


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
        self.evaluations = 0                           # candidate evaluations so far (for the speed report)
        self._holding: weakref.WeakSet = weakref.WeakSet()     # references holding tensors (`_load`)
        # what the candidates must match: the float module, or `reference_graph`, the model before a rewrite that
        # changes the float function (bias correction: its point is int8(rewritten) ~ float(original))
        if reference_graph is not None:
            self.graph = reference_graph
        self._group(feeds, max(1, int(batch_size)))
        self._float_targets: dict[int, list[np.ndarray]] = {}     # batch -> the float compared tensors
        target = self.reference(Candidate(default="F32"))
        self.graph = graph
        # layer -> the error its bias correction subtracted (calibrate --bc), given back when it runs in float
        self.bias_corrections = dict(bias_corrections or {})
        # the cached base of the candidates is the float run of the module they are lowered from
        self.float_ref = target if reference_graph is None else self.reference(Candidate(default="F32"))
        del target

    def _group(self, feeds: dict, step: int) -> None:
        """Batches of at most `step` samples, fewer when the tensors of `step` samples would not fit
        `cache_budget` (`_groups` packs them into groups that fit)."""
        self._split(feeds, step)
        size = max(self.cache_bytes(self.lowered(Candidate(default=m))) for m in ("F32", "INT8"))
        fit = max(1, int(self.cache_budget * self.n_samples // max(size, 1)))
        if fit < step:
            self._split(feeds, fit)

    def _groups(self, lg: Graph) -> list[list[int]]:
        """The batches in groups whose tensors of `lg` fit `cache_budget` (one group when they all do): the
        candidates measured from a reference of `lg` run on one group after the other, so that its tensors for
        every sample never need to be in memory at once."""
        size = self.cache_bytes(lg)
        fit = max(1, int(self.cache_budget * self.n_samples // max(size, 1)))
        if fit >= self.n_samples:
            return [list(range(len(self.batches)))]
        per = max(1, fit // max(self.samples))
        groups = [list(range(a, min(len(self.batches), a + per))) for a in range(0, len(self.batches), per)]
        self._note(f"the tensors of {self.n_samples} inference samples need {size / 2**30:.1f} GiB, more than the "
                   f"cache budget ({self.cache_budget / 2**30:.1f} GiB): candidates are measured on "
                   f"{len(groups)} groups of samples in turn, each group's tensors cached while it runs")
        return groups

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
    def _load(self, ref: Reference, group: list[int], base: Reference | None = None) -> int:
        """Makes `ref` hold its tensors of the batches of `group` (computed from `base` where it holds that batch,
        else by a full run). When `ref` has several groups, it and every other reference with several (but
        `base`) first let their tensors go, so that one such group is in memory at a time. Returns the ops run
        per batch (0: all were held)."""
        if len(ref.groups) > 1:
            for r in list(self._holding):
                if r is not base and len(r.groups) > 1:
                    for b in [b for b in r.values if r is not ref or b not in group]:
                        del r.values[b]
        self._holding.add(ref)
        interp = dirty = None
        ran = 0
        for b in group:
            if b in ref.values:
                continue
            interp = interp or Interpreter(ref.graph)
            if base is not None and b in base.values:
                dirty = dirty if dirty is not None else self._dirty(ref.graph, ref.sig, base)
                have = base.values[b]
                want = [name for name in ref.kept if name in dirty or name not in have]
                todo = self._closure(ref.graph, set(dirty) | set(want), have)
                env = interp.run_from(have, todo, keep=want)
                ref.values[b] = {name: env[name] if name in env else have[name] for name in ref.kept}
                ran = max(ran, len(todo))
            else:
                kept = set(ref.kept)
                ref.values[b] = {k: v for k, v in interp.run(self.batches[b], keep=kept).items() if k in kept}
                ran = len(ref.graph.nodes)
        return ran

    @staticmethod
    def _order(groups: list[list[int]], held: Reference | None) -> list[list[int]]:
        """`groups`, those whose batches `held` holds first (they need no run)."""
        if held is None:
            return list(groups)
        return sorted(groups, key=lambda grp: not all(b in held.values for b in grp))

    def reference(self, cand: Candidate, base: Reference | None = None) -> Reference:
        """Runs `cand` and caches its tensors (all of them, or the subset `cache_budget` allows: `_kept`; with
        several sample groups, those of the last group run), the base the next candidates are measured from;
        with `base`, only what differs from it runs."""
        lg = self.lowered(cand)
        groups = self._groups(lg)
        ref = Reference(lg, {}, self._signature(lg), Score(float("nan"), {}), self._kept(lg, groups), groups)
        sums: dict[int, dict] = {}
        computed = 0
        for grp in self._order(groups, base):
            computed = max(computed, self._load(ref, grp, base))
            nodes = lg.node_map()
            for b in grp:
                if b not in self._float_targets:          # the first run: the float module's
                    self._float_targets[b] = [self._target(b, name, lg, nodes, {}, ref.values[b])
                                              for name, _ in self.compare]
                sums[b] = self._sums(lg, nodes, b, ref.values[b], ref.values[b])
        ref.score = self._combine(sums, computed, len(lg.nodes))
        return ref

    def _kept(self, lg: Graph, groups: list[list[int]]) -> list[str]:
        """Names of the tensors of `lg` a reference caches: all of them when one sample group's fit
        `cache_budget`, else (one sample is more than the budget) the inputs, weights and compared tensors and,
        of the rest, a share spread evenly over the program (a tensor is kept while the bytes kept so far stay
        within budget/total of the bytes seen so far), so that what a candidate must recompute from the nearest
        cached tensors stays short."""
        names = [n.name for n in lg.nodes if n.op != "top.none"]
        group = max(sum(self.samples[b] for b in grp) for grp in groups)
        total = self.cache_bytes(lg) * group / self.n_samples
        if total <= self.cache_budget:
            return names
        self._note(f"the tensors of one inference sample need {total / 2**30:.1f} GiB, more than the cache "
                   f"budget ({self.cache_budget / 2**30:.1f} GiB): {100 * self.cache_budget / total:.0f} % of "
                   f"them are cached, candidates recompute the rest")
        share = self.cache_budget / total
        per = group / self._declared(lg)
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

    def _note(self, text: str) -> None:
        if not self._warned:
            self._warned = True
            print(f"note: {text}", file=sys.stderr)

    def _split(self, feeds: dict, step: int) -> None:
        """Batches of `step` samples (`self.batches`, `self.samples`)."""
        first = self.graph.inputs[0]
        declared = self._declared(self.graph)
        total = np.asarray(feeds[first]).shape[0] // declared
        self.batches = [{k: np.asarray(v)[a * declared:min(total, a + step) * declared] for k, v in feeds.items()}
                        for a in range(0, total, step)]
        self.samples = [min(total, a + step) - a for a in range(0, total, step)]
        self.n_samples = total

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

    def _sums(self, lg: Graph, nodes: dict, b: int, env: dict, cached: dict) -> dict[str, np.ndarray]:
        """Per compared tensor, the metric against the float targets of each sample of batch b."""
        n = self.samples[b]
        out = {}
        for k, (name, _) in enumerate(self.compare):
            q = self._target(b, name, lg, nodes, env, cached)
            f = self._float_targets[b][k]
            if self.post_process is not None:
                c = [self.metric(_flat(self.post_process(f[i:i + 1])),
                                 _flat(self.post_process(q[i:i + 1])), 1)[0] for i in range(n)] \
                    if f.ndim and f.shape[0] % n == 0 else \
                    [self.metric(_flat(self.post_process(f)), _flat(self.post_process(q)), 1)[0]] * n
                out[name] = np.asarray(c, np.float64)
            else:
                out[name] = np.asarray(self.metric(f, q, n), np.float64)
        return out

    def _combine(self, sums: dict[int, dict], computed: int, total: int) -> Score:
        """The score from every batch's `_sums` (summed in sample order, however the batches were grouped)."""
        per = {name: float(np.concatenate([sums[b][name] for b in sorted(sums)]).sum()) / self.n_samples
               for name, _ in self.compare}
        wsum = sum(w for _, w in self.compare)
        cos = sum(per[name] * w for name, w in self.compare) / wsum
        return Score(float(cos), per, computed, total)

    def _score_group(self, cand: Candidate, ref: Reference, group: list[int]) -> tuple[dict, int, int]:
        """(the `_sums` of each batch of `group`, ops run per batch, ops in all) of `cand`, run from `ref`'s
        tensors of those batches (which it holds)."""
        lg = self.lowered(cand)
        dirty = self._dirty(lg, self._signature(lg), ref)
        interp = Interpreter(lg)
        nodes = lg.node_map()
        want = {self._lname(lg, name) for name, _ in self.compare}
        have = ref.values[group[0]]
        todo = self._closure(lg, set(dirty) | (want - set(have)), have)
        sums = {}
        for b in group:
            env = interp.run_from(ref.values[b], todo, keep=want)
            sums[b] = self._sums(lg, nodes, b, env, ref.values[b])
        return sums, len(todo), len(lg.nodes)

    def score(self, cand: Candidate, ref: Reference | None = None) -> Score:
        """Scores one candidate, running only what differs from `ref` (the float reference by default)."""
        return self.evaluate([cand], ref, progress_bar=False)[0]

    def evaluate(self, cands: list[Candidate], ref: Reference | None = None, desc: str = "candidates",
                 progress_bar: bool = True) -> list[Score]:
        """Scores of `cands` in order, on the worker processes when there are several; with several sample
        groups, every candidate on one group after the other (each group's reference tensors in memory once)."""
        ref = ref or self.float_ref
        groups = ref.groups
        bar = progress(len(cands) * len(groups), desc + (f" ({len(groups)} sample groups)" if len(groups) > 1 else
                                                         ""), unit="candidate") \
            if self.show_progress and progress_bar and cands else None
        sums: list[dict] = [{} for _ in cands]
        runs = [(0, 0)] * len(cands)
        try:
            for grp in self._order(groups, ref):
                self._load(ref, grp)
                if self.workers <= 1 or len(cands) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
                    results = (self._score_group(c, ref, grp) for c in cands)
                    pool = None
                else:
                    ctx = multiprocessing.get_context("fork")
                    # forked children inherit the engine and the caches (copy-on-write): nothing large is pickled
                    pool = ctx.Pool(min(self.workers, len(cands)), initializer=_init_worker,
                                    initargs=(self, ref, grp))
                    results = pool.imap(_score_in_worker, cands, chunksize=1)
                try:
                    for k, (s, ran, total) in enumerate(results):
                        sums[k].update(s)
                        runs[k] = (max(runs[k][0], ran), total)
                        if bar:
                            bar.update(1)
                finally:
                    if pool is not None:
                        pool.terminate()
                        pool.join()
        finally:
            if bar:
                bar.close()
        self.evaluations += len(cands)
        return [self._combine(s, ran, total) for s, (ran, total) in zip(sums, runs)]


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):      # not POSIX: assume 8 GiB
        return 8 << 30


_WORKER: tuple | None = None        # (engine, reference, group) of this worker process, set when it starts


def _init_worker(engine: Engine, ref: Reference, group: list[int]) -> None:
    global _WORKER
    _WORKER = (engine, ref, group)


def _score_in_worker(cand: Candidate):
    engine, ref, group = _WORKER
    return engine._score_group(cand, ref, group)
