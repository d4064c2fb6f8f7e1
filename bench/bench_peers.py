"""geerpc against other Python RPC frameworks, in one run.

    python3 bench/bench_peers.py [--repeats 3] [--quick] [--only geerpc,grpc,...]

Peers: geerpc, grpc.aio, Pyro5, RPyC and aiorpc, with the bare asyncio + msgpack
baseline of bench_rpc.py as the reference. The frameworks are the ``bench`` extra
(``pip install -e '.[bench]'``); a peer whose package is missing is skipped with a
note. Every peer runs the same workload against a server with ``add(a, b)`` and
``echo(value)``:

  sequential  add, one call in flight: p50 and p99 latency, calls/s
  64 in flight  add, 64 calls at once: calls/s; how each peer gets there is in the
      table (one connection for those that multiplex, else threads or connections)
  echo        a 64 KiB bytes value there and back, one call in flight: MB/s

For each peer and each repeat, the server runs in a fresh child process pinned to one
core and the client in another, pinned to the other core; peers take turns, the order
rotating from one repeat to the next. The table gives each peer's median, and in
brackets the median ratio to the baseline measured in the same repeat (for latency,
lower is better; for everything else, higher); a second table gives the min..max of
those ratios. Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import select
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_rpc  # noqa: E402  (also puts the repository on sys.path)
from _peers import aiorpc_peer, grpc_aio, ours, pyro, rpyc_peer, workloads  # noqa: E402

PEERS: dict[str, Any] = {
    "baseline": ours.baseline,
    "geerpc": ours.geerpc,
    "grpc": grpc_aio,
    "pyro5": pyro,
    "rpyc": rpyc_peer,
    "aiorpc": aiorpc_peer,
}
DISTRIBUTIONS = {"grpc": "grpcio", "Pyro5": "Pyro5", "rpyc": "rpyc", "aiorpc": "aiorpc", "msgpack": "msgpack"}
START_TIMEOUT = 30.0  # seconds for a server to print its address


def missing(peer: Any) -> list[str]:
    return [name for name in peer.NEEDS if importlib.util.find_spec(name) is None]


def version(peer: Any) -> str:
    names = [n for n in peer.NEEDS if n != "msgpack"]
    if not names:
        return ""
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(names[0], names[0]))
    except importlib.metadata.PackageNotFoundError:
        return "?"


def start(key: str) -> tuple[subprocess.Popen[str], str]:
    """The peer's server in a child process; its address, or RuntimeError within START_TIMEOUT."""
    proc = subprocess.Popen([sys.executable, __file__, "--serve", key], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    address = proc.stdout.readline().strip() if ready else ""
    if not address:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{key} server did not start within {START_TIMEOUT:g} s")
    return proc, address


def measure(key: str, sizes: workloads.Sizes, timeout: float) -> dict[str, float]:
    """One run of the workloads: the server and the client each in a child process."""
    proc, address = start(key)
    try:
        try:
            done = subprocess.run([sys.executable, __file__, "--client", key, "--address", address,
                                   "--sizes", json.dumps(sizes)],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{key} client took longer than {timeout:g} s") from None
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            raise RuntimeError(f"{key} client failed: {lines[-1]}")
        result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        bench_rpc.stop_server(proc)


def report(runs: dict[str, list[dict[str, float]]], failed: dict[str, str], skipped: dict[str, str],
           repeats: int) -> None:
    print(f"Python RPC frameworks, median of {repeats}, Python {sys.version.split()[0]}, {os.cpu_count()} cores; "
          "[median ratio to the baseline of the same repeat]")
    header = f"{'peer':24} {'64 in flight as':32}" + "".join(f" {m:>16}" for m in workloads.METRICS)
    base = runs.get("baseline")
    table, spread = [header], [f"{'ratio min..max':24} {'':32}" + "".join(f" {m:>16}" for m in workloads.METRICS)]
    for key, results in runs.items():
        peer = PEERS[key]
        name = f"{peer.NAME} {version(peer)}".strip()
        cells, ranges = [], []
        for metric in workloads.METRICS:
            cell = f"{statistics.median(r[metric] for r in results):.0f}"
            if base is not None and key != "baseline":
                ratios = [r[metric] / b[metric] for r, b in zip(results, base)]
                cell += f" [{statistics.median(ratios):.2f}]"
                ranges.append(f" {f'{min(ratios):.2f}..{max(ratios):.2f}':>16}")
            cells.append(f" {cell:>16}")
        table.append(f"{name:24} {peer.HOW:32}" + "".join(cells))
        if ranges:
            spread.append(f"{name:24} {'':32}" + "".join(ranges))
    print("\n".join(table))
    if repeats > 1 and len(spread) > 1:
        print()
        print("\n".join(spread))
    for key, why in {**skipped, **failed}.items():
        print(f"note: {PEERS[key].NAME} {why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each peer (default 3)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls, for a smoke test")
    parser.add_argument("--only", help=f"comma-separated peers among {', '.join(PEERS)} (the baseline always runs)")
    parser.add_argument("--serve", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        bench_rpc.pin(0)
        PEERS[args.serve].serve()
        return
    if args.client:
        bench_rpc.pin(1)
        print(json.dumps(PEERS[args.client].run(args.address, json.loads(args.sizes))))
        return
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    chosen = list(PEERS)
    if args.only:
        wanted = {name.strip() for name in args.only.split(",") if name.strip()}
        unknown = wanted - set(PEERS)
        if unknown:
            parser.error(f"unknown peer(s) {', '.join(sorted(unknown))}: choose among {', '.join(PEERS)}")
        chosen = [key for key in PEERS if key in wanted or key == "baseline"]
    skipped = {}
    for key in list(chosen):
        absent = missing(PEERS[key])
        if absent:
            skipped[key] = (f"skipped: {', '.join(absent)} not installed "
                            "(pip install -e '.[bench]' installs every peer)")
            chosen.remove(key)
            print(f"note: {PEERS[key].NAME} {skipped[key]}", file=sys.stderr)
    sizes = workloads.sizes(args.quick)
    timeout = 60.0 if args.quick else 600.0
    runs: dict[str, list[dict[str, float]]] = {key: [] for key in chosen}
    failed: dict[str, str] = {}
    for repeat in range(args.repeats):
        turn = repeat % len(chosen)
        for key in chosen[turn:] + chosen[:turn]:
            if key in failed:
                continue
            started = time.perf_counter()
            try:
                runs[key].append(measure(key, sizes, timeout))
            except RuntimeError as exc:
                failed[key] = f"failed: {exc}"
                print(f"note: {PEERS[key].NAME} {failed[key]}", file=sys.stderr)
                continue
            print(f"  {PEERS[key].NAME}: run {repeat + 1} of {args.repeats} in "
                  f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    for key in failed:
        runs.pop(key, None)
    if "baseline" in failed:
        print("note: without the baseline no ratio can be given", file=sys.stderr)
    report(runs, failed, skipped, args.repeats)


if __name__ == "__main__":
    main()
