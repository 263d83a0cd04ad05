"""atomic: a file is replaced whole or not at all, with the mode a plain open() gives it."""

from __future__ import annotations

import importlib
import os
import stat

import pytest

import insanesr_dist.atomic as atomic
from insanesr_dist.atomic import append_line_atomic, atomic_path, write_text_atomic


def test_a_finished_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "deep" / "out.txt"  # parents are made
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(target.parent)  # same folder: the rename stays on one filesystem
        assert not target.exists()  # nothing visible before the end
        with open(tmp, "w") as f:
            f.write("new")
    assert target.read_text() == "new"
    assert os.listdir(target.parent) == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:  # BaseException too, not only Exception
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_a_writer_that_replaced_the_temporary_itself_is_fine_and_a_removed_one_fails(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        os.unlink(tmp)
        with open(tmp, "w") as f:  # as libraries that write a fresh file at the path do
            f.write("fresh")
    assert target.read_text() == "fresh"
    with pytest.raises(FileNotFoundError), atomic_path(target) as tmp:
        os.unlink(tmp)  # nothing to rename
    assert target.read_text() == "fresh"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_the_file_gets_the_mode_of_a_plain_open_not_mkstemps_0600(tmp_path):
    old = os.umask(0o027)
    try:
        importlib.reload(atomic)  # the umask is read once, at import
        atomic.write_text_atomic(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
        importlib.reload(atomic)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o640


def test_text_is_utf8_and_appending_keeps_every_earlier_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_text_atomic(path, "é\n")
    assert path.read_bytes() == "é\n".encode()
    append_line_atomic(path, '{"epoch": 1}')
    append_line_atomic(path, '{"epoch": 2}\n')  # one newline, whether the line brings its own or not
    append_line_atomic(tmp_path / "new.jsonl", "first")  # a missing file starts empty
    assert path.read_text(encoding="utf-8").splitlines() == ["é", '{"epoch": 1}', '{"epoch": 2}']
    assert (tmp_path / "new.jsonl").read_text() == "first\n"
