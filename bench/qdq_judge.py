"""A quality judge for calibration tables that lives outside tpu_cal: ONNX Runtime builds and runs the QDQ model.

Given the float ONNX model and thresholds (a cali_table path, a CaliTable, or a dict op/tensor name -> threshold),
the judge

1. maps our op names to ONNX tensors: `<tensor>_<OpType>` against every node output (`conv2d_450.tmp_0_Conv`),
   graph inputs by their own name, and fused ops (`<final output tensor>_LayerNorm`, `_Gelu`, ...: any
   `<tensor>_<Suffix>` whose `<tensor>` is a node output) to that tensor; names that match nothing are reported;
2. writes the ranges (-th, +th) as an ONNX Runtime calibration cache (TensorsData, the JSON that
   `quantize_static(calibration_cache_path=...)` reads back in ORT >= 1.32) and calls `quantize_static` with no
   data reader, so ORT's own quantizer builds the QDQ model from exactly our ranges: QuantFormat.QDQ, per-channel
   symmetric int8 weights, symmetric int8 activations (ActivationSymmetric / WeightSymmetric), scale = th / 127.
   Tensors ORT wants a range for that our table cannot name (a Pad that our importer fused into the Conv after it,
   a Reshape or Transpose on the way) inherit the range of their producer's input, as TPU-MLIR's layers do; any
   others stay float and are listed. ORT's quantizer gives a single-consumer Clip/Relu input the range of the
   activation's output (TPU-MLIR fuses the activation into the conv the same way); `exact=True` passes every
   range again as a TensorQuantOverride (rmin/rmax), which ORT applies verbatim, so no range is altered;
3. runs the QDQ model and the float model on the evaluation samples and reports the per-sample cosine of the
   outputs (mean and min) and the top-1 agreement. The QDQ model runs with ORT's graph optimizations off, so
   every QuantizeLinear/DequantizeLinear pair executes as written around the float op: an exact simulation of the
   int8 rounding and clipping our ranges cause. With optimizations on, ORT fuses the pairs into its integer
   kernels, and on a CPU without AVX-512 VNNI / AVX-VNNI (u8s8 through pmaddubsw, whose int16 sums saturate)
   those kernels lose far more than the quantization itself: EfficientNet-Lite0 with ORT's own MinMax ranges
   gives cosine 0.98 simulated but 0.62 through the fused kernels on an AVX2-only machine. That would judge
   ORT's kernels, not the thresholds.

TPU-MLIR's own symmetric scheme differs in one point (`module::getScaleAndZeroPoint` in lib/Support/Module.cpp):
a tensor whose calibrated min is >= 0 is held unsigned, uint8 with scale th / 255 and zero point 0, not int8 with
th / 127. `unsigned=True` judges that way: those tensors get a TensorQuantOverride to QUInt8 over [0, th] (our
table's min column, the observed minimum, says which; ORT's anchors are judged on the same tensors), and so does
the input of such a Clip/Relu that nothing else reads, over the activation's range, as TPU-MLIR's fused conv +
ReLU6 writes its result in the activation's type.

Anchors on the same quantizer settings: ORT's own quantize_static with CalibrationMethod.MinMax, Entropy and
Percentile on the same calibration samples, each in a child process (`python bench/qdq_judge.py ort-quantize ...`)
whose wall time and peak RSS (os.wait4's ru_maxrss of that child alone) are measured; and a ceiling: 16-bit
activations (QInt16, ORT's MinMax ranges) with the same int8 per-channel weights.

    python bench/qdq_judge.py judge --table model.cali [--model float.onnx] [--eval DIR] [--exact] [--unsigned]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

INHERIT_OPS = {"Pad", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "MaxPool", "Slice",
               "Split", "Gather", "Expand", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth", "Tile", "Concat"}


# ----------------------------------------------------------------------------- names
@dataclass
class NameMap:
    tensors: dict[str, str] = field(default_factory=dict)   # our name -> ONNX tensor
    fused: dict[str, str] = field(default_factory=dict)     # subset of `tensors` matched by the suffix rule
    unmatched: list[str] = field(default_factory=list)


def _load(model):
    import onnx
    return onnx.load(model, load_external_data=False) if isinstance(model, (str, os.PathLike)) else model


def map_names(model, names) -> NameMap:
    """Our op names -> ONNX tensor names (see the module docstring)."""
    m = _load(model)
    exact: dict[str, str] = {}
    produced: set[str] = set()
    for node in m.graph.node:
        for out in node.output:
            if out:
                exact.setdefault(f"{out}_{node.op_type}", out)
                produced.add(out)
    inputs = {i.name for i in m.graph.input}
    res = NameMap()
    for name in names:
        if name in exact:
            res.tensors[name] = exact[name]
        elif name in inputs or name in produced:
            res.tensors[name] = name
        else:   # fused pattern: the longest `<tensor>_` prefix that is a node output
            cut = [i for i, ch in enumerate(name) if ch == "_" and name[:i] in produced]
            if cut:
                res.tensors[name] = res.fused[name] = name[:max(cut)]
            else:
                res.unmatched.append(name)
    return res


def _table_dict(table) -> dict:
    if isinstance(table, (str, os.PathLike)):
        from tpu_cal.formats.cali_table import read_cali_table
        table = read_cali_table(str(table))
    return table.thresholds if hasattr(table, "thresholds") else table


def nonnegative_of(table) -> set[str]:
    """Names whose table line has a min >= 0 (a table of bare thresholds says nothing: empty)."""
    return {k for k, v in _table_dict(table).items() if isinstance(v, (tuple, list)) and len(v) > 1 and v[1] >= 0}


def thresholds_of(table) -> dict[str, float]:
    """A cali_table path, a CaliTable or a dict name -> threshold (or -> (threshold, min, max))."""
    return {k: float(v[0] if isinstance(v, (tuple, list)) else v) for k, v in _table_dict(table).items()}


# ----------------------------------------------------------------------------- ranges
def ort_tensors_to_calibrate(model_path: str) -> set[str]:
    """The tensors ORT's quantize_static wants a range for (its calibrator's own selection)."""
    from onnxruntime.quantization.calibrate import MinMaxCalibrater
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    with tempfile.TemporaryDirectory(prefix="qdq-judge-") as tmp:
        cal = MinMaxCalibrater(model_path, list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                               augmented_model_path=os.path.join(tmp, "aug.onnx"))
        tensors, _ = cal.select_tensors_to_calibrate(cal.model)
    return set(tensors)


@dataclass
class Ranges:
    ranges: dict[str, tuple[float, float]]      # ONNX tensor -> (rmin, rmax)
    names: NameMap
    inherited: dict[str, str] = field(default_factory=dict)   # tensor -> the tensor it inherited from
    constants: list[str] = field(default_factory=list)         # Constant outputs: their own value's range
    missing: list[str] = field(default_factory=list)           # wanted by ORT, no range: its nodes stay float
    excluded: list[str] = field(default_factory=list)          # ONNX nodes left out of quantization for that
    nonnegative: set[str] = field(default_factory=set)         # tensors whose table min is >= 0 (and inheritors)

    def summary(self) -> str:
        s = (f"{len(self.names.tensors)} names mapped ({len(self.names.fused)} by fused suffix), "
             f"{len(self.names.unmatched)} unmatched, {len(self.inherited)} tensors inherit their input's range, "
             f"{len(self.constants)} constants, {len(self.missing)} without a range ({len(self.excluded)} nodes left float)")
        if self.names.unmatched:
            s += "\n  unmatched: " + ", ".join(self.names.unmatched[:10]) + (" ..." if len(self.names.unmatched) > 10 else "")
        if self.missing:
            s += "\n  without a range: " + ", ".join(self.missing[:10]) + (" ..." if len(self.missing) > 10 else "")
        return s


def ranges_for(model_path: str, table) -> Ranges:
    """Symmetric ranges (-th, +th) per ONNX tensor for the thresholds in `table`, completed for ORT."""
    import onnx
    th = thresholds_of(table)
    names = map_names(model_path, th)
    ranges: dict[str, tuple[float, float]] = {}
    for name, tensor in names.tensors.items():
        ranges[tensor] = (-th[name], th[name])
    nonneg = nonnegative_of(table)
    res = Ranges(ranges, names, nonnegative={t for n, t in names.tensors.items() if n in nonneg})
    wanted = ort_tensors_to_calibrate(model_path)
    m = onnx.load(model_path, load_external_data=False)
    producer = {o: n for n in m.graph.node for o in n.output}
    changed = True
    while changed:     # chains (Pad after Reshape ...) resolve in a few rounds
        changed = False
        for t in sorted(wanted - set(ranges)):
            p = producer.get(t)
            if p is not None and p.op_type in INHERIT_OPS:
                srcs = [i for i in p.input if i in ranges]
                if srcs:
                    lo = min(ranges[s][0] for s in srcs) if p.op_type == "Concat" else ranges[srcs[0]][0]
                    hi = max(ranges[s][1] for s in srcs) if p.op_type == "Concat" else ranges[srcs[0]][1]
                    ranges[t] = (lo, hi)
                    res.inherited[t] = srcs[0]
                    if all(s in res.nonnegative for s in srcs):
                        res.nonnegative.add(t)
                    changed = True
    for t in sorted(wanted - set(ranges)):   # constants (a Pad's fill value): their own value, as ORT's calibration
        p = producer.get(t)
        if p is not None and p.op_type == "Constant":
            v = _constant_value(p)
            if v is not None and v.size and np.issubdtype(v.dtype, np.floating):
                ranges[t] = (min(float(v.min()), 0.0), max(float(v.max()), 0.0))
                res.constants.append(t)
    res.missing = sorted(wanted - set(ranges))
    res.excluded = sorted({n.name for n in m.graph.node
                           if set(res.missing) & (set(n.input) | set(n.output))})
    return res


def _constant_value(node):
    from onnx import numpy_helper
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_floats"):
            return np.asarray(a.f if a.name == "value_float" else list(a.floats), dtype=np.float32)
    return None


def clip_bounds(model_path: str) -> dict[str, float]:
    """ONNX tensor -> upper bound for outputs of Clip nodes with a constant max (ReLU6: 6)."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(model_path, load_external_data=False)
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            v = _constant_value(n)
            if v is not None:
                consts[n.output[0]] = v
    out = {}
    for n in m.graph.node:
        if n.op_type != "Clip":
            continue
        hi = None
        if len(n.input) > 2 and n.input[2] in consts:
            hi = float(np.asarray(consts[n.input[2]]).ravel()[0])
        for a in n.attribute:          # opset < 11
            if a.name == "max":
                hi = float(a.f)
        if hi is not None:
            out[n.output[0]] = hi
    return out


