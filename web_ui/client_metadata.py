"""OAuth Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document, which the MCP authorization
spec of 2025-11-25 asks authorization servers to support): a client whose `client_id` is an https URL is described
by the JSON document at that URL, fetched by the hub instead of registered.

Fetching a URL a stranger names is a request forgery risk, so the URL must be https with a path, the host must not
resolve to a private, loopback or link-local address (unless the operator allows it), redirects are not followed,
and the document is read up to 64 KiB within 5 s. The document must name itself as `client_id`, describe a public
client (`token_endpoint_auth_method` none) and pass the hub's redirect URI rule.
"""

import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2

MAX_BYTES = 64 * 1024
TIMEOUT_SECONDS = 5.0


class ClientMetadataError(Exception):
    """The client id URL or its document cannot be used; the message says why."""


def is_metadata_url(client_id: str) -> bool:
    return client_id.startswith("https://")


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ClientMetadataError("a client id URL must be https with a host")
    if parts.path in ("", "/"):
        raise ClientMetadataError("a client id URL must have a path")
    if parts.fragment or parts.username is not None or parts.password is not None:
        raise ClientMetadataError("a client id URL must not have a fragment or credentials")
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        raise ClientMetadataError("a client id URL must not have dot segments")


async def _check_addresses(host: str, port: int) -> None:
    try:
        infos = await anyio.getaddrinfo(host, port)
    except OSError as exc:
        raise ClientMetadataError(f"cannot resolve {host}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            raise ClientMetadataError(f"{host} resolves to a non-public address ({address})")


async def fetch(url: str, *, private_addresses: bool = False, ca_file: Path | None = None) -> dict[str, Any]:
    """The client metadata document at `url`, checked; `ClientMetadataError` when it cannot be used."""
    check_url(url)
    parts = urlsplit(url)
    if not private_addresses:
        await _check_addresses(parts.hostname or "", parts.port or 443)
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    body = b""
    try:
        async with httpx2.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False, verify=verify,
                                      trust_env=False) as http, http.stream("GET", url, headers={
                                          "Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise ClientMetadataError(f"fetching {url} answered {response.status_code}")
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise ClientMetadataError(f"the document at {url} is larger than {MAX_BYTES} bytes")
    except httpx2.HTTPError as exc:
        raise ClientMetadataError(f"cannot fetch {url}: {exc}") from exc
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise ClientMetadataError(f"the document at {url} is not JSON") from exc
    if not isinstance(document, dict) or document.get("client_id") != url:
        raise ClientMetadataError(f"the document at {url} must be a JSON object whose client_id is that URL")
    if document.get("token_endpoint_auth_method", "none") != "none" or "client_secret" in document:
        raise ClientMetadataError("a client described by a metadata document must be a public client "
                                  "(token_endpoint_auth_method none, no client_secret)")
    return document
