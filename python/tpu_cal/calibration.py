"""Calibration: run samples through the float graph, stream statistics, compute thresholds, auto-tune them.

The pieces are listeners on the interpreter (statistics: `stats.StatsCollector`; auto-tune: `AutoTuner`), so the
interpreter itself is never forked. `calibrate_graph` is the library entry point used by the `tpu-cal calibrate`
command and the `top-calibrate` pass; results land on the graph's ops as attributes (`cali.threshold`,
`cali.min`, `cali.max`) and in a cali_table.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from . import thresholds as thr
from .dataset import Dataset, Sample
from .errors import UserError
from .graph import Graph, Node
from .interp.core import KERNELS, RANGE_KEY, Interpreter, Listener, OutputRange
from .stats import StatsCollector, inherits_inf

ATTR_TH, ATTR_MIN, ATTR_MAX = "cali.threshold", "cali.min", "cali.max"
TUNE_CANDIDATES = 20
# methods the seeds pair with auto-tune (kld+auto-tune, aciq+auto-tune); the others are final as computed
TUNED_METHODS = ("kl", "aciq_gauss", "aciq_laplace")


@dataclass
class CalibrationResult:
    table: dict[str, tuple[float, float, float]]          # op name -> (threshold, min, max)
    stats: dict                                            # op name -> TensorStats
    op_types: dict[str, str]
    tuned: dict[str, tuple[float, float]] = field(default_factory=dict)   # op -> (before, after)
    samples: int = 0
    tune_samples: int = 0
    infinite: dict[str, int] = field(default_factory=dict)   # op -> infinities passed on from a mask
    # layer -> per-channel error bias correction subtracted from its bias (calibrate --bc)
    bias_corrections: dict = field(default_factory=dict)


def progress(total: int, desc: str, unit: str = "sample"):
    """A progress bar on stderr (tqdm), quiet when stderr is not a terminal unless forced by the caller."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                mininterval=0.5, disable=None)          # None: off when stderr is not a terminal


class _NonFinite(Exception):
    def __init__(self, node: Node, kind: str):
        self.node, self.kind = node, kind


class _FindNonFinite(Listener):
    """Stops a run at the first op whose floating-point output holds NaN, or Inf that none of its operands held
    (an attention mask's -inf passes through the ops that add it; see `stats.inherits_inf`)."""

    def after_op(self, node: Node, inputs: list, output):
        a = output if isinstance(output, np.ndarray) else None
        if node.op in ("top.weight", "top.none") or a is None or a.dtype.kind != "f":
            return None
        if not np.isfinite(a).all():
            if np.isnan(a).any():
                raise _NonFinite(node, "NaN")
            if not inherits_inf(inputs):
                raise _NonFinite(node, "Inf")
        return None


def _name_nonfinite_sample(graph: Graph, ds: Dataset, batch: list[Sample]) -> UserError | None:
    """Re-runs a failed batch one sample at a time; an error naming the op and the sample's file, or None when
    no sample produces NaN/Inf on its own."""
    finder = Interpreter(graph, [_FindNonFinite()])
    for s in batch:
        try:
            with np.errstate(all="ignore"):
                finder.run(ds.load(s))
        except _NonFinite as e:
            where = s.where if s.files == [s.where] else f"{s.where} ({', '.join(s.files)})"
            return UserError(f"op '{e.node.name}' ({e.node.op}) produced {e.kind} on sample {where}; check the "
                             f"calibration data and the model")
    return None


def run_batches(interp: Interpreter, ds: Dataset, samples: list[Sample], batch_size: int, desc: str,
                on_batch=None, graph: Graph | None = None):
    """Runs `samples` through `interp` in batches. A NaN/Inf error is re-checked sample by sample on `graph`
    (default: the interpreter's), so that it names the user's op and sample."""
    bar = progress(len(samples), desc)
    try:
        for first, feeds in ds.batches(samples, batch_size):
            n = next(iter(feeds.values())).shape[0] // max(1, interp._declared_batch[interp.graph.inputs[0]])
            for ls in interp.listeners:
                if hasattr(ls, "set_samples"):
                    ls.set_samples(first, n)
            try:
                # NaN/Inf are caught by the statistics (and named below), not printed as numpy warnings
                with np.errstate(all="ignore"):
                    interp.run(feeds)
            except (UserError, _NonFinite):
                named = _name_nonfinite_sample(graph or interp.graph, ds, samples[first:first + n])
                if named is None:
                    raise
                raise named from None
            if on_batch:
                on_batch(first, n)
            bar.update(n)
    finally:
        bar.close()


