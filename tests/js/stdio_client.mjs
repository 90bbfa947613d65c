// The official TypeScript SDK's stdio client driving `agenthub connect`, as Claude Desktop, Cursor or VS Code
// would: list the tools, subscribe to an agent's discoveries, and report the hub's notifications/resources/updated.
//
//   node stdio_client.mjs URI -- COMMAND [ARG...]
//
// Prints one JSON object a line on stdout: {"event": "tools" | "subscribed" | "updated" | "read" | "closed", ...}.
// The test shares a discovery once it reads "subscribed". Exits 1 if no notification arrives within 30 s.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { ResourceUpdatedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

const [uri, separator, command, ...args] = process.argv.slice(2);
if (!uri || separator !== "--" || !command) {
  console.error("usage: node stdio_client.mjs URI -- COMMAND [ARG...]");
  process.exit(2);
}
const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));

const transport = new StdioClientTransport({ command, args, env: { ...process.env }, stderr: "inherit" });
const client = new Client({ name: "agenthub-stdio-test", version: "1.0.0" }, { capabilities: {} });
const updated = new Promise((resolve) =>
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => resolve(n.params.uri)));
const timeout = setTimeout(() => {
  console.error("no notifications/resources/updated within 30 s");
  process.exit(1);
}, 30_000);

await client.connect(transport);
const { tools } = await client.listTools();
say("tools", { names: tools.map((t) => t.name), server: client.getServerVersion() });
await client.subscribeResource({ uri });
say("subscribed", { uri });
say("updated", { uri: await updated });
const read = await client.readResource({ uri });
say("read", { contents: read.contents.map((c) => JSON.parse(c.text)) });
clearTimeout(timeout);
await client.close();
say("closed");
