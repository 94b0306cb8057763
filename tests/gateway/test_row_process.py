"""Rows built in a child process: the same rows as in-thread, built elsewhere, and never lost when it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from careloop.gateway.record import Record
from careloop.gateway.row_process import RowProcess, build_rows
from careloop.gateway.rows import build_row

ROOT = Path(__file__).resolve().parents[2]


def record(i: int, stream: bool = False) -> Record:
    text = f"Mrs. Alvarez, MRN A{i:07d}, call 555-867-{i:04d}"
    response: bytes | list[bytes]
    if stream:
        response = [b'data: {"choices":[{"index":0,"delta":{"content":"' + text.encode() + b'"}}]}\n\n',
                    b"data: [DONE]\n\n"]
    else:
        response = orjson.dumps({"choices": [{"index": 0, "message": {"content": text}, "finish_reason": "stop"}]})
    return Record(id=f"ex{i:08d}", created=1.7e9 + i, public_model="assistant", target="base", role="stable",
                  user_key=None, request={"model": "base", "messages": [
                      {"role": "user", "content": f"I'm John Carter, SSN 123-45-{i:04d}"}]},
                  response=response, status=200, stream=stream, sampled=False, latency_ms=2.0)


@pytest.fixture
def rows_in() -> Iterator[RowProcess]:
    rp = RowProcess(timeout_s=60)
    yield rp
    rp.close()


def test_child_builds_the_same_rows_as_the_thread(rows_in: RowProcess) -> None:
    batch = [record(i, stream=i % 2 == 1) for i in range(20)]
    built = rows_in.build(batch)
    pids = rows_in.pids()
    assert len(pids) == 1 and os.getpid() not in pids
    assert built == [build_row(r) for r in batch]
    assert "[NAME]" in built[0]["request_messages"][0]["content"] and "123-45" not in str(built)
    assert rows_in.restarts == 0


def test_children_share_a_batch_and_keep_its_order() -> None:
    rows_in = RowProcess(processes=2, timeout_s=60)
    try:
        rows_in.start()
        assert len(rows_in.pids()) == 2
        for n in (1, 2, 7):
            batch = [record(100 + i) for i in range(n)]
            assert [row["id"] for row in rows_in.build(batch)] == [r.id for r in batch]  # type: ignore[index]
        assert rows_in.build([]) == []
    finally:
        rows_in.close()


def test_unbuildable_record_comes_back_as_its_reason(rows_in: RowProcess) -> None:
    bad = record(1)
    bad.latency_ms = "slow"  # type: ignore[assignment]  # not a number: building its row raises
    built = rows_in.build([record(0), bad, record(2)])
    assert isinstance(built[0], dict) and isinstance(built[2], dict)
    assert isinstance(built[1], str) and built[1].startswith("unbuildable:")
    assert built == build_rows([record(0), bad, record(2)])


def test_a_killed_child_loses_no_batch_and_is_replaced(rows_in: RowProcess) -> None:
    rows_in.start()
    (first,) = rows_in.pids()
    os.kill(first, signal.SIGKILL)
    time.sleep(0.2)
    batch = [record(i) for i in range(5)]
    assert rows_in.build(batch) == [build_row(r) for r in batch]  # built in the thread this once
    assert rows_in.restarts == 1
    assert rows_in.build(batch) == [build_row(r) for r in batch]
    (second,) = rows_in.pids()
    assert second != first


def test_children_exit_when_the_gateway_is_killed(tmp_path: Path) -> None:
    code = ("import sys, time; from careloop.gateway.row_process import RowProcess; rp = RowProcess(2); rp.start(); "
            "print(*rp.pids(), flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert parent.stdout is not None
        children = [int(p) for p in parent.stdout.readline().split()]
        assert len(children) == 2 and all(alive(c) for c in children)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while any(alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(c) for c in children)
    finally:
        parent.kill()


def alive(pid: int) -> bool:
    """Whether a process runs (not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] not in "ZX"
    except OSError:
        return False
