"""Native kernels: three C files (stats_kernel.c, the statistics of `tpu_cal.stats`; conv_kernel.c, the depthwise
convolution of the interpreter; elementwise_kernel.c, its hardswish, int8 table lookups and requantization) and
the header they share (vector.h), compiled together on first use with the system C compiler and loaded with ctypes.

The shared library goes to the cache folder (``tpu_cal.zoo.cache_dir("native")``), named by a hash of the sources
and the header, the compiler, the flags and, for a build tuned to this CPU, the CPU's instruction-set features, so
an edited source gets a fresh build and a cache shared between machines never loads a library built for
instructions the CPU lacks. Each build writes a temporary file of its own and renames it into place, so processes
building at the same time never see a partial file.

Flags: ``-O3 -ffp-contract=off`` plus ``-march=native`` where the CPU's features are known (/proc/cpuinfo) and the
compiler accepts it (AVX2 / AVX-512 vectors on x86-64: the kernels pick their vector width at compile time);
otherwise, or with TPU_CAL_NATIVE_PORTABLE=1, the portable flags alone (128-bit vectors, any machine of the
architecture). No FMA contraction and no fast-math in either: every build gives the same bits.

`stats_library()` (the same library under its first name) returns the loaded library, or None when the numpy
paths are to be used: TPU_CAL_NO_NATIVE=1 (set, not empty, not 0), or no compiler, or a failed build or load. A
failure is reported once per process, in one line on stderr; nothing raises.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = tuple(os.path.join(HERE, f) for f in ("stats_kernel.c", "conv_kernel.c", "elementwise_kernel.c"))
HEADERS = (os.path.join(HERE, "vector.h"),)      # included by the sources: part of the cache key too
FLAGS = ("-std=c99", "-O3", "-ffp-contract=off", "-fPIC", "-shared")    # portable: any machine of the architecture
TUNED = ("-march=native",)          # added where the CPU's features key the build (see `cpu_features`)

# the loaded library; a str says why there is none (reported once); None: not tried yet
_lib: ctypes.CDLL | str | None = None


def find_compiler() -> str | None:
    """Path of the C compiler: $CC, else Python's own (sysconfig CC), else cc, gcc or clang on PATH."""
    names = [os.environ.get("CC", ""), (sysconfig.get_config_var("CC") or ""), "cc", "gcc", "clang"]
    for name in names:
        name = name.split()[0] if name.split() else ""
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def disabled() -> bool:
    return os.environ.get("TPU_CAL_NO_NATIVE", "") not in ("", "0")


def portable_only() -> bool:
    return os.environ.get("TPU_CAL_NATIVE_PORTABLE", "") not in ("", "0")


