// An independent MCP client for the tests: the official TypeScript SDK over streamable HTTP.
// usage: node client.mjs MCP_URL BEARER_TOKEN TOOL ARGUMENTS_JSON
// Lists the tools, calls TOOL; when the server answers with a URL elicitation (-32042), opens
// the link with fetch (following redirects through the provider to the OAuth callback) and
// retries. Prints one JSON line: {"tools": [...], "elicited": n, "result": {...}}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token, tool, argsJson] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client(
  { name: "chain-mcp-test-client", version: "0.0.0" },
  { capabilities: { elicitation: { url: {} } } },
);
await client.connect(transport);
const tools = (await client.listTools()).tools.map((t) => t.name);
const args = JSON.parse(argsJson);
let elicited = 0;
let result;
for (let round = 0; round < 3 && result === undefined; round++) {
  try {
    result = await client.callTool({ name: tool, arguments: args });
  } catch (e) {
    if (e.code !== -32042) throw e;
    for (const el of e.data?.elicitations ?? []) {
      const page = await fetch(el.url);
      if (!page.ok) throw new Error(`consent link answered ${page.status}`);
      elicited++;
    }
  }
}
console.log(JSON.stringify({ tools, elicited, result }));
await client.close();
