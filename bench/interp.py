"""Interpreter speed: a batch of EfficientNet-Lite0 samples through our interpreter and through ONNX Runtime.

    python bench/interp.py [--batch 32] [--repeat 5] [--per-op]

Both run in the same process on the same batch (real scikit-image photos, the model's preprocessing), after one
warm-up run each, alternating with short pauses so background load hits both alike. Reports the best and median
wall time of each and the ratio of the medians (target: ours at most 3x ONNX Runtime). --per-op adds a per-op-type
breakdown (each op's fastest time over the repeats, listener overhead included).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def images(n: int) -> np.ndarray:
    import skimage.data as data
    from tpu_cal.zoo import efficientnet as eff
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.cat(), data.immunohistochemistry()]
    out = []
    for k in range(n):   # shifted crops, so the samples differ
        img = photos[k % len(photos)]
        dy, dx = (k // len(photos)) * 7 % 40, (k // len(photos)) * 11 % 40
        out.append(eff.preprocess(img[dy:, dx:]))
    return np.stack(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--per-op", action="store_true")
    a = ap.parse_args(argv)

    import onnxruntime as ort
    from tpu_cal.frontend.onnx_import import ImportOptions, import_onnx
    from tpu_cal.interp.core import Interpreter, Listener
    from tpu_cal.zoo import efficientnet as eff

    path = eff.efficientnet_lite0()
    x = images(a.batch)
    t = time.perf_counter()
    graph = import_onnx(path, ImportOptions(input_shapes=[(1, 3, eff.SIZE, eff.SIZE)], test_input={eff.INPUT: x[:1]}))
    t_import = time.perf_counter() - t
    interp = Interpreter(graph)
    # what calibration runs: each conv + ReLU6 as one op, the activation applied to each piece in cache
    from tpu_cal.calibration import fused_view
    fused = Interpreter(fused_view(graph)[0])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {eff.INPUT: x}

    ours = interp.run(feeds)[graph.outputs[0]]       # warm-up (and the correctness check below)
    ref = sess.run(None, feeds)[0]
    same = np.array_equal(fused.run(feeds)[graph.outputs[0]], ours)
    t_ours, t_ort, t_fused = [], [], []
    for _ in range(a.repeat):
        # pauses let idle BLAS / ORT worker threads stop spinning, so neither run pays for the other's threads
        time.sleep(0.3)
        t = time.perf_counter()
        interp.run(feeds)
        t_ours.append(time.perf_counter() - t)
        time.sleep(0.3)
        t = time.perf_counter()
        sess.run(None, feeds)
        t_ort.append(time.perf_counter() - t)
        time.sleep(0.3)
        t = time.perf_counter()
        fused.run(feeds)
        t_fused.append(time.perf_counter() - t)
    err = float(np.abs(ours - ref).max())
    cos = float((ours.ravel() @ ref.ravel()) / (np.linalg.norm(ours) * np.linalg.norm(ref)))
    m_ours, m_ort = statistics.median(t_ours), statistics.median(t_ort)
    print(f"EfficientNet-Lite0, batch {a.batch}, {os.cpu_count()} cores, numpy {np.__version__}, "
          f"onnxruntime {ort.__version__}")
    print(f"import (batch 1, with constant folding): {t_import:.2f} s")
    print(f"ours:         best {min(t_ours) * 1e3:7.1f} ms   median {m_ours * 1e3:7.1f} ms")
    print(f"onnxruntime:  best {min(t_ort) * 1e3:7.1f} ms   median {m_ort * 1e3:7.1f} ms")
    print(f"ratio (median ours / median ORT): {m_ours / m_ort:.2f}x   (best/best {min(t_ours) / min(t_ort):.2f}x)")
    m_fused = statistics.median(t_fused)
    print(f"ours, conv + ReLU6 fused (calibration's view): best {min(t_fused) * 1e3:7.1f} ms   median "
          f"{m_fused * 1e3:7.1f} ms: {m_fused / m_ort:.2f}x ORT (median), outputs {'identical' if same else 'DIFFER'}")
    print(f"agreement with ORT: cosine {cos:.8f}, max abs error {err:.3g}")

    if a.per_op:
        class Timer(Listener):
            """Per op: the fastest of the runs (background load only ever adds time)."""
            after_op_reads_inputs = False      # reads no operand: ops may run in place, as without it

            def __init__(self):
                self.best: dict[str, float] = {}
                self.kind: dict[str, str] = {}

            def before_op(self, node, inputs):
                self.t0 = time.perf_counter()

            def after_op(self, node, inputs, output):
                dt = time.perf_counter() - self.t0
                self.best[node.name] = min(self.best.get(node.name, dt), dt)
                key = node.op
                if node.op == "top.conv":
                    k = node.attrs["kernel_shape"]
                    kind = "depthwise" if node.attrs["group"] > 1 else ("1x1" if k == [1, 1] else "full")
                    key = f"top.conv {kind} {k[0]}x{k[1]}"
                self.kind[node.name] = key

        tm = Timer()
        timed = Interpreter(graph, [tm])
        for _ in range(a.repeat):
            time.sleep(0.3)
            timed.run(feeds)
        acc: dict[str, float] = {}
        for name, t in tm.best.items():
            acc[tm.kind[name]] = acc.get(tm.kind[name], 0.0) + t
        total = sum(acc.values())
        print(f"per op type, sum over ops of each op's fastest of {a.repeat} runs ({total * 1e3:.1f} ms in all):")
        for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
            print(f"  {k:26s} {v * 1e3:8.1f} ms  {100 * v / total:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
