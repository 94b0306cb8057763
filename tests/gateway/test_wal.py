"""The write-ahead log: encrypted appends, deletion once stored, replay of a dead process's folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from careloop.gateway.record import Record, decode_record, encode_record
from careloop.gateway.wal import Wal, orphans, read_segments

KEY = b"k" * 32


def record(i: int, stream: bool = False) -> Record:
    response: bytes | list[bytes] = [b"data: {}\n\n", b"data: [DONE]\n\n"] if stream else b'{"choices":[]}'
    return Record(f"id{i}", 1.5, "assistant", "base", "stable", "u", {"messages": [
        {"role": "user", "content": f"Jane Roe, SSN 123-45-6789 #{i}"}]}, response, 200, stream, False, 2.0)


def test_records_round_trip_through_the_encoding() -> None:
    for r in (record(1), record(2, stream=True)):
        back = decode_record(encode_record(r))
        assert back.request == r.request and back.id == r.id and back.stream == r.stream
        joined = b"".join(r.response) if isinstance(r.response, list) else r.response
        assert (b"".join(back.response) if isinstance(back.response, list) else back.response) == joined


def test_appends_are_encrypted_private_and_deleted_once_done(tmp_path: Path) -> None:
    wal = Wal(tmp_path / "wal", KEY)
    seqs = [wal.append(encode_record(record(i))) for i in range(10)]
    wal.sync()  # the synced segment is closed to appends; a fresh one takes them
    segment, fresh = sorted(wal.folder.glob("*.wal"))
    assert fresh.stat().st_size == 0
    data = segment.read_bytes()
    assert b"123-45-6789" not in data and b"Jane" not in data  # encrypted at rest
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    assert stat.S_IMODE(wal.folder.stat().st_mode) == 0o700
    assert orphans(tmp_path / "wal") == []  # a live process holds its folder's lock
    wal.done(seqs)
    assert wal.pending == 0 and not segment.exists()  # every record in it is safe elsewhere
    wal.close()
    assert not wal.folder.exists()


def test_a_killed_process_leaves_its_records_for_the_next_start(tmp_path: Path) -> None:
    code = ("import os, sys; from pathlib import Path; from careloop.gateway.wal import Wal; "
            "from careloop.gateway.record import encode_record; from tests.gateway.test_wal import record, KEY; "
            "w = Wal(Path(sys.argv[1]), KEY); [w.append(encode_record(record(i))) for i in range(25)]; "
            "os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "wal")], cwd=Path(__file__).parents[2])
    (orphan,) = orphans(tmp_path / "wal")
    reads = list(read_segments(orphan, KEY))
    assert [decode_record(d).id for d in reads[0].records] == [f"id{i}" for i in range(25)]
    assert reads[0].error is None
    orphan.release(remove=True)
    assert not list((tmp_path / "wal").iterdir())


def test_a_torn_or_damaged_segment_keeps_what_came_before(tmp_path: Path) -> None:
    wal = Wal(tmp_path / "wal", KEY)
    for i in range(3):
        wal.append(encode_record(record(i)))
    (segment,) = wal.folder.glob("*.wal")
    folder = wal.folder
    os.close(wal._lock_fd)  # the process "dies" without closing
    with segment.open("ab") as fh:
        fh.write(b"\x00\x00\x01\x00garbage")  # a torn last frame
    (orphan,) = orphans(tmp_path / "wal")
    assert orphan.folder == folder
    (read,) = read_segments(orphan, KEY)
    assert len(read.records) == 3 and read.error is not None
    assert next(iter(read_segments(orphan, b"x" * 32))).records == []  # the wrong key reads nothing
