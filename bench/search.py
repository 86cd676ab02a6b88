"""Benchmark of the searches on EfficientNet-Lite0: search_qtable (and search_threshold) wall time, candidate
evaluations per second, and the quality of what they write, judged on held-back samples.

    python bench/search.py [--input_num 100] [--inference_num 30] [--expected 0.99,0.995] [--methods MSE]
                           [--workers 0] [--eval 40] [--no-threshold] [--write]

Each run is `tpu-cal calibrate ... --search search_qtable` in a child process (wall time and peak RSS measured
by qdq_judge.run_measured), on `--input_num` calibration samples (bench/common.py) of which the first
`--inference_num` are the search's inference samples. Quality is judged on `--eval` samples of other photos that
neither calibration nor the search ever sees, twice:
- outside our code: `tpu-cal export-qdq` with the new cali table and the qtable, run by ONNX Runtime (graph
  optimizations off, so every QuantizeLinear/DequantizeLinear runs as written), against the float ONNX model;
- our quantized simulation of the same lowering (tpu_cal.search.engine), against our float interpreter.
"Full int8" is the calibration table of the same run lowered without a qtable. TPU-MLIR's numbers (from the
issue, same model and sample counts, this machine kind): search_qtable 452 s, search_threshold 91 s.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import calibrate as C  # noqa: E402
import common  # noqa: E402
import qdq_judge as J  # noqa: E402

TPU_MLIR = {"search_qtable": 452.0, "search_threshold": 91.0}


def judge_ort(mlir: str, table: str, qtable: str | None, x: np.ndarray, ref: np.ndarray, work: str) -> J.Quality:
    out = os.path.join(work, "judge_qdq.onnx")
    cmd = C.tpu_cal_exe() + ["export-qdq", mlir, "--calibration_table", table, "-o", out]
    if qtable:
        cmd += ["--quantize_table", qtable]
    m = J.run_measured(cmd)
    if m.rc != 0:
        raise SystemExit(f"export-qdq failed: {m.stderr.strip().splitlines()[-1:]}")
    return J.compare(ref, J.run_model(out, x, batch=1))     # the export keeps the module's batch of 1


def judge_ours(mlir: str, table: str, qtable: str | None, x: np.ndarray, original: str | None = None) -> float:
    """Our simulation of the mix against the float module (`original`: the module before a rewrite that changed
    the float function, as the ORT judge compares with the original ONNX model)."""
    from tpu_cal import ir
    from tpu_cal.formats.cali_table import read_cali_table
    from tpu_cal.formats.qtable import read_qtable
    from tpu_cal.search.engine import Candidate, Engine
    g = ir.load_graph(mlir)
    names = {n.name for n in g.nodes}
    t = {k: v for k, v in read_cali_table(table).thresholds.items() if k in names}
    modes = read_qtable(qtable).modes if qtable else {}
    ref = ir.load_graph(original) if original and original != mlir else None
    eng = Engine(g, t, "bm1684x", {g.inputs[0]: x}, workers=1, batch_size=len(x), show_progress=False,
                 reference_graph=ref)
    return eng.reference(Candidate(modes=modes)).score.cos


def run_search(mlir: str, cal: str, work: str, a, kind: str, expected: float | None = None) -> dict:
    os.makedirs(work, exist_ok=True)
    saved = os.path.join(work, "result.json")
    if a.reuse and os.path.exists(saved):
        with open(saved) as f:
            return json.load(f)
    r = _run_search(mlir, cal, work, a, kind, expected)
    with open(saved, "w") as f:
        json.dump(r, f)
    return r


def _run_search(mlir: str, cal: str, work: str, a, kind: str, expected: float | None) -> dict:
    out = os.path.join(work, "cali")
    cmd = C.tpu_cal_exe() + ["calibrate", mlir, "--dataset", cal, "--input_num", str(a.input_num), "--tune_num",
                             str(a.tune_num), "--inference_num", str(a.inference_num), "--workers", str(a.workers),
                             "--search", kind, "-o", out]
    extra = shlex.split(a.calibrate_flags)
    judged = mlir
    if extra:           # rewrites change the weights: the module they write is the one to judge
        judged = os.path.join(work, "cal.mlir")
        cmd += extra + ["--save_mlir", judged]
    if kind == "search_qtable":
        cmd += ["--expected_cos", str(expected), "--max_float_layers", str(a.max_float_layers),
                "--quantize_method_list", a.methods, "--quantize_table", os.path.join(work, "qtable")]
    m = J.run_measured(cmd)
    if m.rc not in (0, 1):
        raise SystemExit(f"{kind} failed (rc {m.rc}): {m.stderr.strip().splitlines()[-1:]}")
    r = {"kind": kind, "expected": expected, "wall": m.wall_s, "cpu": m.cpu_s, "rss": m.peak_rss_mb, "rc": m.rc,
         "out": out, "load": os.getloadavg()[0], "mlir": judged}
    ev = re.search(r"\((\d+) evaluations in ([0-9.]+)s", m.stdout)
    if ev:
        r["evals"], r["search_s"] = int(ev.group(1)), float(ev.group(2))
    if kind == "search_qtable":
        from tpu_cal.formats.qtable import read_qtable
        r["qtable"] = os.path.join(work, "qtable")
        r["table"] = os.path.join(work, "new_cali_table.txt")
        r["float_layers"] = list(read_qtable(r["qtable"]).modes)
        cos = dict(re.findall(r"^(int8 outputs_cos|mix model outputs_cos):([0-9.]+)", m.stdout, re.M))
        r["search_int8"], r["search_mix"] = float(cos["int8 outputs_cos"]), float(cos["mix model outputs_cos"])
    else:
        r["table"] = out
        r["best"] = re.search(r"\|\s+\*", m.stdout) and [ln.split("|")[0].strip() for ln in m.stdout.splitlines()
                                                           if ln.rstrip().endswith("*")][0]
    return r


def calibrate_only(mlir: str, cal: str, work: str, a) -> str:
    """`tpu-cal calibrate` with --calibrate_flags and no search; returns the module it saved."""
    os.makedirs(work, exist_ok=True)
    saved = os.path.join(work, "cal.mlir")
    if not (a.reuse and os.path.exists(saved)):
        cmd = C.tpu_cal_exe() + ["calibrate", mlir, "--dataset", cal, "--input_num", str(a.input_num), "--tune_num",
                                 str(a.tune_num), "-o", os.path.join(work, "cali"), "--save_mlir", saved] \
            + shlex.split(a.calibrate_flags)
        m = J.run_measured(cmd)
        if m.rc != 0:
            raise SystemExit(f"calibrate failed (rc {m.rc}): {m.stderr.strip().splitlines()[-1:]}")
    return saved


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input_num", type=int, default=100)
    p.add_argument("--inference_num", type=int, default=30)
    p.add_argument("--tune_num", type=int, default=10)
    p.add_argument("--expected", default="0.99,0.995")
    p.add_argument("--max_float_layers", type=int, default=5)
    p.add_argument("--methods", default="MSE")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--eval", type=int, default=40)
    p.add_argument("--no-threshold", action="store_true")
    p.add_argument("--reuse", action="store_true", help="reuse the measurements of the last run (result.json in "
                                                         "each run folder) and only judge again")
    p.add_argument("--calibrate_flags", default="", help="more flags for `tpu-cal calibrate`, e.g. "
                                                         "'--cali_method use_mse --bc --bc_part weights'")
    p.add_argument("--write", action="store_true", help="write the '## Search' section of bench/RESULTS.md")
    p.add_argument("--section", default="Search", help="the RESULTS.md section --write replaces")
    a = p.parse_args(argv)
    from tpu_cal.zoo import cache_dir
    work = cache_dir("bench", "search")
    if a.calibrate_flags:
        work = os.path.join(work, "flags_" + re.sub(r"\W+", "_", a.calibrate_flags).strip("_"))
        os.makedirs(work, exist_ok=True)
    onnx_path, mlir = C.model_and_mlir(work)
    cal = common.calibration_set(a.input_num)
    x = common.load_folder(common.evaluation_set(a.eval))
    ref = J.run_model(onnx_path, x, simulate=False)
    runs = []
    for e in [float(v) for v in a.expected.split(",") if v.strip()]:
        r = run_search(mlir, cal, os.path.join(work, f"qtable_{e}"), a, "search_qtable", e)
        print(f"search_qtable expected_cos {e}: {r['wall']:.1f}s, {r.get('evals')} evaluations, "
              f"{len(r['float_layers'])} float layers, search cos {r['search_mix']:.5f}", flush=True)
        runs.append(r)
    if not a.no_threshold:
        r = run_search(mlir, cal, os.path.join(work, "threshold"), a, "search_threshold")
        print(f"search_threshold: {r['wall']:.1f}s, best {r['best']}", flush=True)
        runs.append(r)
    rows = []
    base = runs[0]
    # full int8 is the calibration of the same command without a search: a module a search wrote has its float
    # layers' bias correction taken back (they run in float with its qtable), so it is not the all-int8 one
    int8_mlir = mlir
    if a.calibrate_flags:
        int8_mlir = calibrate_only(mlir, cal, os.path.join(work, "int8"), a)
    int8_table = os.path.join(work, "int8", "cali") if a.calibrate_flags else base["out"]
    q_int8 = judge_ort(int8_mlir, int8_table, None, x, ref, work)
    rows.append(["full int8 (calibration table, no qtable)", "", "", "", "", "", "0", f"{base['search_int8']:.5f}",
                 f"{judge_ours(int8_mlir, int8_table, None, x, mlir):.5f}", f"{q_int8.mean_cos:.5f}",
                 f"{q_int8.min_cos:.5f}", f"{q_int8.top1 * 100:.1f}"])
    for r in runs:
        q = judge_ort(r.get("mlir", mlir), r["table"], r.get("qtable"), x, ref, work)
        ours = judge_ours(r.get("mlir", mlir), r["table"], r.get("qtable"), x, mlir)
        if r["kind"] == "search_qtable":
            what = f"search_qtable {a.methods}, expected_cos {r['expected']}"
            nf, scos = str(len(r["float_layers"])), f"{r['search_mix']:.5f}"
        else:
            what, nf, scos = f"search_threshold (best: {r['best']})", "0", ""
        speed = f"{r['evals'] / r['search_s']:.2f}" if r.get("evals") else ""
        rows.append([what, f"{r['wall']:.1f}", f"{r['cpu']:.1f}", f"{r['rss']:.0f}",
                     f"{TPU_MLIR[r['kind']] / r['wall']:.1f}x", speed, nf, scos,
                     f"{ours:.5f}", f"{q.mean_cos:.5f}", f"{q.min_cos:.5f}", f"{q.top1 * 100:.1f}"])
    head = ["run", "wall s", "CPU s", "peak RSS MB", "TPU-MLIR s / wall s", "evals/s", "float layers", "cos on inference samples",
            f"ours on {a.eval} held-back", "ORT QDQ held-back cos mean", "min", "top-1 %"]
    print(C.text_table(head, rows))
    for r in runs:
        if r.get("float_layers") is not None:
            print(f"float layers for expected_cos {r['expected']}: {', '.join(r['float_layers']) or '-'}")
    if a.write:
        load = os.getloadavg()[0]
        flags = f" --calibrate_flags '{a.calibrate_flags}'" if a.calibrate_flags else ""
        section = f" --section '{a.section}'" if a.section != "Search" else ""
        body = (f"Command: `python bench/search.py --methods {a.methods} --workers {a.workers} --expected "
                f"{a.expected}{' --no-threshold' if a.no_threshold else ''}{flags}{section} --write` (venv active). "
                f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}. {C.machine()}; load average {load:.1f} at the end "
                f"(the machine is shared: wall times are upper bounds).\n\n"
                f"EfficientNet-Lite0, {a.input_num} calibration samples ("
                f"{('`' + a.calibrate_flags + '`, ') if a.calibrate_flags else 'KLD + '}auto-tune on {a.tune_num}), the first "
                f"{a.inference_num} of them the search's inference samples, max_float_layers "
                f"{a.max_float_layers}; judged on {a.eval} held-back samples of other photos. Wall s is the whole "
                f"`tpu-cal calibrate --search ...` process (calibration included); TPU-MLIR: search_qtable 452 s, "
                f"search_threshold 91 s on the same model and sample counts.\n\n"
                + C.md_table(head, rows) + "\n\n"
                + "\n".join(f"- float layers for expected_cos {r['expected']}: "
                            f"{', '.join('`' + n + '`' for n in r['float_layers']) or 'none'}"
                            for r in runs if r.get("float_layers") is not None) + "\n")
        common.write_section(os.path.join(HERE, "RESULTS.md"), a.section, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
