"""The liveness table with a fake clock: no sockets, no event loop."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from geerpc.registry.table import (
    MAX_SERVICE_NAME,
    LivenessTable,
    TableFull,
    canonical_address,
    parse_services,
)

A = "tcp@10.0.0.1:9000"
B = "tcp@10.0.0.2:9000"
C = "tcp@10.0.0.3:9000"


def test_server_is_listed_until_just_before_timeout():
    table = LivenessTable(300, first_index=1)
    table.heartbeat(A, None, now=1000.0)
    assert table.alive(1000.0 + 299.999) == [A]


def test_server_is_dropped_exactly_at_timeout():
    table = LivenessTable(300, first_index=1)
    table.heartbeat(A, None, now=1000.0)
    assert table.alive(1300.0) == []


def test_heartbeat_refresh_extends_life():
    table = LivenessTable(10, first_index=1)
    table.heartbeat(A, None, now=0.0)
    table.heartbeat(A, None, now=8.0)
    assert table.alive(17.0) == [A]
    assert table.alive(18.0) == []


def test_timeout_zero_keeps_servers_forever():
    table = LivenessTable(0, first_index=1)
    table.heartbeat(A, None, now=0.0)
    assert table.alive(1e12) == [A]
    assert table.next_expiry() is None


def test_alive_is_sorted():
    table = LivenessTable(10, first_index=1)
    for address in (C, A, B):
        table.heartbeat(address, None, now=0.0)
    assert table.alive(1.0) == [A, B, C]


def test_expiry_drops_only_the_silent_ones_in_order_of_last_heartbeat():
    table = LivenessTable(10, first_index=1)
    table.heartbeat(A, None, now=0.0)
    table.heartbeat(B, None, now=1.0)
    table.heartbeat(C, None, now=2.0)
    table.heartbeat(A, None, now=5.0)  # A moves behind B and C
    assert table.expire(11.0) == [B]
    assert table.next_expiry() == 12.0
    assert table.expire(15.0) == [C, A]


def test_services_mapping_and_filter():
    table = LivenessTable(10, first_index=1)
    table.heartbeat(A, {"Arith"}, now=0.0)
    table.heartbeat(B, {"Calc", "Arith"}, now=0.0)
    table.heartbeat(C, None, now=0.0)  # unknown: offers every service
    assert table.alive(1.0, "Arith") == [A, B, C]
    assert table.alive(1.0, "Calc") == [B, C]
    assert table.alive(1.0, "Nope") == [C]
    infos = {info.address: info for info in table.snapshot(3.0)}
    assert infos[B].services == frozenset({"Calc", "Arith"})
    assert infos[C].services is None
    assert infos[A].age == 3.0


def test_empty_services_offers_nothing():
    table = LivenessTable(10, first_index=1)
    table.heartbeat(A, frozenset(), now=0.0)
    assert table.alive(1.0, "Arith") == []
    assert table.alive(1.0) == [A]


def test_index_changes_on_join_leave_expiry_and_services_only():
    table = LivenessTable(10, first_index=7)
    assert table.index == 7
    assert table.heartbeat(A, None, now=0.0) is True
    assert table.index == 8
    assert table.heartbeat(A, None, now=1.0) is False  # a plain refresh
    assert table.index == 8
    assert table.heartbeat(A, {"Arith"}, now=2.0) is True  # services changed
    assert table.index == 9
    assert table.heartbeat(A, ["Arith"], now=3.0) is False
    assert table.index == 9
    assert table.remove(A, now=4.0) is True
    assert table.index == 10
    assert table.remove(A, now=4.0) is False
    assert table.index == 10
    table.heartbeat(B, None, now=5.0)
    assert table.index == 11
    assert table.expire(15.0) == [B]
    assert table.index == 12
    assert table.expire(16.0) == []
    assert table.index == 12


def test_index_starts_at_a_random_point_per_table():
    indexes = {LivenessTable(10).index for _ in range(20)}
    assert len(indexes) == 20
    assert all(0 < index < 2**53 for index in indexes)


def test_cap_refuses_new_servers_but_lets_listed_ones_refresh():
    table = LivenessTable(10, max_servers=2, first_index=1)
    table.heartbeat(A, None, now=0.0)
    table.heartbeat(B, None, now=0.0)
    with pytest.raises(TableFull):
        table.heartbeat(C, None, now=1.0)
    assert table.heartbeat(A, None, now=1.0) is False
    assert table.alive(1.0) == [A, B]


def test_cap_counts_only_live_servers():
    table = LivenessTable(10, max_servers=1, first_index=1)
    table.heartbeat(A, None, now=0.0)
    table.heartbeat(B, None, now=10.0)  # A expired at 10: room for B
    assert table.alive(10.0) == [B]


def test_remove_of_an_expired_server_reports_not_listed():
    table = LivenessTable(10, first_index=1)
    table.heartbeat(A, None, now=0.0)
    assert table.remove(A, now=10.0) is False
    assert table.index == 3  # join, then expiry


def test_too_many_services_rejected_by_table():
    table = LivenessTable(10, max_services=2, first_index=1)
    with pytest.raises(ValueError):
        table.heartbeat(A, {"a", "b", "c"}, now=0.0)


def test_bad_timeout_rejected():
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            LivenessTable(bad)


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),
        ("", frozenset()),
        ("Arith", frozenset({"Arith"})),
        ("Arith, Calc", frozenset({"Arith", "Calc"})),
        ("Arith,Arith", frozenset({"Arith"})),
        ("pkg.Service_v2-beta", frozenset({"pkg.Service_v2-beta"})),
    ],
)
def test_parse_services(header, expected):
    assert parse_services(header) == expected


@pytest.mark.parametrize(
    "header",
    ["Arith,", ",Arith", "Ar ith", "Arith;Calc", "Ärith", "-x", "x" * (MAX_SERVICE_NAME + 1), ",".join(f"s{i}" for i in range(65))],
)
def test_parse_services_rejects(header):
    with pytest.raises(ValueError):
        parse_services(header)


def test_canonical_address():
    assert canonical_address("127.0.0.1:9000") == "tcp@127.0.0.1:9000"
    assert canonical_address("tcp@[::1]:9000") == "tcp@[::1]:9000"
    assert canonical_address("unix@/run/x.sock") == "unix@/run/x.sock"
    for bad in ("", "tcp@", "tcp@host", "tcp@host:0", "ftp@h:1", "a,b:1", "x" * 300):
        with pytest.raises(ValueError):
            canonical_address(bad)


def test_spellings_of_one_server_share_one_entry():
    table = LivenessTable(10, first_index=1)
    for spelling in ("tcp@[::1]:9000", "[::0001]:9000", "tcp@[0:0:0:0:0:0:0:1]:09000"):
        table.heartbeat(canonical_address(spelling), None, now=0.0)
    for spelling in ("tcp@Host:9000", "tcp@HOST:9000", "host:9000"):
        table.heartbeat(canonical_address(spelling), None, now=0.0)
    assert table.alive(1.0) == ["tcp@[::1]:9000", "tcp@host:9000"]


# -- a model check: the index moves exactly when what readers see moves ---------------------

_ADDRESSES = [A, B, C]
_SERVICE_SETS = [None, frozenset(), frozenset({"Arith"}), frozenset({"Arith", "Calc"})]
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("beat"), st.sampled_from(_ADDRESSES), st.sampled_from(_SERVICE_SETS)),
        st.tuples(st.just("remove"), st.sampled_from(_ADDRESSES), st.none()),
        st.tuples(st.just("tick"), st.floats(0, 6), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_ops)
# Rounding at the boundary: alive while last + timeout > now, computed that way.
@example([("tick", 3.2095127099372398e-105, None), ("beat", A, None), ("tick", 4.0, None), ("tick", 6.0, None)])
def test_index_moves_iff_the_listed_mapping_moves(ops):
    timeout = 10.0
    table = LivenessTable(timeout, first_index=1)
    model: dict[str, tuple[frozenset[str] | None, float]] = {}
    now = 0.0

    def visible(at: float) -> dict[str, frozenset[str] | None]:
        return {a: s for a, (s, seen) in model.items() if at < seen + timeout}

    for op, arg, services in ops:
        before_view, before_index = visible(now), table.index
        if op == "tick":
            now += arg
            table.expire(now)
        elif op == "beat":
            table.heartbeat(arg, services, now)
            model[arg] = (services, now)
        else:
            table.remove(arg, now)
            model.pop(arg, None)
        model = {a: v for a, v in model.items() if now < v[1] + timeout}
        after_view = visible(now)
        assert table.alive(now) == sorted(after_view)
        assert {i.address: i.services for i in table.snapshot(now)} == after_view
        assert (table.index != before_index) == (after_view != before_view)
