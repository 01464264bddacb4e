"""A full disk is an error, never a killed process or a stuck store (GUARANTEES.md "Durability").

Each test runs the store on a fresh small ext4 filesystem that a filler file takes to an exact
number of free bytes, step after step, in child processes (a SIGBUS fails the test instead of
killing pytest). Every step must either work or raise OSError(ENOSPC); once the filler is gone
the store must open, verify clean, read back every acknowledged blob, and take new puts.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

# Imported the way pytest imports them, from this folder (pylint does not look there).
from fulldisk_fixtures import FullDisk, disk_fixture  # noqa: F401  # pylint: disable=import-error,unused-import

from conduit_flat_file_db.naming import STATE_FILE_NAME
from conduit_flat_file_db.seekable import parse_seek_table

pytestmark = pytest.mark.fulldisk

MODES = [
    pytest.param({}, id="raw"),
    pytest.param({"use_compression": True}, id="compressed"),
    pytest.param({"fsync": True}, id="raw-fsync"),
]
"""Raw and compressed segments; and raw ones written only with pwrite (fsync=True: no maps, so no
room past the committed ends, whose blocks a seal frees: steps meet a full disk at other points)."""
FREE_STEPS = [0, 4096, 16384, 69632]
"""Free bytes left before a step: none, one block, a few blocks, and a little more than a compressed
segment's padding (64 KiB), so each step fails at a different point of its work (or works)."""
SEGMENT_BYTES = 256 * 2**10  # small segments: the setup seals several, and puts rotate on the full disk


def _seal_some(disk: FullDisk, options: dict[str, Any], segments: int = 3) -> None:
    """Set up (disk not full) a store with ``segments`` sealed segments and a mutable one holding blobs."""
    db = disk.open(max_size=SEGMENT_BYTES, **options)
    try:
        disk.put_setup(db, [60_000] * (5 * segments) + [3000, 100])
        assert len(db.segments()) >= segments + 1
    finally:
        db.close()


def _then_works_again(op: dict[str, Any]) -> list[dict[str, Any]]:
    """``op`` at each of FREE_STEPS free bytes, each time followed by giving the space back and a put
    in the same process (the store recovers from the failure without a reopen)."""
    steps: list[dict[str, Any]] = []
    for free in FREE_STEPS:
        steps += [
            {"op": "fill", "free": free},
            op,
            {"op": "read_back"},
            {"op": "release"},
            {"op": "put", "sizes": [700, 90_000]},
        ]
    return steps


def _assert_recovered_in_place(outcomes: list[dict[str, Any]]) -> None:
    """Every acknowledged blob read back while the disk was full, and every put after the space came
    back worked (the step before it may have failed)."""
    read_backs = [o for o in outcomes if o["op"] == "read_back"]
    assert read_backs and all(o["ok"] for o in read_backs), read_backs
    puts_after_release = [outcomes[i + 1] for i, o in enumerate(outcomes[:-1]) if o["op"] == "release"]
    assert puts_after_release and all(o["ok"] for o in puts_after_release), puts_after_release


def _failed(outcomes: list[dict[str, Any]], op: str) -> list[dict[str, Any]]:
    return [o for o in outcomes if o["op"] == op and not o["ok"]]


def test_the_filler_leaves_exactly_the_free_bytes_asked_for(disk: FullDisk) -> None:
    """The tier's own tool: after fill_to(n) a write of n bytes fits and one more block does not."""
    for free in (69632, 4096, 16384, 0):
        disk.filler.fill_to(free)
        assert disk.free() == free
        probe = disk.mount / "probe"
        fd = os.open(probe, os.O_RDWR | os.O_CREAT)
        try:
            if free:
                os.posix_fallocate(fd, 0, free)
            with pytest.raises(OSError) as refused:
                os.posix_fallocate(fd, free, 4096)
            assert refused.value.errno == errno.ENOSPC
        finally:
            os.close(fd)
            probe.unlink()
    disk.filler.release()
    assert disk.free() > 16 * 2**20


