"""What TLS costs: geerpc over tls@ against geerpc over plain tcp@, in one run.

    python3 bench/bench_tls.py [--repeats 7] [--uvloop] [--quick]

Scenarios (a) sequential add, (b) 64 in flight and (c) 64 KiB echo of bench_rpc.py,
each as a pair (plain, TLS) run back to back, the order alternating. The servers run
in child processes pinned to one core, the client here on the other. Certificates are
made for the run by trustme (TLS 1.3, the contexts' defaults). The table gives the
median of the per-pair ratios TLS/plain, with min..max (p50: lower is better).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import ssl
import statistics
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import bench_rpc as b  # noqa: E402
from _procs import pin, servers, wait_for_stdin_eof  # noqa: E402

import geerpc  # noqa: E402

KINDS = ("plain", "tls")


async def serve(kind: str, cert: str, key: str) -> None:
    context = None
    if kind == "tls":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    server = geerpc.Server()
    server.register(b.Arith())
    print(await server.start("127.0.0.1", 0, ssl=context), flush=True)
    await wait_for_stdin_eof()


async def run(addresses: dict[str, str], ca_file: str, sizes: dict[str, int],
              repeats: int) -> dict[str, dict[str, list[dict[str, float]]]]:
    context = ssl.create_default_context(cafile=ca_file)
    clients = {kind: await geerpc.dial(address, ssl=context if kind == "tls" else None)
               for kind, address in addresses.items()}
    scenarios = {
        "(a) sequential add": lambda c: b.sequential(b.method("geerpc", c, "add"), sizes["a"]),
        "(b) 64 in flight": lambda c: b.concurrent(b.method("geerpc", c, "add"), sizes["b"]),
        "(c) 64 KiB echo": lambda c: b.echo(b.method("geerpc", c, "echo"), sizes["c"]),
    }
    runs: dict[str, dict[str, list[dict[str, float]]]] = {s: {k: [] for k in KINDS} for s in scenarios}
    try:
        for client in clients.values():
            await b.concurrent(b.method("geerpc", client, "add"), 6_400)
            await b.echo(b.method("geerpc", client, "echo"), 100)
        for repeat in range(repeats):
            for scenario, work in scenarios.items():
                for kind in KINDS if repeat % 2 == 0 else KINDS[::-1]:
                    gc.collect()
                    runs[scenario][kind].append(await work(clients[kind]))
    finally:
        for client in clients.values():
            await client.close()
    return runs


def report(runs: dict[str, dict[str, list[dict[str, float]]]], repeats: int, loop_name: str) -> None:
    print(f"geerpc over TLS vs plain TCP on {loop_name}: {repeats} pairs, Python {sys.version.split()[0]}, "
          f"OpenSSL {ssl.OPENSSL_VERSION.split()[1]}, {os.cpu_count()} cores")
    print(f"{'scenario':20} {'metric':8} {'plain':>9} {'tls':>9} {'ratio':>6} {'min..max':>11}")
    for scenario, by_kind in runs.items():
        for name in by_kind["tls"][0]:
            plain = [r[name] for r in by_kind["plain"]]
            tls = [r[name] for r in by_kind["tls"]]
            ratios = [t / p for t, p in zip(tls, plain)]
            print(f"{scenario:20} {name:8} {statistics.median(plain):9.0f} {statistics.median(tls):9.0f} "
                  f"{statistics.median(ratios):6.2f} {min(ratios):5.2f}..{max(ratios):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=7, help="pairs per scenario (default 7)")
    parser.add_argument("--uvloop", action="store_true", help="run both sides on uvloop")
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls, for a smoke test")
    args = parser.parse_args()
    runner: Any = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    if args.serve:
        pin(0)
        runner(serve(args.serve, args.cert, args.key))
        return
    import trustme

    pin(1)
    sizes = {k: v // 10 for k, v in b.SIZES.items()} if args.quick else b.SIZES
    with tempfile.TemporaryDirectory() as scratch:
        ca = trustme.CA()
        ca_file, cert_file, key_file = (os.path.join(scratch, n) for n in ("ca.pem", "cert.pem", "key.pem"))
        ca.cert_pem.write_to_path(ca_file)
        issued = ca.issue_cert("127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(cert_file)
        for pem in issued.cert_chain_pems[1:]:
            pem.write_to_path(cert_file, append=True)
        issued.private_key_pem.write_to_path(key_file)
        extra = ["--cert", cert_file, "--key", key_file, *(["--uvloop"] if args.uvloop else [])]
        with servers(__file__, KINDS, *extra) as addresses:
            runs = runner(run(addresses, ca_file, sizes, args.repeats))
    report(runs, args.repeats, "uvloop" if args.uvloop else "asyncio")


if __name__ == "__main__":
    main()
