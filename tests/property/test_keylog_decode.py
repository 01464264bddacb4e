"""decode_keylog's path for the record of one put (one unpack, the checks in one expression)
decodes what the general per-entry decoder decodes: the same entries for every record of one
PUT, and for any byte of it changed, cut off or added, the same entries or a FormatError."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from conduit_flat_file_db.errors import FormatError
from conduit_flat_file_db.keyed import keylog
from conduit_flat_file_db.keyed.keylog import Entry, Row, decode_keylog, encode_keylog

U64 = st.integers(0, 2**64 - 1)


def general(buf: bytes, logseg: int) -> Any:
    """decode_keylog without its one-put path: the entries, or the FormatError's type."""
    saved = keylog._ONE_PUT  # pylint: disable=protected-access  # the path under test, turned off
    keylog._ONE_PUT = type(saved)("<" + "x" * (2**20))  # pylint: disable=protected-access  # longer than any record
    try:
        return decode_keylog(buf, logseg, "w")
    except FormatError:
        return FormatError
    finally:
        keylog._ONE_PUT = saved  # pylint: disable=protected-access


def fast(buf: bytes, logseg: int) -> Any:
    """decode_keylog as it is: the entries, or the FormatError's type."""
    try:
        return decode_keylog(buf, logseg, "w")
    except FormatError:
        return FormatError


one_put = st.builds(
    lambda kind, key, seg, start, length, checksum, created, meta: Entry(
        bytes([kind]) + key, Row(seg, start, start + length, checksum, created, 0, meta)
    ),
    st.integers(0, 1),
    st.binary(max_size=20),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**62),
    st.integers(0, 2**20),
    U64,
    U64,
    st.sampled_from([b"", b'{"user":{"a":1}}']),
)


@given(one_put, U64, st.integers(0, 99), st.data())
def test_one_put_path_decodes_as_the_general_decoder(entry: Entry, written: int, logseg: int, data: Any) -> None:
    """Valid, changed, cut and extended records of one PUT: both paths agree."""
    buf = encode_keylog([entry], written)
    want = general(buf, logseg)
    assert want == (written, [Entry(entry.key, entry.row._replace(logseg=logseg))])  # type: ignore[union-attr]
    assert fast(buf, logseg) == want
    changed = bytearray(buf)
    at = data.draw(st.integers(0, len(buf) - 1))
    changed[at] = data.draw(st.integers(0, 255))
    for variant in (bytes(changed), buf[: data.draw(st.integers(0, len(buf) - 1))], buf + b"\x00"):
        assert fast(variant, logseg) == general(variant, logseg)


@given(one_put)
def test_the_one_put_encoder_writes_what_the_general_encoder_writes(entry: Entry) -> None:
    """encode_one_put (one pack, the hot path of s[k] = v) and encode_keylog of the same entry,
    written at its created time, are the same bytes."""
    row = entry.row
    assert row is not None
    one = keylog.encode_one_put(entry.key, row.segment, row.start, row.end, row.checksum, row.created_ns, row.meta)
    assert one == encode_keylog([entry], row.created_ns)
