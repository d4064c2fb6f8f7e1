"""A long-running ``python -m geerpc ...`` for the command-line tests."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
from pathlib import Path

from conftest import PYTHON

RUN_TIMEOUT = 20.0


class Running:
    """A long-running ``python -m geerpc ARGS`` in ``cwd``: its first stdout line, then a signal."""

    def __init__(self, *args: str, cwd: Path | str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([PYTHON, "-m", "geerpc", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr = ""

    def first_line(self, timeout: float = RUN_TIMEOUT) -> str:
        # readline in a helper thread, so that a silent child fails the test, not hangs it
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"no line within {timeout} s") from None
        if not line:
            status = self.stop()
            raise AssertionError(f"exited with {status} before printing: {self.stderr}")
        return line.strip()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum``, wait for the exit (kill after 10 s); return the status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            _, self.stderr = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.stderr = self.proc.communicate()
        return self.proc.returncode
