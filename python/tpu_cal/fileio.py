"""Atomic output files: written next to the target and renamed into place, so no half-written file is ever left."""
from __future__ import annotations

import contextlib
import io
import os
import tempfile

import numpy as np

from .errors import UserError


def check_writable(path: str) -> None:
    """Fails at once (before a long run) when `path` cannot be written: its folder is missing or read-only, or
    the path is a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UserError(f"{path}: cannot write into '{folder}'")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder; give a file name")


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path in the target's folder; renames it onto `path` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{path}: output folder '{folder}' does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=folder)
    except OSError as e:
        raise UserError(f"{path}: cannot write here ({e.strerror})") from None
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str, text: str):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_npz(path: str, arrays: dict[str, np.ndarray]):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buf.getvalue())


def read_npz(path: str, what: str = "npz file") -> dict[str, np.ndarray]:
    """Loads every array of an npz, turning any I/O or format problem into a UserError naming the file."""
    if not os.path.exists(path):
        raise UserError(f"{path}: {what} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile, pickle and format errors all mean the same thing to a user
        raise UserError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None
