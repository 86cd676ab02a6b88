"""Lowering and quantized-simulation benchmark: full-int8 EfficientNet-Lite0 and PP-OCRv4 det (bm1684x).

    python bench/lower.py [--eff-cal 100] [--eff-eval 40] [--det-size 640] [--no-write]

For each model, with the default calibration (`tpu-cal calibrate`: KLD, --tune_num 10) on real images:
- time to lower (`lowering.assign_precision` + `lowering.lower`, the work of `tpu-cal lower`);
- output cosine to the float module on held-out images, from our simulator and from ONNX Runtime on our QDQ
  export (`tpu-cal export-qdq`, run with session.x64quantprecision=1), and between the two; for PP-OCRv4 det
  also the IoU of the text masks at PP-OCR's binarization threshold 0.3;
- quantized simulation time per sample relative to float interpretation (same batch, same process, best of 3).
PP-OCRv4 det also gets the table TPU-MLIR's KLD makes for it: the same table with the final sigmoid's threshold
at 0.0625 (what TPU-MLIR 1.30.2 writes for that tensor), judged the same way, to show what keeping the bounded
output's range is worth.

Images: EfficientNet-Lite0 uses bench/common.py's sets (calibration photos and held-out photos). PP-OCRv4 det
calibrates on crops of scikit-image's page, text and coins images and is evaluated on the whole page and text
images (seen only as crops) and on matplotlib's grace_hopper.jpg (a photo without text). Results are printed
and written as the "Lowering and quantized simulation" section of bench/RESULTS.md (other sections are left
alone).
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
from calibrate import machine, text_table, tpu_cal_exe  # noqa: E402

SECTION = "Lowering and quantized simulation"
TPU_MLIR_SIGMOID_TH = 0.0625
DB_THRESH = 0.3          # PP-OCR's DB post-processing binarizes the text map at 0.3 (det_db_thresh)


def cli(*args) -> str:
    r = subprocess.run(tpu_cal_exe() + [str(a) for a in args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"tpu-cal {args[0]} failed: {r.stderr.strip()}")
    return r.stdout


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def ort_run(model: str, x: np.ndarray, name: str) -> np.ndarray:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.x64quantprecision", "1")
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run([name], {s.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])


def mask_iou(ref: np.ndarray, got: np.ndarray, thresh: float = DB_THRESH) -> np.ndarray:
    """Per image, the intersection over union of the text masks (probability > thresh) of two DB text maps."""
    a = ref.reshape(len(ref), -1) > thresh
    b = got.reshape(len(got), -1) > thresh
    union = (a | b).sum(1)
    return np.where(union > 0, (a & b).sum(1) / np.maximum(union, 1), 1.0)


def best_of(fn, n: int = 3) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def evaluate(label: str, mlir: str, table: str, x: np.ndarray, work: str, batch: int) -> dict:
    """Lower `mlir` with `table` to full INT8 for bm1684x, simulate on x, export QDQ and run ORT on it."""
    from tpu_cal import simulate
    from tpu_cal.interp.core import Interpreter
    from tpu_cal.lower_cmd import LowerOptions, prepare
    opts = LowerOptions(mlir_file=mlir, output=os.path.join(work, "unused.mlir"), quantize="INT8",
                        processor="bm1684x", calibration_table=table)
    t_lower = best_of(lambda: prepare(opts), 3)
    res = prepare(opts)
    fg, lg = res.float_graph, res.graph
    o = fg.outputs[0]
    fl, qt = simulate.run_both(fg, lg, {fg.inputs[0]: x}, batch_size=batch, names=[o])
    qdq = os.path.join(work, f"{label}_qdq.onnx")
    cli("export-qdq", mlir, "--calibration_table", table, "-o", qdq)
    theirs = ort_run(qdq, x, o)
    xb = x[:batch]
    fi, qi = Interpreter(fg), Interpreter(lg)
    t_float = best_of(lambda: fi.run({fg.inputs[0]: xb}))
    t_quant = best_of(lambda: qi.run({fg.inputs[0]: xb}))
    return dict(sim=cosines(fl[o], qt[o]), ort=cosines(fl[o], theirs), agree=cosines(qt[o], theirs),
                top1=float((fl[o].reshape(len(x), -1).argmax(1) == qt[o].reshape(len(x), -1).argmax(1)).mean()),
                iou=mask_iou(fl[o], qt[o]),
                t_lower=t_lower, t_float=t_float / len(xb), t_quant=t_quant / len(xb), ops=len(lg.nodes))


def efficientnet(a, work: str) -> dict:
    from tpu_cal.zoo.efficientnet import efficientnet_lite0
    model = efficientnet_lite0()
    mlir = os.path.join(work, "eff.mlir")
    cli("transform", "--model_name", "eff", "--model_def", model, "--input_shapes", "[[1,3,224,224]]",
        "--mlir", mlir)
    table = os.path.join(work, "eff.cali")
    t = time.perf_counter()
    cli("calibrate", mlir, "--dataset", common.calibration_set(a.eff_cal), "--input_num", a.eff_cal, "-o", table)
    t_cal = time.perf_counter() - t
    x = common.load_folder(common.evaluation_set(a.eff_eval))
    r = evaluate("eff", mlir, table, x, work, batch=16)
    r.update(t_cal=t_cal, cal=a.eff_cal, eval=len(x))
    return r


def det_images(work: str):
    """(calibration folder, evaluation image paths) for PP-OCRv4 det."""
    import matplotlib.cbook as cb
    import skimage.data as sk
    from PIL import Image
    cal = os.path.join(work, "det_cal")
    os.makedirs(cal, exist_ok=True)
    k = 0
    for img in (sk.page(), sk.text(), sk.coins()):
        hh, ww = img.shape[:2]
        for c in (img[:, : ww // 2], img[:, ww // 2:], img[: hh // 2 + hh // 4, :]):
            Image.fromarray(np.ascontiguousarray(c)).save(os.path.join(cal, f"crop{k}.png"))
            k += 1
    ev = os.path.join(work, "det_eval")
    os.makedirs(ev, exist_ok=True)
    hopper = np.asarray(Image.open(cb.get_sample_data("grace_hopper.jpg")))
    paths = []
    for name, img in (("page", sk.page()), ("text", sk.text()), ("grace_hopper", hopper)):
        p = os.path.join(ev, f"{name}.png")
        Image.fromarray(np.ascontiguousarray(img)).save(p)
        paths.append(p)
    return cal, paths


def ppocr_det(a, work: str) -> dict:
    from tpu_cal import ir
    from tpu_cal.formats.cali_table import read_cali_table, write_cali_table
    from tpu_cal.preprocess import Preprocess, load_inputs
    from tpu_cal.zoo.ppocr import ppocr
    model = ppocr("det")
    mlir = os.path.join(work, "det.mlir")
    s = a.det_size
    cli("transform", "--model_name", "det", "--model_def", model, "--input_shapes", f"[[1,3,{s},{s}]]",
        "--mean", "123.675,116.28,103.53", "--scale", "0.01712,0.0175,0.01743", "--pixel_format", "rgb",
        "--mlir", mlir)
    cal, paths = det_images(work)
    table = os.path.join(work, "det.cali")
    t = time.perf_counter()
    cli("calibrate", mlir, "--dataset", cal, "-o", table)
    t_cal = time.perf_counter() - t
    g = ir.load_graph(mlir)
    nodes = g.node_map()
    pre = Preprocess.from_attrs(g.attrs.get("preprocess"))
    x = np.concatenate([load_inputs(p, [nodes[i] for i in g.inputs], pre)[g.inputs[0]] for p in paths])
    r = evaluate("det", mlir, table, x, work, batch=1)
    r.update(size=f"{s}x{s}", t_cal=t_cal, cal=len(os.listdir(cal)), eval=len(x), images=[os.path.basename(p) for p in paths])
    # TPU-MLIR's KLD table for the final sigmoid: the same table with that one threshold at 0.0625
    t = read_cali_table(table)
    out = g.outputs[0]
    th, lo, hi = t.thresholds[out]
    r["sigmoid_th"] = th
    t.thresholds[out] = (TPU_MLIR_SIGMOID_TH, lo, hi)
    clipped = os.path.join(work, "det_sigmoid_clipped.cali")
    write_cali_table(clipped, t)
    r["clipped"] = evaluate("det_clipped", mlir, clipped, x, work, batch=1)
    return r


def report(eff: dict | None, det: dict | None, cmd: str) -> str:
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load = os.getloadavg()[0]
    lines = [f"Command: `{cmd}` (from the repository root, venv active). Date: {date}. Machine: {machine()}. "
             f"Load average at the end: {load:.1f} (the machine is shared; times are best of 3).", "",
             "Full INT8 for bm1684x with the default calibration (`tpu-cal calibrate`: KLD, `--tune_num 10`). "
             "Cosines are per image on the model output, then averaged (min in brackets); 'ORT' is ONNX Runtime "
             "on our `tpu-cal export-qdq` model (`session.x64quantprecision=1`).", ""]
    head = ["model", "calibration", "evaluation", "simulator vs float", "ORT-on-QDQ vs float",
            "simulator vs ORT", "top-1 agree / text-mask IoU", "lower s", "float ms/sample", "int8 sim ms/sample",
            "sim / float"]
    rows = []

    def row(name, r, cal_desc, ev_desc, det=False):
        agree = (f"IoU {r['iou'].mean():.3f} (page {r['iou'][0]:.3f})" if det else f"{r['top1'] * 100:.0f} %")
        rows.append([name, cal_desc, ev_desc, f"{r['sim'].mean():.5f} ({r['sim'].min():.4f})",
                     f"{r['ort'].mean():.5f} ({r['ort'].min():.4f})",
                     f"{r['agree'].mean():.5f} ({r['agree'].min():.4f})", agree,
                     f"{r['t_lower']:.2f}", f"{r['t_float'] * 1e3:.1f}", f"{r['t_quant'] * 1e3:.1f}",
                     f"{r['t_quant'] / r['t_float']:.2f}x"])
    if eff:
        row("EfficientNet-Lite0", eff, f"{eff['cal']} photo views", f"{eff['eval']} held-out views")
    if det:
        row(f"PP-OCRv4 det {det['size']}", det, f"{det['cal']} text crops", ", ".join(det["images"]), True)
        row("  same, sigmoid th 0.0625 (TPU-MLIR KLD)", det["clipped"], "", "", True)
    lines.append(text_table(head, rows))
    if det:
        c = det["clipped"]
        lines += ["", f"PP-OCRv4 det: our table gives the final sigmoid the threshold {det['sigmoid_th']:.4f} "
                      f"(its whole observed range); with TPU-MLIR's 0.0625 in its place the simulated output "
                      f"falls from {det['sim'].mean():.4f} to {c['sim'].mean():.4f} mean cosine "
                      f"(page image: {det['sim'][0]:.4f} vs {c['sim'][0]:.4f}; TPU-MLIR reports 0.96 on a page "
                      f"image with its own table). Cosine hides what matters here: the clipped map never reaches "
                      f"PP-OCR's binarization threshold {DB_THRESH}, so the text mask is empty (IoU with the "
                      f"float model's mask {c['iou'].mean():.3f}, against {det['iou'].mean():.3f} with our "
                      f"table)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eff-cal", type=int, default=100, help="EfficientNet-Lite0 calibration samples")
    ap.add_argument("--eff-eval", type=int, default=40, help="EfficientNet-Lite0 evaluation samples")
    ap.add_argument("--det-size", type=int, default=640, help="PP-OCRv4 det input size (square)")
    ap.add_argument("--only", choices=("eff", "det"), help="one model only")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    a = ap.parse_args(argv)
    cmd = "python bench/lower.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    with tempfile.TemporaryDirectory(prefix="bench-lower-") as work:
        eff = efficientnet(a, work) if a.only in (None, "eff") else None
        det = ppocr_det(a, work) if a.only in (None, "det") else None
        body = report(eff, det, cmd.strip())
    print(body)
    if not a.no_write:
        common.write_section(a.results, SECTION, body)
        print(f"-> {a.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
