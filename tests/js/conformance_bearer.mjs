// Preloaded into the MCP conformance suite (`node --import ./conformance_bearer.mjs .../conformance server ...`), for
// tests/test_conformance.py: the suite has no option for request headers, and a hub as shipped answers /mcp only
// with a bearer token. Every request the suite sends to AGENTHUB_URL gets `Authorization: Bearer $AGENTHUB_TOKEN`
// added, whichever of its three HTTP clients sends it (fetch and undici's request share undici's global dispatcher;
// the header-validation scenarios use node:http to send raw header values); nothing else is changed.

import http from "node:http";
import { getGlobalDispatcher, setGlobalDispatcher } from "undici";

const hub = new URL(process.env.AGENTHUB_URL);
const authorization = `Bearer ${process.env.AGENTHUB_TOKEN}`;

// undici takes headers as an object, a flat [name, value, ...] array, or an iterable of [name, value] pairs.
function withAuthorization(headers) {
  if (headers == null) return { authorization };
  if (Array.isArray(headers)) {
    return Array.isArray(headers[0]) ? [...headers, ["authorization", authorization]]
      : [...headers, "authorization", authorization];
  }
  if (typeof headers[Symbol.iterator] === "function") return [...headers, ["authorization", authorization]];
  return { ...headers, authorization };
}

setGlobalDispatcher(getGlobalDispatcher().compose((dispatch) => (options, handler) =>
  dispatch(new URL(options.origin).origin === hub.origin
    ? { ...options, headers: withAuthorization(options.headers) } : options, handler)));

const request = http.request;
http.request = (options, ...rest) => {
  const toHub = typeof options === "object" && !(options instanceof URL) && options.hostname === hub.hostname
    && String(options.port) === hub.port;
  return request(toHub ? { ...options, headers: { ...options.headers, authorization } } : options, ...rest);
};