# ----------------------------------------------------------------------------- fake quantization helpers
def fake_quant(x: np.ndarray, th: float, bits: int = 8) -> np.ndarray:
    """Symmetric signed fake quantization: round(x / (th/qmax)) clipped to [-qmax-1, qmax], times the scale."""
    qmax = 2 ** (bits - 1) - 1
    scale = np.float32(th / qmax)
    q = np.clip(np.rint(x / scale), -qmax - 1, qmax)
    return (q * scale).astype(np.float32)


def fake_quant_per_channel(w: np.ndarray, axis: int, bits: int = 8) -> np.ndarray:
    """Per-channel symmetric fake quantization of a weight along `axis` (zero channels stay zero)."""
    qmax = 2 ** (bits - 1) - 1
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red, keepdims=True) if red else np.abs(w)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    return (np.clip(np.rint(w / scale), -qmax - 1, qmax) * scale).astype(np.float32)


# the weight operand of each op with weights, and its output-channel axis (filters are [Cout, Cin/g, k...],
# deconv filters [Cin, Cout/g, k...], matmul right-hand weights [..., K, N])
WEIGHT_OPERANDS = {"top.conv": (1, 0), "top.deconv": (1, 1), "top.matmul": (1, -1)}


def quantized_weights(graph: Graph) -> dict[str, np.ndarray]:
    """top.weight name -> pseudo-quantized array, for the weights that ops quantize per channel."""
    nodes = graph.node_map()
    out = {}
    for n in graph.nodes:
        spec = WEIGHT_OPERANDS.get(n.op)
        if spec is None or len(n.inputs) <= spec[0] or n.inputs[spec[0]] is None:
            continue
        src = nodes[n.inputs[spec[0]]]
        if src.op == "top.weight" and np.issubdtype(graph.weights[src.attrs["name"]].dtype, np.floating):
            w = graph.weights[src.attrs["name"]]
            out[src.name] = fake_quant_per_channel(w, spec[1] % w.ndim)
    return out


class AutoTuner(Listener):
    """Tunes each activation's threshold for each op that reads it (seeds: TPU-MLIR's auto-tune).

    At every op, for each activation input t with a threshold: TUNE_CANDIDATES candidates spread evenly from the
    initial threshold to t's abs-max; the input is fake-quantized with each, the op re-run with per-channel
    pseudo-quantized weights and its other inputs in float, and the squared Euclidean distance to the float
    output summed over the tune samples. The best candidate wins for that consumer; a tensor read by several
    ops keeps the largest of their choices. Distances accumulate across batches, so memory does not grow.
    Tensors in `fixed` keep their threshold and cost nothing.
    """

    def __init__(self, graph: Graph, table: dict, absmax: dict[str, float], n_candidates: int = TUNE_CANDIDATES,
                 fixed=()):
        self.nodes = graph.node_map()
        self.qweights = quantized_weights(graph)
        self.cands: dict[str, np.ndarray] = {}
        for name, (th, _, _) in table.items():
            amax = absmax.get(name, th)
            self.cands[name] = (np.linspace(th, amax, n_candidates) if amax > th * (1 + 1e-6) and name not in fixed
                                else np.array([th]))
        self.dist: dict[tuple[str, int], np.ndarray] = {}     # (consumer, input index) -> summed distances

    def after_op(self, node: Node, inputs: list, output):
        if node.op in ("top.input", "top.weight", "top.none") or node.op not in KERNELS:
            return None
        if not (isinstance(output, np.ndarray) and np.issubdtype(output.dtype, np.floating)):
            return None
        base = [self.qweights.get(src, x) if src is not None else None for src, x in zip(node.inputs, inputs)]
        ok = np.isfinite(output)
        finite = None if ok.all() else ok.ravel()
        kernel = KERNELS[node.op]
        for i, src in enumerate(node.inputs):
            if src is None or src not in self.cands or src in self.qweights:
                continue
            cands = self.cands[src]
            if len(cands) == 1:
                continue
            acc = self.dist.setdefault((node.name, i), np.zeros(len(cands)))
            x = inputs[i]
            for k, c in enumerate(cands):
                args = list(base)
                args[i] = fake_quant(x, c)
                y = kernel(node, *args, shape=output.shape)
                d = (y - output).astype(np.float32).ravel()
                if finite is not None:              # masked positions (-inf in both) do not count
                    d = d[finite]
                acc[k] += float(d @ d)
        return None

    def tuned(self) -> dict[str, float]:
        """Tensor -> tuned threshold (max over its consumers)."""
        best: dict[str, float] = {}
        for (consumer, i), d in self.dist.items():
            src = self.nodes[consumer].inputs[i]
            th = float(self.cands[src][int(np.argmin(d))])
            best[src] = max(best.get(src, 0.0), th)
        return best


