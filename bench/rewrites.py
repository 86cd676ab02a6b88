"""What the rewrites do to int8 output quality: EfficientNet-Lite0 with --we / --bc, all-MiniLM-L6-v2 with --sq / --smc.

    python bench/rewrites.py [--cal 32] [--eval 12] [--text_cal 16] [--text_eval 8] [--methods kl,mse]
                             [--no-ort] [--no-write]

Each configuration is `tpu_cal.optimize.calibrate` (what `tpu-cal calibrate --we --bc ...` runs) on the
calibration samples, then lowering to all-INT8 for bm1684x (layer_norm / softmax stay F32, the chip's float
ops). Judged on held-out samples never used for calibration:
- our simulator: the lowered module run by our interpreter against our float run of the original module;
  per-sample cosine of the model output, mean and min, and for EfficientNet the top-1 agreement with float;
- ONNX Runtime on the QDQ export of the same lowered module (`export_qdq.build_model`, what `tpu-cal export-qdq`
  writes), run with graph optimizations off (exact fake-quant), against the original float ONNX model: so the
  rewritten weights are judged against the model we started from.

Samples: EfficientNet, bench/common.py's real photos (calibration and evaluation photos are disjoint);
MiniLM, CPython's documentation (`tpu_cal.zoo.minilm.texts`), ten consecutive paragraphs per sample so that
every sample fills all 128 tokens (padded samples cannot be calibrated: the exported attention mask is -inf,
and calibration stops at the first Inf), calibration on samples 0.., evaluation on samples from 100 on (paragraphs 1000..).
Results are printed and written as the "Rewrites" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
from calibrate import md_table  # noqa: E402

from tpu_cal import optimize  # noqa: E402
from tpu_cal.calibration import CalibrationConfig, attach  # noqa: E402
from tpu_cal.dataset import Dataset  # noqa: E402
from tpu_cal.interp.core import Interpreter  # noqa: E402
from tpu_cal.lowering import assign_precision, lower  # noqa: E402
from tpu_cal.metrics import cosine  # noqa: E402
from tpu_cal.preprocess import Preprocess  # noqa: E402
from tpu_cal.simulate import run_both  # noqa: E402

CHIP = "bm1684x"
CNN_CONFIGS = {"none": {}, "we": {"we": True}, "bc": {"bc": True}, "bc (weights' error)": {"bc": True, "bc_part": "weights"},
               "we+bc": {"we": True, "bc": True}}
TEXT_CONFIGS = {"none": {}, "sq": {"sq": True}, "sq (fold only)": {"sq": True, "sq_insert": False},
                "smc": {"smc": True}, "sq+smc": {"sq": True, "smc": True}}
METHOD_FLAG = {"kl": "use_kl", "mse": "use_mse", "max": "use_max", "percentile9999": "use_percentile9999"}


def lowered(graph):
    g = copy.deepcopy(graph)
    assign_precision(g, CHIP, "INT8")
    return g, lower(g, CHIP)


def simulate(graph, feeds) -> np.ndarray:
    """The simulated int8 output of the module, per sample."""
    g, lw = lowered(graph)
    _, q = run_both(g, lw, feeds, names=g.outputs)
    return q[g.outputs[0]]


def ort_output(graph, feeds: dict, path: str) -> np.ndarray:
    """ONNX Runtime's output of the QDQ export of the lowered module (optimizations off: exact fake-quant)."""
    from qdq_judge import _session
    from tpu_cal.export_qdq import build_model
    g, lw = lowered(graph)
    with open(path, "wb") as f:
        f.write(build_model(lw, g).model.SerializeToString())
    s = _session(path, simulate=True)
    names = [i.name for i in s.get_inputs()]
    n = len(next(iter(feeds.values())))
    return np.concatenate([s.run(None, {k: feeds[k][i:i + 1] for k in names})[0] for i in range(n)])


def float_ort(onnx_path: str, feeds: dict) -> np.ndarray:
    from qdq_judge import _session
    s = _session(onnx_path, simulate=False)
    names = [i.name for i in s.get_inputs()]
    n = len(next(iter(feeds.values())))
    return np.concatenate([s.run(None, {k: feeds[k][i:i + 1] for k in names})[0] for i in range(n)])


def per_sample_cos(ref, out) -> list[float]:
    return [cosine(ref[i], out[i]) for i in range(len(ref))]


def run_config(load, ds, flags: dict, method: str, feeds: dict, f, ort_ref, tmp: str, top1: bool) -> list:
    """One configuration: `f` is our float output of the original module (bias correction changes the float
    function of the module it rewrites, so the rewritten module's own float run is no reference)."""
    g = load()
    t = time.time()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):           # the rewrites' tables: kept out of the result table
        res = optimize.calibrate(g, ds, CalibrationConfig(method=method, tune_num=0), None,
                                 optimize.Rewrites(**flags))
    attach(g, res.table, method)
    secs = time.time() - t
    q = simulate(g, feeds)
    c = per_sample_cos(f, q)
    row = [f"{np.mean(c):.4f}", f"{np.min(c):.4f}"]
    if top1:
        row.append(f"{np.mean(f.argmax(1) == q.argmax(1)):.2f}")
    if ort_ref is not None:
        try:
            o = ort_output(g, feeds, os.path.join(tmp, "m.onnx"))
            oc = per_sample_cos(ort_ref, o)
            row += [f"{np.mean(oc):.4f}", f"{np.min(oc):.4f}"]
        except Exception as e:                      # an export the runtime cannot take is a result, not a crash
            row += [f"failed: {type(e).__name__}", ""]
    return row + [f"{secs:.0f}"]


