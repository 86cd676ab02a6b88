"""interp.workers: the cut matmul gives np.matmul's values, and BLAS stays single-threaded while the interpreter
runs (its spinning threads would take the cores from the kernels' pieces)."""
import numpy as np
import pytest

from tpu_cal.graph import Graph, Node
from tpu_cal.interp import workers
from tpu_cal.interp.core import Interpreter, Listener


@pytest.mark.parametrize("sa,sb", [
    ((300, 200), (200, 150)),            # rows cut
    ((3, 130, 256), (256, 90)),          # one b matrix: a's batch folded into its rows
    ((8, 4, 128, 64), (8, 4, 64, 128)),  # rows cut, both batched
    ((16, 3, 256), (16, 256, 1024)),     # both batched: the batch axis is cut
    ((1, 6, 3, 256), (6, 256, 2100)),    # a single leading batch: rows of each product cut
    ((4, 1, 3, 256), (6, 256, 700)),     # few rows, broadcast batch axes
    ((6, 3, 400), (400, 1800)),          # one b matrix, few rows
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_matches_numpy(sa, sb, dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(sa).astype(dtype)
    b = rng.standard_normal(sb).astype(dtype)
    want = np.matmul(a, b)
    with workers.blas_single():
        got = workers.matmul(a, b)
    assert got.shape == want.shape and got.dtype == want.dtype
    # each element is one BLAS dot over the whole inner axis either way, but a piece of one row may take BLAS's
    # matrix-vector kernel, which rounds its sums in another order: a few ulps of the result's scale
    scale = float(np.abs(want).max())
    eps = float(np.finfo(dtype).eps)
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * eps * scale)
    # deterministic: the cut depends on the shapes only
    np.testing.assert_array_equal(got, workers.matmul(a, b))
    assert got.size * a.shape[-1] >= workers._MATMUL_SPLIT_FLOPS     # the case is cut, not passed through


def test_matmul_small_and_odd_inputs_fall_through():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(workers.matmul(a, b), a @ b)
    v = np.ones(3, np.float32)
    np.testing.assert_array_equal(workers.matmul(a, v), a @ v)            # matrix @ vector
    ai = np.arange(6, dtype=np.int64).reshape(2, 3)
    np.testing.assert_array_equal(workers.matmul(ai, ai.T), ai @ ai.T)    # integers: numpy's own loop


def _blas_threads():
    """Thread counts of the OpenBLAS libraries the interpreter holds (numpy's)."""
    with workers.blas_single():
        pass
    return [int(get()) for get, _ in workers._BLAS.libs]


def test_interpreter_runs_with_single_threaded_blas():
    before = _blas_threads()
    if not before:
        pytest.skip("no OpenBLAS found in this process (another BLAS): nothing to hold")
    seen = []

    class Probe(Listener):
        def after_op(self, node, inputs, output):
            seen.append(_blas_threads())

    x = Node("top.input", "x", [], {}, [64, 64], "float32")
    w = Node("top.weight", "w", [], {"name": "w"}, [64, 64], "float32")
    mm = Node("top.matmul", "y", ["x", "w", None], {}, [64, 64], "float32")
    g = Graph("m", ["x"], ["y"], [x, w, mm], {"w": np.eye(64, dtype=np.float32)}, {})
    xv = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    y = Interpreter(g, [Probe()]).run({"x": xv})["y"]
    np.testing.assert_array_equal(y, xv)
    assert seen and all(all(n == 1 for n in s) for s in seen)
    assert _blas_threads() == before          # restored after the run