@dataclass
class CalibrationConfig:
    method: str = "kl"
    input_num: int = 0            # 0 = every sample of the dataset
    tune_num: int = 10
    histogram_bin_num: int = 2048
    batch_size: int = 16
    kurtosis: bool = False        # third and fourth moments too (--kurtosis_analysis): 40 % more statistics time
    mean_std: bool = True         # mean and std (ACIQ, --print_stats); without them statistics take 40 % less
    # also collect statistics of the conv/matmul outputs that lowering fuses with the ReLU/ReLU6 reading them
    # (--print_stats shows them, bias correction measures each conv unfused); off, the run skips them (see
    # `fused_view`), which halves the statistics on a CNN. Their table entries are the activation's either way.
    preactivation_stats: bool = False


def _activation_pairs(graph: Graph) -> dict[str, str]:
    from .lowering import activation_pairs     # lowering imports this module
    return activation_pairs(graph)


def fused_view(graph: Graph, measured=()) -> tuple[Graph, dict[str, str]]:
    """The graph with each `lowering.activation_pairs` pair run as one op: the conv/deconv/matmul with its ReLU or
    ReLU6 applied inside (`do_relu`, `relu_limit`, as lowering fuses it), under the activation's name and at its
    place; and the pairs (activation -> MAC op). The activation's values are bit for bit those of the two ops.

    Calibration needs no statistics of the MAC's own output, and its table entry is the activation's
    (`share_fused`): lowering never holds it in int8 (the accumulator is requantized straight to the activation's
    type), TPU-MLIR's table has no such tensor (its importer fuses the pair under the activation's name), and
    where a qtable splits a pair, quantizing the activation's input with the activation's own threshold changes
    nothing the activation lets through.

    A fused ReLU6 named in `measured` carries an `OutputRange`: its kernel measures each piece of the output in
    cache, and a range-only statistic (a bounded tensor's) takes that instead of a pass over memory."""
    from .lowering import ATTR_DO_RELU, ATTR_RELU_LIMIT     # lowering imports this module
    pairs = _activation_pairs(graph)
    if not pairs:
        return graph, pairs
    by_name = graph.node_map()
    macs = set(pairs.values())
    nodes = []
    for n in graph.nodes:
        if n.name in macs:
            continue
        if n.name in pairs:
            mac = by_name[pairs[n.name]]
            extra = dict(mac.extra, **{ATTR_DO_RELU: True,
                                       ATTR_RELU_LIMIT: float(n.attrs["max"]) if n.op == "top.clip" else -1.0})
            if n.op == "top.clip" and n.name in measured:
                extra[RANGE_KEY] = OutputRange()
            n = Node(mac.op, n.name, list(mac.inputs), dict(mac.attrs), n.shape, n.dtype, extra)
        nodes.append(n)
    return Graph(graph.name, list(graph.inputs), list(graph.outputs), nodes, graph.weights, dict(graph.attrs)), pairs


