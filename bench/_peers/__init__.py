"""One module per peer framework for bench_peers.py.

Each module names the peer and the packages it needs, says how it keeps 64 calls in
flight, and has two entry points, each run in its own process:

- ``serve()``: start the server on 127.0.0.1, print its address on one line, and run
  until standard input closes;
- ``run(address, sizes)``: the client side of the three workloads against that
  address, returning ``{metric: value}`` (see ``workloads.METRICS``).

A module imports its framework inside these functions only, so bench_peers.py can
list and skip a peer whose packages are missing without importing it.
"""
