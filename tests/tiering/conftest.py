"""Fixtures: real S3-compatible servers (SeaweedFS, Ceph RGW) on loopback, fresh buckets, a fault proxy.

Each server starts once, when the first test of tests/tiering asks for it, and stops after the
last one (package scope: the rest of the run does not share the machine with it). Outside CI a server whose
binaries are missing skips its tests with a message saying what to install; under CI (CI set) it is a
failure, as is any server that does not start.
"""

from __future__ import annotations

import os
import uuid
from typing import Callable, Iterator

import pytest

from .faultproxy import FaultProxy
from .s3servers import S3Server, ServerHandle, ServerNotInstalledError, start_ceph, start_seaweedfs

_STARTERS: dict[str, Callable[..., tuple[S3Server, ServerHandle]]] = {"seaweedfs": start_seaweedfs, "ceph": start_ceph}


def _serve(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Start server ``name`` for tests/tiering; stop it (and remove its data) after them."""
    try:
        server, handle = _STARTERS[name](tmp_path_factory.mktemp(name))
    except ServerNotInstalledError as error:
        if os.environ.get("CI"):
            pytest.fail(f"{error} (CI must run the tiering tests against {name})")
        pytest.skip(str(error))
    try:
        yield server
    finally:
        handle.stop()


@pytest.fixture(scope="package")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 endpoint on 127.0.0.1, shared by the tests of tests/tiering."""
    yield from _serve("seaweedfs", tmp_path_factory)


@pytest.fixture(scope="package")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A Ceph RGW S3 endpoint on 127.0.0.1 (one monitor, one memstore OSD), shared by the tests of tests/tiering."""
    yield from _serve("ceph", tmp_path_factory)


@pytest.fixture(params=["seaweedfs", "ceph"])
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each S3 server in turn (ids "seaweedfs", "ceph")."""
    server: S3Server = request.getfixturevalue(request.param)
    return server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[tuple[S3Server, str]]:  # pylint: disable=redefined-outer-name
    """A fresh, uniquely named, empty bucket on ``s3_server``; deleted with its objects afterwards."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.create_bucket(name)
    yield s3_server, name
    s3_server.delete_bucket(name)


@pytest.fixture
def fault_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:  # pylint: disable=redefined-outer-name
    """A fault-injecting proxy in front of ``s3_server`` (reach it with ``s3_server.behind(proxy.endpoint)``)."""
    with FaultProxy(s3_server.endpoint) as proxy:
        yield proxy
