"""A throwaway redis-server for unit tests (Debian's, which bootstrap.sh installs): a free loopback
port, a password, no persistence. tests/unit/conftest.py's ``redis`` fixture starts one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kvstack_node import resp

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PASSWORD = "unit-test-secret-4711"


def _free_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@contextmanager
def local_redis(d: Path, *extra: str) -> Iterator[tuple[str, int]]:
    """redis-server with its files in *d* and *extra* arguments (e.g. ``--cluster-enabled yes``);
    (host, port) once it answers PING."""
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server not installed")
    port = _free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD, "--save", ""]
    args += ["--appendonly", "no", "--dir", str(d), "--logfile", str(d / "redis.log"), *extra]
    proc = subprocess.Popen(
        [REDIS_SERVER, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with resp.RespClient("127.0.0.1", port, PASSWORD, timeout=1) as c:
                    assert c.command("PING") == "PONG"
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
