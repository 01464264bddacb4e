"""Arrays in a keyed store: create_array() fills an array larger than the memory its process may
allocate (RLIMIT_DATA) in place, and get_array() reads it back in another process, byte for byte;
a process killed inside the create_array() with-block (or an exception leaving it) leaves no key.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy
import pytest
from keyed_support import INDEXES, child_context, iter_chunks, open_keyed, run_in_child, tree_bytes, value_for
from keyed_workers import ARRAY_CHUNK, ARRAY_DTYPE, array_values, fill_array_role

BIG_SHAPE = (8192, 16384)  # uint64: 1 GiB
DATA_LIMIT = 256 * 2**20
KILL_SHAPE = (4096, 4096)  # uint64: 128 MiB
KILL_SECONDS = 60.0


def check_big_array(path: Path, index: str, key: str, shape: tuple[int, ...]) -> None:
    """get_array() of the test array: read-only, aligned, its dtype and shape, every value."""
    with open_keyed(path, index) as store:
        array = store.get_array(key)
        assert array.shape == shape and array.dtype == numpy.dtype(ARRAY_DTYPE), (array.shape, array.dtype)
        assert not array.flags.writeable, "get_array() returned a writable array"
        assert array.ctypes.data % array.dtype.alignment == 0, "get_array() returned a misaligned array"
        meta = store.meta(key)
        assert meta.array is not None and numpy.dtype(meta.array[0]) == array.dtype
        assert tuple(meta.array[1]) == shape and meta.size == array.nbytes, meta
        flat = array.reshape(-1)
        for start, stop in iter_chunks(flat.shape[0], ARRAY_CHUNK):
            if not numpy.array_equal(flat[start:stop], array_values(start, stop)):
                bad = start + int(numpy.argmax(flat[start:stop] != array_values(start, stop)))
                pytest.fail(
                    f"get_array({key!r}): element {bad} (flat) is {flat[bad]}, written {array_values(bad, bad + 1)[0]}"
                )
        del flat, array
        report = store.verify()
        assert report.ok, report.problems[:10]


@INDEXES
def test_array_larger_than_the_writers_memory_is_filled_in_place_and_read_back(tmp_path: Path, index: str) -> None:
    """A child limited to 256 MiB of data fills a 1 GiB create_array() in place and commits it;
    the parent reads every element back through get_array()."""
    path = tmp_path / "store"
    with open_keyed(path, index) as store:
        store.put("before", value_for("before", 1))
    cfg = {"path": str(path), "index": index, "key": "big", "shape": BIG_SHAPE, "data_limit": DATA_LIMIT}
    try:
        peak = run_in_child(fill_array_role, cfg, timeout=300)
        print(f"peak resident set of the filling child: {peak / 2**20:.0f} MiB (limit {DATA_LIMIT / 2**20:.0f} MiB)")
        check_big_array(path, index, "big", BIG_SHAPE)
        with open_keyed(path, index) as store:
            assert sorted(store) == ["before", "big"] and store["before"] == value_for("before", 1)
    finally:
        shutil.rmtree(path, ignore_errors=True)  # 1 GiB: not left for pytest's last three runs to keep


def kill_inside_create_array(tmp_path: Path, path: Path, index: str) -> None:
    """A child half fills a create_array() and is SIGKILLed inside the with-block."""
    marker = tmp_path / "inside"
    cfg = {"path": str(path), "index": index, "key": "killed", "shape": KILL_SHAPE, "data_limit": DATA_LIMIT}
    proc = child_context().Process(target=fill_array_role, args=({**cfg, "marker": str(marker)},))
    proc.start()
    deadline = time.monotonic() + KILL_SECONDS
    while not marker.exists():
        assert proc.is_alive(), f"the child exited ({proc.exitcode}) before it was half through filling"
        assert time.monotonic() < deadline, f"the child did not fill half the array within {KILL_SECONDS} s"
        time.sleep(0.005)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()


@INDEXES
def test_writer_killed_inside_create_array_leaves_no_key(tmp_path: Path, index: str) -> None:
    """SIGKILL inside the with-block: after a reopen the key is absent, everything else intact,
    verify() clean, and the key can be created afterwards."""
    path = tmp_path / "store"
    with open_keyed(path, index) as store:
        store.put("before", value_for("before", 1))
    kill_inside_create_array(tmp_path, path, index)
    with open_keyed(path, index) as store:
        assert "killed" not in store and list(store) == ["before"] and len(store) == 1
        with pytest.raises(KeyError):
            store.get_array("killed")
        assert store.get("killed") is None and store["before"] == value_for("before", 1)
        report = store.verify()
        assert report.ok, report.problems[:10]
        store.put_array("killed", numpy.arange(10, dtype=ARRAY_DTYPE))
        assert store.get_array("killed").tolist() == list(range(10))


@INDEXES
def test_space_of_an_array_killed_inside_create_array_is_reclaimed(tmp_path: Path, index: str) -> None:
    """A crash leaves nothing: after a reopen and vacuum() the half-filled 128 MiB is not on disk."""
    path = tmp_path / "store"
    open_keyed(path, index).close()
    kill_inside_create_array(tmp_path, path, index)
    with open_keyed(path, index) as store:
        store.vacuum()
        stats = store.stats()
    on_disk = tree_bytes(path)
    array_bytes = KILL_SHAPE[0] * KILL_SHAPE[1] * 8
    assert on_disk < array_bytes // 4, f"{on_disk} bytes on disk after the reopen and vacuum() ({stats})"


@INDEXES
def test_exception_inside_create_array_leaves_no_key(tmp_path: Path, index: str) -> None:
    """An exception leaving the with-block propagates and the key never appears."""
    with open_keyed(tmp_path / "store", index) as store:
        with pytest.raises(RuntimeError, match="abandon"):
            with store.create_array("abandoned", (1000,), "<f4") as array:
                array[:] = 1.5
                raise RuntimeError("abandon")
        assert "abandoned" not in store and len(store) == 0
        with store.create_array("abandoned", (3, 2), "<i2") as array:
            array[:] = [[1, 2], [3, 4], [5, 6]]
        assert store.get_array("abandoned").tolist() == [[1, 2], [3, 4], [5, 6]]


@INDEXES
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "zstd"])
def test_put_array_reads_back_read_only_aligned_with_its_dtype_and_shape(
    tmp_path: Path, index: str, compressed: bool
) -> None:
    """put_array()/get_array() of several dtypes and shapes, between odd-sized values (so a
    careless layout would misalign them); meta().array names dtype and shape."""
    arrays = {
        "f8": numpy.linspace(0, 1, 77).reshape(7, 11),
        "i2": numpy.arange(-5, 5, dtype="<i2"),
        "u1": numpy.arange(13, dtype="u1"),
        "c16": numpy.array([1 + 2j, 3 - 4j]),
        "bool": numpy.array([[True, False], [False, True]]),
        ">i4": numpy.arange(6, dtype=">i4").reshape(3, 2),
        "empty": numpy.zeros((0, 3)),
        "scalar": numpy.array(7.25),
    }
    with open_keyed(tmp_path / "store", index, use_compression=compressed) as store:
        for number, (name, array) in enumerate(arrays.items()):
            store.put(f"pad{number}", b"x" * (number * 3 + 1))
            store.put_array(name, array)
        for name, array in arrays.items():
            got = store.get_array(name)
            assert got.dtype == array.dtype and got.shape == array.shape, name
            assert numpy.array_equal(got, array), name
            assert not got.flags.writeable, f"{name}: writable"
            assert got.ctypes.data % got.dtype.alignment == 0, f"{name}: misaligned"
            meta = store.meta(name)
            assert meta.array is not None and numpy.dtype(meta.array[0]) == array.dtype, (name, meta)
            assert tuple(meta.array[1]) == array.shape, (name, meta)
