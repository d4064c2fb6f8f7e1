"""Reading a registry's GET reply, sans-IO: headers and bytes in, an Answer out."""

from __future__ import annotations

import json
import logging

import pytest

from geerpc.errors import RegistryError
from geerpc.xclient.registry_reply import Answer, ReplyReader, parse_retry_after

A = "tcp@127.0.0.1:9001"
B = "tcp@127.0.0.1:9002"
JSON = "application/json"


def read(content_type: str, headers: dict[str, str], body: bytes = b"") -> Answer:
    return ReplyReader("http://registry").read(content_type, headers, body, received=42.0)


def test_geerpcs_header_reply():
    got = read("text/plain", {"X-Geerpc-Servers": f"{B}, {A}"})
    assert got == Answer({B: None, A: None}, None, 42.0)


def test_empty_header_is_an_empty_list():
    assert read("text/plain", {"X-Geerpc-Servers": ""}).servers == {}


def test_json_reply_with_services_index_timeout_and_uptime():
    body = json.dumps({"index": 9, "timeout": 300, "uptime": 12.5,
                       "servers": [{"address": A, "services": ["Arith"]}, {"address": B, "services": None}]})
    got = read(JSON, {"X-Geerpc-Index": "9"}, body.encode())
    assert got == Answer({A: frozenset({"Arith"}), B: None}, 9, 42.0, 300.0, 12.5)


@pytest.mark.parametrize("index", ["", "x", "-1", "1" * 21, "١٢"])
def test_bad_index_header_counts_as_none(index):
    assert read("text/plain", {"X-Geerpc-Servers": A, "X-Geerpc-Index": index}).index is None


@pytest.mark.parametrize("value", [True, "300", float("nan"), float("inf"), None])
def test_bad_timeout_and_uptime_count_as_not_said(value):
    body = json.dumps({"timeout": value, "uptime": value, "servers": []}).encode()
    got = read(JSON, {}, body)
    assert (got.timeout, got.uptime) == (None, None)


@pytest.mark.parametrize(
    "content_type, headers, body, error",
    [
        (JSON, {}, b"{not json", "malformed JSON"),
        (JSON, {}, b'{"servers": 5}', "'servers' list"),
        (JSON, {}, b"[]", "'servers' list"),
        ("text/plain", {}, b"hello", "no X-Geerpc-Servers"),
        ("text/plain", {"X-Geerpc-Servers": "garbage,ftp@h:1"}, b"", "none of the 2"),
        (JSON, {}, b'{"servers": [{"address": "nope"}, 5]}', "none of the 2"),
    ],
    ids=["bad-json", "servers-not-list", "not-object", "no-header", "header-unusable", "json-unusable"],
)
def test_replies_without_a_usable_list_raise(content_type, headers, body, error):
    with pytest.raises(RegistryError, match=error):
        read(content_type, headers, body)


def test_unusable_entries_are_dropped_and_logged_once_each(caplog):
    reader = ReplyReader("http://registry")
    servers = [{"address": A}, {"address": "garbage"}, {"address": B, "services": "Arith"}, "nope"]
    body = json.dumps({"servers": servers}).encode()
    for _ in range(3):
        assert reader.read(JSON, {}, body, 0.0).servers == {A: None}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unusable" in r.getMessage()]
    assert len(warnings) == 3


@pytest.mark.parametrize("value, seconds", [("30", 30.0), (" 5 ", 5.0), (None, 0.0), ("soon", 0.0), ("-1", 0.0),
                                            ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("9" * 10, 0.0)])
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value) == seconds
