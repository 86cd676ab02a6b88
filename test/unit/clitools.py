"""Helpers shared by the test files: running our console commands in a subprocess (as a user does), and the
bundled PP-OCR classifier transformed and calibrated once on text-line crops of scikit-image's page."""
from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest


def _run(module: str, args, cwd=None):
    r = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=cwd)
    return r.returncode, r.stdout, r.stderr


def run_cli(*args, cwd=None):
    """`tpu-cal ARGS` -> (exit code, stdout, stderr)."""
    return _run("tpu_cal.tools.tpu_cal_main", args, cwd)


def run_opt(*args, cwd=None):
    """`tpu-cal-opt ARGS` -> (exit code, stdout, stderr)."""
    return _run("tpu_cal.tools.tpu_cal_opt", args, cwd)


def require_native():
    """The loaded native kernel library. A skip that prints why when there is no compiler or TPU_CAL_NO_NATIVE is
    set; a failure when a compiler exists but the kernels do not build or load."""
    from tpu_cal import native
    reason = native.unavailable_reason()
    if reason and (native.disabled() or native.find_compiler() is None):
        print(f"native kernels unavailable: {reason}")
        pytest.skip(f"native kernels unavailable: {reason}")
    assert reason is None, f"a C compiler exists ({native.find_compiler()}) but the kernels are unavailable: {reason}"
    return native.stats_library()


def assert_clean_error(rc, err, *needles):
    """A user error: exit code 2, no traceback, exactly one line on stderr, naming each of `needles`."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def page_crops(folder, n=4):
    """n horizontal strips of scikit-image's page.png and their 180-degree turns, as PNGs."""
    sk_data = pytest.importorskip("skimage.data", reason="scikit-image provides the text image")
    from PIL import Image
    page = sk_data.page()
    os.makedirs(folder, exist_ok=True)
    for k in range(n):
        strip = np.ascontiguousarray(page[k * 45:k * 45 + 45])
        Image.fromarray(strip).save(os.path.join(folder, f"line{k}.png"))
        Image.fromarray(np.ascontiguousarray(strip[::-1, ::-1])).save(os.path.join(folder, f"line{k}_180.png"))


def calibrated_cls(d) -> SimpleNamespace:
    """PP-OCR cls in folder d: transformed (cls.mlir), calibrated with KLD + 2 tune samples (cls.cali and the
    calibrated module cls_cal.mlir) on page crops (d/crops); skips when the model cannot be had."""
    from tpu_cal.zoo import ModelUnavailable
    from tpu_cal.zoo.ppocr import ppocr
    try:
        model = ppocr("cls")
    except ModelUnavailable as e:
        pytest.skip(f"model unavailable: {e}")
    page_crops(str(d / "crops"))
    rc, _, err = run_cli("transform", "--model_name", "cls", "--model_def", model, "--mlir", d / "cls.mlir",
                         "--input_shapes", "[[1,3,48,192]]", "--mean", "127.5,127.5,127.5",
                         "--scale", "0.0078431,0.0078431,0.0078431", "--pixel_format", "bgr")
    assert rc == 0, err
    rc, _, err = run_cli("calibrate", d / "cls.mlir", "--dataset", d / "crops", "-o", d / "cls.cali",
                         "--tune_num", "2", "--save_mlir", d / "cls_cal.mlir")
    assert rc == 0, err
    return SimpleNamespace(dir=d, mlir=d / "cls.mlir", cal_mlir=d / "cls_cal.mlir", table=d / "cls.cali")


def search_engine(model_dir, method: str, batch_size: int, workers: int = 1, **kw):
    """(graph, calibration result, 8 inference feeds, search Engine) of the `m.mlir` and `ds/` in `model_dir`,
    calibrated with `method` (no auto-tune)."""
    from tpu_cal import ir
    from tpu_cal.calibration import CalibrationConfig, calibrate_graph
    from tpu_cal.dataset import Dataset
    from tpu_cal.preprocess import Preprocess
    from tpu_cal.search.common import inference_feeds
    from tpu_cal.search.engine import Engine
    g = ir.load_graph(str(model_dir / "m.mlir"))
    nodes = g.node_map()
    ds = Dataset([nodes[i] for i in g.inputs], Preprocess.from_attrs(g.attrs.get("preprocess")),
                 str(model_dir / "ds"))
    res = calibrate_graph(g, ds, CalibrationConfig(method=method, tune_num=0))
    feeds, _ = inference_feeds(ds, 8)
    return g, res, feeds, Engine(g, res.table, "bm1684x", feeds, workers=workers, batch_size=batch_size,
                                 show_progress=False, **kw)


def independent_cos(g, table, feeds, modes, default: str = "INT8", reference=None) -> float:
    """Mean per-sample output cosine of `g` lowered as `tpu-cal lower` does (bm1684x), run in full, against the
    float run of `reference` (default `g`): the independent check of the searches' scores."""
    import copy
    from tpu_cal.calibration import attach
    from tpu_cal.formats.qtable import QTable
    from tpu_cal.interp.core import Interpreter
    from tpu_cal.lowering import assign_precision, lower
    from tpu_cal.metrics import cosine
    from tpu_cal.simulate import real_value
    ref = Interpreter(reference or g).run(feeds)[g.outputs[0]]
    g = copy.deepcopy(g)
    attach(g, table)
    assign_precision(g, "bm1684x", default, QTable(modes=dict(modes)))
    low = lower(g, "bm1684x")
    out = low.outputs[0]
    q = real_value(low.node_map()[out], Interpreter(low).run(feeds)[out])
    return float(np.mean([cosine(ref[i], q[i]) for i in range(ref.shape[0])]))
