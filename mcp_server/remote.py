"""How the CLI's client commands reach a running hub: its URL, the token they sign in with, and REST calls whose
every failure is a `HubError` with one line for the operator.

The URL is `--url`, else `AGENTHUB_URL`, else the `hub-url` file that `agenthub serve` keeps in its data directory
while it serves (so a hub on any port is found from the same data directory), else the configured host and port.
The token is `--token`, else `AGENTHUB_TOKEN`, else the data directory's operator-token file.

This module imports only the standard library and `agenthub.errors`: every CLI command loads it, `--help` too.
"""

import contextlib
import fcntl
import http.client
import ipaddress
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agenthub.errors import InvalidInput, ServiceUnavailable, StartupError

HUB_URL_FILE = "hub-url"
OPERATOR_TOKEN_FILE = "operator-token"  # the name mcp_server.app writes it under; importing app loads the server
LOCK_FILE = "agenthub.lock"
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def local_url(host: str, port: int) -> str:
    """The URL a client on this machine reaches a hub bound to `host` at (a wildcard address as loopback)."""
    host = _WILDCARDS.get(host, host)
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    return f"http://{host}:{port}"


@contextlib.contextmanager
def advertised(data_dir: Path, url: str) -> Iterator[None]:
    """Keep `<data_dir>/hub-url` (mode 0644, the URL and a newline) while the block runs; remove it after."""
    path = data_dir / HUB_URL_FILE
    staged = data_dir / f".{HUB_URL_FILE}.tmp"
    staged.write_text(url + "\n")
    staged.chmod(0o644)
    staged.replace(path)  # a reader sees the whole URL or no file
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _served_from(data_dir: Path) -> bool:
    """Whether a hub holds the data directory's lock (a `hub-url` left by a killed hub is not believed)."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _checked_url(url: str, origin: str) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{origin} {url!r} is not a hub URL: use e.g. http://127.0.0.1:8765")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise InvalidInput(f"{origin} {url!r} is not a hub URL: {exc}") from exc
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), parts.query, ""))


def find_url(url: str | None, data_dir: Path, default: str, env: Mapping[str, str] = os.environ) -> str:
    """The hub's base URL: `url`, `AGENTHUB_URL`, the data directory's `hub-url` file, or `default`."""
    if url:
        return _checked_url(url, "--url")
    if env.get("AGENTHUB_URL"):
        return _checked_url(env["AGENTHUB_URL"], "AGENTHUB_URL")
    path = data_dir / HUB_URL_FILE
    if _served_from(data_dir):
        with contextlib.suppress(OSError):
            return _checked_url(path.read_text(), str(path))
    return default


def find_token(token: str | None, data_dir: Path, env: Mapping[str, str] = os.environ) -> str:
    """The bearer token: `token`, `AGENTHUB_TOKEN`, or the data directory's operator token."""
    for value in (token, env.get("AGENTHUB_TOKEN")):
        if value is not None and value.strip():
            return value.strip()
    path = data_dir / OPERATOR_TOKEN_FILE
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise InvalidInput(f"no token: pass --token, set AGENTHUB_TOKEN, or run beside the hub's data directory "
                           f"(cannot read {path}: {exc.strerror or exc})") from exc


def _refusal(exc: urllib.error.HTTPError, target: str) -> str:
    """What a hub's refusal says (its problem JSON's `detail`), or what answered if it is not a hub."""
    body = exc.read()
    with contextlib.suppress(ValueError, AttributeError):
        detail = json.loads(body or b"{}").get("detail")
        if isinstance(detail, str):
            return f"the hub refused: {detail}"
    return f"{target} answered HTTP {exc.code} {exc.reason}: is it an agenthub?"


@dataclass(frozen=True, slots=True, kw_only=True)
class Remote:
    """A running hub's REST API, signed in with a bearer token."""

    url: str
    token: str

    def target(self, path: str) -> str:
        """The URL of an API path (the hub's MCP URL, `/mcp?tools=...`, names the hub too)."""
        base = urllib.parse.urlsplit(self.url)
        return base._replace(path=base.path.removesuffix("/mcp"), query="").geturl() + path

    def open(self, method: str, path: str, data: bytes | None = None, content_type: str = "application/json",
             timeout: float = 30) -> http.client.HTTPResponse:
        """The response to a request, to read; a refusal or an unreachable hub raises a one-line `HubError`."""
        target = self.target(path)
        req = urllib.request.Request(target, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": content_type})
        try:
            response: http.client.HTTPResponse = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310
        except urllib.error.HTTPError as exc:
            raise StartupError(_refusal(exc, target)) from exc
        except urllib.error.URLError as exc:
            raise ServiceUnavailable(f"cannot reach the hub at {self.url}: {exc.reason}") from exc
        except (http.client.HTTPException, OSError) as exc:  # a reset, a timeout, something that is not HTTP
            raise ServiceUnavailable(f"cannot reach the hub at {self.url}: {exc or type(exc).__name__}") from exc
        return response

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, raw: bytes | None = None,
                content_type: str = "application/wasm", timeout: float = 30) -> Any:
        """A JSON body, or `raw` bytes (a module by default); the JSON answer."""
        data, kind = raw, content_type
        if raw is None:
            data, kind = (json.dumps(body).encode() if body is not None else None), "application/json"
        with self.open(method, path, data, kind, timeout) as response:
            try:
                answer = response.read()
            except (http.client.HTTPException, OSError) as exc:
                raise ServiceUnavailable(f"the hub at {self.url} stopped answering: {exc or type(exc).__name__}"
                                         ) from exc
        try:
            parsed = json.loads(answer)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise ServiceUnavailable(f"{self.target(path)} did not answer with JSON: is it an agenthub?") from exc
        if not isinstance(parsed, dict):  # every answer of the hub's API is an object
            raise ServiceUnavailable(f"{self.target(path)} did not answer with a JSON object: is it an "
                                     "agenthub?")
        return parsed
