"""Statistics kernel speed: `TensorStats.update` with the C kernel (tpu_cal.native) against the numpy path.

    python bench/stats.py [--repeat 15] [--calibrate DIR [--runs 3]]

Times update() on a 32x144x56x56 float32 tensor (14.45 M values, the size of an EfficientNet-Lite0 activation
for a batch of 32), for two kinds of data (Gaussian; ReLU6 output, half of it zeros) with higher moments on and
off, on both paths alternately (TPU_CAL_NO_NATIVE=1 forces numpy), each on a TensorStats that has already seen the
tensor (range fixed, no growth). Reports best and median of --repeat and the ratio of the bests; checks that both
paths give the same histogram.

--calibrate DIR: also runs `tpu-cal calibrate efficientnet_lite0.mlir --dataset ds32 --tune_num 0` in DIR with
and without TPU_CAL_NO_NATIVE=1, alternately, --runs times each, and reports the time the command prints (best and
median), the time spent inside TensorStats.update (wall, and CPU time of the calling thread, which background
load disturbs less) and whether the two tables are identical. The command runs in a child process through the
CLI's own entry point, with update() wrapped to time it.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

SHAPE = (32, 144, 56, 56)


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    return {"gaussian": x, "relu6": np.clip(x * 3, 0, 6)}


def time_update(x: np.ndarray, moments: bool, numpy_path: bool, repeat: int) -> tuple[list[float], object]:
    from tpu_cal.stats import TensorStats
    if numpy_path:
        os.environ["TPU_CAL_NO_NATIVE"] = "1"
    else:
        os.environ.pop("TPU_CAL_NO_NATIVE", None)
    st = TensorStats(2048, moments=moments)
    st.update(x)                    # fixes the range; the timed calls add the same tensor again
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        st.update(x)
        times.append(time.perf_counter() - t)
    os.environ.pop("TPU_CAL_NO_NATIVE", None)
    return times, st


def bench_update(repeat: int) -> None:
    from tpu_cal import native
    reason = native.unavailable_reason()
    if reason:
        sys.exit(f"native kernel unavailable: {reason}")
    print(f"TensorStats.update on {'x'.join(map(str, SHAPE))} float32 ({np.prod(SHAPE) / 1e6:.2f} M values), "
          f"2048 bins, best / median of {repeat} (ms)\n")
    print("| data | moments | numpy | native | numpy / native |")
    print("|---|---|---|---|---|")
    for name, x in tensors().items():
        for moments in (True, False):
            res = {"numpy": [], "native": []}
            hists = {}
            for _ in range(3):      # alternate the paths in rounds, so background load hits both alike
                for path in res:
                    t, st = time_update(x, moments, path == "numpy", max(repeat // 3, 1))
                    res[path] += t
                    hists[path] = st.hist
            assert np.array_equal(hists["numpy"], hists["native"]), "the paths disagree"
            b = {p: min(t) * 1e3 for p, t in res.items()}
            m = {p: statistics.median(t) * 1e3 for p, t in res.items()}
            print(f"| {name} | {'M2-M4' if moments else 'M2'} | {b['numpy']:.1f} / {m['numpy']:.1f} | "
                  f"{b['native']:.1f} / {m['native']:.1f} | **{b['numpy'] / b['native']:.2f}x** |")


# the CLI with TensorStats.update timed: prints "update: <wall s> <cpu s>" when it is done
_TIMED_CLI = """
import sys, time
from tpu_cal import stats
orig, acc = stats.TensorStats.update, [0.0, 0.0]
def update(self, x):
    w, c = time.perf_counter(), time.thread_time()
    try:
        return orig(self, x)
    finally:
        acc[0] += time.perf_counter() - w
        acc[1] += time.thread_time() - c
stats.TensorStats.update = update
from tpu_cal.tools.tpu_cal_main import main
sys.argv[0] = "tpu-cal"
try:
    main()
finally:
    print(f"update: {acc[0]} {acc[1]}")
"""


def bench_calibrate(folder: str, runs: int) -> None:
    times = {"numpy": [], "native": []}
    upd = {"numpy": [], "native": []}
    tables = {}
    out = tempfile.mkdtemp(prefix="bench_stats_")
    for _ in range(runs):
        for path in times:
            env = dict(os.environ)
            env.pop("TPU_CAL_NO_NATIVE", None)
            if path == "numpy":
                env["TPU_CAL_NO_NATIVE"] = "1"
            table = os.path.join(out, f"{path}.cali")
            r = subprocess.run([sys.executable, "-c", _TIMED_CLI, "calibrate", "efficientnet_lite0.mlir",
                                "--dataset", "ds32", "--tune_num", "0", "-o", table],
                               cwd=folder, env=env, capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"tpu-cal calibrate failed:\n{r.stderr}")
            lines = (r.stdout + r.stderr).splitlines()
            line = [ln for ln in lines if "calibrated" in ln][-1]
            times[path].append(float(re.search(r" in ([0-9.]+) ?s", line).group(1)))
            upd[path].append([float(v) for v in [ln for ln in lines if ln.startswith("update: ")][-1].split()[1:]])
            with open(table) as f:
                tables[path] = [ln for ln in f if not ln.startswith("#")]
            time.sleep(0.5)
    print(f"\ntpu-cal calibrate, EfficientNet-Lite0, 32 samples, --tune_num 0 ({runs} runs each; seconds the "
          f"command prints)\n")
    print("| path | command s, best | median | in update() wall s, best | median | update() CPU s, best | median |")
    print("|---|---|---|---|---|---|---|")
    for path, t in times.items():
        w, c = [u[0] for u in upd[path]], [u[1] for u in upd[path]]
        print(f"| {path} | {min(t):.2f} | {statistics.median(t):.2f} | {min(w):.2f} | {statistics.median(w):.2f} | "
              f"{min(c):.2f} | {statistics.median(c):.2f} |")
    print(f"\nbest numpy / best native: {min(times['numpy']) / min(times['native']):.2f}x; tables "
          f"{'identical' if tables['numpy'] == tables['native'] else 'DIFFER'}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--calibrate", metavar="DIR", help="folder with efficientnet_lite0.mlir and ds32/")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args(argv)
    bench_update(a.repeat)
    if a.calibrate:
        bench_calibrate(a.calibrate, a.runs)


if __name__ == "__main__":
    main()
