"""`Host` and `Origin` header values, parsed as the standards define them, and the allow-list they are checked
against.

A Host is `host[:port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): an IPv4 address in dotted-decimal, an IPv6 address in
brackets with nothing but a port after the bracket, or a DNS name (labels of letters, digits and inner hyphens,
no trailing dot); a port is 1..5 digits, 1..65535. An Origin is the serialization of RFC 6454 §6.2: `http` or
`https`, `://`, a host as above in lowercase, an optional port, and nothing else (no userinfo, path, query,
fragment or whitespace; `null` is not an origin anyone may use). Anything that does not parse is refused: the
checks never guess what a malformed value meant. Percent-encoded and non-ASCII names are refused too (browsers
send IDNs as punycode). Host names compare case-insensitively, as DNS does; an Origin must already be lowercase,
as every browser serializes it. Several values of one header (repeated lines, which the guard joins with commas
as RFC 9110 §5.3 allows, or a list) are refused.
"""

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_DOTTED = re.compile(r"[0-9.]+")


@dataclass(frozen=True, slots=True)
class HostPort:
    name: str  # lowercase; IPv6 in brackets, compressed
    port: int | None


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    name: str
    port: int  # the scheme's default when the origin names none


def _port(text: str) -> int | None:
    if not _PORT.fullmatch(text):
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def _name(text: str) -> str | None:
    """The canonical form of a host name or address, or None when it is neither."""
    if text.startswith("["):
        if not text.endswith("]") or "%" in text:  # zone ids are not for Host headers (RFC 6874 is for URIs)
            return None
        try:
            return f"[{ipaddress.IPv6Address(text[1:-1]).compressed}]"
        except ValueError:
            return None
    name = text.lower()
    if _DOTTED.fullmatch(name):  # numbers and dots only: an IPv4 address or nothing (no `127.1`, no octal)
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            return None
    return name if len(name) <= 253 and _DNS_NAME.fullmatch(name) else None


def parse_host(value: str) -> HostPort | None:
    """`host[:port]` as a Host header carries it, or None when `value` is anything else."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[: end + 1], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None  # `[::1]evil.com`: nothing but a port may follow the bracket
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_or_empty = value.partition(":")
        port_text = port_text_or_empty if sep else None
    name = _name(host)
    if name is None:
        return None
    if port_text is None:
        return HostPort(name, None)
    port = _port(port_text)
    return HostPort(name, port) if port is not None else None


def parse_origin(value: str) -> Origin | None:
    """A serialized origin (`scheme://host[:port]`, lowercase), or None when `value` is anything else."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in _DEFAULT_PORTS or rest != rest.lower():
        return None
    host = parse_host(rest)
    if host is None:
        return None
    return Origin(scheme, host.name, host.port if host.port is not None else _DEFAULT_PORTS[scheme])


def host_allowed(value: str, allowed: Sequence[str]) -> bool:
    """Loopback names on any port, plus the configured `host[:port]` values (a configured value without a port
    allows only a Host without one)."""
    host = parse_host(value)
    if host is None:
        return False
    return host.name in LOOPBACK_NAMES or host in {parse_host(a) for a in allowed}


def origin_allowed(value: str, allowed: list[str]) -> bool:
    """http(s) origins of the loopback names on any port, plus the configured origins (`https://ui.example` and
    `https://ui.example:443` are the same origin)."""
    origin = parse_origin(value)
    if origin is None:
        return False
    return origin.name in LOOPBACK_NAMES or origin in {parse_origin(a) for a in allowed}


def field_value(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The value of header `name` (lowercase, as ASGI gives names), its repeated lines joined with ", " as RFC 9110
    §5.3 combines them (so a repeated Host or Origin parses as no valid value); None when absent."""
    values = [v.decode("latin-1") for k, v in headers if k == name]
    return ", ".join(values) if values else None
