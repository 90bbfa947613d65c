"""OAuth sign-in (issue 14) against a real hub: discovery from a 401, registration, authorization code + PKCE with
the consent answered by an operator, refresh rotation with reuse detection, revocation, resource binding; and the
TypeScript SDK's own OAuth client signing in through the dashboard's consent page in headless Chromium."""

import base64
import hashlib
import ipaddress
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
import uvicorn
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agenthub.auth import Role, create_token
from tests.browser import Browser
from tests.conftest import JS, HubFactory, RunningHub, bind_free

pytestmark = pytest.mark.timeout(600)

SHARE = {"agent_role": "Analyzer", "discovery_type": "anomaly", "content": "seen through OAuth", "confidence": 0.5}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def anonymous(hub: RunningHub) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=hub.url, timeout=30)


async def register(http: httpx2.AsyncClient, redirect_uris: list[str], **extra: Any) -> httpx2.Response:
    return await http.post("/register", json={"client_name": "test client", "redirect_uris": redirect_uris, **extra})


async def authorize(http: httpx2.AsyncClient, client_id: str, redirect_uri: str, challenge: str,
                    **extra: str) -> httpx2.Response:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": "st-1",
              "code_challenge": challenge, "code_challenge_method": "S256", **extra}
    return await http.get("/authorize", params=params)


def consent_id(response: httpx2.Response, hub: RunningHub) -> str:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(f"{hub.url}/#/consent/"), location
    return location.rsplit("/", 1)[1]


async def approve(hub: RunningHub, request_id: str, **answer: Any) -> dict[str, list[str]]:
    """The consent page's call, made directly: the query of the redirect it answers with."""
    async with hub.http() as http:
        response = await http.post(f"/oauth/consent/{request_id}", json={"approve": True, **answer})
    assert response.status_code == 200, response.text
    return parse_qs(urlsplit(response.json()["redirect_to"]).query)


async def sign_in(hub: RunningHub, http: httpx2.AsyncClient, agent_id: str) -> tuple[str, dict[str, Any]]:
    """Register, authorize, approve as an agent and exchange the code: (client id, the token response)."""
    redirect = "http://127.0.0.1:4567/callback"
    client = (await register(http, [redirect])).json()
    verifier, challenge = pkce()
    request_id = consent_id(await authorize(http, client["client_id"], redirect, challenge,
                                            resource=hub.mcp_url), hub)
    code = (await approve(hub, request_id, role="agent", agent_id=agent_id))["code"][0]
    tokens = await http.post("/token", data={"grant_type": "authorization_code", "code": code,
                                             "redirect_uri": redirect, "client_id": client["client_id"],
                                             "code_verifier": verifier})
    assert tokens.status_code == 200, tokens.text
    return client["client_id"], tokens.json()


async def whoami(hub: RunningHub, token: str) -> httpx2.Response:
    async with hub.http(token) as http:
        return await http.get("/api/v1/whoami")


async def test_without_a_token_the_hub_points_at_its_oauth_metadata(hub: RunningHub) -> None:
    async with anonymous(hub) as http:
        refused = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert refused.status_code == 401
        challenge = refused.headers["www-authenticate"]
        assert f'resource_metadata="{hub.url}/.well-known/oauth-protected-resource"' in challenge
        assert "invalid_token" not in challenge
        api = await http.get("/api/v1/whoami")
        assert api.status_code == 401 and "resource_metadata=" in api.headers["www-authenticate"]
        bad = await http.get("/api/v1/whoami", headers={"Authorization": "Bearer ah_nonsense"})
        assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]

        for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
            resource = await http.get(path)
            assert resource.status_code == 200, path
            assert resource.json()["resource"] == hub.mcp_url
            assert resource.json()["authorization_servers"] == [hub.url]
        server = (await http.get("/.well-known/oauth-authorization-server")).json()
        assert server["issuer"] == hub.url
        assert server["authorization_endpoint"] == f"{hub.url}/authorize"
        assert server["token_endpoint"] == f"{hub.url}/token"
        assert server["registration_endpoint"] == f"{hub.url}/register"
        assert server["revocation_endpoint"] == f"{hub.url}/revoke"
        assert server["code_challenge_methods_supported"] == ["S256"]
        assert server["token_endpoint_auth_methods_supported"] == ["none"]
    # Static tokens keep working.
    assert (await whoami(hub, hub.operator_token)).json()["role"] == "operator"


