"""Held writes (`fileio.held_writes`): nothing reaches the disk before commit, later reads see the held files."""
from __future__ import annotations

import numpy as np
import pytest

from tpu_cal.errors import UserError
from tpu_cal.fileio import held_writes, read_npz, write_npz, write_text


def test_held_files_are_written_only_on_commit_and_readable_before(tmp_path):
    a = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    with held_writes() as held:
        write_npz(str(tmp_path / "w.npz"), a)
        write_text(str(tmp_path / "m.txt"), "módulo\n")
        assert list(tmp_path.iterdir()) == []
        np.testing.assert_array_equal(read_npz(str(tmp_path / "w.npz"))["w"], a["w"])    # a later pass reads it
    assert list(tmp_path.iterdir()) == []                  # the block ended: still nothing without commit
    held.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.txt", "w.npz"]
    assert (tmp_path / "m.txt").read_text(encoding="utf-8") == "módulo\n"
    np.testing.assert_array_equal(read_npz(str(tmp_path / "w.npz"))["w"], a["w"])
    write_text(str(tmp_path / "now.txt"), "x")              # outside a block: written at once
    assert (tmp_path / "now.txt").read_text() == "x"


def test_a_dropped_block_leaves_nothing_and_a_bad_folder_fails_at_commit(tmp_path):
    with pytest.raises(RuntimeError):
        with held_writes():
            write_npz(str(tmp_path / "w.npz"), {"w": np.zeros(2)})
            raise RuntimeError("a later pass failed")
    assert list(tmp_path.iterdir()) == []
    with held_writes() as held:
        write_text(str(tmp_path / "missing" / "m.txt"), "x")
    with pytest.raises(UserError, match="missing"):
        held.commit()
