"""The interpreter's worker threads, and BLAS's own threads kept out of their way.

Kernels cut their work into independent pieces and run them on a small pool (`parallel`: the calling thread and
up to three helpers; numpy and the C kernels release the GIL). BLAS calls run single-threaded while the
interpreter runs (`blas_single`, which `Interpreter.run` holds): a multithreaded OpenBLAS call leaves its threads
spinning for about 0.1 s after it returns, and on two cores they take the CPU from the next op's pieces
(measured on EfficientNet-Lite0 at batch 16: 204 ms a batch back to back, 166 ms with BLAS single-threaded). A
big matmul is cut into pieces on the pool instead (`matmul`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_POOL = None


def pool() -> ThreadPoolExecutor | None:
    """Helper threads for chunked loops (numpy releases the GIL inside ufunc and BLAS calls)."""
    global _POOL
    if _POOL is not None:
        return _POOL
    n = min(os.cpu_count() or 1, 4) - 1     # the calling thread works too
    if n <= 0:
        return None
    _POOL = ThreadPoolExecutor(n, thread_name_prefix="tpu_cal_kernel")
    return _POOL


def _forget_pool():
    global _POOL
    _POOL = None


# a forked child (the searches' worker processes) inherits the pool object but not its threads: start afresh
os.register_at_fork(after_in_child=_forget_pool)


def parallel(fn, items):
    """Runs fn(item) for every item on the calling thread and the helpers; each takes the next item when it is
    done with one (dynamic scheduling: a core slowed by other load just takes fewer items)."""
    helpers = pool()
    if helpers is None or len(items) < 2:
        for it in items:
            fn(it)
        return
    todo = iter(items)      # list iterators hand out items atomically under the GIL

    def worker():
        for it in todo:
            fn(it)

    futures = [helpers.submit(worker) for _ in range(min(helpers._max_workers, len(items) - 1))]
    try:
        worker()
    finally:
        for f in futures:
            f.result()


def chunks(total: int, per: int):
    per = max(1, int(per))
    return [(a, min(total, a + per)) for a in range(0, total, per)]


class _BlasThreads:
    """OpenBLAS thread counts (numpy's BLAS, and scipy's when loaded), settable around a block.

    Our kernels split big matmuls into independent pieces and run them on the worker threads with single-threaded
    BLAS calls. A multithreaded BLAS call synchronises its threads on every call; on a loaded machine each sync
    can wait a scheduler time slice, which made the per-sample matmuls of a pointwise conv 10-30x slower. The
    libraries are found through /proc/self/maps (Linux); elsewhere, or with another BLAS, this does nothing and
    BLAS keeps its own threads.
    """

    def __init__(self):
        self.libs = []      # (getter, setter) per OpenBLAS library in the process
        try:
            import ctypes
            with open("/proc/self/maps") as f:
                paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
            for path in paths:
                lib = ctypes.CDLL(path)
                for pre, suf in (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", "")):
                    setter = getattr(lib, f"{pre}openblas_set_num_threads{suf}", None)
                    getter = getattr(lib, f"{pre}openblas_get_num_threads{suf}", None)
                    if setter is not None and getter is not None:
                        getter.restype = ctypes.c_int
                        setter.argtypes = [ctypes.c_int]
                        self.libs.append((getter, setter))
                        break
        except Exception:   # no /proc, no ctypes, an unexpected BLAS: keep the defaults
            self.libs = []

    def single(self):
        return _BlasSingle(self.libs)


class _BlasSingle:
    def __init__(self, libs):
        self.libs, self.prev = libs, []

    def __enter__(self):
        for get, set_ in self.libs:
            n = int(get())
            if n > 1:
                set_(1)
                self.prev.append((set_, n))
        return self

    def __exit__(self, *exc):
        for set_, n in self.prev:
            set_(n)
        self.prev = []
        return False


_BLAS = None


def blas_single():
    """Context: BLAS calls single-threaded (our worker threads give the parallelism)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = _BlasThreads()
    return _BLAS.single()


def workers() -> int:
    helpers = pool()
    return 1 + (helpers._max_workers if helpers is not None else 0)


def matmul_items(fn, items):
    """Runs independent matmul pieces on the worker threads, BLAS single-threaded meanwhile."""
    if len(items) >= 2 and workers() > 1:
        with blas_single():
            parallel(fn, items)
    else:
        for it in items:
            fn(it)


_MATMUL_SPLIT_FLOPS = 1 << 23      # multiply-adds below which a matmul is not worth a thread hand-off


def matmul(a, b) -> np.ndarray:
    """np.matmul(a, b), cut into pieces run on the pool with single-threaded BLAS: by rows when b is one matrix
    (a's batch axes folded into its rows: one big product per piece), else along the leading batch axis, else by
    rows of each product. The cut depends only on the shapes, so results are deterministic; each element is
    one BLAS dot over the whole inner axis, as in the uncut call."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim < 2 or b.ndim < 2 or workers() < 2 or a.dtype != b.dtype or a.dtype.kind != "f":
        return np.matmul(a, b)
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    if int(np.prod(lead, dtype=np.int64)) * M * N * K < _MATMUL_SPLIT_FLOPS:
        return np.matmul(a, b)
    out = np.empty(lead + (M, N), a.dtype)
    pieces = 2 * workers()
    if b.ndim == 2 and a.flags.c_contiguous:
        a, o = a.reshape(-1, K), out.reshape(-1, N)

        def work(r):
            np.matmul(a[r[0]:r[1]], b, out=o[r[0]:r[1]])
        rows = a.shape[0]
    elif lead and lead[0] >= pieces:
        a = np.broadcast_to(a, lead + a.shape[-2:])
        b = np.broadcast_to(b, lead + b.shape[-2:])

        def work(r):
            np.matmul(a[r[0]:r[1]], b[r[0]:r[1]], out=out[r[0]:r[1]])
        rows = lead[0]
    else:
        def work(r):
            np.matmul(a[..., r[0]:r[1], :], b, out=out[..., r[0]:r[1], :])
        rows = M
    matmul_items(work, chunks(rows, -(-rows // pieces)))
    return out