async def test_a_hub_on_loopback_is_the_resource_under_each_loopback_name(hub: RunningHub) -> None:
    port = urlsplit(hub.url).port
    async with anonymous(hub) as http:
        for name in ("localhost", "[::1]"):
            host = {"Host": f"{name}:{port}"}
            refused = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=host)
            assert f'resource_metadata="http://{name}:{port}/.well-known/oauth-protected-resource"' in \
                refused.headers["www-authenticate"]
            metadata = (await http.get("/.well-known/oauth-protected-resource", headers=host)).json()
            assert metadata["resource"] == f"http://{name}:{port}/mcp"
            assert metadata["authorization_servers"] == [hub.url]
        other_host = await http.get("/.well-known/oauth-protected-resource", headers={"Host": f"localhost:{port + 1}"})
        assert other_host.json()["resource"] == hub.mcp_url
    in_future = datetime.now(UTC) + timedelta(hours=1)
    for resource, works in ((f"http://localhost:{port}/mcp", True), (f"http://[::1]:{port}/mcp", True),
                            (f"http://localhost:{port + 1}/mcp", False), (f"http://localhost:{port}/other", False)):
        _, token = await create_token(hub.state.pool, Role.VIEWER, resource=resource, expires_at=in_future)
        assert ((await whoami(hub, token)).status_code == 200) is works, resource


async def test_registration_takes_only_safe_redirect_uris_and_makes_public_clients(hub: RunningHub) -> None:
    async with anonymous(hub) as http:
        for bad in ("http://evil.example/cb", "https://app.example/cb#frag", "javascript:alert(1)"):
            refused = await register(http, [bad])
            assert refused.status_code == 400, bad
            assert refused.json()["error"] == "invalid_redirect_uri"
            assert bad.split("#")[0] in refused.json()["error_description"]
        made = await register(http, ["http://127.0.0.1:9/cb", "https://app.example/cb", "cursor://app/cb"],
                              token_endpoint_auth_method="client_secret_post")
        assert made.status_code == 201, made.text
        client = made.json()
        assert client["token_endpoint_auth_method"] == "none"
        assert "client_secret" not in client
        missing = await authorize(http, "no-such-client", "http://127.0.0.1:9/cb", pkce()[1])
        assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
        # Text PostgreSQL cannot store is a clear OAuth error, never a 500.
        nul = await register(http, ["http://127.0.0.1:9/cb"], client_name="bad\u0000name")
        assert nul.status_code == 400 and nul.json()["error"] == "invalid_client_metadata"
        assert "client_name" in nul.json()["error_description"]
        unknown = await http.post("/token", data={"grant_type": "refresh_token", "client_id": "a\x00b",
                                                  "refresh_token": "x"})
        assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
        bad_state = await authorize(http, client["client_id"], "http://127.0.0.1:9/cb", pkce()[1], state="s\x00")
        assert bad_state.status_code == 302
        assert parse_qs(urlsplit(bad_state.headers["location"]).query)["error"] == ["invalid_request"]


async def test_redirect_uris_match_exactly_but_a_loopback_ip_may_change_its_port(hub: RunningHub) -> None:
    async with anonymous(hub) as http:
        client_id = (await register(http, ["http://127.0.0.1:1234/cb", "https://app.example/cb"])).json()["client_id"]
        challenge = pkce()[1]
        consent_id(await authorize(http, client_id, "http://127.0.0.1:5555/cb", challenge), hub)
        consent_id(await authorize(http, client_id, "https://app.example/cb", challenge), hub)
        for wrong in ("http://127.0.0.1:5555/other", "http://localhost:1234/cb", "https://app.example/cb/",
                      "https://app.example:8443/cb", "https://app.example/cb?x=1"):
            refused = await authorize(http, client_id, wrong, challenge)
            assert refused.status_code == 400, wrong
            assert refused.json()["error"] == "invalid_request"
            assert "not registered" in refused.json()["error_description"]


