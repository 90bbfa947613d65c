// An MCP client that signs in to a hub with OAuth, using only the TypeScript SDK's own client machinery
// (StreamableHTTPClientTransport with an OAuthClientProvider, and `auth` for the refresh), for tests/test_oauth.py.
//
//   node oauth_client.mjs <hub MCP URL> <agent id> [<client ID metadata document URL>]
//
// With a document URL the client names it as its client_id (when the hub says it supports them) instead of
// registering.
// Each step is one JSON line on stdout: {"event": "authorize", "url"} when the user must open the authorization
// URL (the test's browser does, and approves); the redirect comes back to this script's loopback server. Then
// {"event": "signed_in", ...}, {"event": "refreshed", ...} and {"event": "done"}; {"event": "error"} on failure.
import { randomBytes } from "node:crypto";
import http from "node:http";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { UnauthorizedError, auth } from "@modelcontextprotocol/sdk/client/auth.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [mcpUrl, agentId, metadataUrl] = process.argv.slice(2);
const say = (event, fields = {}) => process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);

/** The loopback redirect target (RFC 8252): resolves with the query of the first request to /callback. */
function listenForRedirect() {
  let deliver;
  const arrived = new Promise((resolve) => { deliver = resolve; });
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    if (url.pathname !== "/callback") {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "Content-Type": "text/html" }).end("<h1>Signed in</h1><p>You can close this tab.</p>");
    deliver(url.searchParams);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve({ server, arrived, port: server.address().port }));
  });
}

class MemoryProvider {
  constructor(redirectUrl) {
    this._redirectUrl = redirectUrl;
    this._client = undefined;
    this._tokens = undefined;
    this._verifier = undefined;
    this.sentState = randomBytes(16).toString("hex");
  }
  state() { return this.sentState; }
  get redirectUrl() { return this._redirectUrl; }
  get clientMetadata() {
    return {
      client_name: "agenthub OAuth test client",
      redirect_uris: [this._redirectUrl],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }
  clientInformation() { return this._client; }
  saveClientInformation(info) { this._client = info; }
  tokens() { return this._tokens; }
  saveTokens(tokens) { this._tokens = tokens; }
  redirectToAuthorization(url) { say("authorize", { url: url.href }); }
  saveCodeVerifier(verifier) { this._verifier = verifier; }
  codeVerifier() { return this._verifier; }
}

async function connect(provider) {
  const client = new Client({ name: "oauth-test", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider }));
  return client;
}

async function share(client, asAgent, content) {
  const result = await client.callTool({
    name: "share_discovery",
    arguments: { agent_id: asAgent, agent_role: "Analyzer", discovery_type: "anomaly", content, confidence: 0.5 },
  });
  return { is_error: Boolean(result.isError), text: result.content.map((c) => c.text || "").join(" ") };
}

async function main() {
  const { server, arrived, port } = await listenForRedirect();
  const provider = new MemoryProvider(`http://127.0.0.1:${port}/callback`);
  if (metadataUrl) provider.clientMetadataUrl = metadataUrl;
  const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider });
  const first = new Client({ name: "oauth-test", version: "1.0.0" });
  try {
    await first.connect(transport);
    throw new Error("the hub let an unauthenticated client in");
  } catch (err) {
    if (!(err instanceof UnauthorizedError)) throw err;
  }
  const query = await arrived;
  server.close();
  if (!query.get("code")) throw new Error(`the redirect carried no code: ${query}`);
  await transport.finishAuth(query.get("code"));

  const client = await connect(provider);
  const tools = (await client.listTools()).tools.map((t) => t.name);
  const own = await share(client, agentId, "signed in with OAuth");
  const other = await share(client, `${agentId}-other`, "pretending to be someone else");
  const signedIn = provider.tokens();
  say("signed_in", { client_id: provider.clientInformation().client_id, state: query.get("state"),
                     sent_state: provider.sentState,
                     iss: query.get("iss"), tokens: signedIn, tools, own, other });
  await client.close();

  // The SDK refreshes when it holds a refresh token; the hub rotates it.
  const result = await auth(provider, { serverUrl: mcpUrl });
  const refreshed = provider.tokens();
  const again = await connect(provider);
  const afterRefresh = await share(again, agentId, "still signed in after a refresh");
  await again.close();
  say("refreshed", { result, tokens: refreshed, own: afterRefresh });
  say("done");
}

main().catch((err) => {
  say("error", { name: err.name, message: String(err.message || err), stack: String(err.stack || "") });
  process.exit(1);
});