# -- opening --------------------------------------------------------------------------------


@pytest.mark.parametrize("options", MODES)
def test_opening_a_new_store_on_a_full_disk_is_an_error_and_it_opens_once_space_is_freed(
    disk: FullDisk, options: dict[str, Any]
) -> None:
    """Creating the datadir, the lock file, the state page and the first segment each need space."""
    for free in FREE_STEPS:
        shutil.rmtree(disk.datadir, ignore_errors=True)
        if disk.lock.exists():
            disk.lock.unlink()
        disk.filler.fill_to(free)
        outcomes = disk.run([{"op": "open"}], **options)
        if free == 0:
            assert outcomes[0]["errno"] == errno.ENOSPC
        disk.filler.release()
    disk.check_recovered(**options)


@pytest.mark.parametrize("options", MODES)
def test_opening_an_existing_store_on_a_full_disk_works(disk: FullDisk, options: dict[str, Any]) -> None:
    """A store closed cleanly needs no space to open, read and close: nothing is repaired."""
    _seal_some(disk, options)
    disk.filler.fill_to(0)
    outcomes = disk.run([{"op": "open"}, {"op": "verify"}, {"op": "close"}, {"op": "open"}], **options)
    assert all(o["ok"] for o in outcomes), outcomes
    disk.check_recovered(**options)