async def test_the_code_flow_needs_an_operators_consent_and_the_pkce_verifier(hub: RunningHub) -> None:
    redirect = "http://127.0.0.1:4567/callback"
    async with anonymous(hub) as http:
        client_id = (await register(http, [redirect])).json()["client_id"]
        verifier, challenge = pkce()
        request_id = consent_id(await authorize(http, client_id, redirect, challenge, resource=hub.mcp_url), hub)

        # Only an operator sees and answers the request.
        agent_token = await hub.token(Role.AGENT, "someone")
        async with hub.http(agent_token) as as_agent:
            assert (await as_agent.get(f"/oauth/consent/{request_id}")).status_code == 403
        assert (await http.get(f"/oauth/consent/{request_id}")).status_code == 401
        async with hub.http() as operator:
            shown = (await operator.get(f"/oauth/consent/{request_id}")).json()
            assert shown["client_name"] == "test client" and shown["redirect_uri"] == redirect
            assert shown["resource"] == hub.mcp_url
            half = await operator.post(f"/oauth/consent/{request_id}", json={"approve": True, "role": "agent"})
            assert half.status_code == 400 and "agent_id" in half.json()["detail"]
        query = await approve(hub, request_id, role="agent", agent_id="oauth-agent")
        assert query["state"] == ["st-1"] and query["iss"] == [hub.url]
        code = query["code"][0]
        async with hub.http() as operator:  # answered: gone
            assert (await operator.post(f"/oauth/consent/{request_id}", json={"approve": False})).status_code == 404

        exchange = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect, "client_id": client_id}
        wrong = await http.post("/token", data={**exchange, "code_verifier": pkce()[0]})
        assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
        other_redirect = await http.post("/token", data={**exchange, "redirect_uri": "http://127.0.0.1:1/x",
                                                         "code_verifier": verifier})
        assert other_redirect.status_code == 400 and other_redirect.json()["error"] == "invalid_request"
        tokens = await http.post("/token", data={**exchange, "code_verifier": verifier})
        assert tokens.status_code == 200, tokens.text
        body = tokens.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["refresh_token"]
        assert tokens.headers["cache-control"] == "no-store"

        me = (await whoami(hub, body["access_token"])).json()
        assert (me["role"], me["agent_id"]) == ("agent", "oauth-agent")
        async with hub.mcp(body["access_token"]) as mcp:
            own = await mcp.call_tool("share_discovery", {"agent_id": "oauth-agent", **SHARE})
            assert not own.is_error
            other = await mcp.call_tool("share_discovery", {"agent_id": "someone-else", **SHARE})
            assert other.is_error

        # A code is good once; presented again it revokes what it gave.
        again = await http.post("/token", data={**exchange, "code_verifier": verifier})
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        assert (await whoami(hub, body["access_token"])).status_code == 401


async def test_consent_denied_sends_the_client_access_denied(hub: RunningHub) -> None:
    redirect = "http://127.0.0.1:4567/callback"
    async with anonymous(hub) as http:
        client_id = (await register(http, [redirect])).json()["client_id"]
        request_id = consent_id(await authorize(http, client_id, redirect, pkce()[1]), hub)
    async with hub.http() as operator:
        answer = (await operator.post(f"/oauth/consent/{request_id}", json={"approve": False})).json()
    assert answer["outcome"] == "denied"
    query = parse_qs(urlsplit(answer["redirect_to"]).query)
    assert answer["redirect_to"].startswith(redirect)
    assert query["error"] == ["access_denied"] and query["state"] == ["st-1"] and "code" not in query


