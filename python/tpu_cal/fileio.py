"""Atomic output files: written next to the target and renamed into place, so no half-written file is ever left.

Inside `held_writes()` the files `write_text` / `write_npz` write are held in memory (and `read_npz` sees them)
until the caller commits them: a pipeline whose later pass fails leaves no file from an earlier one.
"""
from __future__ import annotations

import contextlib
import contextvars
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


class HeldWrites:
    """The files written inside a `held_writes()` block: absolute path -> bytes, in order."""

    def __init__(self):
        self.files: dict[str, bytes] = {}

    def commit(self) -> None:
        """Writes the held files (each atomically); an unwritable one raises UserError."""
        files, self.files = self.files, {}
        for path, data in files.items():
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                f.write(data)


# the held writes of the block being run (a context variable: per thread and task, never shared)
_HELD: contextvars.ContextVar[HeldWrites | None] = contextvars.ContextVar("tpu_cal_held_writes", default=None)


@contextlib.contextmanager
def held_writes():
    """Yields a HeldWrites collecting every file written in the block; nothing reaches the disk unless the caller
    calls its `commit()` (typically after the block, once everything in it worked)."""
    held = HeldWrites()
    token = _HELD.set(held)
    try:
        yield held
    finally:
        _HELD.reset(token)


def _write_bytes(path: str, data: bytes) -> None:
    held = _HELD.get()
    if held is not None:
        held.files[os.path.abspath(path)] = data
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str):
    _write_bytes(path, text.encode("utf-8"))


def write_npz(path: str, arrays: dict[str, np.ndarray]):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _write_bytes(path, buf.getvalue())


def read_npz(path: str, what: str = "npz file") -> dict[str, np.ndarray]:
    """Loads every array of an npz, turning any I/O or format problem into a UserError naming the file."""
    held = _HELD.get()
    data = held.files.get(os.path.abspath(path)) if held is not None else None
    if data is None and not os.path.exists(path):
        raise UserError(f"{path}: {what} not found")
    try:
        with np.load(io.BytesIO(data) if data is not None else path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile, pickle and format errors all mean the same thing to a user
        raise UserError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None