# ----------------------------------------------------------------------------- QDQ model
QUANT_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True}


def _qtype(bits: int):
    from onnxruntime.quantization import QuantType
    return {8: QuantType.QInt8, 16: QuantType.QInt16}[bits]


def write_cache(ranges: dict[str, tuple[float, float]], path: str, method=None) -> None:
    """ranges as ORT's calibration cache (TensorsData JSON), readable by quantize_static(calibration_cache_path)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data
    data = {t: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for t, (lo, hi) in ranges.items()}
    save_tensors_data(TensorsData(method or CalibrationMethod.MinMax, data), path)


def read_cache(path: str) -> dict[str, tuple[float, float]]:
    from onnxruntime.quantization.calibrate import load_tensors_data
    td = load_tensors_data(path)
    return {t: (float(np.asarray(d.range_value[0]).ravel()[0]), float(np.asarray(d.range_value[1]).ravel()[0]))
            for t, d in td.items()}


def quantize_qdq(model_path: str, ranges: dict[str, tuple[float, float]], out_path: str, *, act_bits: int = 8,
                 exact: bool = False, nodes_to_exclude: list[str] | None = None, unsigned=()) -> str:
    """ORT's quantize_static on `ranges` (no calibration run): the QDQ model at out_path. `unsigned`: tensors held
    as uint8 over [0, max |range|] (TPU-MLIR's rule for a non-negative tensor; 8-bit activations only)."""
    import logging
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    logging.getLogger().setLevel(logging.ERROR)      # "please consider pre-processing" warnings
    extra = dict(QUANT_OPTIONS)
    overrides = {}
    if exact:
        overrides = {t: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for t, (lo, hi) in ranges.items()}
    unsigned = {t for t in unsigned if t in ranges and act_bits == 8}
    # ORT gives a single-consumer Clip/Relu input its activation's parameters, as TPU-MLIR fuses the pair and holds
    # the result in the activation's type: an unsigned activation makes its input unsigned over the same range
    for t, act_out in ({} if exact or not unsigned else activation_inputs(model_path)).items():
        unsigned.discard(t)
        if act_out in unsigned:
            unsigned.add(t)
            ranges = {**ranges, t: ranges[act_out]}
    for t in unsigned:
        hi = max(abs(ranges[t][0]), abs(ranges[t][1]))
        overrides[t] = [{"quant_type": QuantType.QUInt8, "symmetric": False, "rmin": np.float32(0.0),
                         "rmax": np.float32(hi)}]
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    fd, cache = tempfile.mkstemp(prefix="qdq-judge-", suffix=".json")
    os.close(fd)
    os.unlink(cache)
    try:
        write_cache(ranges, cache)
        quantize_static(model_path, out_path, calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=_qtype(act_bits), weight_type=_qtype(8),
                        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=cache, extra_options=extra,
                        nodes_to_exclude=list(nodes_to_exclude or []))
    finally:
        if os.path.exists(cache):
            os.unlink(cache)
    return out_path


def activation_inputs(model_path: str) -> dict[str, str]:
    """Tensor -> the Clip or Relu output, for tensors that activation alone reads: ORT's QDQ quantizer gives them
    that activation's quantization parameters (as TPU-MLIR fuses the pair)."""
    import onnx
    m = onnx.load(model_path, load_external_data=False)
    readers: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in m.graph.output}
    return {t: rs[0].output[0] for t, rs in readers.items() if len(rs) == 1 and rs[0].op_type in ("Clip", "Relu")
            and rs[0].input[0] == t and t not in outputs}