def efficientnet(args, methods, tmp):
    from tpu_cal.frontend.onnx_import import ImportOptions, import_onnx
    from tpu_cal.zoo import efficientnet as eff
    path = eff.efficientnet_lite0()
    base = import_onnx(path, ImportOptions(input_shapes=[[1, 3, 224, 224]]))
    cal = common.calibration_set(args.cal)
    x = common.load_folder(common.evaluation_set(args.eval))
    feeds = {base.inputs[0]: x}
    ds = Dataset([base.node_map()[base.inputs[0]]], Preprocess.from_attrs(None), cal)
    ort_ref = float_ort(path, {eff.INPUT: x}) if args.ort else None
    f = Interpreter(base).run(feeds)[base.outputs[0]]
    rows = []
    for m in methods:
        for key, flags in CNN_CONFIGS.items():
            print(f"EfficientNet-Lite0 {m} {key} ...", file=sys.stderr, flush=True)
            rows.append([METHOD_FLAG[m], key] + run_config(lambda: copy.deepcopy(base), ds, flags, m, feeds, f,
                                                            ort_ref, tmp, True))
    return rows


def text_samples(n: int, start: int) -> dict:
    from tpu_cal.zoo import minilm
    paras = minilm.texts(10 * (start + n))
    return minilm.tokenize([" ".join(paras[10 * i:10 * i + 10]) for i in range(start, start + n)])


def minilm_rows(args, methods, tmp):
    from tpu_cal.frontend.onnx_import import import_onnx
    from tpu_cal.zoo import minilm
    path = minilm.minilm_onnx()
    base = import_onnx(path)
    cal_dir = os.path.join(tmp, "text_cal")
    os.makedirs(cal_dir)
    cal = text_samples(args.text_cal, 0)
    for i in range(args.text_cal):
        np.savez(os.path.join(cal_dir, f"s{i:03d}.npz"), **{k: v[i:i + 1] for k, v in cal.items()})
    feeds = text_samples(args.text_eval, 100)
    assert (feeds["attention_mask"].sum(1) == 128).all() and (cal["attention_mask"].sum(1) == 128).all()
    nodes = base.node_map()
    ds = Dataset([nodes[n] for n in base.inputs], Preprocess.from_attrs(None), cal_dir)
    ort_ref = float_ort(path, feeds) if args.ort else None
    f = Interpreter(base).run(feeds)[base.outputs[0]]
    rows = []
    for m in methods:
        for key, flags in TEXT_CONFIGS.items():
            print(f"MiniLM {m} {key} ...", file=sys.stderr, flush=True)
            rows.append([METHOD_FLAG[m], key] + run_config(lambda: copy.deepcopy(base), ds, flags, m, feeds, f,
                                                            ort_ref, tmp, False))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cal", type=int, default=32, help="EfficientNet calibration photos")
    ap.add_argument("--eval", type=int, default=12, help="EfficientNet evaluation photos (held out)")
    ap.add_argument("--text_cal", type=int, default=16, help="MiniLM calibration samples")
    ap.add_argument("--text_eval", type=int, default=8, help="MiniLM evaluation samples (held out)")
    ap.add_argument("--methods", default="kl,mse", help=f"threshold methods ({', '.join(METHOD_FLAG)})")
    ap.add_argument("--models", default="efficientnet,minilm")
    ap.add_argument("--no-ort", dest="ort", action="store_false", help="skip the ONNX Runtime judge")
    ap.add_argument("--no-write", dest="write", action="store_false", help="do not touch bench/RESULTS.md")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    t0 = time.time()
    head_ort = ["ORT mean cos", "ORT min cos"] if args.ort else []
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        if "efficientnet" in args.models:
            rows = efficientnet(args, methods, tmp)
            head = ["--cali_method", "rewrites", "sim mean cos", "sim min cos", "top-1 = float"] + head_ort + ["s"]
            parts.append(f"EfficientNet-Lite0, {args.cal} calibration photos, {args.eval} held-out photos "
                         f"(sim: our int8 simulation vs our float run of the original module; ORT: the QDQ "
                         f"export vs the original ONNX model):\n\n" + md_table(head, rows))
            print(parts[-1], flush=True)
        if "minilm" in args.models:
            rows = minilm_rows(args, methods, tmp)
            head = ["--cali_method", "rewrites", "sim mean cos", "sim min cos"] + head_ort + ["s"]
            parts.append(f"all-MiniLM-L6-v2 (last_hidden_state), {args.text_cal} calibration and {args.text_eval} "
                         f"held-out 128-token text samples:\n\n" + md_table(head, rows))
            print(parts[-1], flush=True)
    cmd = "python bench/rewrites.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = (f"Command: `{cmd.strip()}` ({time.time() - t0:.0f} s; bm1684x, all INT8 with the chip's float ops "
            f"F32, --tune_num 0; the s column is calibration with the rewrites, in seconds).\n\n"
            + "\n\n".join(parts))
    if args.write:
        common.write_section(os.path.join(HERE, "RESULTS.md"), "Rewrites", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