def cpu_features() -> str | None:
    """This CPU's instruction-set features (the flags line of /proc/cpuinfo on x86, Features on ARM), sorted;
    None where they cannot be read (then only the portable build is used)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features") and value.split():
                    return " ".join(sorted(value.split()))
    except OSError:
        pass
    return None


def _build(tuned: bool) -> str:
    """Path of the shared library in the cache folder, compiled first if it is not there yet. tuned: with
    `TUNED` flags, keyed by `cpu_features()` (the caller checks that they are known)."""
    from ..zoo import cache_dir
    cc = find_compiler()
    if cc is None:
        raise RuntimeError("no C compiler found ($CC, cc, gcc, clang)")
    sources = []
    for src in SOURCES + HEADERS:
        with open(src, "rb") as f:
            sources.append(f.read())
    flags = FLAGS + TUNED if tuned else FLAGS
    cpu = (cpu_features() or "").encode() if tuned else b""
    key = hashlib.sha256(b"\0".join([*sources, cc.encode(), " ".join(flags).encode(),
                                     platform.machine().encode(), platform.system().encode(), cpu]))
    folder = cache_dir("native")
    path = os.path.join(folder, f"tpu_cal_native-{key.hexdigest()[:16]}.so")
    if os.path.exists(path):
        return path
    fd, tmp = tempfile.mkstemp(prefix=".tpu_cal_native-", suffix=".so.tmp", dir=folder)
    os.close(fd)
    try:
        try:
            r = subprocess.run([cc, *flags, "-I", HERE, "-o", tmp, *SOURCES], capture_output=True, text=True,
                               timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise RuntimeError(f"cannot run {cc}: {e}") from None
        if r.returncode:
            last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            raise RuntimeError(f"{cc} failed: {last}")
        os.chmod(tmp, 0o755)           # mkstemp made it private
        os.replace(tmp, path)          # atomic: a reader sees no file or a whole one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _build_best() -> str:
    """The tuned build where it can be had, else the portable one (a compiler that rejects -march=native, an
    unknown CPU, TPU_CAL_NATIVE_PORTABLE=1)."""
    if not portable_only() and cpu_features() is not None:
        try:
            return _build(tuned=True)
        except RuntimeError as e:
            if "no C compiler" in str(e):
                raise
    return _build(tuned=False)


def _load() -> ctypes.CDLL:
    path = _build_best()
    try:
        lib = ctypes.CDLL(path)
    except OSError:                    # a bad file left in the cache (not ours: ours are renamed whole): rebuild
        os.unlink(path)
        lib = ctypes.CDLL(_build_best())
    return declare(lib)


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Sets the argument and result types of the kernels on a loaded library (also used by the tests, which load
    the portable and the tuned build side by side)."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.tc_minmax.argtypes = [p, i64, p]
    lib.tc_minmax.restype = ctypes.c_int
    lib.tc_clip_range.argtypes = [p, i64, ctypes.c_float, ctypes.c_float, p]
    lib.tc_clip_range.restype = ctypes.c_int
    lib.tc_accumulate.argtypes = [p, i64, i64, ctypes.c_int, p, p, p, ctypes.c_int32, ctypes.c_float]
    lib.tc_accumulate.restype = None
    lib.tc_update.argtypes = [p, i64, i64, ctypes.c_int, p, p, p, ctypes.c_int32, ctypes.c_float, p]
    lib.tc_update.restype = ctypes.c_int
    lib.tc_dwconv2d.argtypes = [p, p, p, p] + [i64] * 15
    lib.tc_dwconv2d.restype = None
    lib.tc_hardswish.argtypes = [p, p, i64]
    lib.tc_hardswish.restype = None
    lib.tc_lookup.argtypes = [p, p, p, i64]
    lib.tc_lookup.restype = None
    lib.tc_lookup2.argtypes = [p, p, p, p, i64, i64, i64]
    lib.tc_lookup2.restype = None
    lib.tc_requant_fused.argtypes = [p, i64, i64, i64, p, p, p, p, i64, i64, ctypes.c_uint8, p]
    lib.tc_requant_fused.restype = None
    return lib


def stats_library() -> ctypes.CDLL | None:
    """The native kernels (tc_minmax, tc_accumulate, tc_clip_range: stats_kernel.c; tc_dwconv2d: conv_kernel.c; tc_hardswish,
    tc_lookup, tc_lookup2, tc_requant_fused: elementwise_kernel.c), or None: use the numpy paths."""
    global _lib
    if disabled():
        return None
    if _lib is None:
        try:
            _lib = _load()
        except Exception as e:       # never fatal: the numpy path computes the same statistics
            _lib = f"{type(e).__name__}: {e}" if not isinstance(e, RuntimeError) else str(e)
            print(f"tpu_cal: native kernels unavailable ({_lib}); using numpy (slower)", file=sys.stderr)
    return _lib if isinstance(_lib, ctypes.CDLL) else None


MIN_ELEMENTS = 1 << 12      # elements below which a ctypes call costs more than numpy's pass


def library_for(n: int, ok: bool = True) -> ctypes.CDLL | None:
    """`stats_library()` for a kernel call over n elements whose operands suit it (`ok`), or None: the numpy path
    (no library, or too few elements for the call to pay)."""
    return stats_library() if ok and n >= MIN_ELEMENTS else None


def unavailable_reason() -> str | None:
    """Why `stats_library()` returns None (None when it returns the library)."""
    if disabled():
        return "TPU_CAL_NO_NATIVE is set"
    stats_library()
    return _lib if isinstance(_lib, str) else None


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Asks glibc to serve large blocks from its heap and keep freed ones (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD).

    The interpreter frees each activation after its last use and allocates the next of the same size; glibc
    would return every block over 32 MB to the kernel and map a fresh one, and the page faults of touching it
    again cost about a third of an elementwise op (measured on EfficientNet-Lite0 at batch 32: 15-20 % of a
    whole run). Peak memory does not grow: freed blocks are reused, not kept beside live ones. Process-wide and
    idempotent; the command-line tools call it once at start. Returns False where glibc is not there."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(limit)) and libc.mallopt(-1, int(2 * limit)))   # -3, -1: glibc's ids
    except (OSError, AttributeError):
        return False
