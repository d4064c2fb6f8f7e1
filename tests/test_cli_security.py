"""TLS and tokens from the command line: ``geerpc registry``, ``serve``, ``call`` and
``list`` in real processes, over loopback, with certificates that ``trustme`` makes for
each run and writes to a temporary directory (none is committed).

One HTTPS registry with a write token (from ``GEERPC_REGISTRY_TOKEN``) and a read token
(``--read-token``) serves the module, with two TLS servers announced to it: ``Calc``,
which wants bearer tokens (``--tokens FILE``), and ``Vault``, which wants client
certificates (``--tls-client-ca``). Readiness is the line a process prints.

Hostile or mistaken inputs (rows for docs/cli.md):

- a wrong or missing token (registry, server): refused, exit 1, with a message that
  says which token and never holds one; a token that cannot travel in a header: exit 2;
- a missing, unreadable (a directory) or malformed certificate, key or CA file, a
  ``--tokens`` file with a bad line: one ``geerpc: ...`` line, exit 2, no traceback;
- a certificate from another CA, no client certificate for a mutual-TLS server or
  registry: refused, with the option that fixes it;
- ``--token`` to a plaintext server on another host: refused before dialling.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import _cli
import pytest
import trustme
from conftest import PYTHON, subprocess_env

WRITE = "write-s3cret"
READ = "read-s3cret"
ALICE = "alice-t0ken"
RUN_TIMEOUT = _cli.RUN_TIMEOUT

SERVICE = '''\
import geerpc


class Calc:
    def add(self, a, b):
        return a + b

    def whoami(self):
        call = geerpc.current_call()
        return call.identity
'''


@dataclass(frozen=True)
class Files:
    dir: Path
    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA that signed none of these
    tokens: str


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    where = tmp_path_factory.mktemp("cli-tls")
    ca, other = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("alice@example.com")
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    other.cert_pem.write_to_path(str(where / "other-ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(where / "key.pem"))
    client.cert_chain_pems[0].write_to_path(str(where / "client.pem"))
    client.private_key_pem.write_to_path(str(where / "client.key"))
    (where / "tokens.txt").write_text(f"# token identity\n\n{ALICE} alice\nbob-t0ken\tbob the builder\n")
    (where / "secure_service.py").write_text(SERVICE)
    return Files(where, *(str(where / name) for name in (
        "ca.pem", "cert.pem", "key.pem", "client.pem", "client.key", "other-ca.pem", "tokens.txt")))


def env_with(**variables: str) -> dict[str, str]:
    env = subprocess_env()
    for name in ("GEERPC_TOKEN", "GEERPC_REGISTRY_TOKEN", "GEERPC_REGISTRY_READ_TOKEN"):
        env.pop(name, None)
    env.update(variables)
    return env


def geerpc(files: Files, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m geerpc ARGS`` to completion, with only the GEERPC_ variables in ``env``."""
    return subprocess.run([PYTHON, "-m", "geerpc", *args], check=False, cwd=files.dir, env=env_with(**env),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


class Running(_cli.Running):
    """``python -m geerpc ARGS`` run in the folder of ``files``, with ``env`` added."""

    def __init__(self, files: Files, *args: str, **env: str) -> None:
        super().__init__(*args, cwd=files.dir, env=env_with(**env))


@dataclass(frozen=True)
class Deployment:
    registry: str
    calc: str  # tls@..., wants a bearer token
    vault: str  # tls@..., wants a client certificate


@pytest.fixture(scope="module")
def deployment(files: Files) -> Iterator[Deployment]:
    registry = Running(files, "registry", "--port", "0", "--timeout", "30", "--tls-cert", files.cert,
                       "--tls-key", files.key, "--read-token", READ, GEERPC_REGISTRY_TOKEN=WRITE)
    servers: list[Running] = []
    try:
        url = registry.first_line()
        servers = [
            # the registry's token from the environment, bearer tokens from a file
            Running(files, "serve", "secure_service:Calc", "--tls-cert", files.cert, "--tls-key", files.key,
                    "--tls-ca", files.ca, "--registry", url, "--tokens", files.tokens,
                    GEERPC_REGISTRY_TOKEN=WRITE),
            # the registry's token as a flag, client certificates required
            Running(files, "serve", "secure_service:Calc", "--name", "Vault", "--tls-cert", files.cert,
                    "--tls-key", files.key, "--tls-client-ca", files.ca, "--tls-ca", files.ca,
                    "--registry", url, "--registry-token", WRITE),
        ]
        calc, vault = (server.first_line() for server in servers)
        yield Deployment(url, calc, vault)
    finally:
        for server in servers:
            assert server.stop() == 0, server.stderr
            assert "Traceback" not in server.stderr
        assert registry.stop() == 0, registry.stderr


def assert_failed(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> None:
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    for secret in (WRITE, READ, ALICE, "bob-t0ken", "wrong-t0ken"):
        assert secret not in result.stderr


def assert_one_line(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> None:
    assert_failed(result, status, *fragments)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("geerpc: "), result.stderr


# --------------------------------------------------------------------------- the happy path


def test_servers_serve_tls_and_announce_tls_addresses(deployment):
    assert deployment.registry.startswith("https://127.0.0.1:")
    assert deployment.calc.startswith("tls@127.0.0.1:")
    assert deployment.vault.startswith("tls@127.0.0.1:")


def test_list_over_https_with_the_read_token(files, deployment):
    result = geerpc(files, "list", deployment.registry, "--tls-ca", files.ca, "--registry-token", READ)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ADDRESS", "SERVICES", "AGE"]
    assert {tuple(line.split()[:2]) for line in lines[1:]} == {(deployment.calc, "Calc"),
                                                              (deployment.vault, "Vault")}


@pytest.mark.parametrize("variable, value", [("GEERPC_REGISTRY_READ_TOKEN", READ),
                                             ("GEERPC_REGISTRY_TOKEN", READ),
                                             ("GEERPC_REGISTRY_TOKEN", WRITE)])
def test_list_takes_the_token_from_the_environment(files, deployment, variable, value):
    result = geerpc(files, "list", deployment.registry, "--tls-ca", files.ca, **{variable: value})
    assert result.returncode == 0, result.stderr
    assert deployment.calc in result.stdout


def test_the_flag_beats_the_environment(files, deployment):
    wins = geerpc(files, "list", deployment.registry, "--tls-ca", files.ca, "--registry-token", READ,
                  GEERPC_REGISTRY_READ_TOKEN="wrong-t0ken")
    assert wins.returncode == 0, wins.stderr
    loses = geerpc(files, "list", deployment.registry, "--tls-ca", files.ca, "--registry-token", "wrong-t0ken",
                   GEERPC_REGISTRY_READ_TOKEN=READ)
    assert_one_line(loses, 1, "401", "refused our token")
    # The read token beats the write token when both are set.
    both = geerpc(files, "list", deployment.registry, "--tls-ca", files.ca,
                  GEERPC_REGISTRY_READ_TOKEN=READ, GEERPC_REGISTRY_TOKEN="wrong-t0ken")
    assert both.returncode == 0, both.stderr


def test_call_through_the_registry_with_tokens_from_the_environment(files, deployment):
    result = geerpc(files, "call", deployment.registry, "Calc.whoami", "--tls-ca", files.ca,
                    GEERPC_REGISTRY_READ_TOKEN=READ, GEERPC_TOKEN=ALICE)
    assert (result.returncode, result.stdout, result.stderr) == (0, '"alice"\n', "")


def test_call_through_the_registry_with_flags_and_broadcast(files, deployment):
    result = geerpc(files, "call", deployment.registry, "Calc.add", "1", "2", "--broadcast", "--tls-ca", files.ca,
                    "--registry-token", READ, "--token", "bob-t0ken")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'{{"server": "{deployment.calc}", "result": 3}}\n'


def test_call_a_tls_server_with_a_token(files, deployment):
    result = geerpc(files, "call", deployment.calc, "Calc.whoami", "--tls-ca", files.ca, "--token", "bob-t0ken")
    assert (result.returncode, result.stdout) == (0, '"bob the builder"\n'), result.stderr
    flag_wins = geerpc(files, "call", deployment.calc, "Calc.whoami", "--tls-ca", files.ca, "--token", ALICE,
                       GEERPC_TOKEN="wrong-t0ken")
    assert flag_wins.stdout == '"alice"\n', flag_wins.stderr


def test_mutual_tls_with_a_client_certificate(files, deployment):
    result = geerpc(files, "call", deployment.vault, "Vault.add", "1", "2", "--tls-ca", files.ca,
                    "--tls-cert", files.client_cert, "--tls-key", files.client_key)
    assert (result.returncode, result.stdout) == (0, "3\n"), result.stderr
    via_registry = geerpc(files, "call", deployment.registry, "Vault.add", "2", "2", "--tls-ca", files.ca,
                          "--tls-cert", files.client_cert, "--tls-key", files.client_key,
                          "--registry-token", READ)
    assert (via_registry.returncode, via_registry.stdout) == (0, "4\n"), via_registry.stderr


# --------------------------------------------------------------------------- refusals


def test_a_server_refuses_a_missing_or_wrong_token(files, deployment):
    missing = geerpc(files, "call", deployment.calc, "Calc.add", "1", "2", "--tls-ca", files.ca)
    assert_one_line(missing, 1, "Calc.add: this server needs a token: --token (or GEERPC_TOKEN) sends one")
    wrong = geerpc(files, "call", deployment.calc, "Calc.add", "1", "2", "--tls-ca", files.ca,
                   GEERPC_TOKEN="wrong-t0ken")
    assert_one_line(wrong, 1, "Calc.add: the token was not accepted")


def test_the_registry_refuses_a_missing_or_wrong_read_token(files, deployment):
    missing = geerpc(files, "list", deployment.registry, "--tls-ca", files.ca)
    assert_one_line(missing, 1, "401", "wants a read token", "--registry-token")
    wrong = geerpc(files, "list", deployment.registry, "--tls-ca", files.ca, "--registry-token", "wrong-t0ken")
    assert_one_line(wrong, 1, "refused our token")
    call = geerpc(files, "call", deployment.registry, "Calc.add", "1", "2", "--tls-ca", files.ca,
                  "--token", ALICE)
    assert_one_line(call, 1, "401", "--registry-token")


def test_a_server_with_the_wrong_registry_token_says_so_and_is_not_listed(files, deployment):
    server = Running(files, "serve", "secure_service:Calc", "--name", "Rogue", "--registry", deployment.registry,
                     "--tls-ca", files.ca, "--log-level", "DEBUG", GEERPC_REGISTRY_TOKEN="wrong-t0ken")
    try:
        address = server.first_line()  # after its first heartbeat, refused
        listed = geerpc(files, "list", deployment.registry, "--tls-ca", files.ca, "--registry-token", READ)
        assert address not in listed.stdout
    finally:
        assert server.stop() == 0
    assert "the registry refused our token" in server.stderr
    assert "wrong-t0ken" not in server.stderr and "Traceback" not in server.stderr


def test_a_certificate_from_another_ca_is_refused_with_the_option_to_fix_it(files, deployment):
    untrusted = geerpc(files, "list", deployment.registry, "--registry-token", READ)
    assert_one_line(untrusted, 1, "certificate verify failed", "--tls-ca")
    other = geerpc(files, "call", deployment.calc, "Calc.add", "1", "2", "--tls-ca", files.other_ca,
                   "--token", ALICE)
    assert_one_line(other, 1, "certificate verify failed")
    plain = geerpc(files, "call", deployment.calc, "Calc.add", "1", "2", "--token", ALICE)
    assert_one_line(plain, 1, "certificate verify failed", "--tls-ca")


def test_mutual_tls_without_a_client_certificate(files, deployment):
    result = geerpc(files, "call", deployment.vault, "Vault.add", "1", "2", "--tls-ca", files.ca)
    assert_one_line(result, 1, "client certificate", "--tls-cert")


def test_a_token_is_not_sent_in_clear_to_another_host(files):
    # Refused before dialling: nothing is sent anywhere.
    result = geerpc(files, "call", "tcp@192.0.2.1:9000", "Calc.add", "1", "2", "--token", ALICE)
    assert_one_line(result, 1, "refusing to send --token in clear", "tls@")


def test_a_registry_with_client_certificates(files):
    registry = Running(files, "registry", "--port", "0", "--tls-cert", files.cert, "--tls-key", files.key,
                       "--tls-ca", files.ca)
    try:
        url = registry.first_line()
        refused = geerpc(files, "list", url, "--tls-ca", files.ca)
        assert_one_line(refused, 1, url, "client certificate", "--tls-cert")
        call = geerpc(files, "call", url, "Calc.add", "1", "2", "--tls-ca", files.ca)
        assert_one_line(call, 1, url, "client certificate", "--tls-cert")
        plain = geerpc(files, "call", url.replace("https://", "http://"), "Calc.add", "1", "2")
        assert_one_line(plain, 1, "an https:// registry?")
        listed = geerpc(files, "list", url, "--tls-ca", files.ca, "--tls-cert", files.client_cert,
                        "--tls-key", files.client_key)
        assert listed.returncode == 0, listed.stderr
    finally:
        assert registry.stop() == 0


# --------------------------------------------------------------------------- files and options


def missing(files: Files) -> str:
    return str(files.dir / "no-such.pem")


@pytest.mark.parametrize("command", ["serve", "registry", "call", "list"])
@pytest.mark.parametrize("which", ["--tls-cert", "--tls-key"])
def test_a_missing_certificate_or_key_file_is_one_line(files, command, which):
    pair = {"--tls-cert": files.cert, "--tls-key": files.key, which: missing(files)}
    args = {"serve": ["serve", "secure_service:Calc"], "registry": ["registry", "--port", "0"],
            "call": ["call", "tls@127.0.0.1:1", "Calc.add"], "list": ["list", "https://127.0.0.1:1/"]}[command]
    result = geerpc(files, *args, "--tls-cert", pair["--tls-cert"], "--tls-key", pair["--tls-key"])
    assert_failed(result, 2, f"cannot read {which} {missing(files)}: No such file or directory")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [
    ["call", "tls@127.0.0.1:1", "Calc.add", "--tls-ca", "{missing}"],
    ["list", "https://127.0.0.1:1/", "--tls-ca", "{missing}"],
    ["serve", "secure_service:Calc", "--registry", "https://127.0.0.1:1/", "--tls-ca", "{missing}"],
    ["serve", "secure_service:Calc", "--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{missing}"],
    ["registry", "--port", "0", "--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-ca", "{missing}"],
])
def test_a_missing_ca_file_is_one_line(files, args):
    result = geerpc(files, *(arg.format(missing=missing(files), cert=files.cert, key=files.key) for arg in args))
    assert_failed(result, 2, "cannot read --tls-", f"{missing(files)}: No such file or directory")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreadable_or_malformed_file_is_one_line(files):
    directory = geerpc(files, "list", "https://127.0.0.1:1/", "--tls-ca", str(files.dir))
    assert_one_line(directory, 2, f"cannot read --tls-ca {files.dir}: Is a directory")
    not_a_ca = geerpc(files, "list", "https://127.0.0.1:1/", "--tls-ca", files.key)
    assert_one_line(not_a_ca, 2, f"--tls-ca {files.key}: no PEM CA certificate in it")
    wrong_key = geerpc(files, "serve", "secure_service:Calc", "--tls-cert", files.cert, "--tls-key",
                       files.client_key)
    assert_one_line(wrong_key, 2, "not a PEM certificate and its private key (KEY_VALUES_MISMATCH)")
    swapped = geerpc(files, "registry", "--port", "0", "--tls-cert", files.key, "--tls-key", files.cert)
    assert_failed(swapped, 2, "not a PEM certificate and its private key")


@pytest.mark.parametrize("command", [["serve", "secure_service:Calc"], ["registry", "--port", "0"],
                                     ["call", "tls@127.0.0.1:1", "Calc.add"], ["list", "https://127.0.0.1:1/"]])
def test_a_certificate_without_its_key_is_a_usage_error(files, command):
    for half in (["--tls-cert", files.cert], ["--tls-key", files.key]):
        result = geerpc(files, *command, *half)
        assert_failed(result, 2, "--tls-cert and --tls-key go together")


@pytest.mark.parametrize("args, fragment", [
    (["serve", "secure_service:Calc", "--tls-ca", "{ca}"], "--tls-ca verifies the registry's certificate"),
    (["serve", "secure_service:Calc", "--registry-token", "x"], "--registry-token is sent to the registry"),
    (["serve", "secure_service:Calc", "--registry", "http://127.0.0.1:1/", "--tls-ca", "{ca}"],
     "--tls-ca verifies an https:// or etcds:// registry"),
    (["serve", "secure_service:Calc", "--tls-client-ca", "{ca}"], "--tls-client-ca asks clients"),
    (["serve", "secure_service:Calc", "--host", "unix@/tmp/x.sock", "--tls-cert", "{cert}", "--tls-key", "{key}"],
     "a unix@ socket"),
    (["call", "tcp@127.0.0.1:1", "Calc.add", "--registry-token", "x"], "--registry-token is for an http(s)://"),
    (["call", "tcp@127.0.0.1:1", "Calc.add", "--tls-ca", "{ca}"], "--tls-ca is for tls@ servers"),
    (["list", "etcd://127.0.0.1:1/geerpc", "--registry-token", "x"], "etcd takes user:password@"),
    (["registry", "--port", "0", "--read-token", "x"], "--read-token needs a write token"),
    (["registry", "--port", "0", "--tls-ca", "{ca}"], "--tls-ca asks clients for certificates"),
])
def test_options_that_do_not_fit_together_are_usage_errors(files, args, fragment):
    result = geerpc(files, *(arg.format(ca=files.ca, cert=files.cert, key=files.key) for arg in args))
    assert_failed(result, 2, fragment)


@pytest.mark.parametrize("args, env, fragment, secret", [
    (["registry", "--port", "0"], {"GEERPC_REGISTRY_TOKEN": "has space"}, "GEERPC_REGISTRY_TOKEN must be",
     "has space"),
    (["registry", "--port", "0", "--registry-token", "caf\u00e9"], {}, "--registry-token must be", "caf\u00e9"),
    (["list", "http://127.0.0.1:1/"], {"GEERPC_REGISTRY_READ_TOKEN": "tab\there"}, "GEERPC_REGISTRY_READ_TOKEN must",
     "tab\there"),
    (["call", "tcp@127.0.0.1:1", "Calc.add"], {"GEERPC_TOKEN": "line\nbreak"}, "GEERPC_TOKEN must be printable",
     "break"),
    (["call", "tcp@127.0.0.1:1", "Calc.add", "--token", ""], {}, "--token must be printable text of 1 to", "\0"),
])
def test_a_token_that_cannot_be_sent_is_a_usage_error_that_does_not_show_it(files, args, env, fragment, secret):
    result = geerpc(files, *args, **env)
    assert_one_line(result, 2, fragment)
    assert secret not in result.stderr


def test_an_empty_variable_counts_as_unset(files):
    result = geerpc(files, "list", "http://127.0.0.1:1/", GEERPC_REGISTRY_READ_TOKEN="")
    assert_one_line(result, 1, "cannot reach registry")


@pytest.mark.parametrize("text, fragment", [
    ("alice-only\n", "line 1: want TOKEN IDENTITY"),
    (f"# comment\n{ALICE} alice\n{ALICE} mallory\n", "line 3: this token is already on an earlier line"),
    ("# nothing\n\n", "holds no token"),
])
def test_a_bad_tokens_file_is_one_line_without_the_token(files, tmp_path, text, fragment):
    path = tmp_path / "tokens.txt"
    path.write_text(text)
    result = geerpc(files, "serve", "secure_service:Calc", "--tokens", str(path))
    assert_one_line(result, 2, f"--tokens {path}", fragment)
    assert "alice-only" not in result.stderr


@pytest.mark.parametrize("host, local", [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("tcp@127.0.0.1:9000", True),
    ("tls@[::1]:9000", True), ("unix@/tmp/x.sock", True),
    ("0.0.0.0", False), ("10.0.0.5", False), ("tcp@10.0.0.5:9000", False), ("example.com", False),
])
def test_which_hosts_get_the_warning_about_tokens_in_clear(host, local):
    # Tokens over plaintext on any other address are warned about (by serve and
    # registry); tests listen on loopback only, so the rule is tested here.
    from geerpc.cli.serve import _is_local
    from geerpc.registry.__main__ import is_loopback

    assert _is_local(host) is local
    if "@" not in host:
        assert is_loopback(host) is local


@pytest.mark.parametrize("command, options", [
    ("serve", ["--tls-cert", "--tls-key", "--tls-ca", "--tls-client-ca", "--registry-token", "--tokens",
               "GEERPC_REGISTRY_TOKEN"]),
    ("registry", ["--tls-cert", "--tls-key", "--tls-ca", "--registry-token", "--read-token",
                  "GEERPC_REGISTRY_TOKEN", "GEERPC_REGISTRY_READ_TOKEN"]),
    ("call", ["--tls-cert", "--tls-key", "--tls-ca", "--registry-token", "--token", "GEERPC_TOKEN",
              "GEERPC_REGISTRY_TOKEN"]),
    ("list", ["--tls-cert", "--tls-key", "--tls-ca", "--registry-token", "GEERPC_REGISTRY_TOKEN"]),
])
def test_help_describes_the_options(files, command, options):
    result = geerpc(files, command, "--help")
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout


def test_the_environment_keeps_tokens_out_of_the_command_line(files, deployment):
    # What ps shows is the command line: with the variables, no token is on it.
    server = Running(files, "serve", "secure_service:Calc", "--registry", deployment.registry, "--tls-ca", files.ca,
                     GEERPC_REGISTRY_TOKEN=WRITE)
    try:
        server.first_line()
        with open(f"/proc/{server.proc.pid}/cmdline", "rb") as cmdline:
            assert WRITE.encode() not in cmdline.read()
    finally:
        assert server.stop() == 0
    assert os.environ.get("GEERPC_REGISTRY_TOKEN") != WRITE
