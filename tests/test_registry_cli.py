"""``python -m geerpc.registry``: option checking and exit statuses (docs/cli.md)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import aiohttp
import pytest
from _registry_helpers import REPO, RegistryProcess

from geerpc.registry.__main__ import main


@pytest.mark.parametrize(
    "option, value",
    [
        ("--timeout", "-1"),
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--timeout", "abc"),
        ("--max-servers", "0"),
        ("--max-servers", "-3"),
        ("--path", "x"),
        ("--heartbeat-period", "0"),
        ("--heartbeat-period", "0.01"),
        ("--heartbeat-period", "inf"),
        ("--heartbeat-period", "five"),
        ("--log-level", "bogus"),
        ("--port", "70000"),
        ("--port", "-1"),
        ("--port", "\u0669\u0660"),
    ],
)
def test_bad_option_is_a_usage_error_naming_it(capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "0", option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err


def test_prog_names_the_program_in_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"], prog="geerpc registry")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: geerpc registry ")


def test_log_level_is_case_insensitive(capsys):
    with pytest.raises(SystemExit):  # --help: parse only, run nothing
        main(["--log-level", "debug", "--help"])


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "geerpc.registry", *args],
                          capture_output=True, text=True, timeout=20, env=env, check=False)


def test_bad_option_in_a_process_exits_2_without_traceback():
    result = _run("--port", "0", "--timeout", "inf")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "--timeout" in result.stderr


def test_port_in_use_exits_1_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _run("--port", str(taken.getsockname()[1]))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m geerpc.registry: "), result.stderr


async def test_heartbeat_period_option_is_what_replies_ask_for():
    process = RegistryProcess(timeout=300, options=["--heartbeat-period", "2.5"])
    try:
        url = await process.start()
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.headers["X-Geerpc-Period"] == "2.5"
    finally:
        assert await process.stop() == 0


def test_the_registry_lifts_its_soft_limit_on_open_files():
    # Servers beating every 5 s keep a connection open each: 10,000 servers need
    # 10,000 sockets, past the usual soft limit of 1,024.
    code = ("import resource; from geerpc.registry.__main__ import _raise_file_limit; "
            "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); _raise_file_limit(); "
            "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard))")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20, env=env,
                          check=False)
    assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr
