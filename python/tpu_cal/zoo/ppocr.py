"""PP-OCR ONNX models (Apache-2.0) shipped inside the rapidocr-onnxruntime 1.4.4 wheel.

The file is taken from the installed package when it is importable, else from the wheel itself, downloaded with
`pip download --no-deps` (no OpenCV needed) into the cache and unzipped.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

from . import ModelUnavailable, cache_dir

FILES = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx",
         "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}
WHEEL = "rapidocr-onnxruntime==1.4.4"


def ppocr(kind: str) -> str:
    """Path of the PP-OCR model `kind` (det, rec or cls)."""
    fname = FILES[kind]
    target = os.path.join(cache_dir("ppocr"), fname)
    if os.path.exists(target):
        return target
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec and spec.submodule_search_locations:
        src = os.path.join(list(spec.submodule_search_locations)[0], "models", fname)
        if os.path.exists(src):
            shutil.copyfile(src, target + ".part")
            os.replace(target + ".part", target)
            return target
    wheels = cache_dir("ppocr", "wheel")
    found = glob.glob(os.path.join(wheels, "rapidocr_onnxruntime-1.4.4-*.whl"))
    if not found:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", wheels, WHEEL],
                           capture_output=True, text=True)
        found = glob.glob(os.path.join(wheels, "rapidocr_onnxruntime-1.4.4-*.whl"))
        if r.returncode or not found:
            raise ModelUnavailable(f"cannot download {WHEEL}: {r.stderr.strip()[-300:]}")
    with zipfile.ZipFile(found[0]) as z, open(target + ".part", "wb") as out:
        out.write(z.read(f"rapidocr_onnxruntime/models/{fname}"))
    os.replace(target + ".part", target)
    return target


if __name__ == "__main__":   # `python -m tpu_cal.zoo.ppocr cls` prints the model's path
    print(ppocr(sys.argv[1] if len(sys.argv) > 1 else "cls"))
