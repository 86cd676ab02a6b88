"""Calibration benchmark on EfficientNet-Lite0: speed, memory and QDQ-judged quality of `tpu-cal calibrate`.

    python bench/calibrate.py [--cal 170] [--eval 40] [--methods kl,kl+tune,...] [--no-rss] [--no-anchors]
                              [--no-write]

(a) wall time and peak RSS of `tpu-cal calibrate` (a child process; KLD, --tune_num 0) on the calibration samples,
    next to ONNX Runtime's quantize_static with MinMax on the same samples (also a child) and ORT's plain float
    inference over them; ratios printed.
(b) peak RSS of the same calibration at 50 and at 500 samples (target: within 10 %: statistics are streamed).
(c) for each of our methods the quality of the QDQ model that ONNX Runtime builds from our cali_table
    (bench/qdq_judge.py: per-sample output cosine against the float model on held-out photos, mean and min, and
    top-1 agreement), next to ORT's own MinMax / Entropy / Percentile calibration with the same quantizer settings
    and the 16-bit-activation ceiling.

Samples: bench/common.py (real photos; the evaluation photos are never used for calibration). A method that fails
is reported as failed, not a crash. Results are printed and written as the "Calibration" section of
bench/RESULTS.md (other sections are left alone).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import qdq_judge as J  # noqa: E402

# method key -> (cali_method, tune_num)
METHODS = {
    "kl": ("use_kl", 0),
    "kl+tune": ("use_kl", 10),
    "mse": ("use_mse", 0),
    "max": ("use_max", 0),
    "percentile9999": ("use_percentile9999", 0),
    "aciq_gauss": ("use_aciq_gauss", 0),
    "aciq_laplace": ("use_aciq_laplace", 0),
    "torch_observer": ("use_torch_observer_for_cali", 0),
}
TIMEOUT = 3600


def tpu_cal_exe() -> list[str]:
    exe = shutil.which("tpu-cal", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-m", "tpu_cal.tools.tpu_cal_main"]


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    import onnxruntime
    return (f"{cpu}, {os.cpu_count()} cores, {mem}; {platform.system()} {platform.release()}; Python "
            f"{platform.python_version()}, numpy {np.__version__}, onnxruntime {onnxruntime.__version__}")


# ----------------------------------------------------------------------------- set-up
def model_and_mlir(work: str) -> tuple[str, str]:
    """The float ONNX model and our top-dialect import of it (batch 1; the interpreter runs any batch)."""
    from tpu_cal.zoo.efficientnet import efficientnet_lite0
    onnx_path = efficientnet_lite0()
    mlir = os.path.join(work, "efficientnet_lite0.mlir")
    if not os.path.exists(mlir) or os.path.getmtime(mlir) < os.path.getmtime(onnx_path):
        cmd = tpu_cal_exe() + ["transform", "--model_name", "efficientnet_lite0", "--model_def", onnx_path,
                               "--mlir", mlir, "--input_shapes", "[[1,3,224,224]]", "--mean", "127,127,127",
                               "--scale", ",".join([str(1 / 128)] * 3), "--pixel_format", "rgb",
                               "--resize_dims", "256,256"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"tpu-cal transform failed:\n{r.stdout}\n{r.stderr}")
    return onnx_path, mlir


# ----------------------------------------------------------------------------- our calibration
@dataclass
class Ours:
    key: str
    ok: bool
    table: str = ""
    wall_s: float = float("nan")       # child process
    time_s: float = float("nan")       # as tpu-cal reports it ("in 12.3s")
    peak_rss_mb: float = float("nan")
    error: str = ""
    quality: J.Quality | None = None
    quality_exact: J.Quality | None = None
    quality_unsigned: J.Quality | None = None  # TPU-MLIR's uint8 for the tensors whose min is >= 0
    quality_clip: J.Quality | None = None     # the same table with every Clip output raised to its bound
    clipped: int = 0                           # Clip outputs whose threshold is below the Clip's bound
    out_ratio: float = float("nan")            # graph output's threshold / its abs-max on the calibration set
    names: str = ""


def run_ours(key: str, mlir: str, dataset: str, out: str, cali_method: str, tune_num: int) -> Ours:
    if os.path.exists(out):
        os.unlink(out)
    cmd = tpu_cal_exe() + ["calibrate", mlir, "--dataset", dataset, "--input_num", "0", "--tune_num", str(tune_num),
                           "--cali_method", cali_method, "-o", out]
    m = J.run_measured(cmd, timeout=TIMEOUT)
    if m.rc != 0 or not os.path.exists(out):
        lines = [ln for ln in (m.stderr + "\n" + m.stdout).splitlines() if ln.strip() and "%|" not in ln]
        return Ours(key, False, wall_s=m.wall_s, peak_rss_mb=m.peak_rss_mb,
                    error=f"rc {m.rc}: {lines[-1] if lines else 'no output'}"[:300])
    t = re.search(r" in ([0-9.]+)s", m.stdout)
    return Ours(key, True, out, m.wall_s, float(t.group(1)) if t else float("nan"), m.peak_rss_mb)


def ort_float_time(onnx_path: str, dataset: str, batch: int, repeat: int = 3) -> float:
    """Fastest wall time of ORT float inference over all samples of the folder (session made beforehand)."""
    x = common.load_folder(dataset)
    s = J._session(onnx_path, simulate=False)
    name = s.get_inputs()[0].name
    s.run(None, {name: x[:batch]})
    times = []
    for _ in range(repeat):
        time.sleep(0.3)
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            s.run(None, {name: x[i:i + batch]})
        times.append(time.perf_counter() - t)
    return min(times)


# ----------------------------------------------------------------------------- report
def fmt(v: float, spec: str = ".2f") -> str:
    return "n/a" if v is None or v != v else format(v, spec)


def q_cells(q: J.Quality | None) -> list[str]:
    if q is None:
        return ["failed", "", ""]
    return [f"{q.mean_cos:.5f}", f"{q.min_cos:.5f}", f"{q.top1 * 100:.1f}"]


def md_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def text_table(head: list[str], rows: list[list[str]]) -> str:
    w = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    line = lambda r: "  ".join(str(c).ljust(n) for c, n in zip(r, w))  # noqa: E731
    return "\n".join([line(head), line(["-" * n for n in w])] + [line(r) for r in rows])


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cal", type=int, default=170, help="calibration samples")
    ap.add_argument("--eval", type=int, default=40, help="evaluation samples (held-out photos)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    ap.add_argument("--no-rss", action="store_true", help="skip (b), the 50 / 500 sample memory runs")
    ap.add_argument("--no-anchors", action="store_true", help="ORT MinMax only: skip Entropy, Percentile and "
                                                                  "Entropy2048 (slow; the first two need ~14 GB)")
    ap.add_argument("--repeat", type=int, default=5, help="speed runs of ours (KLD) and ORT MinMax, alternating")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    a = ap.parse_args(argv)
    keys = [k.strip() for k in a.methods.split(",") if k.strip()]
    bad = [k for k in keys if k not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")

    from tpu_cal.zoo import cache_dir
    work = cache_dir("bench", "calibrate")
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    onnx_path, mlir = model_and_mlir(work)
    cal = common.calibration_set(a.cal)
    ev = common.evaluation_set(a.eval)
    x_eval = common.load_folder(ev)
    ref = J.run_model(onnx_path, x_eval, simulate=False)
    print(f"model {onnx_path}\ncalibration {cal} ({a.cal} samples)\nevaluation {ev} ({a.eval} samples)")

    # (c) ours, every method (kl doubles as (a))
    bounds = J.clip_bounds(onnx_path)
    import onnx
    out_absmax = float(np.abs(J.run_model(onnx_path, common.load_folder(cal), simulate=False)).max())
    graph_outputs = {o.name: out_absmax for o in onnx.load(onnx_path, load_external_data=False).graph.output}
    ours: dict[str, Ours] = {}
    for k in keys:
        meth, tune = METHODS[k]
        print(f"[ours] {k} ...", flush=True)
        o = run_ours(k, mlir, cal, os.path.join(work, f"ours_{k}.cali"), meth, tune)
        if o.ok:
            try:
                o.quality, r = J.judge(onnx_path, o.table, x_eval, ref=ref)
                o.quality_exact, _ = J.judge(onnx_path, o.table, x_eval, ref=ref, exact=True)
                o.quality_unsigned, _ = J.judge(onnx_path, o.table, x_eval, ref=ref, unsigned=True)
                th = J.thresholds_of(o.table)
                low = {n: bounds[t] for n, t in r.names.tensors.items()
                       if t in bounds and th[n] < bounds[t] * (1 - 1e-6)}
                o.clipped = len(low)
                o.quality_clip = J.judge(onnx_path, {**th, **low}, x_eval, ref=ref)[0] if low else o.quality
                outs = [n for n, t in r.names.tensors.items() if t in graph_outputs]
                if outs and outs[0] in th:
                    o.out_ratio = th[outs[0]] / graph_outputs[r.names.tensors[outs[0]]]
                o.names = f"{len(r.names.tensors)} mapped, {len(r.names.unmatched)} unmatched"
                if r.names.unmatched or r.missing:
                    print("  " + r.summary())
            except Exception as e:   # the judge failing on a table is a finding, not a crash
                o.error = f"judge: {type(e).__name__}: {e}"[:300]
        print(f"  {'ok' if o.ok else 'FAILED'} wall {fmt(o.wall_s, '.1f')} s, peak {fmt(o.peak_rss_mb, '.0f')} MB"
              + (f", {o.quality}" if o.quality else "") + (f"  {o.error}" if o.error else ""), flush=True)
        ours[k] = o

    # anchors: ORT's own calibration, same quantizer settings; the uint8 column holds the tensors our first table
    # observed non-negative on the same samples (a property of the data, which ORT's symmetric ranges no longer show)
    first = next((o for o in ours.values() if o.ok), None)
    nonneg = J.ranges_for(onnx_path, first.table).nonnegative if first is not None else set()
    anchors: dict[str, J.Anchor] = {}
    for meth in (("MinMax",) if a.no_anchors else J.ORT_METHODS):
        print(f"[ort] {meth} ...", flush=True)
        an = J.ort_anchor(onnx_path, cal, meth, os.path.join(work, "ort"), timeout=TIMEOUT)
        an.quality = J.compare(ref, J.run_model(an.qdq_path, x_eval)) if an.ok else None
        if an.ok and nonneg:
            an.quality_unsigned = J.judge_ranges(onnx_path, J.read_cache(an.cache_path), x_eval, ref, unsigned=nonneg)
        print(f"  {'ok' if an.ok else 'FAILED'} quantize_static {fmt(an.time_s, '.1f')} s, wall {fmt(an.wall_s, '.1f')}"
              f" s, peak {fmt(an.peak_rss_mb, '.0f')} MB" + (f", {an.quality}" if an.quality else "")
              + (f"  {an.error}" if an.error else ""), flush=True)
        anchors[meth] = an

    # judge self-check and the ceiling, both from ORT's MinMax ranges
    ceiling = selfcheck = noise = None
    mm = anchors.get("MinMax")
    if mm is not None and mm.ok:
        rng = J.read_cache(mm.cache_path)
        import tempfile
        with tempfile.TemporaryDirectory(prefix="bench-cal-") as tmp:
            selfcheck = J.compare(ref, J.run_model(J.quantize_qdq(onnx_path, rng, os.path.join(tmp, "a.onnx")), x_eval))
            ceiling = J.compare(ref, J.run_model(J.quantize_qdq(onnx_path, rng, os.path.join(tmp, "b.onnx"),
                                                                act_bits=16), x_eval))
            # resolution of the judge: the same ranges scaled by 1 +- 1e-6 (float rounding of a written table)
            # flip a few roundings, and a quantized network propagates them
            jit = []
            for seed in range(3):
                rs = np.random.default_rng(seed)
                rj = {t: (lo * (1 + 1e-6 * rs.standard_normal()), hi * (1 + 1e-6 * rs.standard_normal()))
                      for t, (lo, hi) in rng.items()}
                jit.append(J.compare(ref, J.run_model(J.quantize_qdq(onnx_path, rj, os.path.join(tmp, f"j{seed}.onnx")),
                                                      x_eval)).mean_cos)
            noise = f"{min(jit):.5f} .. {max(jit):.5f} (MinMax: {selfcheck.mean_cos:.5f})"
        print(f"[judge self-check] ORT MinMax ranges rebuilt by the judge: {selfcheck} (ORT's own: {mm.quality})")
        print(f"[judge noise] ranges x (1 +- 1e-6), 3 draws, cos mean: {noise}")
        print(f"[ceiling] 16-bit activations, MinMax ranges: {ceiling}")

    # (a) speed: our KLD run and ORT's MinMax quantize_static again, alternating, so that background load hits
    # both alike; min and median over --repeat runs each (the quality runs above count as the first)
    kl, mm = ours.get("kl"), anchors.get("MinMax")
    runs_ours = [kl] if kl is not None and kl.ok else []
    runs_mm = [mm] if mm is not None and mm.ok else []
    for i in range(1, a.repeat):
        if runs_ours:
            print(f"[speed] repeat {i + 1}/{a.repeat}: tpu-cal KLD ...", flush=True)
            o = run_ours("kl", mlir, cal, os.path.join(work, "ours_kl_repeat.cali"), "use_kl", 0)
            if o.ok:
                runs_ours.append(o)
        if runs_mm:
            print(f"[speed] repeat {i + 1}/{a.repeat}: ORT MinMax ...", flush=True)
            an = J.ort_anchor(onnx_path, cal, "MinMax", os.path.join(work, "ort_repeat"), timeout=TIMEOUT)
            if an.ok:
                runs_mm.append(an)
    t_f16 = ort_float_time(onnx_path, cal, 16, a.repeat)
    t_f1 = ort_float_time(onnx_path, cal, 1, a.repeat)

    # (b) memory at 50 and 500 samples
    rss = {}
    if not a.no_rss:
        for n in (50, 500):
            print(f"[ours] kl, {n} samples ...", flush=True)
            rss[n] = run_ours(f"kl@{n}", mlir, common.calibration_set(n), os.path.join(work, f"ours_kl_{n}.cali"),
                              "use_kl", 0)
            print(f"  wall {fmt(rss[n].wall_s, '.1f')} s, peak {fmt(rss[n].peak_rss_mb, '.0f')} MB "
                  f"{'' if rss[n].ok else rss[n].error}", flush=True)

    # ---------------------------------------------------------------- tables
    def span(vals, spec=".1f"):
        vals = [v for v in vals if v == v]
        if not vals:
            return "n/a"
        if len(vals) == 1:
            return format(vals[0], spec)
        return f"{format(min(vals), spec)} / {format(statistics.median(vals), spec)}"

    med = lambda runs, attr: statistics.median(getattr(r, attr) for r in runs)  # noqa: E731
    lo = lambda runs, attr: min(getattr(r, attr) for r in runs)  # noqa: E731
    speed_head = ["run", f"process wall s (min / median of {a.repeat})", "compute s (min / median)", "peak RSS MB"]
    speed_rows = []
    if runs_ours:
        speed_rows.append([f"tpu-cal calibrate, KLD, --tune_num 0 ({a.cal} samples, batch 16)",
                           span([r.wall_s for r in runs_ours]), span([r.time_s for r in runs_ours]),
                           span([r.peak_rss_mb for r in runs_ours], ".0f")])
    elif kl is not None:
        speed_rows.append(["tpu-cal calibrate, KLD", "failed", kl.error.replace("|", "/"), ""])
    if runs_mm:
        speed_rows.append([f"ORT quantize_static, MinMax ({a.cal} samples, batch 1)", span([r.wall_s for r in runs_mm]),
                           span([r.time_s for r in runs_mm]), span([r.peak_rss_mb for r in runs_mm], ".0f")])
    speed_rows.append([f"ORT float inference over the {a.cal} samples, batch 16 (fastest)", "", fmt(t_f16, ".2f"), ""])
    speed_rows.append([f"ORT float inference over the {a.cal} samples, batch 1 (fastest)", "", fmt(t_f1, ".2f"), ""])
    ratios = []
    if runs_ours:
        if runs_mm:
            ratios.append(f"ours / ORT MinMax quantize_static: {lo(runs_ours, 'wall_s') / lo(runs_mm, 'wall_s'):.2f}x process "
                          f"wall (min/min; medians {med(runs_ours, 'wall_s') / med(runs_mm, 'wall_s'):.2f}x), "
                          f"{lo(runs_ours, 'time_s') / lo(runs_mm, 'time_s'):.2f}x compute (medians "
                          f"{med(runs_ours, 'time_s') / med(runs_mm, 'time_s'):.2f}x); peak RSS "
                          f"{med(runs_ours, 'peak_rss_mb') / med(runs_mm, 'peak_rss_mb'):.2f}x")
        ratios.append(f"ours (min compute) / ORT float inference over the same samples: "
                      f"{lo(runs_ours, 'time_s') / t_f16:.1f}x batch 16, {lo(runs_ours, 'time_s') / t_f1:.1f}x batch 1")
    if 50 in rss and 500 in rss and rss[50].ok and rss[500].ok:
        g = rss[500].peak_rss_mb / rss[50].peak_rss_mb - 1
        ratios.append(f"peak RSS 50 samples {rss[50].peak_rss_mb:.0f} MB, 500 samples {rss[500].peak_rss_mb:.0f} MB: "
                      f"{g * 100:+.1f} % ({'within' if abs(g) <= 0.10 else 'OUTSIDE'} the 10 % target); wall "
                      f"{rss[50].wall_s:.1f} s / {rss[500].wall_s:.1f} s")
    elif rss:
        ratios.append("memory runs: " + "; ".join(f"{n}: {o.error}" for n, o in rss.items() if not o.ok))

    q_head = ["calibration", "cos mean", "cos min", "top-1 agree %", "cos mean, uint8 where min >= 0",
              "cos mean (exact ranges)",
              "Clip outputs below bound", "cos mean, those at the bound", "output th / max", "wall s", "peak RSS MB"]
    q_rows = []
    for k, o in ours.items():
        meth, tune = METHODS[k]
        name = f"tpu-cal {meth}" + (f" --tune_num {tune}" if tune else "")
        if not o.ok or o.quality is None:
            q_rows.append([name, "failed", o.error.replace("|", "/"), "", "", "", "", "", "", fmt(o.wall_s, ".1f"), ""])
        else:
            q_rows.append([name] + q_cells(o.quality) + [
                fmt(o.quality_unsigned.mean_cos, ".5f") if o.quality_unsigned else "",
                fmt(o.quality_exact.mean_cos, ".5f") if o.quality_exact else "",
                f"{o.clipped} of {len(bounds)}", fmt(o.quality_clip.mean_cos, ".5f") if o.quality_clip else "",
                fmt(o.out_ratio, ".2f"), fmt(o.wall_s, ".1f"), fmt(o.peak_rss_mb, ".0f")])
    for meth, an in anchors.items():
        name = f"ORT quantize_static {meth}" if meth != "Entropy2048" else \
            "ORT Entropy calibrator, 2048 bins (chunks of 10 samples), then quantize_static"
        if not an.ok:
            q_rows.append([name, "failed", an.error.replace("|", "/"), "", "", "", "", "", "", fmt(an.wall_s, ".1f"),
                           fmt(an.peak_rss_mb, ".0f")])
        else:
            q_rows.append([name] + q_cells(an.quality) + [
                fmt(an.quality_unsigned.mean_cos, ".5f") if an.quality_unsigned else "", "", "", "", "",
                fmt(an.wall_s, ".1f"), fmt(an.peak_rss_mb, ".0f")])
    if ceiling is not None:
        q_rows.append(["ceiling: 16-bit activations (ORT MinMax ranges), int8 weights"] + q_cells(ceiling)
                      + ["", "", "", "", "", "", ""])

    print()
    print(text_table(speed_head, speed_rows))
    for r in ratios:
        print(r)
    print()
    print(text_table(q_head, q_rows))

    if not a.no_write:
        cmd = "python bench/calibrate.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
        body = f"""Command: `{cmd}` (from the repository root, venv active). Date: {date}.
