"""What the pattern-match qtable, --part_asymmetric and --part_quantize buy, judged on held-out samples.

    python bench/patterns.py [--models yolov8,yolov5,minilm] [--cal 11] [--eval 8]

For each model: `tpu-cal calibrate` (KLD, --tune_num 0) on the calibration samples, writing the pattern qtable
(and, in a second run, the #asym_op block of --part_asymmetric); `tpu-cal lower` for bm1684x in full INT8, with
the pattern qtable, with qtable + asymmetric SiLU/GELU, and with --part_quantize H_mode; then the float and the
lowered module on the evaluation samples (never used for calibration): the output cosine (mean and min per
sample), for YOLO split into the box and the class-score columns of the output.

Models: the YOLOv8- and YOLOv5-style detectors of test/unit/test_real_cnn.py (torch-built, BatchNorm statistics
randomized with seed 1, 160x160) on real photos (bench/common.py: calibration and evaluation photo sets,
resized to 160x160, /255); all-MiniLM-L6-v2 (tpu_cal.zoo.minilm) on CPython's documentation text, passages
that fill all 128 tokens (the export masks padding with -inf, which calibration rejects).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "test", "unit"))
import common  # noqa: E402


def cli(*args):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "tpu_cal.tools.tpu_cal_main", *map(str, args)], capture_output=True,
                       text=True)
    if r.returncode:
        raise SystemExit(f"tpu-cal {args[0]} failed: {r.stderr.strip()}")
    return r.stdout, time.time() - t0


def photos(names, n):
    from PIL import Image
    out = []
    for k in range(n):
        img = common.photo(names[k % len(names)])
        if k >= len(names):
            img = img[:, ::-1]
        im = Image.fromarray(np.ascontiguousarray(img)).resize((160, 160), Image.BILINEAR)
        out.append((np.asarray(im, np.float32) / 255.0).transpose(2, 0, 1))
    return np.stack(out)


def yolo(version, d):
    import torch
    import test_real_cnn as cnn
    from tpu_cal import ir
    from tpu_cal.frontend.onnx_import import ImportOptions, import_onnx
    torch.manual_seed(0)
    model = cnn._make_yolov8(torch) if version == "v8" else cnn._make_yolov5(torch)
    cnn._randomize_bn(torch, model, 1)
    path = os.path.join(d, f"yolo{version}.onnx")
    cnn._export(torch, model, path, 160, "torchscript")
    mlir = os.path.join(d, f"yolo{version}.mlir")
    ir.save_graph(import_onnx(path, ImportOptions(input_shapes=[(1, 3, 160, 160)]), model_name=f"yolo{version}"),
                  mlir)
    return mlir


def minilm(d):
    from tpu_cal import ir
    from tpu_cal.frontend.onnx_import import import_onnx
    from tpu_cal.zoo import minilm as zoo
    mlir = os.path.join(d, "minilm.mlir")
    ir.save_graph(import_onnx(zoo.minilm_onnx(), model_name="minilm"), mlir)
    ids = zoo.tokenize(zoo.texts(700))
    # full-length passages only: the exported mask is where(mask, 0, -inf), and -inf stops calibration
    full = ids["attention_mask"].sum(1) == ids["attention_mask"].shape[1]
    return mlir, {k: v[full] for k, v in ids.items()}


def cos(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def judge(mlir, lowered, feeds, split):
    from tpu_cal import ir
    from tpu_cal.simulate import run_both
    fg, lg = ir.load_graph(mlir), ir.load_graph(lowered)
    out = fg.outputs[0]
    f, q = run_both(fg, lg, feeds, batch_size=4, names=[out])
    f, q = f[out], q[out]
    parts = {"output": (f, q)}
    if split:
        parts = split(f, q)
    return {k: (np.mean([cos(a[i], b[i]) for i in range(len(a))]), min(cos(a[i], b[i]) for i in range(len(a))))
            for k, (a, b) in parts.items()}


def run_model(name, d, n_cal, n_eval):
    os.makedirs(os.path.join(d, "cal"), exist_ok=True)
    if name.startswith("yolo"):
        mlir = yolo(name[4:], d)
        cal = photos(common.CAL_PHOTOS, n_cal)
        feeds = {"images": photos(common.EVAL_PHOTOS, n_eval)}
        for k, x in enumerate(cal):
            np.save(os.path.join(d, "cal", f"s{k}.npy"), x[None])
        if name == "yolov8":     # (N, 4 box + 6 classes, anchors)
            def split(f, q):
                return {"boxes": (f[:, :4], q[:, :4]), "classes": (f[:, 4:], q[:, 4:])}
        else:                    # (N, anchors, xywh + obj + 5 classes)
            def split(f, q):
                return {"boxes": (f[..., :4], q[..., :4]), "classes": (f[..., 4:], q[..., 4:])}
    else:
        mlir, ids = minilm(d)
        for k in range(n_cal):
            np.savez(os.path.join(d, "cal", f"s{k:03d}.npz"), **{key: v[k:k + 1] for key, v in ids.items()})
        feeds = {key: v[n_cal:n_cal + n_eval] for key, v in ids.items()}
        split = None
    cali, asym = os.path.join(d, "m.cali"), os.path.join(d, "asym", "m.cali")
    os.makedirs(os.path.dirname(asym))
    log, t_cal = cli("calibrate", mlir, "--dataset", os.path.join(d, "cal"), "--tune_num", "0", "-o", cali)
    cli("calibrate", mlir, "--dataset", os.path.join(d, "cal"), "--tune_num", "0", "--part_asymmetric", "-o", asym)
    os.makedirs(os.path.join(d, "h"))
    cli("calibrate", mlir, "--dataset", os.path.join(d, "cal"), "--tune_num", "0", "--part_quantize", "H_mode",
        "-o", os.path.join(d, "h", "m.cali"))
    qtable = os.path.join(d, "qtable")
    pattern = next((ln for ln in log.splitlines() if "pattern" in ln and "matches" in ln), "no pattern")
    n_float = sum(1 for ln in open(qtable) if ln.strip() and not ln.startswith("#")) if os.path.exists(qtable) else 0
    n_asym = len(__import__("tpu_cal.formats.cali_table", fromlist=["x"]).read_cali_table(asym).asym)
    n_h = sum(1 for ln in open(os.path.join(d, "h", "qtable")) if ln.strip() and not ln.startswith("#"))
    configs = [("full INT8", cali, None), (f"pattern qtable ({n_float} F16 ops)", cali, qtable),
               (f"pattern qtable + part_asymmetric ({n_asym} asym ops)", asym, qtable),
               (f"part_quantize H_mode ({n_h} F16 ops)", os.path.join(d, "h", "m.cali"), os.path.join(d, "h", "qtable"))]
    rows = []
    for label, table, q in configs:
        if label.startswith("pattern") and not n_float:
            continue
        low = os.path.join(d, f"low{len(rows)}.mlir")
        cli("lower", mlir, "--quantize", "INT8", "--processor", "bm1684x", "--calibration_table", table,
            *(["--quantize_table", q] if q else []), "-o", low)
        rows.append((label, judge(mlir, low, feeds, split)))
    return pattern, t_cal, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="yolov8,yolov5,minilm")
    ap.add_argument("--cal", type=int, default=11)
    ap.add_argument("--eval", type=int, default=8)
    a = ap.parse_args()
    for name in a.models.split(","):
        with tempfile.TemporaryDirectory() as d:
            pattern, t_cal, rows = run_model(name, d, a.cal, a.eval)
        print(f"\n### {name}: {pattern.strip()}; calibrate {t_cal:.1f}s on {a.cal} samples, {a.eval} held out\n")
        keys = list(rows[0][1])
        print("| configuration | " + " | ".join(f"{k} cos mean | {k} cos min" for k in keys) + " |")
        print("|---|" + "---|---|" * len(keys))
        for label, res in rows:
            print(f"| {label} | " + " | ".join(f"{res[k][0]:.5f} | {res[k][1]:.5f}" for k in keys) + " |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
