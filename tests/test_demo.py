"""demo.py runs end to end on loopback, shows each part of the story, and exits 0."""

from __future__ import annotations

import asyncio

from conftest import PYTHON, ROOT, subprocess_env


async def test_demo_runs_and_shows_every_part():
    proc = await asyncio.create_subprocess_exec(
        PYTHON, str(ROOT / "demo.py"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=subprocess_env(), cwd=str(ROOT))
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    for expected in ("SelectMode.RANDOM", "SelectMode.ROUND_ROBIN", "result: 3", "one reply: 7", ": 3', ", ": 1']",
                     "CallTimeout after", "deregisters at once", "MethodNotFound", "InvalidArguments", "done"):
        assert expected in text, f"{expected!r} missing from demo output:\n{text}"
    # error types and the signature in a message read as code: no quotes around them
    assert "  InvalidArguments: Arith.add(a: int, b: int) -> int: missing a required argument: 'b'" in text, text
    # the server that stopped answers none of the calls after it left
    after = text.split("6 calls answered by:")[1].splitlines()[0]
    assert "beta" not in after and "alpha" in after and "gamma" in after
    assert "Traceback" not in err.decode()
