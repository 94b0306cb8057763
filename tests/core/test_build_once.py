"""careloop/core/build_once.py: concurrent processes build an artefact once; the others take the first one's."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from careloop.core.build_once import build_once


def _race(folder: str) -> str:
    root = Path(folder)
    artefact = root / "artefact"

    def existing() -> str | None:
        return artefact.read_text() if artefact.exists() else None

    def build() -> str:
        with (root / "builds").open("a") as fh:
            fh.write("x")
        time.sleep(0.3)  # long enough for the other process to reach the lock
        artefact.write_text("built")
        return "built"

    (root / f"arrived-{os.getpid()}").touch()  # both start together, so without the lock both would build
    deadline = time.monotonic() + 30
    while len(list(root.glob("arrived-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return build_once(root / "lock", existing, build)


def test_two_processes_build_once_and_both_get_the_artefact(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_race, [str(tmp_path)] * 2)
    assert results == ["built", "built"]
    assert (tmp_path / "builds").read_text() == "x"


def test_an_existing_artefact_is_returned_without_building_or_locking(tmp_path: Path) -> None:
    def fail() -> str:
        raise AssertionError("built although one exists")

    assert build_once(tmp_path / "sub" / "lock", lambda: "there", fail) == "there"
    assert not (tmp_path / "sub").exists()
