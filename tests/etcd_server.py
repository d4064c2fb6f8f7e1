"""A real single-member etcd for the tests: start, stop, restart, on loopback only.

etcd runs on free 127.0.0.1 ports with a temporary data directory (in memory under
/dev/shm where there is one) and fast Raft timings, so it is up in well under a second.
Readiness is polled on ``/health`` with a deadline, never slept for. With ``tls=True``
it serves HTTPS with certificates from ``trustme`` (written to its temporary directory,
never kept), and with ``client_cert_auth=True`` it also wants a client certificate;
``client_ssl()`` is a context that passes both. ``enable_auth()`` turns on etcd's auth.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

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

    def __init__(self, binary: str, *, tls: bool = False, client_cert_auth: bool = False) -> None:
        self._binary = binary
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._tmp = Path(tempfile.mkdtemp(prefix="geerpc-etcd-", dir=base))
        self.client_port = free_port()
        self.peer_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self._tmp / "etcd.log"
        self.tls = tls or client_cert_auth
        self.client_cert_auth = client_cert_auth
        self._token: str | None = None  # root's, once enable_auth() ran
        self._root_password: str | None = None
        if self.tls:
            self._make_certificates()

    def _make_certificates(self) -> None:
        import trustme

        self.ca = trustme.CA()
        self.ca.cert_pem.write_to_path(str(self._tmp / "ca.pem"))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        server.private_key_pem.write_to_path(str(self._tmp / "server.key"))
        server.cert_chain_pems[0].write_to_path(str(self._tmp / "server.pem"))
        self._client_cert = self.ca.issue_cert("geerpc-client")

    def client_ssl(self, *, with_cert: bool = True) -> ssl.SSLContext:
        """A context trusting this etcd's CA, with a client certificate unless ``with_cert=False``."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if with_cert:
            self._client_cert.configure_cert(context)
        return context

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) that signed this etcd's certificate."""
        return self._tmp / "ca.pem"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

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
        client = self.base_url
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
        if self.tls:
            args += ["--cert-file", str(self._tmp / "server.pem"), "--key-file", str(self._tmp / "server.key")]
        if self.client_cert_auth:
            args += ["--trusted-ca-file", str(self._tmp / "ca.pem"), "--client-cert-auth"]
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_healthy()
            self._login()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        health = f"{self.base_url}/health"
        context = self.client_ssl() if self.tls else None
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(health, timeout=0.5, context=context) as response:
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

    def gateway(self, path: str, body: dict[str, Any], *, auth: bool = True) -> dict[str, Any]:
        """POST ``body`` to etcd's JSON gateway at ``path`` (as root once auth is on)."""
        headers = {"Content-Type": "application/json"}
        if auth and self._token:
            headers["Authorization"] = self._token
        request = urllib.request.Request(self.base_url + path, json.dumps(body).encode(), headers)
        context = self.client_ssl() if self.tls else None
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                reply: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"etcd refused {path}: {exc.read().decode(errors='replace')}") from None
        return reply

    def enable_auth(self, user: str, password: str, prefix: str, root_password: str = "root-secret") -> None:
        """Turn on etcd's auth: a root user, and ``user`` allowed to read and write ``/prefix/``."""
        key = f"/{prefix}/".encode()
        end = key[:-1] + b"0"  # just past "/prefix/": the range of every key under it
        perm = {"permType": "READWRITE", "key": base64.b64encode(key).decode(),
                "range_end": base64.b64encode(end).decode()}
        for path, body in [
            ("/v3/auth/user/add", {"name": "root", "password": root_password}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/user/add", {"name": user, "password": password}),
            ("/v3/auth/role/add", {"name": f"{user}-rw"}),
            ("/v3/auth/role/grant", {"name": f"{user}-rw", "perm": perm}),
            ("/v3/auth/user/grant", {"user": user, "role": f"{user}-rw"}),
            ("/v3/auth/enable", {}),
        ]:
            self.gateway(path, body)
        self._root_password = root_password
        self._login()

    def _login(self) -> None:
        # etcd's simple tokens live in its memory: log in again after every start.
        self._token = None
        if self._root_password is not None:
            reply = self.gateway("/v3/auth/authenticate", {"name": "root", "password": self._root_password})
            self._token = reply["token"]

    def log_tail(self, lines: int = 20) -> str:
        """The last lines etcd logged, for failure messages."""
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
