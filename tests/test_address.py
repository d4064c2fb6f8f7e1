"""parse_address: GeeRPC's protocol@address, validated, in one canonical spelling."""

from __future__ import annotations

import pytest

from geerpc.address import Address, parse_address


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("127.0.0.1:9000", "tcp@127.0.0.1:9000"),
        ("tcp@10.0.0.5:9000", "tcp@10.0.0.5:9000"),
        ("http@example.com:80", "http@example.com:80"),
        ("unix@/run/app.sock", "unix@/run/app.sock"),
        ("tcp@[::1]:9000", "tcp@[::1]:9000"),
        ("tcp@[::0001]:9000", "tcp@[::1]:9000"),
        ("tcp@[0:0:0:0:0:0:0:1]:9000", "tcp@[::1]:9000"),
        ("tcp@[FE80::A]:9000", "tcp@[fe80::a]:9000"),
        ("tcp@[2001:DB8:0:0:0:0:0:1]:9000", "tcp@[2001:db8::1]:9000"),
        ("tcp@[::ffff:1.2.3.4]:9000", "tcp@[::ffff:1.2.3.4]:9000"),
        ("tcp@[::ffff:102:304]:9000", "tcp@[::ffff:1.2.3.4]:9000"),
        ("tcp@Host:9000", "tcp@host:9000"),
        ("tcp@API.Example.COM:9000", "tcp@api.example.com:9000"),
        ("tcp@host:09000", "tcp@host:9000"),
    ],
)
def test_canonical_form(text, canonical):
    assert str(parse_address(text)) == canonical


def test_spellings_of_one_server_are_equal():
    spellings = ["tcp@[::1]:9000", "[::0001]:9000", "tcp@[0:0:0:0:0:0:0:1]:9000", "tcp@[0::1]:09000"]
    assert {parse_address(s) for s in spellings} == {Address("tcp", host="::1", port=9000)}
    assert parse_address("tcp@Host:1") == parse_address("tcp@host:1")


def test_unix_paths_keep_their_case():
    assert str(parse_address("unix@/Run/App.sock")) == "unix@/Run/App.sock"


@pytest.mark.parametrize(
    "text",
    [
        "tcp@h:\u0669\u0660",  # Arabic-Indic digits: str.isdigit() is True, int() reads 90
        "tcp@h:\u00b2",  # superscript two: isdigit() is True, int() raises
        "tcp@h:\uff19\uff10",  # fullwidth digits
        "tcp@h:0",
        "tcp@h:65536",
        "tcp@h:123456",
        "tcp@h:",
        "tcp@[::1:9000",
        "tcp@[not-ip]:9000",
        "tcp@::1:9000",
        "tcp@h\u00e9:9000",
        "ftp@h:1",
        "unix@",
        "",
        "tcp@a b:1",
        "tcp@a,b:1",
    ],
)
def test_bad_addresses_are_value_errors(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_non_str_is_a_value_error():
    with pytest.raises(ValueError):
        parse_address(9000)  # type: ignore[arg-type]
