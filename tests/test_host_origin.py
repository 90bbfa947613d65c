"""Host and Origin are parsed as the standards define them (RFC 9110 host[:port], RFC 6454 serialized origins):
a table of hostile values, each sent with a real write over REST and MCP, all refused with 403 and nothing
written; and what is well-formed and allowed still works."""

import socket

import anyio
import pytest

from tests.conftest import HubFactory, RunningHub
from tests.test_security import NOTHING, assert_problem, nats_messages, send, stored
from web_ui.origins import parse_host, parse_origin

HOSTILE_ORIGINS = [
    # accepted before: a loopback prefix followed by something else
    "http://[::1].evil.com", "http://localhost:80.evil.com", "http://127.0.0.1:evil", "http://[::1]evil.com",
    "http://localhost:abc", "http://localhost:99999",
    # ports out of range or malformed
    "http://localhost:0", "http://localhost:", "http://localhost:-1", "http://localhost:+80", "http://localhost:1e3",
    "http://localhost:8765:1", "https://127.0.0.1:65536", "http://localhost:8765.",
    # userinfo, paths, queries, fragments
    "http://user@localhost", "http://localhost@evil.example", "http://evil.example@localhost:8765",
    "http://localhost/", "http://localhost:8765/path", "http://localhost?x", "http://localhost#x",
    "http://localhost\\@evil.example",
    # names that are not names
    "http://localhost.", "http://localhost.:8765", "http://127.0.0.1.", "http://127.1", "http://0x7f.0.0.1",
    "http://local%68ost", "http://localhost%2eevil.example", "http://[::1", "http://[::1]]", "http://[::1%25eth0]",
    "http://[127.0.0.1]", "http://[::ffff:127.0.0.1]", "http://", "http://:8765",
    # not the serialized form: uppercase, whitespace inside, several origins
    "HTTP://localhost", "http://LOCALHOST", "http://Localhost:8765", "http://localhost :8765",
    "http://localhost\t:8765", "http://localhost:8765, http://evil.example", "http://localhost:8765 http://evil.example",
    # other schemes and opaque origins
    "null", "", "ws://localhost", "file://localhost", "localhost", "//localhost", "http:/localhost",
]

HOSTILE_HOSTS = [
    "localhost:80.evil.com", "127.0.0.1:evil.com", "[::1]evil.com", "localhost:abc", "localhost:99999",
    "localhost:0", "localhost:", "localhost:8765:1", "localhost:-1", "[::1]:", "[::1]:abc",
    "user@localhost", "localhost@evil.example", "evil.example@localhost",
    "localhost/x", "localhost:8765/", "localhost?x", "localhost#x", "http://localhost",
    "localhost.", "localhost.:8765", "127.0.0.1.", "127.1", "0x7f.0.0.1", "local%68ost", "localhost%2eevil.example",
    "[::1", "[::1]]", "[::1%25eth0]", "[127.0.0.1]", "[::ffff:127.0.0.1]",
    "localhost :8765", "localhost\t:8765", "localhost:8765, evil.example", "localhost evil.example",
    "evil.example", "",
]


def test_the_parsers_take_well_formed_values_apart() -> None:
    assert parse_host("LocalHost:8765") == parse_host("localhost:8765")
    assert parse_host("[0:0::1]:80") == parse_host("[::1]:80")
    assert parse_origin("https://ui.example") == parse_origin("https://ui.example:443")
    assert parse_origin("http://ui.example") != parse_origin("https://ui.example")
    # Every hostile value is malformed, but for a few well-formed names that are simply not allowed.
    assert [v for v in HOSTILE_ORIGINS if parse_origin(v) is not None] == [
        "http://0x7f.0.0.1", "http://[::ffff:127.0.0.1]"]
    assert [v for v in HOSTILE_HOSTS if parse_host(v) is not None] == [
        "0x7f.0.0.1", "[::ffff:127.0.0.1]", "evil.example"]


@pytest.mark.parametrize(("header", "values", "title"), [("origin", HOSTILE_ORIGINS, "Forbidden origin"),
                                                         ("host", HOSTILE_HOSTS, "Forbidden host")])
async def test_hostile_origins_and_hosts_are_refused_with_403_and_write_nothing(
        hub: RunningHub, header: str, values: list[str], title: str) -> None:
    answers = {}
    async with nats_messages(hub) as published, hub.http() as http:
        for value in values:
            for target in ("rest", "mcp"):
                r = await send(http, target, headers={header: value})
                answers[value, target] = (r.status_code, r.json().get("title"))
    assert {k: v for k, v in answers.items() if v != (403, title)} == {}
    assert await stored(hub) == NOTHING
    assert published == []


@pytest.mark.parametrize("header", ["Origin", "Host"])
async def test_a_repeated_origin_or_host_line_is_refused_and_writes_nothing(hub: RunningHub, header: str) -> None:
    """Two lines of the header, the first one allowed: neither line alone decides."""
    port = int(hub.url.rsplit(":", 1)[1])
    first = f"http://127.0.0.1:{port}" if header == "Origin" else f"127.0.0.1:{port}"
    second = "http://evil.example" if header == "Origin" else "evil.example"
    lines = [f"Host: 127.0.0.1:{port}"] if header == "Origin" else []
    lines += [f"{header}: {first}", f"{header}: {second}"]
    body = b'{"agent_id": "agent-1", "agent_role": "Analyzer", "discovery_type": "pattern", "content": "x",' \
           b' "confidence": 0.5}'
    request = ("POST /api/v1/discoveries HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines)
               + f"Authorization: Bearer {hub.operator_token}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            return sock.recv(200)

    status = (await anyio.to_thread.run_sync(exchange)).split(b"\r\n", 1)[0].split(b" ")[1]
    assert status in (b"400", b"403"), status  # the HTTP parser may refuse a second Host line itself
    assert await stored(hub) == NOTHING


async def test_well_formed_allowed_values_still_work(hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(allowed_hosts=["hub.example:8443", "[2001:db8::1]"],
                                    allowed_origins=["https://ui.example"])
    async with hub_factory.run(settings) as hub, hub.http() as http:
        port = hub.url.rsplit(":", 1)[1]
        allowed = [
            {"host": f"localhost:{port}", "origin": f"http://localhost:{port}"},
            {"host": f"LOCALHOST:{port}"},  # host names compare as DNS does, case-insensitively
            {"host": "[::1]", "origin": "https://[::1]:3000"},
            {"host": "hub.example:8443", "origin": "https://ui.example"},
            {"host": "[2001:db8:0::1]", "origin": "https://ui.example:443"},
        ]
        for headers in allowed:
            r = await send(http, "rest", headers=headers)
            assert r.status_code == 201, (headers, r.text)
        for headers in ({"host": "hub.example"}, {"host": "hub.example:8444"}, {"origin": "http://ui.example"},
                        {"origin": "https://ui.example:8443"}, {"host": "[2001:db8::1]:80"}):
            assert_problem(await send(http, "rest", headers=headers), 403)
        assert (await stored(hub))["discoveries"] == len(allowed)
