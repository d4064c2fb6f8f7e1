"""A real single-member etcd for the tests: start, stop, restart, on loopback only.

etcd runs on free 127.0.0.1 ports with a temporary data directory (in memory under
/dev/shm where there is one) and fast Raft timings, so it is up in well under a second.
Readiness is polled on ``/health`` with a deadline, never slept for.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

__all__ = ["EtcdProcess", "etcd_binary", "etcd_required", "free_port"]

REQUIRE_ENV: Final = "GEERPC_REQUIRE_ETCD"
_START_TIMEOUT: Final = 15.0
_STOP_TIMEOUT: Final = 5.0


def etcd_binary() -> str | None:
    """The etcd executable on PATH, or None."""
    return shutil.which("etcd")


def etcd_required() -> bool:
    """True when the run must fail, not skip, without etcd (``GEERPC_REQUIRE_ETCD=1``)."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EtcdProcess:
    """One etcd member; ``stop()`` then ``start()`` again keeps its ports and data."""

    def __init__(self, binary: str) -> None:
        self._binary = binary
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._tmp = Path(tempfile.mkdtemp(prefix="geerpc-etcd-", dir=base))
        self.client_port = free_port()
        self.peer_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self._tmp / "etcd.log"

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:port`` of the client API."""
        return f"127.0.0.1:{self.client_port}"

    def url(self, prefix: str = "geerpc", ttl: int | None = None) -> str:
        """An ``etcd://`` URL for this member."""
        query = "" if ttl is None else f"?ttl={ttl}"
        return f"etcd://{self.endpoint}/{prefix}{query}"

    def start(self) -> None:
        """Start etcd and return once ``/health`` says it is healthy."""
        if self._proc is not None:
            raise RuntimeError("etcd is already running")
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self._binary,
            "--name", "geerpc-test",
            "--data-dir", str(self._tmp / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"geerpc-test={peer}",
            # Fast elections: a single member becomes leader in a few tens of ms.
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
            "--logger", "zap",
            "--log-level", "warn",
        ]
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        health = f"http://{self.endpoint}/health"
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(health, timeout=0.5) as response:
                    if b'"true"' in response.read():
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd not healthy after {_START_TIMEOUT} s:\n{self.log_tail()}")
            time.sleep(0.02)  # poll interval, bounded by the deadline above

    def stop(self) -> None:
        """Stop etcd (SIGTERM, then SIGKILL if it lingers) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same ports and data directory."""
        self.stop()
        self.start()

    def wipe(self) -> None:
        """Stop, delete the data directory, and start afresh on the same ports: a new
        cluster (new ids, revisions from 1), as etcd in a container without a volume."""
        self.stop()
        shutil.rmtree(self._tmp / "data", ignore_errors=True)
        self.start()

    def close(self) -> None:
        """Stop etcd and delete its data directory."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines etcd logged, for failure messages."""
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