def judge_ranges(model_path: str, ranges: dict[str, tuple[float, float]], x: np.ndarray, ref: np.ndarray, *,
                 unsigned=()) -> Quality:
    """Quality of the QDQ model ORT builds from `ranges` (ONNX tensor -> (rmin, rmax), an anchor's cache), the
    tensors in `unsigned` held as uint8. (ORT's symmetric calibrators store (-absmax, absmax), so an anchor's own
    ranges no longer say which tensors are non-negative: take that from a table of the same samples.)"""
    with tempfile.TemporaryDirectory(prefix="qdq-judge-") as tmp:
        q = quantize_qdq(model_path, ranges, os.path.join(tmp, "qdq.onnx"), unsigned=unsigned)
        return compare(ref, run_model(q, x))


def activation_scales(qdq_path: str) -> dict[str, float]:
    """Tensor -> scale of the QuantizeLinear that quantizes it (activations only)."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(qdq_path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits:
            s = inits[n.input[1]]
            if s.size == 1:
                out[n.input[0]] = float(s.ravel()[0])
    return out


# ----------------------------------------------------------------------------- quality
@dataclass
class Quality:
    mean_cos: float
    min_cos: float
    top1: float          # fraction of samples whose arg-max matches the float model's

    def __str__(self):
        return f"cos mean {self.mean_cos:.5f} min {self.min_cos:.5f} top-1 {self.top1 * 100:.1f}%"


def _session(path: str, simulate: bool = True):
    """simulate: graph optimizations off, so QuantizeLinear/DequantizeLinear run as written around float ops
    (exact fake-quant) instead of being fused into ORT's integer kernels (see the module docstring)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if simulate:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def run_model(path: str, x: np.ndarray, batch: int = 20, simulate: bool = True) -> np.ndarray:
    s = _session(path, simulate)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def compare(ref: np.ndarray, out: np.ndarray) -> Quality:
    r = ref.reshape(len(ref), -1).astype(np.float64)
    o = out.reshape(len(out), -1).astype(np.float64)
    cos = (r * o).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1) + 1e-30)
    return Quality(float(cos.mean()), float(cos.min()), float((r.argmax(1) == o.argmax(1)).mean()))


