"""Atomic writes: complete files or nothing, no temporary left behind."""

import os

import pytest

from acd.atomic import atomic_paths, atomic_write


def test_atomic_write_creates_parents_and_normal_permissions(tmp_path):
    target = atomic_write(tmp_path / "a" / "b.txt", "héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.txt"]


def test_failure_keeps_old_files_and_leaves_no_temporary(tmp_path):
    first, second = tmp_path / "x.svg", tmp_path / "x.png"
    first.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_paths([first, second]) as (a, b):
        a.write_text("new")
        raise KeyboardInterrupt
    assert first.read_text() == "old"
    assert not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.svg"]