def calibrate_graph(graph: Graph, ds: Dataset, cfg: CalibrationConfig, tune_ds: Dataset | None = None) \
        -> CalibrationResult:
    method = thr.canonical_method(cfg.method)
    bins = cfg.histogram_bin_num
    if bins < 16 or bins & (bins - 1):
        raise UserError(f"--histogram_bin_num must be a power of two >= 16, got {bins}")
    samples = ds.take(cfg.input_num)
    # bounded outputs (sigmoid, ReLU6, ...) keep their observed range whatever the method: no histogram there
    bounded = thr.bounded_tensors(graph)
    col = StatsCollector(bins=bins, moments=cfg.kurtosis,
                         mean_std=cfg.mean_std or method in ("aciq_gauss", "aciq_laplace"), no_histogram=bounded)
    view, pairs = (graph, {}) if cfg.preactivation_stats else fused_view(graph, measured=bounded)
    run_batches(Interpreter(view, [col]), ds, samples, cfg.batch_size, f"calibrate ({method})", graph=graph)
    nodes = graph.node_map()
    for act in pairs:               # the fused op's statistics are the activation's: so is its threshold rule
        if act in col.op_types:
            col.op_types[act] = nodes[act].op
    table = method_table(graph, col.stats, col.op_types, method)
    result = CalibrationResult(table, col.stats, col.op_types, samples=len(samples), infinite=dict(col.infinite))
    if cfg.tune_num > 0 and method in TUNED_METHODS:
        table, result.tuned, result.tune_samples = tune_table(graph, table, col.stats, tune_ds or ds, cfg)
        result.table = table
    return result


def method_table(graph: Graph, stats: dict, op_types: dict, method: str, bits: int = 8, shared: bool = True) \
        -> dict[str, tuple[float, float, float]]:
    """The table of one threshold method from collected statistics (before auto-tune). shared=False keeps the
    fused MAC ops' own entries where they have statistics (bias correction measures them unfused)."""
    table = thr.compute_table(stats, method, op_types=op_types, bits=bits, bounded=thr.bounded_tensors(graph))
    # graph inputs and outputs keep their full range: clipping raw input data loses information no later layer
    # recovers, and clipping an output changes the answer itself (the top logit, a box coordinate)
    for name in list(graph.inputs) + list(graph.outputs):
        st = stats.get(name)
        if st is not None and name in table and st.absmax > 0:
            table[name] = (float(st.absmax), table[name][1], table[name][2])
    return share_fused(graph, table) if shared else table


def share_fused(graph: Graph, table: dict) -> dict:
    """`table` in graph order, each MAC op that lowering fuses with its ReLU/ReLU6 given the activation's entry
    (`fused_view` says why), whether or not it had statistics of its own: the table does not depend on what
    else was collected."""
    table = dict(table)
    for act, mac in _activation_pairs(graph).items():
        if act in table:
            table[mac] = table[act]
    return {n.name: table[n.name] for n in graph.nodes if n.name in table}


def tune_table(graph: Graph, table: dict, stats: dict, tsrc: Dataset, cfg: CalibrationConfig):
    """Auto-tune of `table` on cfg.tune_num samples of `tsrc`: (new table, {op: (before, after)}, samples)."""
    table = dict(table)
    tuned = {}
    tune_samples = tsrc.take(cfg.tune_num, "--tune_num")
    absmax = {k: float(st.absmax) for k, st in stats.items()}
    # the fused MAC ops keep their activation's entry (share_fused): never held in int8, so nothing to tune
    tuner = AutoTuner(graph, table, absmax, fixed=set(_activation_pairs(graph).values()))
    # a --tune_list sample was never seen by the statistics: NaN/Inf there must stop the run, not tune
    run_batches(Interpreter(graph, [_FindNonFinite(), tuner]), tsrc, tune_samples, cfg.batch_size, "auto-tune")
    for name, th in tuner.tuned().items():
        before = table[name][0]
        table[name] = (th, table[name][1], table[name][2])
        tuned[name] = (before, th)
    return share_fused(graph, table), tuned, len(tune_samples)


def attach(graph: Graph, table: dict[str, tuple[float, float, float]], method: str | None = None) -> int:
    """Puts thresholds on the graph's ops as attributes; returns how many ops got one."""
    n = 0
    for node in graph.nodes:
        e = table.get(node.name)
        if e is None or node.op in ("top.weight", "top.none"):
            continue
        node.extra[ATTR_TH], node.extra[ATTR_MIN], node.extra[ATTR_MAX] = (float(v) for v in e)
        n += 1
    graph.attrs["state"] = "calibrated"
    if method:
        graph.attrs["cali_method"] = method
    return n