async def test_refresh_rotates_and_a_reused_refresh_token_revokes_the_grant(hub: RunningHub) -> None:
    async with anonymous(hub) as http:
        client_id, first = await sign_in(hub, http, "rotating")
        refresh = {"grant_type": "refresh_token", "client_id": client_id}
        second = await http.post("/token", data={**refresh, "refresh_token": first["refresh_token"]})
        assert second.status_code == 200, second.text
        new = second.json()
        assert new["refresh_token"] != first["refresh_token"] and new["access_token"] != first["access_token"]
        me = (await whoami(hub, new["access_token"])).json()
        assert (me["role"], me["agent_id"]) == ("agent", "rotating")

        reused = await http.post("/token", data={**refresh, "refresh_token": first["refresh_token"]})
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
        # Taken as theft: everything of the grant is revoked, the newest tokens included.
        assert (await whoami(hub, new["access_token"])).status_code == 401
        after = await http.post("/token", data={**refresh, "refresh_token": new["refresh_token"]})
        assert after.status_code == 400 and after.json()["error"] == "invalid_grant"


async def test_the_public_oauth_endpoints_are_rate_limited_per_address(hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(oauth={"requests_per_minute": 6, "request_burst": 3})
    async with hub_factory.run(settings) as hub, anonymous(hub) as http:
        for _ in range(3):
            assert (await register(http, ["http://127.0.0.1:9/cb"])).status_code == 201
        refused = await http.post("/token", data={"grant_type": "refresh_token", "client_id": "x",
                                                   "refresh_token": "y"})
        assert refused.status_code == 429
        assert 5 <= int(refused.headers["retry-after"]) <= 10
        # Metadata, and callers with a token, are not limited.
        assert (await http.get("/.well-known/oauth-authorization-server")).status_code == 200
        assert (await whoami(hub, hub.operator_token)).status_code == 200


async def test_expired_codes_and_refresh_tokens_are_forgotten(hub: RunningHub) -> None:
    async with anonymous(hub) as http:
        client_id, tokens = await sign_in(hub, http, "forgotten")
        pool = hub.state.pool
        await pool.execute("UPDATE oauth_refresh_tokens SET expires_at = now() - interval '1 second'")
        await pool.execute("UPDATE oauth_codes SET expires_at = now() - interval '1 second'")
        expired = await http.post("/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                 "refresh_token": tokens["refresh_token"]})
        assert expired.status_code == 400 and expired.json()["error"] == "invalid_grant"
        consent_id(await authorize(http, client_id, "http://127.0.0.1:4567/callback", pkce()[1]), hub)
    assert await pool.fetchval("SELECT count(*) FROM oauth_refresh_tokens") == 0
    assert await pool.fetchval("SELECT count(*) FROM oauth_codes") == 0


async def test_revoking_a_token_ends_the_grant(hub: RunningHub) -> None:
    async with anonymous(hub) as http:
        client_id, tokens = await sign_in(hub, http, "revoked")
        assert (await whoami(hub, tokens["access_token"])).status_code == 200
        revoked = await http.post("/revoke", data={"token": tokens["access_token"], "client_id": client_id})
        assert revoked.status_code == 200
        refused = await whoami(hub, tokens["access_token"])
        assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
        refreshed = await http.post("/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                    "refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"


async def test_revoking_an_access_token_by_id_also_ends_its_refresh_tokens(hub: RunningHub) -> None:
    async with anonymous(hub) as http:
        client_id, tokens = await sign_in(hub, http, "listed")
        async with hub.http() as operator:
            listed = (await operator.get("/api/v1/tokens")).json()["items"]
            mine = [t for t in listed if t["agent_id"] == "listed"]
            assert len(mine) == 1 and mine[0]["expires_at"] is not None
            assert (await operator.delete(f"/api/v1/tokens/{mine[0]['token_id']}")).status_code == 200
        assert (await whoami(hub, tokens["access_token"])).status_code == 401
        refreshed = await http.post("/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                    "refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"


async def test_a_token_for_another_resource_is_refused(hub: RunningHub) -> None:
    elsewhere = "http://127.0.0.1:1/mcp"
    _, foreign = await create_token(hub.state.pool, Role.AGENT, "roamer", resource=elsewhere,
                                    expires_at=datetime.now(UTC) + timedelta(hours=1))
    _, ours = await create_token(hub.state.pool, Role.AGENT, "roamer", resource=hub.mcp_url,
                                 expires_at=datetime.now(UTC) + timedelta(hours=1))
    assert (await whoami(hub, ours)).status_code == 200
    async with httpx2.AsyncClient(timeout=30) as http:
        refused = await http.post(hub.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                  headers={"Authorization": f"Bearer {foreign}"})
    assert refused.status_code == 401
    assert elsewhere in refused.json()["detail"]
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    # And the hub issues none: an authorization request for another resource is answered invalid_target.
    redirect = "http://127.0.0.1:4567/callback"
    async with anonymous(hub) as anon:
        client_id = (await register(anon, [redirect])).json()["client_id"]
        answer = await authorize(anon, client_id, redirect, pkce()[1], resource=elsewhere)
    assert answer.status_code == 302
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert answer.headers["location"].startswith(redirect)
    assert query["error"] == ["invalid_target"] and query["state"] == ["st-1"]


# -- client ID metadata documents -------------------------------------------------------------------------------


def write_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@dataclass
class DocumentServer:
    """An https server on loopback serving client metadata documents by path (`documents`)."""

    url: str
    ca_file: Path
    documents: dict[str, Any]


@pytest.fixture
async def document_server(tmp_path: Path) -> AsyncIterator[DocumentServer]:
    ca_file, cert, key = write_certificates(tmp_path)
    documents: dict[str, Any] = {}

    async def serve(request: Request) -> Response:
        document = documents.get(request.url.path)
        return Response(status_code=404) if document is None else JSONResponse(document)

    sock = bind_free()
    config = uvicorn.Config(Starlette(routes=[Route("/{path:path}", serve)]), log_level="warning",
                            ssl_certfile=str(cert), ssl_keyfile=str(key), lifespan="off")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn exposes readiness only as this flag
                await anyio.sleep(0.01)
        yield DocumentServer(url=f"https://127.0.0.1:{sock.getsockname()[1]}", ca_file=ca_file, documents=documents)
        server.should_exit = True


async def test_a_client_described_by_a_metadata_document_signs_in_without_registering(
        hub_factory: HubFactory, document_server: DocumentServer) -> None:
    client_id = f"{document_server.url}/oauth/client.json"
    redirect = "http://127.0.0.1:4567/callback"
    document_server.documents["/oauth/client.json"] = {
        "client_id": client_id, "client_name": "Documented client", "redirect_uris": [redirect],
        "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "none"}
    liar = f"{document_server.url}/liar.json"
    document_server.documents["/liar.json"] = {"client_id": client_id, "redirect_uris": [redirect]}
    settings = hub_factory.settings(oauth={"client_metadata_private_addresses": True,
                                           "client_metadata_ca_file": str(document_server.ca_file)})
    async with hub_factory.run(settings) as hub, anonymous(hub) as http:
        server = (await http.get("/.well-known/oauth-authorization-server")).json()
        assert server["client_id_metadata_document_supported"] is True
        verifier, challenge = pkce()
        request_id = consent_id(await authorize(http, client_id, redirect, challenge), hub)
        async with hub.http() as operator:
            shown = (await operator.get(f"/oauth/consent/{request_id}")).json()
        assert (shown["client_id"], shown["client_name"]) == (client_id, "Documented client")
        code = (await approve(hub, request_id, role="viewer"))["code"][0]
        tokens = await http.post("/token", data={"grant_type": "authorization_code", "code": code,
                                                 "redirect_uri": redirect, "client_id": client_id,
                                                 "code_verifier": verifier})
        assert tokens.status_code == 200, tokens.text
        assert (await whoami(hub, tokens.json()["access_token"])).json()["role"] == "viewer"

        # A document that names another client id, a redirect URI it does not list, a missing document.
        for wrong_id, uri in ((liar, redirect), (client_id, "http://127.0.0.1:4567/elsewhere"),
                              (f"{document_server.url}/missing.json", redirect)):
            refused = await authorize(http, wrong_id, uri, challenge)
            assert refused.status_code == 400 and refused.json()["error"] == "invalid_request", (wrong_id, uri)

    # By default the hub fetches no document from a private address (nor trusts the test's CA).
    async with hub_factory.run() as strict, anonymous(strict) as http:
        refused = await authorize(http, client_id, redirect, pkce()[1])
        assert refused.status_code == 400 and "not found" in refused.json()["error_description"]


# -- the TypeScript SDK's client, the consent page in Chromium ----------------------------------------------------


class Script:
    """The Node client's JSON lines, one event at a time."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None
        self._lines = TextReceiveStream(process.stdout)
        self._buffer = ""

    async def next(self, seconds: float = 30) -> dict[str, Any]:
        with anyio.fail_after(seconds):
            while "\n" not in self._buffer:
                self._buffer += await self._lines.receive()
        line, self._buffer = self._buffer.split("\n", 1)
        event: dict[str, Any] = json.loads(line)
        if event["event"] == "error":
            raise AssertionError(f"the TypeScript client failed: {event['message']}\n{event['stack']}")
        return event


@pytest.mark.parametrize("described", [False, True], ids=["registered", "metadata-document"])
async def test_the_typescript_sdk_signs_in_through_the_dashboard_consent_page(
        hub_factory: HubFactory, document_server: DocumentServer, browser: Browser, node: str,
        described: bool) -> None:
    argv = [node, str(JS / "oauth_client.mjs")]
    settings = hub_factory.settings()
    document_url = f"{document_server.url}/ts-client.json"
    if described:  # the client names its document; the loopback redirect's port is its own choice
        document_server.documents["/ts-client.json"] = {
            "client_id": document_url, "client_name": "agenthub OAuth test client",
            "redirect_uris": ["http://127.0.0.1/callback"], "token_endpoint_auth_method": "none"}
        settings = hub_factory.settings(oauth={"client_metadata_private_addresses": True,
                                               "client_metadata_ca_file": str(document_server.ca_file)})
    async with hub_factory.run(settings) as hub:
        async with await anyio.open_process([*argv, hub.mcp_url, "ts-agent", *([document_url] if described else [])],
                                            cwd=JS) as process:
            script = Script(process)
            event = await script.next()
            assert event["event"] == "authorize"
            url = urlsplit(event["url"])
            assert f"{url.scheme}://{url.netloc}{url.path}" == f"{hub.url}/authorize"
            query = parse_qs(url.query)
            assert query["code_challenge_method"] == ["S256"] and query["resource"] == [hub.mcp_url]
            redirect_uri = query["redirect_uri"][0]

            # The client "opens the browser": the operator signs in to the dashboard there and approves.
            await browser.open(event["url"])
            await browser.fill("#signin-form input[name=token]", hub.operator_token)
            await browser.click("#signin-form button[type=submit]")
            await browser.find("#consent-form")
            assert await browser.text("#consent-client") == "agenthub OAuth test client"
            assert await browser.text("#consent-redirect") == redirect_uri
            await browser.screenshot("oauth-consent")
            await browser.choose("#consent-form select[name=role]", "agent")
            await browser.fill("#consent-form input[name=agent_id]", "ts-agent")
            await browser.click("#consent-approve")

            signed_in = await script.next()
            assert signed_in["event"] == "signed_in"
            assert signed_in["state"] == signed_in["sent_state"] and signed_in["iss"] == hub.url
            assert "share_discovery" in signed_in["tools"]
            assert signed_in["own"]["is_error"] is False, signed_in["own"]
            assert signed_in["other"]["is_error"] is True
            assert "ts-agent" in signed_in["other"]["text"]
            assert (signed_in["client_id"] == document_url) is described
            first = signed_in["tokens"]
            me = (await whoami(hub, first["access_token"])).json()
            assert (me["role"], me["agent_id"]) == ("agent", "ts-agent")

            refreshed = await script.next()
            assert refreshed["event"] == "refreshed" and refreshed["result"] == "AUTHORIZED"
            second = refreshed["tokens"]
            assert second["refresh_token"] != first["refresh_token"]
            assert second["access_token"] != first["access_token"]
            assert refreshed["own"]["is_error"] is False
            assert (await script.next())["event"] == "done"
            assert await process.wait() == 0

        async with anonymous(hub) as http:
            revoked = await http.post("/revoke", data={"token": second["refresh_token"],
                                                       "client_id": signed_in["client_id"],
                                                       "token_type_hint": "refresh_token"})
            assert revoked.status_code == 200
        assert (await whoami(hub, second["access_token"])).status_code == 401
