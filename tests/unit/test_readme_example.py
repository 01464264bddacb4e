"""The reference README's "Basic Usage" example, run as written (raw segments only).

The example is an API contract: the code below is the README's, character for
character, except ``use_compression=True`` became ``use_compression=False`` (this
version writes raw segments only). It runs with ``exec`` inside ``tmp_path``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from conduit_flat_file_db.flat_file_db import FlatFileDb

README_BASIC_USAGE = """
import logging
from pathlib import Path

from conduit_flat_file_db.flat_file_db import FlatFileDb, FlatFileDbUnsafeAccessError
logging.basicConfig(level=logging.DEBUG)
ffdb = FlatFileDb(
    datadir=Path("./blob_store1"),
    mutable_file_lock_path=Path("./blob_store1.lock"),
    fsync=True,
    use_compression=False,
)
ffdb.MAX_DAT_FILE_SIZE = 128 * 1024 * 1024  # This is the default, uncompressed .dat file size
with ffdb:
    # Write BLOBS
    data_location_aa = ffdb.put(b"a" * (ffdb.MAX_DAT_FILE_SIZE // 16))
    data_location_bb = ffdb.put(b"b" * (ffdb.MAX_DAT_FILE_SIZE // 16))

    # Read BLOBS
    data_aa = ffdb.get(data_location_aa)
    assert data_aa == b"a" * (ffdb.MAX_DAT_FILE_SIZE // 16), data_aa
    data_bb = ffdb.get(data_location_bb)
    assert data_bb == b"b" * (ffdb.MAX_DAT_FILE_SIZE // 16), data_bb
    
    # Delete BLOBS - in general, great caution needs to be exercised for deletions
    # because multiple puts usually will share a single .dat (uncompressed) or .dat.zst (compressed) file.
    try:
        ffdb.delete_file(Path(data_location_aa.file_path))
    except FlatFileDbUnsafeAccessError as e:
        print(f"Error: {e}")  # "Error: Deleting the mutable file is not allowed. Ever."

    # Usually a new mutable file is created automatically when the last one gets full
    # But here we will force the creation of a new mutable file for demonstration
    ffdb._maybe_get_new_mutable_file(force_new_file=True)
    # data_location_aa & data_location_bb that share the same file are now in an
    # immutable file so can be deleted without `FlatFileDbUnsafeAccessError` being raised
    ffdb.delete_file(Path(data_location_aa.file_path))  # OK to delete now
    ffdb.delete_file(Path(data_location_bb.file_path))  # OK to delete now
"""

BLOB_SIZE = 128 * 1024 * 1024 // 16


@pytest.fixture(name="readme_run")
def fixture_readme_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> tuple[dict[str, Any], str, list[logging.LogRecord]]:
    """Run the example in tmp_path; return its namespace, its stdout and its log records."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    # basicConfig may set the level and add a handler: both are restored afterwards.
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    namespace: dict[str, Any] = {"__name__": "readme_basic_usage"}
    code = compile(README_BASIC_USAGE, "README.md#basic-usage", "exec")
    with caplog.at_level(logging.DEBUG, logger="conduit_flat_file_db"):
        exec(code, namespace)  # pylint: disable=exec-used
    ffdb = namespace["ffdb"]
    assert isinstance(ffdb, FlatFileDb)
    report = ffdb.verify()
    ffdb.close()
    assert report.ok, str(report)
    return namespace, capsys.readouterr().out, list(caplog.records)


def test_readme_assertions_hold(readme_run: tuple[dict[str, Any], str, list[logging.LogRecord]]) -> None:
    """The example's reads return the blobs it wrote, back to back in one segment."""
    namespace, _out, _records = readme_run
    assert namespace["data_aa"] == b"a" * BLOB_SIZE
    assert namespace["data_bb"] == b"b" * BLOB_SIZE
    aa, bb = namespace["data_location_aa"], namespace["data_location_bb"]
    assert (aa.start_offset, aa.end_offset) == (0, BLOB_SIZE)
    assert (bb.start_offset, bb.end_offset) == (BLOB_SIZE, 2 * BLOB_SIZE)
    assert aa.file_path == bb.file_path


def test_readme_first_delete_raised_unsafe_access(
    readme_run: tuple[dict[str, Any], str, list[logging.LogRecord]],
) -> None:
    """Deleting the mutable segment raised FlatFileDbUnsafeAccessError (the example prints it)."""
    _namespace, out, _records = readme_run
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith("Error: Deleting the mutable file is not allowed. Ever."), out


def test_readme_second_delete_of_same_file_only_logs(
    readme_run: tuple[dict[str, Any], str, list[logging.LogRecord]],
) -> None:
    """The second delete of the already deleted segment logs an error and does not raise."""
    namespace, _out, records = readme_run
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "File not found at path" in errors[0].getMessage()
    assert namespace["data_location_aa"].file_path in errors[0].getMessage()


def test_readme_deleted_segment_files_are_gone(
    tmp_path: Path, readme_run: tuple[dict[str, Any], str, list[logging.LogRecord]]
) -> None:
    """The sealed segment's data and index files are gone; its locations no longer read."""
    namespace, _out, _records = readme_run
    deleted = Path(namespace["data_location_aa"].file_path)
    assert deleted.name == "data_00000000.dat"
    names = sorted(p.name for p in (tmp_path / "blob_store1").iterdir())
    assert "data_00000000.dat" not in names
    assert "data_00000000.idx" not in names
    assert "data_00000000.dat.zst" not in names
    # The new mutable segment (created by the forced rotation) is still there, empty.
    assert "data_00000001.dat" in names
    assert (tmp_path / "blob_store1" / "data_00000001.dat").stat().st_size == 0
    with FlatFileDb(tmp_path / "blob_store1", tmp_path / "blob_store1.lock") as reopened:
        with pytest.raises(FileNotFoundError):
            reopened.get(namespace["data_location_aa"])
