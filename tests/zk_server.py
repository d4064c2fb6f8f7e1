"""A real standalone ZooKeeper for the tests: start, stop, restart, on loopback only.

Debian's ``zookeeper`` package (pulled in by ``zookeeperd``) ships the server's jars;
the tests run its ``ZooKeeperServerMain`` with ``java`` directly, not the system
service, on a free 127.0.0.1 port with a temporary data directory (in memory under
/dev/shm where there is one), a 100 ms tick (so sessions may be as short as 200 ms)
and no admin web server. Readiness is polled with ZooKeeper's ``ruok`` and ``srvr`` commands and a
deadline, never slept for.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

__all__ = ["ZooKeeperProcess", "free_port", "zookeeper_command", "zookeeper_required"]

REQUIRE_ENV: Final = "GEERPC_REQUIRE_ZOOKEEPER"
JAR: Final = Path("/usr/share/java/zookeeper.jar")  # its manifest names the jars it needs
_MAIN: Final = "org.apache.zookeeper.server.ZooKeeperServerMain"
_START_TIMEOUT: Final = 30.0
_STOP_TIMEOUT: Final = 5.0


def zookeeper_command() -> list[str] | None:
    """``java -cp ...`` for Debian's ZooKeeper, or None when java or the jar is missing."""
    java = shutil.which("java")
    if java is None or not JAR.is_file():
        return None
    return [java, "-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.jmx.log4j.disable=true", "-cp", str(JAR), _MAIN]


def zookeeper_required() -> bool:
    """True when the run must fail, not skip, without ZooKeeper (``GEERPC_REQUIRE_ZOOKEEPER=1``)."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ZooKeeperProcess:
    """One standalone ZooKeeper; ``stop()`` then ``start()`` again keeps its port and data."""

    def __init__(self, command: list[str]) -> None:
        self._command = command
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._tmp = Path(tempfile.mkdtemp(prefix="geerpc-zk-", dir=base))
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self._tmp / "zookeeper.log"
        config = self._tmp / "zoo.cfg"
        config.write_text(
            "tickTime=100\n"
            "minSessionTimeout=200\n"
            "maxSessionTimeout=60000\n"
            f"dataDir={self._tmp / 'data'}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "maxClientCnxns=0\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr,cons\n"
        )
        self._config = config

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:port`` of the client port."""
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "geerpc", session_timeout: float | None = None) -> str:
        """A ``zk://`` URL for this ZooKeeper."""
        query = "" if session_timeout is None else f"?session_timeout={session_timeout:g}"
        return f"zk://{self.endpoint}/{path}{query}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start ZooKeeper and return once it serves clients (``srvr`` names its mode).

        ``ruok`` alone is not enough: ZooKeeper answers ``imok`` as soon as its port is
        bound, before it has loaded its data and takes sessions, which on a busy
        machine can be seconds later."""
        if self._proc is not None:
            raise RuntimeError("ZooKeeper is already running")
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen([*self._command, str(self._config)], stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def command(self, word: str, timeout: float = 1.0) -> bytes:
        """Send a four-letter command (``ruok``, ``srvr``, ``cons``) and return the answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                if self.command("ruok", 0.5) == b"imok" and b"Mode: " in self.command("srvr", 0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ZooKeeper not ready after {_START_TIMEOUT} s:\n{self.log_tail()}")
            time.sleep(0.02)  # poll interval, bounded by the deadline above

    def stop(self, *, kill: bool = False) -> None:
        """Stop ZooKeeper (SIGTERM, or SIGKILL with ``kill``) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start()

    def wipe(self) -> None:
        """Stop, delete the data directory, and start afresh on the same port: every
        session and node is gone, as for a ZooKeeper in a container without a volume."""
        self.stop()
        shutil.rmtree(self._tmp / "data", ignore_errors=True)
        self.start()

    def close(self) -> None:
        """Stop ZooKeeper and delete its data directory."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines ZooKeeper logged, for failure messages."""
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