def judge(model_path: str, table, x: np.ndarray, *, ref: np.ndarray | None = None, exact: bool = False,
          act_bits: int = 8, keep: str | None = None, unsigned: bool = False) -> tuple[Quality, Ranges]:
    """Quality of the QDQ model built from `table` on samples x (ref: the float outputs, computed if None);
    unsigned: TPU-MLIR's uint8 for the tensors whose table min is >= 0."""
    r = ranges_for(model_path, table)
    with tempfile.TemporaryDirectory(prefix="qdq-judge-") as tmp:
        q = quantize_qdq(model_path, r.ranges, keep or os.path.join(tmp, "qdq.onnx"), act_bits=act_bits, exact=exact,
                         nodes_to_exclude=r.excluded, unsigned=r.nonnegative if unsigned else ())
        out = run_model(q, x)
    if ref is None:
        ref = run_model(model_path, x)
    return compare(ref, out), r


# ----------------------------------------------------------------------------- ORT anchors (child processes)
ORT_METHODS = ("MinMax", "Entropy", "Percentile", "Entropy2048")


@dataclass
class Measured:
    rc: int
    wall_s: float          # the child process, start to exit
    peak_rss_mb: float     # ru_maxrss of that child (os.wait4)
    stdout: str
    stderr: str
    cpu_s: float = float("nan")    # user + system time of the child and the descendants it waited for


