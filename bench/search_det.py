"""Benchmark of search_qtable on PP-OCRv4 det at 640x640 with 30 inference samples, the case the issue gives
TPU-MLIR's speed for (about 2 layers a minute: about 90 minutes for its 185 layers on this machine kind).

    python bench/search_det.py [--samples 30] [--expected 0.99] [--max_float_layers 5] [--workers 0]
                               [--post_process examples/ppocr_det/text_mask_post.py] [--write]

The module is PP-OCRv4 det (the zoo's ONNX) transformed for 640x640 as `bench/lower.py` does; the samples are
crops and flips of the text and coin photos scikit-image ships (deterministic). The whole `tpu-cal calibrate
--search search_qtable` command (calibration included) runs in a measured child process: wall time, peak RSS,
evaluations, the layers searched, float layers found and the cosine reached on the inference samples. With
`--post_process`, the search compares what that file's PostProcess makes of the output (the text masks: section
"Search on PP-OCRv4 det, text masks").
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import calibrate as C  # noqa: E402
import common  # noqa: E402
import qdq_judge as J  # noqa: E402

TPU_MLIR_S = 90 * 60.0      # the issue: about 90 minutes on PP-OCRv4 det with 30 inference samples
TPU_MLIR_LAYERS = 185


def det_samples(folder: str, n: int) -> str:
    """n 640x640-ish crops (and their mirror images) of scikit-image's page, text and coins photos."""
    import skimage.data as sk
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    photos = [sk.page(), sk.text(), sk.coins(), sk.camera()]
    for k in range(n):
        img = photos[k % len(photos)]
        hh, ww = img.shape[:2]
        rng = np.random.default_rng(1000 + k)       # sample k is the same whatever n
        if k < len(photos):
            crop = img                              # each photo once whole
        else:                                       # then crops of 40-100 % of the area, mirrored at random
            area = rng.uniform(0.4, 1.0) * hh * ww
            aspect = rng.uniform(0.75, 1.33)
            ch, cw = min(hh, int(np.sqrt(area / aspect))), min(ww, int(np.sqrt(area * aspect)))
            y0, x0 = int(rng.integers(0, hh - ch + 1)), int(rng.integers(0, ww - cw + 1))
            crop = img[y0:y0 + ch, x0:x0 + cw]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).save(os.path.join(folder, f"det{k:02d}.png"))
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--expected", type=float, default=0.99)
    p.add_argument("--max_float_layers", type=int, default=5)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--post_process", default="", help="a PostProcess file for the search's comparison")
    p.add_argument("--write", action="store_true", help="write the '## Search on PP-OCRv4 det' section")
    a = p.parse_args(argv)
    from tpu_cal.zoo import cache_dir
    from tpu_cal.zoo.ppocr import ppocr
    work = cache_dir("bench", "search_det_post" if a.post_process else "search_det")
    mlir = os.path.join(work, "det.mlir")
    r = J.run_measured(C.tpu_cal_exe() + [
        "transform", "--model_name", "det", "--model_def", ppocr("det"), "--input_shapes", "[[1,3,640,640]]",
        "--mean", "123.675,116.28,103.53", "--scale", "0.01712,0.0175,0.01743", "--pixel_format", "rgb",
        "--mlir", mlir])
    if r.rc != 0:
        raise SystemExit(f"transform failed: {r.stderr.strip().splitlines()[-1:]}")
    ds = det_samples(os.path.join(work, "ds"), a.samples)
    cmd = C.tpu_cal_exe() + ["calibrate", mlir, "--dataset", ds, "--input_num", str(a.samples), "--tune_num", "0",
                             "--inference_num", str(a.samples), "--workers", str(a.workers),
                             "--search", "search_qtable", "--expected_cos", str(a.expected),
                             "--max_float_layers", str(a.max_float_layers),
                             "--quantize_table", os.path.join(work, "qtable"), "-o", os.path.join(work, "cali")]
    if a.post_process:
        cmd += ["--post_process", os.path.abspath(a.post_process)]
    print("running:", " ".join(cmd[cmd.index("calibrate"):]), flush=True)
    m = J.run_measured(cmd)
    if m.rc not in (0, 1):
        raise SystemExit(f"search failed (rc {m.rc}): {m.stderr.strip().splitlines()[-1:]}")
    ev = re.search(r"\((\d+) evaluations in ([0-9.]+)s", m.stdout)
    cos = dict(re.findall(r"^(int8 outputs_cos|mix model outputs_cos):([0-9.]+)", m.stdout, re.M))
    with open(os.path.join(work, "Search_Qtable")) as f:
        log = f.read()
    layers = int(re.search(r"all search layer number: (\d+)", log).group(1))
    floats = re.findall(r"^\S+\s+\|\s+(?:F16|BF16|F32)\s+\|", m.stdout, re.M)
    evals, search_s = (int(ev.group(1)), float(ev.group(2))) if ev else (0, float("nan"))
    rows = [
        ["ours", f"{m.wall_s:.0f}", f"{TPU_MLIR_S / m.wall_s:.1f}x", layers, f"{evals / search_s:.2f}",
         len(floats), cos.get("int8 outputs_cos", "?"), cos.get("mix model outputs_cos", "?"), f"{m.peak_rss_mb:.0f}"],
        ["TPU-MLIR (issue)", f"{TPU_MLIR_S:.0f}", "1.0x", TPU_MLIR_LAYERS, f"{2 / 60:.2f}", "", "", "", ""],
    ]
    head = ["run", "wall s", "vs TPU-MLIR", "layers searched", "evaluations/s", "float layers",
            "cos full int8", "cos mix", "peak RSS MB"]
    table = C.md_table(head, rows)
    print(table)
    if m.stderr.strip():
        print("\n".join(ln for ln in m.stderr.splitlines() if ln.startswith(("note", "warning"))))
    if a.write:
        flags = f" --post_process {a.post_process}" if a.post_process else ""
        body = (f"`python bench/search_det.py{flags}` ({datetime.date.today()}; PP-OCRv4 det at 640x640, {a.samples} "
                f"calibration = inference samples, expected_cos {a.expected}, max_float_layers "
                f"{a.max_float_layers}; the whole calibrate command, calibration included; load "
                f"{os.getloadavg()[0]:.1f} after the run)\n\n{table}\n")
        common.write_section(os.path.join(HERE, "RESULTS.md"), "Search on PP-OCRv4 det" +
                             (", text masks" if a.post_process else ""), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
