"""The tier of one writable store: uploads, local retention, remote reads, deletes, gc, status.

An upload of sealed segment ``n`` (only once it is durable: below the state page's
W_SYNCED_BELOW) puts its index, data and block sums, checks each (size from a HEAD, and the
ETag where the server's is the MD5 of what was sent), and then, under the store's write
lock, creates its manifest (a conditional create: never overwriting another) and writes the
local marker ``data_n.remote`` holding the same manifest. Only then does the segment count as
uploaded, and only then may local retention remove its data file. A crash at any step
leaves either no manifest (the objects are orphans: overwritten by the retried upload, or
removed by ``gc``) or a manifest whose every object is whole; a retried upload that finds its
manifest made already adopts it.

Deleting segment ``n`` (``delete_file``) removes the manifest first (no machine trusts the
segment from then on), then the local files, then the other objects. The delete and an
upload's last step both hold the store's write lock, so a deleted segment is never uploaded
again.

One process at a time uploads for a store (an inter-process lock beside the store's lock
file); the others read. Uploads run in a background thread, woken on seals and every
``POLL_SECONDS``; ``sync_tiering()`` runs a pass in the caller's thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, ContextManager

import xxhash

from ..errors import (
    FlatFileDbLockTimeoutError,
    FlatFileDbNotFoundError,
    RemoteCorruptionError,
    RemoteTimeoutError,
    RemoteUnavailableError,
    UnsafeRemoteError,
)
from ..fileio import list_dir, pread_full
from ..frames import FrameCache
from ..index import KIND_ZSTD
from ..locking import exclusive_file_lock
from ..naming import TIER_FILE_NAME, parse_name, remote_name, segment_name, temp_name
from ..segment_files import fsync_dir, open_data_file, read_index
from .bucket import RemoteBucket
from .config import Tiering
from .manifest import (
    CLAIM_NAME,
    MANIFEST_FORMAT,
    MANIFESTS,
    MAX_MANIFEST_BYTES,
    SEGMENTS,
    Manifest,
    data_object,
    hex64,
    index_object,
    manifest_object,
    parse_manifest_name,
    parse_segment_object,
    sums_object,
)
from .remote_reader import RemoteSegmentReader
from .upload import Pacer, upload_objects

logger = logging.getLogger("conduit_flat_file_db")

POLL_SECONDS = 1.0
COMMIT_LOCK_WAIT = 0.05  # seconds per try for the store's write lock in an upload's last step
MAX_BACKOFF_SECONDS = 60.0
UPLOAD_NICE = 10  # the upload thread's nice value on Linux
_MARKER_SUFFIX = ".remote"


class Tier:  # pylint: disable=too-many-instance-attributes  # a thread, a lock, a bucket and their state
    """Uploads and reads of one store instance's sealed segments (see the module docstring)."""

    def __init__(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self,
        config: Tiering,
        dir_fd: int,
        dir_str: str,
        lock_path: str,
        state_words: Callable[[], tuple[int, int]],
        write_lock: Callable[[float], ContextManager[None]],
        files_removed: Callable[[], None] | None = None,
        readonly: bool = False,
    ) -> None:
        self.config = config
        self.bucket = RemoteBucket(config.build_store(), config.prefix, config.url)
        # The open's checks wait seconds, not the minute of retries that uploads and reads get.
        self._quick_bucket = RemoteBucket(config.build_store(quick=True), config.prefix, config.url)
        self._quick_bucket.stats = self.bucket.stats
        self.cache = FrameCache(config.remote_cache_bytes)
        self.dir_str = dir_str
        # Its own open of the directory, not a dup: a dup shares the directory's read position,
        # and two threads listing through descriptors that share it see parts of the listing.
        self._dir_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        self._state_words = state_words  # (mutable segment, synced below): only while not closed
        self._write_lock = write_lock
        self._files_removed = files_removed or (lambda: None)  # bumps the state page's epoch
        self._upload_lock = exclusive_file_lock(lock_path + ".tier")
        self._local_lock = threading.Lock()  # one pass at a time in this process
        # Held while the thread touches the store (its state page, its write lock): close() waits
        # for that (a commit step: one small request), never for an upload.
        self._commit_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._stopped = threading.Event()  # set by close(): ends an upload's wait for the pacer
        self._pacer = Pacer(config.upload_bytes_per_second, self._stopped)
        self._thread: threading.Thread | None = None
        self._manifests: dict[int, Manifest] = {}
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.uploads = 0
        self.store_id = ""  # until the claim is checked (at open, or by the thread if the server was down)
        try:
            if readonly:  # reads only: no claim to make, no probe to write
                self._stopping = True
                local = self._read_tier_file() or {}
                if local.get("url") not in (None, config.url):
                    raise UnsafeRemoteError(f"{dir_str} keeps its segments in {local.get('url')}, not in {config.url}")
                self.store_id = str(local.get("store", ""))
            else:
                self._check_claim(at_open=True)
        except BaseException:
            os.close(self._dir_fd)
            raise

    def _check_claim(self, at_open: bool = False) -> None:
        """Claim and probe once. A server that does not answer at open does not stop the open
        (local reads and writes go on; the thread tries again before it uploads); a missing
        bucket, refused credentials or an unsafe server do."""
        if self.store_id:
            return
        try:
            self.store_id = self._claim(self._quick_bucket if at_open else self.bucket)
        except RemoteUnavailableError as exc:
            if not at_open:
                raise
            self._record_error(exc)

    # -- open: the claim and the probe --------------------------------------------------

    def _claim(self, bucket: RemoteBucket) -> str:
        """The store's id in the bucket: checks (or makes) the claim on the prefix, and probes
        the server for what the tier relies on."""
        local = self._read_tier_file()
        if local is None:
            # The id is made here once, for every process of the datadir: two processes opening a
            # new datadir at once would each make one, and the one whose claim lost would refuse
            # the bucket as another store's.
            local = self._create_tier_file({"store": uuid.uuid4().hex, "url": self.config.url})
        self.probe(bucket)
        raw = bucket.get("get_claim", CLAIM_NAME, MAX_MANIFEST_BYTES)
        if raw is None:
            if local is not None and local.get("url") not in (None, self.config.url) and self._remote_markers():
                raise UnsafeRemoteError(
                    f"{self.dir_str} keeps segments in {local.get('url')}; it cannot switch to {self.config.url}"
                )
            store_id = local["store"] if local is not None else uuid.uuid4().hex
            claim = json.dumps({"format": MANIFEST_FORMAT, "store": store_id}).encode()
            try:
                bucket.put("put_claim", CLAIM_NAME, claim, len(claim), create=True)
            except FileExistsError:
                raw = bucket.get("get_claim", CLAIM_NAME, MAX_MANIFEST_BYTES)  # another opener won: read its claim
        if raw is not None:
            try:
                store_id = json.loads(raw)["store"]
                if not isinstance(store_id, str):
                    raise TypeError(type(store_id).__name__)
            except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested too deep
                raise UnsafeRemoteError(f"{self.config.url}/{CLAIM_NAME} is not a claim this release reads") from None
            if local is None or local.get("store") != store_id:
                raise UnsafeRemoteError(
                    f"{self.config.url} belongs to another store (id {store_id}); give each store its own prefix"
                )
        if local is None or local.get("url") != self.config.url:
            self._write_tier_file({"store": store_id, "url": self.config.url})
        return str(store_id)

    def probe(self, bucket: RemoteBucket) -> None:
        """Refuse a server that would make the tier unsafe: one that ignores ``Range`` or
        overwrites on a conditional create (UnsafeRemoteError, with the reason)."""
        name = f"ffdb-probe/{uuid.uuid4().hex}"
        body = bytes(range(256)) * 4
        with contextlib.suppress(FileExistsError):  # the name is new: only a retry of this PUT made it
            bucket.put("probe", name, body, len(body), create=True)
        try:
            try:
                bucket.put("probe", name, b"other", 5, create=True)
            except FileExistsError:
                pass
            else:
                raise UnsafeRemoteError(
                    f"{self.config.url}: the server overwrote an object on a conditional create "
                    "(If-None-Match: *); the tier needs it to never overwrite a manifest"
                )
            if bucket.get_range("probe", name, 100, 110) != body[100:110]:
                raise UnsafeRemoteError(f"{self.config.url}: the server answered a ranged GET with other bytes")
        finally:
            bucket.delete("probe", name)

    def _read_tier_file(self) -> dict[str, Any] | None:
        try:
            fd = os.open(TIER_FILE_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return None
        try:
            raw = pread_full(fd, 1 << 16, 0)
        finally:
            os.close(fd)
        try:
            fields = json.loads(raw)
            if not isinstance(fields, dict) or not isinstance(fields.get("store"), str):
                raise ValueError
            return fields
        except (ValueError, RecursionError):
            raise UnsafeRemoteError(f"{self.dir_str}/{TIER_FILE_NAME} is damaged; it names the store's id") from None

    def _write_tier_file(self, fields: dict[str, Any]) -> None:
        self._write_file(TIER_FILE_NAME, json.dumps(fields).encode())

    def _create_tier_file(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Write the tier file with ``fields`` unless another process made it first; returns the
        fields the file holds then. A scratch file, fsynced, is linked into place: a link, unlike a
        rename, fails when the name exists, so the first process's id stands."""
        tmp = temp_name(f"{uuid.uuid4().hex}-{TIER_FILE_NAME}")  # this instance's: others of the process race too
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=self._dir_fd)
        try:
            try:
                os.write(fd, json.dumps(fields).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, TIER_FILE_NAME, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # A filesystem without hard links: a rename, which a process opening at the same
                # instant can overwrite (its claim then fails: open it again).
                os.rename(tmp, TIER_FILE_NAME, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except FileExistsError:
            found = self._read_tier_file()  # another process's, whole: it was linked in after its fsync
            if found is not None:
                return found
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=self._dir_fd)
        fsync_dir(self._dir_fd)
        return fields

    def _write_file(self, name: str, data: bytes) -> None:
        """Write ``name`` in the datadir atomically and durably (scratch file, fsync, rename)."""
        tmp = temp_name(name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=self._dir_fd)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        fsync_dir(self._dir_fd)

    # -- local state --------------------------------------------------------------------

    def _listing(self) -> tuple[dict[int, int], set[int], set[int]]:
        """({number: data file size}, numbers with a marker, numbers with an index)."""
        data: dict[int, int] = {}
        markers: set[int] = set()
        indexes: set[int] = set()
        for name in list_dir(self._dir_fd):
            parsed = parse_name(name)
            if parsed is None:
                continue
            number, suffix = parsed
            if suffix == _MARKER_SUFFIX:
                markers.add(number)
            elif suffix == ".idx":
                indexes.add(number)
            else:
                with contextlib.suppress(FileNotFoundError):
                    data[number] = os.stat(name, dir_fd=self._dir_fd).st_size
        return data, markers, indexes

    def _remote_markers(self) -> set[int]:
        return self._listing()[1]

    def uploaded(self, number: int) -> bool:
        """Whether this datadir uploaded segment ``number``: its marker exists (readable or not)."""
        if number in self._manifests:
            return True
        try:
            os.stat(remote_name(number), dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def manifest(self, number: int) -> Manifest | None:
        """The manifest of an uploaded segment, from its local marker (None if not uploaded)."""
        found = self._manifests.get(number)
        if found is not None:
            return found
        try:
            fd = os.open(remote_name(number), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return None
        try:
            raw = pread_full(fd, 1 << 20, 0)
        finally:
            os.close(fd)
        try:
            found = Manifest.decode(raw, f"{self.dir_str}/{remote_name(number)}", number)
        except RemoteCorruptionError as damaged:
            found = self._manifest_from_bucket(number, damaged)
        self._manifests[number] = found
        return found

    def _manifest_from_bucket(self, number: int, damaged: RemoteCorruptionError) -> Manifest:
        """The manifest of a segment whose local marker is damaged, from the bucket: taken only when
        it is this store's and describes the local record index; else ``damaged`` is raised. The
        marker is not written anew here: this runs outside the write lock, and a delete racing it
        would be left with a marker of a deleted segment."""
        raw = self.bucket.get("get_manifest", manifest_object(number), MAX_MANIFEST_BYTES)
        index = read_index(self._dir_fd, number)
        if raw is None or index is None:
            raise damaged
        manifest = Manifest.decode(raw, f"{self.config.url}/{manifest_object(number)}", number)
        if (manifest.store, manifest.index_size, manifest.index_xxh3) != (
            self.store_id,
            len(index),
            hex64(xxhash.xxh3_64_intdigest(index)),
        ):
            raise damaged
        logger.warning("%s: %s; using the bucket's manifest of segment %d", self.dir_str, damaged, number)
        return manifest

    def reader(self, number: int) -> RemoteSegmentReader | None:
        """A reader of segment ``number`` from the bucket, or None when it was never uploaded."""
        manifest = self.manifest(number)
        if manifest is None:
            return None
        name = os.path.join(self.dir_str, segment_name(number, manifest.compressed))
        return RemoteSegmentReader(self.bucket, manifest, name, self.cache, lambda: self._local_index(number))

    def _local_index(self, number: int) -> bytes | None:
        """Segment ``number``'s record index from the local disk (None once closed or deleted)."""
        try:
            return read_index(self._dir_fd, number)
        except OSError:
            return None

    # -- the background thread ----------------------------------------------------------

    def wake(self) -> None:
        """A segment was sealed: upload soon (starts the thread on first use)."""
        if self._stopping:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="ffdb-tier", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        # Background priority (Linux: a thread's own nice value): reading and hashing segments for
        # upload yields the cores to the threads that serve reads and puts.
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPLOAD_NICE)
        backoff = POLL_SECONDS
        while not self._stopping:
            self._wake.wait(backoff)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.run_pass(blocking=False)
                backoff = POLL_SECONDS
            except Exception as exc:  # pylint: disable=broad-exception-caught  # recorded; retried later
                if self._stopping:  # an upload cut by close(): redone by the next open, not an error
                    return
                self._record_error(exc)
                backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)

    def _record_error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_at = time.time()
        logger.error("%s: tiering: %s (uploads retried with backoff)", self.dir_str, self.last_error)

    def close(self) -> None:
        """Stop the thread after its current request (an upload cut short is redone by the next
        open; its objects have no manifest yet); waits only for a commit step in progress."""
        self._stopping = True
        self._stopped.set()
        with self._commit_lock:
            pass
        self._wake.set()
        if self._local_lock.acquire(blocking=False):  # pylint: disable=consider-using-with  # no pass running: closed here
            try:
                self._close_dir()
            finally:
                self._local_lock.release()

    @property
    def stopped(self) -> bool:
        """True once close() began: no pass uploads any more."""
        return self._stopping

    def _close_dir(self) -> None:
        """Close the tier's directory descriptor once (a pass that saw the stop closed it already)."""
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    # -- a pass: uploads, then local retention ------------------------------------------

    def run_pass(self, blocking: bool = True, timeout: float | None = None) -> int:
        """Upload every durable sealed segment not uploaded yet, then apply local retention.
        Returns the number of sealed segments still not uploaded (those not durable yet).
        Without ``blocking``, returns -1 at once when another process is uploading. ``timeout``
        bounds the wait for this process's own pass (the thread's) and for another process's."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._local_lock.acquire(timeout=-1 if timeout is None else timeout):  # pylint: disable=consider-using-with
            raise RemoteTimeoutError(f"{self.dir_str}: the tier's own upload pass did not end within {timeout:.3g} s")
        try:
            if self._stopping or self._dir_fd < 0:
                return -1
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._upload_lock.acquire(blocking=blocking, timeout=left):
                if blocking:
                    raise RemoteTimeoutError(f"{self.dir_str}: another process kept the tier's upload lock")
                return -1
            try:
                return self._pass()
            finally:
                self._upload_lock.release()
                if self._stopping:
                    self._close_dir()
        finally:
            self._local_lock.release()

    def _pass(self) -> int:
        self._check_claim()
        with self._commit_lock:  # close() waits on it before the store lets its state page go
            if self._stopping:
                return -1
            mutable, synced_below = self._state_words()
        data, markers, _indexes = self._listing()
        pending = 0
        for number in sorted(data):
            if number >= mutable or number in markers:
                continue
            if number >= synced_below:
                pending += 1
                continue
            if self._stopping:
                return pending + 1
            self.upload(number)
        self._apply_retention(mutable)
        return pending

    def upload(self, number: int) -> bool:
        """Upload sealed segment ``number`` (see the module docstring); False if it vanished."""
        existing = self.bucket.get("get_manifest", manifest_object(number), MAX_MANIFEST_BYTES)
        if existing is not None:
            manifest = Manifest.decode(existing, f"{self.config.url}/{manifest_object(number)}", number)
            if manifest.store != self.store_id:
                raise UnsafeRemoteError(f"{self.config.url}: segment {number} was uploaded by another store")
            if not self._describes_local(number, manifest):
                return False
            return self._commit(number, manifest, create=False)
        try:
            fd, kind = open_data_file(self._dir_fd, number)
        except FlatFileDbNotFoundError:
            return False
        try:
            uploaded = upload_objects(
                self.bucket, self.store_id, self._dir_fd, self.dir_str, number, fd, kind == KIND_ZSTD, self._pacer
            )
        finally:
            os.close(fd)
        if uploaded is None:
            return False
        return self._commit(number, uploaded, create=True)

    def _describes_local(self, number: int, manifest: Manifest) -> bool:
        """Whether a manifest found in the bucket describes the local segment ``number`` (its
        kind, data size and record index, which holds every blob's checksum): only then may it be
        adopted, and the local data file later removed. UnsafeRemoteError when it describes other
        bytes (a copy of this datadir uploads to the same prefix); False when the segment vanished."""
        try:
            fd, kind = open_data_file(self._dir_fd, number)
        except FlatFileDbNotFoundError:
            return False
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        index = read_index(self._dir_fd, number)
        if index is None:
            return False
        if (manifest.compressed, manifest.data_size, manifest.index_size, manifest.index_xxh3) != (
            kind == KIND_ZSTD,
            size,
            len(index),
            hex64(xxhash.xxh3_64_intdigest(index)),
        ):
            raise UnsafeRemoteError(
                f"{self.config.url}: the bucket's segment {number} holds other bytes than {self.dir_str}'s "
                "(another copy of this datadir uploads there?); it is not adopted and the local copy stays"
            )
        return True

    def _commit(self, number: int, manifest: Manifest, create: bool) -> bool:
        """Create the manifest and the local marker, unless the segment was deleted meanwhile."""
        while True:
            with self._commit_lock:
                if self._stopping:
                    return False
                try:
                    with self._write_lock(COMMIT_LOCK_WAIT):
                        return self._commit_locked(number, manifest, create)
                except FlatFileDbLockTimeoutError:
                    pass  # let close() in between tries: its thread may hold the store's read lock
            time.sleep(COMMIT_LOCK_WAIT / 5)

    def _commit_locked(self, number: int, manifest: Manifest, create: bool) -> bool:
        """The last step of an upload, under the store's write lock."""
        if read_index(self._dir_fd, number, 0) is None:  # deleted while uploading: leave orphans to gc
            return False
        if create:
            raw = manifest.encode()
            try:
                self.bucket.put("put_manifest", manifest_object(number), raw, len(raw), create=True)
            except FileExistsError:
                theirs = self.bucket.get("get_manifest", manifest_object(number), MAX_MANIFEST_BYTES)
                other = None if theirs is None else Manifest.decode(theirs, manifest_object(number), number)
                if other is None or other.store != self.store_id:
                    raise UnsafeRemoteError(
                        f"{self.config.url}: another store wrote segment {number}'s manifest"
                    ) from None
                if not other.same_segment(manifest):
                    raise UnsafeRemoteError(
                        f"{self.config.url}: segment {number}'s manifest describes other bytes than were uploaded "
                        "(another copy of this datadir uploads there?); the local copy stays"
                    ) from None
                manifest = other  # a retry of an upload whose manifest was made: that one stands
        self._write_file(remote_name(number), manifest.encode())
        self._manifests[number] = manifest
        self.uploads += 1
        return True

    def _apply_retention(self, mutable: int) -> None:
        """Remove local data files of uploaded segments, oldest first, past the retention bounds."""
        bytes_bound, age_bound = self.config.local_retention_bytes, self.config.local_retention_age
        if bytes_bound is None and age_bound is None:
            return
        data, markers, _ = self._listing()
        total = sum(data.values())
        now = time.time()
        removed = False
        for number in sorted(data):
            if number >= mutable or number not in markers:
                break  # oldest first: never past a segment not uploaded yet
            too_big = bytes_bound is not None and total > bytes_bound
            too_old = age_bound is not None and now - self._sealed_at(number) > age_bound
            if not too_big and not too_old:
                break
            if self._stopping:
                return
            for compressed in (False, True):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(segment_name(number, compressed), dir_fd=self._dir_fd)
            total -= data[number]
            removed = True
        if removed:
            with self._commit_lock:  # readers of every process drop the descriptors that keep the blocks
                if not self._stopping:
                    self._files_removed()

    def _sealed_at(self, number: int) -> float:
        manifest = self.manifest(number)
        return manifest.sealed_ns / 1e9 if manifest is not None else time.time()

    # -- deletion and garbage -------------------------------------------------------------

    def forget_manifest(self, number: int) -> None:
        """Step one of a delete: no machine trusts segment ``number`` in the bucket any more."""
        self.bucket.delete("delete", manifest_object(number))
        self._manifests.pop(number, None)

    def forget_objects(self, number: int) -> None:
        """Last step of a delete: the segment's other objects."""
        for name in (data_object(number, False), data_object(number, True), index_object(number), sums_object(number)):
            self.bucket.delete("delete", name)

    def gc(self, mutable: int) -> dict[str, int]:
        """Remove what a crash left in the bucket: objects of segments without a manifest, and
        manifests of segments this datadir no longer has (deleted here, the delete cut short)."""
        # The upload turn, taken as a pass takes it: this process's own thread first (an
        # inter-process lock does not exclude threads of one process), then the other processes.
        with self._local_lock, self._upload_lock:  # no upload between its objects and its manifest
            data, markers, indexes = self._listing()
            local = set(data) | markers | indexes
            manifests = {
                n for n in (parse_manifest_name(name) for name, _ in self.bucket.list(MANIFESTS)) if n is not None
            }
            removed = {"manifests": 0, "objects": 0}
            for number in sorted(manifests):
                if number < mutable and number not in local:
                    self.forget_manifest(number)
                    manifests.discard(number)
                    removed["manifests"] += 1
            for name, _size in list(self.bucket.list(SEGMENTS)):
                owner = parse_segment_object(name)
                if owner is not None and owner not in manifests:
                    self.bucket.delete("delete", f"{SEGMENTS}/{name}")
                    removed["objects"] += 1
            return removed

    def status(self, mutable: int) -> dict[str, Any]:
        """What ``tiering_status()`` reports (see there)."""
        data, markers, _ = self._listing()
        sealed = [n for n in data if n < mutable]
        return {
            "url": self.config.url,
            "pending": sorted(n for n in sealed if n not in markers),
            "uploaded": sorted(markers),
            "remote_only": sorted(markers - set(data)),
            "local_bytes": sum(data.values()),
            "uploads": self.uploads,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "requests": self.bucket.stats.snapshot(),
            "cache": {"hits": self.cache.hits, "misses": self.cache.misses, "bytes": self.cache.size_bytes},
        }


__all__ = ["Tier"]