# A child's ru_maxrss starts at its parent's RSS at fork (Linux keeps the high-water mark of the mm an exec
# replaces), so a large parent (this benchmark, after loading models) would inflate every reading. The measured
# command is therefore started by this small launcher, a fresh interpreter with no imports beyond the standard
# library, which reports the wall time and os.wait4's ru_maxrss of its own child on its last stdout line.
_LAUNCHER = r"""
import json, os, subprocess, sys, time
timeout = float(sys.argv[1]) if sys.argv[1] != "none" else None
t = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
deadline = None if timeout is None else t + timeout
killed = False
while True:
    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
    if pid:
        break
    if deadline is not None and time.perf_counter() > deadline:
        p.kill()
        killed = True
        pid, status, ru = os.wait4(p.pid, 0)
        break
    time.sleep(0.02)
wall = time.perf_counter() - t
rc = os.waitstatus_to_exitcode(status)
sys.stdout.flush()
print("\n@@measured " + json.dumps({"rc": 124 if killed else rc, "wall": wall, "maxrss_kb": ru.ru_maxrss,
                                   "cpu": ru.ru_utime + ru.ru_stime}))
"""


def run_measured(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> Measured:
    """Runs cmd as a child of a small launcher: its own wall time and peak RSS (ru_maxrss of that process alone)."""
    launcher = [sys.executable, "-S", "-c", _LAUNCHER, "none" if timeout is None else str(timeout)] + list(cmd)
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        r = subprocess.run(launcher, stdout=fo, stderr=fe, env=env)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read().decode(errors="replace"), fe.read().decode(errors="replace")
    head, sep, tail = out.rpartition("\n@@measured ")
    if not sep:
        return Measured(r.returncode or 1, float("nan"), float("nan"), out, err + "\n(launcher failed)")
    info = json.loads(tail.strip().splitlines()[0])
    return Measured(info["rc"], info["wall"], info["maxrss_kb"] / 1024.0, head, err, info.get("cpu", float("nan")))


@dataclass
class Anchor:
    method: str
    ok: bool
    time_s: float = float("nan")    # quantize_static inside the child (calibration + QDQ rewrite)
    wall_s: float = float("nan")    # the whole child process
    peak_rss_mb: float = float("nan")
    qdq_path: str = ""
    cache_path: str = ""
    error: str = ""
    quality: "Quality | None" = None    # filled in by the caller
    quality_unsigned: "Quality | None" = None   # its ranges judged with TPU-MLIR's uint8 rule (caller)


def ort_anchor(model_path: str, dataset: str, method: str, workdir: str, timeout: float | None = None) -> Anchor:
    """ORT's quantize_static with `method` on the .npy samples of `dataset`, in a measured child process."""
    os.makedirs(workdir, exist_ok=True)
    qdq = os.path.join(workdir, f"ort_{method}.onnx")
    cache = os.path.join(workdir, f"ort_{method}.json")
    for f in (qdq, cache):
        if os.path.exists(f):
            os.unlink(f)
    cmd = [sys.executable, os.path.abspath(__file__), "ort-quantize", "--model", model_path, "--dataset", dataset,
           "--method", method, "--out", qdq, "--cache", cache]
    m = run_measured(cmd, timeout=timeout)
    if m.rc != 0:
        tail = (m.stderr.strip().splitlines() or [f"exit {m.rc}"])[-1]
        return Anchor(method, False, wall_s=m.wall_s, peak_rss_mb=m.peak_rss_mb, error=f"rc {m.rc}: {tail}")
    info = json.loads(m.stdout.strip().splitlines()[-1])
    return Anchor(method, True, info["time_s"], m.wall_s, m.peak_rss_mb, qdq, cache)


class NpyReader:
    """CalibrationDataReader over the .npy files of a folder, one sample per get_next (ORT's usual pattern)."""

    def __init__(self, folder: str, input_name: str):
        self.files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".npy"))
        self.input_name, self.i = input_name, 0

        self.end = len(self.files)

    def get_next(self):
        if self.i >= self.end:
            return None
        self.i += 1
        return {self.input_name: np.load(self.files[self.i - 1])}

    def __len__(self):
        return len(self.files)

    def set_range(self, start_index: int, end_index: int):
        self.i, self.end = start_index, min(end_index, len(self.files))