@pytest.mark.parametrize("options", MODES)
@pytest.mark.parametrize("left", ["missing", "sparse"])
def test_state_page_that_cannot_get_its_block_is_an_error_not_a_sigbus(
    disk: FullDisk, options: dict[str, Any], left: str
) -> None:
    """``ffdb.state`` is derivable: an opener that finds it missing (or as a hole, which is what an
    opener killed by a full disk used to leave) rebuilds it. On a full disk the page cannot get a
    block: the open fails with ENOSPC, where a store into the mapped hole killed the process, and
    what an opener leaves is no hole a later one would map."""
    _seal_some(disk, options)
    state = disk.datadir / STATE_FILE_NAME
    for free in FREE_STEPS:
        state.unlink()
        if left == "sparse":
            with open(state, "wb") as handle:
                handle.truncate(4096)
        disk.filler.fill_to(free)
        outcomes = disk.run([{"op": "open"}, {"op": "put", "sizes": [100]}], **options)
        if free == 0:
            assert outcomes[0]["errno"] == errno.ENOSPC, outcomes
        if left == "missing" and state.exists():  # (a hole found there is not the opener's to remove:
            # another process may have the page mapped, and would die if it shrank under its map)
            fd = os.open(state, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                assert size == 0 or os.fstat(fd).st_blocks * 512 >= size, "a state page with a hole was left"
            finally:
                os.close(fd)
        disk.filler.release()
    disk.check_recovered(**options)


@pytest.mark.parametrize("options", MODES)
def test_lock_file_made_on_a_full_disk_does_not_kill_a_waiting_writer(disk: FullDisk, options: dict[str, Any]) -> None:
    """The lock file is made by the first opener. A writer that finds the lock taken raises a flag in
    the lock file's mapped page: on a full disk that page has no block, and the store into it killed
    the waiter. The lock now works without the mapped page (and without leases) there."""
    _seal_some(disk, options)
    disk.lock.unlink()
    disk.filler.fill_to(0)
    ready = disk.tmp_path / "held"
    holder = disk.spawn([{"op": "hold_read_lock", "seconds": 1.0, "ready": str(ready)}], **options)
    waiter = disk.spawn([{"op": "wait_for", "path": str(ready)}, {"op": "rotate"}, {"op": "verify"}], **options)
    waited = disk.join(waiter)
    held = disk.join(holder)
    assert held[0]["ok"] and waited[0]["ok"], (held, waited)
    disk.check_recovered(**options)


# -- writing --------------------------------------------------------------------------------


@pytest.mark.parametrize("options", MODES)
@pytest.mark.parametrize(
    "op",
    [
        pytest.param({"op": "put_until_full", "size": 100}, id="small-mapped-puts"),
        pytest.param({"op": "put_until_full", "size": 70_000}, id="large-pwrite-puts"),
        pytest.param({"op": "put_many", "sizes": [5000] * 30}, id="put_many"),
        pytest.param({"op": "put_stream", "size": 300_000}, id="put_stream"),
    ],
)
def test_writing_on_a_full_disk_is_an_error_and_the_store_recovers(
    disk: FullDisk, options: dict[str, Any], op: dict[str, Any]
) -> None:
    """Each write on a disk with no, one, a few and some more free blocks: it works or raises
    ENOSPC with nothing half-committed; once the space is back the same process puts again, and a
    reopened store verifies clean with every acknowledged blob intact."""
    _seal_some(disk, options)
    outcomes = disk.run(_then_works_again(op), max_size=SEGMENT_BYTES, **options)
    assert _failed(outcomes, op["op"]), "the disk never refused a write: the test filled nothing"
    _assert_recovered_in_place(outcomes)
    disk.check_recovered(**options)


@pytest.mark.parametrize("options", MODES)
def test_adopting_a_file_on_a_full_disk_is_an_error_or_a_whole_segment(disk: FullDisk, options: dict[str, Any]) -> None:
    """Adoption seals the mutable segment, writes a small index, renames the file in and creates
    the next segment. The mutable segment is sealed first, so that the seal frees no room for it."""
    _seal_some(disk, options)
    steps: list[dict[str, Any]] = []
    for number, free in enumerate(FREE_STEPS):
        files = [{"name": f"adopt-{number}-{i}", "tag": 777 + 10 * number + i, "size": 50_000} for i in range(3)]
        steps += [{"op": "write_file", **adopt} for adopt in files] + [{"op": "rotate"}, {"op": "fill", "free": free}]
        for adopt in files:
            steps += [{"op": "adopt", **adopt}, {"op": "exists", "name": adopt["name"]}]
        steps += [{"op": "read_back"}, {"op": "release"}, {"op": "put", "sizes": [700]}]
    outcomes = disk.run(steps, max_size=SEGMENT_BYTES, **options)
    for adopted, there in zip(outcomes, outcomes[1:]):
        if adopted["op"] == "adopt":  # adopted, or refused and still where it was
            assert there["detail"] is not adopted["ok"], (adopted, there)
    assert _failed(outcomes, "adopt"), outcomes
    _assert_recovered_in_place(outcomes)
    disk.check_recovered(**options)


@pytest.mark.parametrize("options", MODES)
def test_rotating_on_a_full_disk_is_an_error_and_the_store_recovers(disk: FullDisk, options: dict[str, Any]) -> None:
    """Sealing writes a SEAL record (compressed: a seek table) and creates the next segment."""
    _seal_some(disk, options)
    steps: list[dict[str, Any]] = []
    for free in FREE_STEPS:
        steps += [
            {"op": "put", "sizes": [3000]},
            {"op": "fill", "free": free},
            {"op": "rotate"},
            {"op": "read_back"},
            {"op": "release"},
            {"op": "put", "sizes": [700, 90_000]},
        ]
    outcomes = disk.run(steps, max_size=SEGMENT_BYTES, **options)
    _assert_recovered_in_place(outcomes)
    disk.check_recovered(**options)


# -- freeing space --------------------------------------------------------------------------


FAILED_WRITES: dict[str, list[dict[str, Any]]] = {
    "put": [{"op": "fill", "free": 0}, {"op": "put_until_full", "size": 70_000}],
    "adoption": [{"op": "write_file", "name": f"adopt-{i}", "tag": 5000 + i, "size": 20_000} for i in range(3)]
    + [{"op": "rotate"}, {"op": "fill", "free": 0}]
    + [{"op": "adopt", "name": f"adopt-{i}", "tag": 5000 + i, "size": 20_000} for i in range(3)],
}


@pytest.mark.parametrize("options", MODES)
@pytest.mark.parametrize("after", sorted(FAILED_WRITES))
@pytest.mark.parametrize(
    "free_with",
    [
        pytest.param({"op": "delete_oldest"}, id="delete_file"),
        pytest.param({"op": "retention", "max_bytes": 0, "keep_min": 1}, id="enforce_retention"),
    ],
)
def test_a_store_frees_its_own_space_after_a_write_failed_on_a_full_disk(
    disk: FullDisk, options: dict[str, Any], after: str, free_with: dict[str, Any]
) -> None:
    """The way out of a full disk is deleting sealed segments: it must work right after a put
    failed (compressed: that put's frames had taken the padding before the disk refused them),
    and while the mutable segment awaits recovery (an adoption whose next segment could not be
    created), without first repairing the mutable segment with blocks the disk does not have.
    Then puts work again in the same process."""
    _seal_some(disk, options)
    steps: list[dict[str, Any]] = [
        *FAILED_WRITES[after],
        {"op": "dirty"},
        {"op": "fill", "free": 0},
        free_with,
        {"op": "read_back"},
        {"op": "put", "sizes": [700, 90_000]},
    ]
    outcomes = disk.run(steps, max_size=SEGMENT_BYTES, **options)
    failed = [o for o in outcomes[:-5] if not o["ok"]]
    assert failed and failed[-1]["errno"] == errno.ENOSPC, outcomes
    assert all(o["ok"] for o in outcomes[-3:]), outcomes
    if after == "adoption":
        assert outcomes[-5]["detail"], "the failed adoption left no recovery pending: the test tests nothing"
    disk.check_recovered(**options)


@pytest.mark.parametrize("options", MODES)
def test_a_store_whose_put_failed_on_a_full_disk_opens_on_that_full_disk(
    disk: FullDisk, options: dict[str, Any]
) -> None:
    """A put that failed on a full disk leaves nothing to repair (compressed: the padding frame and
    seek table it had taken are written back where they were), so another process opens the store
    on the still full disk, reads it, and frees space; a writer there gets ENOSPC, not a repair."""
    _seal_some(disk, options)
    failed = disk.run(
        [
            {"op": "fill", "free": 0},
            {"op": "put_until_full", "size": 70_000},
            {"op": "dirty"},
            {"op": "put_until_full", "size": 100},
            {"op": "dirty"},
        ],
        max_size=SEGMENT_BYTES,
        **options,
    )
    assert [o["ok"] for o in failed] == [True, False, True, False, True] and not failed[2]["detail"], failed
    assert not failed[4]["detail"], failed
    disk.filler.fill_to(0)
    outcomes = disk.run(
        [
            {"op": "open"},
            {"op": "verify"},
            {"op": "put", "sizes": [70_000]},
            {"op": "delete_oldest"},
            {"op": "release"},
            {"op": "put", "sizes": [700, 90_000]},
        ],
        max_size=SEGMENT_BYTES,
        **options,
    )
    assert [o["ok"] for o in outcomes] == [True, True, False, True, True, True], outcomes
    disk.check_recovered(**options)


def _without_padding(path: Path) -> tuple[int, bytes, bytes]:
    """(size, bytes up to the padding frame's payload, bytes after it) of a mutable compressed segment:
    what a failed put must leave as it found it (the payload is skipped by every reader)."""
    data = path.read_bytes()
    table = parse_seek_table(lambda offset, size: data[offset : offset + size], len(data))
    padding_at, table_at = table.c_offsets[-2], table.c_offsets[-1]
    return len(data), data[: padding_at + 8], data[table_at:]


@pytest.mark.parametrize("size", [pytest.param(20_000, id="fits-the-padding"), pytest.param(300_000, id="past-it")])
def test_a_compressed_put_that_failed_leaves_its_segment_as_it_was(disk: FullDisk, size: int) -> None:
    """Frames that fit the padding are written into it (a hole: blocks are needed); longer ones move
    the seek table. Either way a refused put writes the padding header and the seek table back where
    they were, into blocks the file already has, and the next writer needs no recovery. (The setup's
    last puts are of 8 KiB and more: a smaller one is stored through a map of the padding, which
    gives the padding its blocks first, and a put into them then needs none.)"""
    options = {"use_compression": True}
    db = disk.open(max_size=SEGMENT_BYTES, **options)
    try:
        disk.put_setup(db, [60_000] * 15 + [9000, 8192])
        assert len(db.segments()) >= 4
    finally:
        db.close()
    db = disk.open(**options)
    mutable = Path(db.segment_path(db.mutable_segment()))
    db.close()
    before = _without_padding(mutable)
    disk.filler.fill_to(0)
    outcomes = disk.run([{"op": "put", "sizes": [size]}, {"op": "dirty"}], max_size=SEGMENT_BYTES, **options)
    assert outcomes[0]["errno"] == errno.ENOSPC and outcomes[1]["detail"] is False, outcomes
    assert _without_padding(mutable) == before
    disk.check_recovered(**options)


@pytest.mark.parametrize("options", MODES)
def test_a_store_whose_next_segment_could_not_be_created_opens_on_the_full_disk(
    disk: FullDisk, options: dict[str, Any]
) -> None:
    """An adoption refused on a full disk has sealed the mutable segment already: the next segment
    is still to be made. Another process opens the store on the still full disk all the same (the
    sealed segment stays published, the next writer makes the segment), reads it and verifies it; a
    put gets ENOSPC until a delete gives space back, and then makes the segment."""
    _seal_some(disk, options)
    failed = disk.run(FAILED_WRITES["adoption"] + [{"op": "dirty"}], max_size=SEGMENT_BYTES, **options)
    assert _failed(failed, "adopt") and failed[-1]["detail"], failed
    outcomes = disk.run(
        [
            {"op": "open"},
            {"op": "dirty"},
            {"op": "verify"},
            {"op": "put", "sizes": [70_000]},
            {"op": "delete_oldest"},
            {"op": "put", "sizes": [700, 90_000]},
            {"op": "dirty"},
            {"op": "read_back"},
        ],
        max_size=SEGMENT_BYTES,
        **options,
    )
    assert [o["ok"] for o in outcomes] == [True, True, True, False, True, True, True, True], outcomes
    assert outcomes[1]["detail"] and not outcomes[6]["detail"], outcomes
    disk.check_recovered(**options)


# -- maintenance ----------------------------------------------------------------------------


@pytest.mark.parametrize("options", MODES)
@pytest.mark.parametrize("compress", [True, False])
def test_recompressing_on_a_full_disk_is_an_error_and_leaves_no_scratch_file(
    disk: FullDisk, options: dict[str, Any], compress: bool
) -> None:
    """A rewrite writes the new file aside first: on a full disk that copy fails, is removed, and
    the segment stays as it was."""
    _seal_some(disk, options)
    outcomes = disk.run(
        _then_works_again({"op": "recompress", "compress": compress}), max_size=SEGMENT_BYTES, **options
    )
    if compress != bool(options.get("use_compression")):
        assert _failed(outcomes, "recompress"), outcomes
    _assert_recovered_in_place(outcomes)
    assert not [name for name in os.listdir(disk.datadir) if name.startswith(".tmp-")]
    disk.check_recovered(**options)


@pytest.mark.parametrize("options", MODES)
def test_compacting_on_a_full_disk_is_an_error_and_every_old_location_still_reads(
    disk: FullDisk, options: dict[str, Any]
) -> None:
    """Compaction copies live blobs with ordinary puts: on a full disk the copy fails, and the
    old segments stay (they are deleted only by finish_compaction, after every copy)."""
    _seal_some(disk, options)
    outcomes = disk.run(_then_works_again({"op": "compact"}), max_size=SEGMENT_BYTES, **options)
    assert _failed(outcomes, "compact"), outcomes
    _assert_recovered_in_place(outcomes)
    disk.check_recovered(**options)