Machine: {machine()}.

EfficientNet-Lite0 (ImageNet weights, ONNX export from `tpu_cal.zoo.efficientnet`), imported with `tpu-cal
transform`. Calibration: {a.cal} samples, views of 11 real photos (bench/common.py); evaluation: {a.eval} views of 4
other photos that calibration never sees. Every child process (our CLI, ORT's quantize_static) is timed and its
peak RSS read with os.wait4; "compute s" is the time the tool reports for its own work (ours: the "in N s" of
`tpu-cal calibrate`; ORT: the quantize_static call), "process wall s" includes interpreter start-up and imports.
The machine is shared (other jobs may run beside the benchmark), so speed runs alternate ours and ORT's and
report min / median; read the minimum as the cleaner number. Load average at the end: {os.getloadavg()[0]:.1f}.

### Speed and memory

{md_table(speed_head, speed_rows)}

{chr(10).join("- " + r for r in ratios)}

### Quality (QDQ judge: ONNX Runtime builds the QDQ model from the table)

bench/qdq_judge.py: our cali_table -> ONNX tensors (`<tensor>_<OpType>`) -> ORT calibration cache with ranges
(-th, +th) -> `quantize_static` (QDQ, per-channel symmetric int8 weights, symmetric int8 activations) -> the QDQ
model run with ORT graph optimizations off (exact fake-quant) against the float model: per-sample cosine of the
1000 logits, and how often the arg-max agrees. ORT's quantizer gives a single-consumer Clip its output's range on
its input (the conv's output), as a fused conv+ReLU6 does; "exact ranges" applies every threshold of the table
verbatim instead (TensorQuantOverrides). ORT's anchors use the same quantizer settings, their own calibration on
the same samples. ORT's Entropy through quantize_static runs its calibrator with 128 histogram bins and 128
quantized bins, so its only candidate is the full range and it equals MinMax; the "2048 bins" row calls ORT's
Entropy calibrator directly with TensorRT's / TPU-MLIR's bin count (fed 10 samples at a time to bound its memory,
so its time and RSS are not comparable; most of its time is ORT's pure-Python threshold search). ORT's Entropy and
Percentile keep every intermediate tensor of every sample in memory until the end, hence their RSS. The ceiling
keeps int8 weights and quantizes activations to 16 bits. "uint8 where min >= 0" judges the same ranges with
TPU-MLIR's own symmetric scheme, which holds a tensor whose calibrated min is >= 0 (every ReLU6 output) unsigned:
uint8 over [0, th], scale th / 255 (TPU-MLIR's `module::getScaleAndZeroPoint`: `sign = min < 0`); ORT's anchors are
judged with the same tensors unsigned (those our table observed >= 0: its ranges are stored symmetric). Diagnostics
per table: how many ReLU6 (Clip) outputs got
a threshold below the Clip's bound (6), the judged quality with those raised to the bound, and the network
output's threshold over its abs-max on the calibration samples (below 1 clips the logits, and with them the top-1).
{f"Judge self-check: ORT's MinMax ranges rebuilt through the judge give {selfcheck} (ORT's own QDQ model: {mm.quality})." if selfcheck else ""}
{f"Judge resolution: the same MinMax ranges scaled by 1 +- 1e-6 (3 random draws) give cos mean {noise}; a quantized network propagates a few flipped roundings, so differences in cos mean of this size are noise." if noise else ""}

{md_table(q_head, q_rows)}
"""
        common.write_section(a.results, "Calibration", body)
        print(f"\nwrote the Calibration section of {a.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
