"""Every ```python block of README.md runs as written, in a process of its own.

Blocks are taken from the README as they stand and run unchanged, with two
exceptions said where they happen: the etcd block names etcd at
``127.0.0.1:2379`` (the etcd its section starts), which is replaced by the address of
an etcd this test starts on a free port. Each run has a bounded timeout, must exit 0
with nothing on stderr, and must print what the README's comments say it prints.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT, subprocess_env
from etcd_server import EtcdProcess, etcd_binary, etcd_required

README = ROOT / "README.md"
RUN_TIMEOUT = 30.0
ETCD_IN_README = "127.0.0.1:2379"

_BLOCK = re.compile(r"^(?P<indent>[ \t]*)```python\n(?P<body>.*?)^(?P=indent)```$", re.M | re.S)
_HEADING = re.compile(r"^#+ (.*)$", re.M)


def python_blocks() -> list[tuple[str, str]]:
    """(the heading above it, the code) for each ```python block, in order."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in _BLOCK.finditer(text):
        headings = _HEADING.findall(text, 0, match.start())
        blocks.append((headings[-1] if headings else "", textwrap.dedent(match["body"])))
    return blocks


def run(code: str, tmp_path: Path) -> str:
    """Run ``code`` as a script in tmp_path; its stdout, once it exited 0 with a silent stderr."""
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run([PYTHON, str(script)], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stderr) == (0, ""), (code, done.stdout)
    return done.stdout


BLOCKS = python_blocks()
HEADINGS = [heading for heading, _ in BLOCKS]
# The block that needs etcd runs in its own test, against an etcd the test starts.
LOCAL = [i for i, (_, code) in enumerate(BLOCKS) if ETCD_IN_README not in code]


def test_the_readme_has_its_python_blocks() -> None:
    # Guards the extraction itself: a regex that matched nothing would pass the rest.
    assert HEADINGS[:1] == ["Quickstart"]
    assert "A registry, discovery and the XClient" in HEADINGS
    assert "When one registry process is not enough: etcd" in HEADINGS
    assert len(BLOCKS) - len(LOCAL) == 1


@pytest.mark.parametrize("index", LOCAL, ids=[f"{i}-{HEADINGS[i]}" for i in LOCAL])
def test_block_runs_as_written(index: int, tmp_path: Path) -> None:
    heading, code = BLOCKS[index]
    out = run(code, tmp_path)
    expected = {
        "Quickstart": ["3", "3", "InvalidArguments Arith.add(a, b): missing a required argument: 'b'"],
        "A registry, discovery and the XClient": ["3", "3"],
    }
    if heading in expected:
        assert out.splitlines() == expected[heading]


def test_etcd_block_runs_against_a_real_etcd(tmp_path: Path) -> None:
    binary = etcd_binary()
    if binary is None:
        if etcd_required():
            pytest.fail("etcd missing, and GEERPC_REQUIRE_ETCD=1 requires the etcd tests to run")
        pytest.skip("needs the etcd binary")
    [code] = [code for _, code in BLOCKS if ETCD_IN_README in code]
    etcd = EtcdProcess(binary)
    etcd.start()
    try:
        # The one change: the README's etcd address becomes this etcd's free port.
        assert run(code.replace(ETCD_IN_README, etcd.endpoint), tmp_path) == "3\n"
    finally:
        etcd.close()
