"""Where a process's resident private memory is, page by page, sampled beside a soak run.

    python bench/resident.py PID [--every 10] [--minutes 30]
    python bench/resident.py $(pgrep -f 'soak.py --role server') --minutes 30

A growing RSS whose Python objects (pymalloc's blocks) and C allocations (malloc's
bytes in use) stay flat is pages that neither allocator counts. This tells them apart.
Every ``--every`` seconds it reads which pages of the process's private, writable,
anonymous mappings are resident (bit 63 of each page's entry in
``/proc/PID/pagemap``) and sorts them by kind:

- ``pools``: pages of pymalloc's 16 KiB pools, inside its 1 MiB arenas. A pool keeps
  the pages it has touched while its arena is mapped, so this can grow, up to the
  arenas' size, while the bytes in blocks stay flat;
- ``heap``: the main malloc heap (``[heap]``);
- ``stacks``: thread stacks (mappings of exactly 8 MiB, glibc's default);
- ``anon``: every other anonymous mapping: blocks malloc mapped on their own (32 KiB
  or more under the soak's malloc steady), malloc's thread arenas, and the like.

A page of an anonymous mapping is in a pool when the 16 KiB-aligned address it falls
in starts with a pool header that checks out: a size class below 32 and the last
block offset that class has (CPython 3.11 to 3.13 on 64-bit). Mapped files (code,
shared libraries) are left out: they are the file's pages, not the process's.

It prints kB by kind once a minute, and when the process exits or ``--minutes`` have
passed, each kind's least-squares slope (kB/min) over the last two thirds of what it
saw, the window the soak's own slope uses. Reading another process's pagemap needs
its user (or root); Linux only. It only reads: it faults no page in.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from collections.abc import Iterator

from _procs import slope  # bench/ is on the path when this runs as a script

PAGE = os.sysconf("SC_PAGE_SIZE")
POOL = 16 * 1024
POOL_HEADER = struct.Struct("<QQQQIIII")  # ref, freeblock, nextpool, prevpool, arenaindex, szidx, nextoffset, maxnextoffset
ALIGNMENT = 16
KINDS = ("pools", "heap", "stacks", "anon")
STACK_SIZE = 8 * 1024 * 1024


def writable_anonymous(pid: int) -> Iterator[tuple[int, int, str]]:
    """(start, end, name) of each private writable mapping that is no file's."""
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            name = fields[5] if len(fields) > 5 else ""
            if fields[1] == "rw-p" and (not name or name == "[heap]"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                yield start, end, name


def is_pool(header: bytes) -> bool:
    """Whether 48 bytes read at a 16 KiB boundary are a pymalloc pool's header."""
    if len(header) < POOL_HEADER.size:
        return False
    fields: tuple[int, ...] = POOL_HEADER.unpack_from(header)
    ref, size_class, next_offset, max_next_offset = fields[0], fields[5], fields[6], fields[7]
    size = (size_class + 1) * ALIGNMENT
    return (size_class < 32 and max_next_offset == POOL - size
            and POOL_HEADER.size <= next_offset <= POOL and (ref & 0xFFFFFFFF) <= POOL // ALIGNMENT)


def resident(pid: int) -> dict[str, int]:
    """Resident kB of the process's private anonymous memory, by kind."""
    found = dict.fromkeys(KINDS, 0)
    pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    memory = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for start, end, name in writable_anonymous(pid):
            entries = os.pread(pagemap, (end - start) // PAGE * 8, start // PAGE * 8)
            present = [index for index, (entry,) in enumerate(struct.iter_unpack("<Q", entries)) if entry >> 63]
            if name == "[heap]" or end - start == STACK_SIZE:
                found["heap" if name == "[heap]" else "stacks"] += len(present) * PAGE // 1024
                continue
            pools: dict[int, bool] = {}
            for index in present:
                base = (start + index * PAGE) & ~(POOL - 1)
                if base not in pools:
                    try:
                        pools[base] = base >= start and is_pool(os.pread(memory, POOL_HEADER.size, base))
                    except OSError:
                        pools[base] = False
                found["pools" if pools[base] else "anon"] += PAGE // 1024
    finally:
        os.close(pagemap)
        os.close(memory)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--minutes", type=float, default=float("inf"), help="stop after this long")
    args = parser.parse_args()
    samples: list[tuple[float, dict[str, int]]] = []
    started = time.monotonic()
    next_line = 0.0
    while (time.monotonic() - started) / 60 < args.minutes:
        taken = time.monotonic()
        try:
            kinds = resident(args.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        minute = (taken - started) / 60
        samples.append((minute, kinds))
        if minute >= next_line:
            print(f"{minute:5.1f} min  " + "  ".join(f"{k} {kinds[k]:,} kB" for k in KINDS), flush=True)
            next_line += 1.0
        time.sleep(max(0.0, args.every - (time.monotonic() - taken)))
    if len(samples) < 3:
        print("too few samples for a slope", file=sys.stderr)
        return 1
    window = [(m, kinds) for m, kinds in samples if m >= samples[-1][0] / 3]
    slopes = {k: slope([(m, kinds[k]) for m, kinds in window]) for k in KINDS}
    slopes["total"] = slope([(m, sum(kinds.values())) for m, kinds in window])
    print("slope over the last two thirds, kB/min: " + "  ".join(f"{k} {v or 0.0:+.2f}" for k, v in slopes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