def _ort_quantize_main(a) -> int:
    """Child: ORT's full quantize_static (its own calibration) -> QDQ model and ORT's ranges (cache JSON)."""
    import logging
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static
    logging.getLogger().setLevel(logging.ERROR)
    CalibrationDataReader.register(NpyReader)
    m = onnx.load(a.model, load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    inp = [i.name for i in m.graph.input if i.name not in init][0]
    t = time.perf_counter()
    method, reader = a.method, NpyReader(a.dataset, inp)
    if method == "Entropy2048":
        # quantize_static passes no bin counts to its calibrator: Entropy there runs with 128 bins and 128
        # quantized bins, whose only candidate is the full range (= MinMax). This is ORT's Entropy calibrator
        # with 2048 bins (TensorRT's and TPU-MLIR's count), fed 10 samples at a time so that its stored
        # intermediate outputs stay small; its ranges then go through quantize_static like every other table.
        from pathlib import Path

        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
        with tempfile.TemporaryDirectory(prefix="ort-entropy-") as tmp:
            cal = create_calibrator(Path(a.model), list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                    augmented_model_path=os.path.join(tmp, "aug.onnx"),
                                    calibrate_method=CalibrationMethod.Entropy,
                                    extra_options={"num_bins": 2048, "num_quantized_bins": 128})
            for start in range(0, len(reader), 10):
                reader.set_range(start, start + 10)
                cal.collect_data(reader)
            save_tensors_data(cal.compute_data(), a.cache)
            del cal
        method, reader = "Entropy", None
    quantize_static(a.model, a.out, calibration_data_reader=reader, quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=_qtype(8), weight_type=_qtype(8),
                    calibrate_method=getattr(CalibrationMethod, method), calibration_cache_path=a.cache,
                    extra_options=dict(QUANT_OPTIONS))
    dt = time.perf_counter() - t
    print(json.dumps({"time_s": dt}))
    return 0


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("judge", help="QDQ-judge a cali_table on the evaluation samples")
    j.add_argument("--table", required=True)
    j.add_argument("--model", help="float ONNX model (default: EfficientNet-Lite0 from the zoo)")
    j.add_argument("--eval", help="folder of .npy evaluation samples (default: bench/common.py's set)")
    j.add_argument("--exact", action="store_true", help="apply every range verbatim (TensorQuantOverrides)")
    j.add_argument("--keep", help="write the QDQ model here")
    j.add_argument("--unsigned", action="store_true", help="TPU-MLIR's uint8 for tensors whose table min is >= 0")
    q = sub.add_parser("ort-quantize", help="(child) ORT quantize_static with its own calibration")
    q.add_argument("--model", required=True)
    q.add_argument("--dataset", required=True)
    q.add_argument("--method", choices=ORT_METHODS, required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--cache", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "ort-quantize":
        return _ort_quantize_main(a)
    sys.path.insert(0, HERE)
    import common
    model = a.model
    if model is None:
        from tpu_cal.zoo.efficientnet import efficientnet_lite0
        model = efficientnet_lite0()
    x = common.load_folder(a.eval or common.evaluation_set())
    quality, r = judge(model, a.table, x, exact=a.exact, keep=a.keep, unsigned=a.unsigned)
    print(r.summary())
    print(f"{a.table}: {quality}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
