// A stand-in for the Hourglass gateway: a real HTTP server on a free port that
// records each request and answers as the test's handler says.
import http from "node:http";

export const accept = (request) => ({
  status: 200,
  body: { accepted: request.events.length, rejected: [] },
});

export async function startGateway(handler = accept) {
  const gateway = {
    requests: [],
    handler,
    inflight: 0,
    maxInflight: 0,
    /** Every event of every request, in arrival order. */
    events() {
      return this.requests.flatMap((r) => r.events);
    },
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  const server = http.createServer(async (req, res) => {
    gateway.inflight += 1;
    gateway.maxInflight = Math.max(gateway.maxInflight, gateway.inflight);
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks).toString("utf8");
    let events = [];
    try {
      events = JSON.parse(body);
    } catch {}
    const request = { method: req.method, url: req.url, headers: req.headers, body, events, at: Date.now() };
    gateway.requests.push(request);
    const answer = await gateway.handler(request, gateway.requests.length);
    gateway.inflight -= 1;
    if (answer === "destroy") {
      req.socket.destroy();
      return;
    }
    res.writeHead(answer.status, { "content-type": "application/json", ...(answer.headers ?? {}) });
    res.end(JSON.stringify(answer.body ?? {}));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  gateway.url = `http://127.0.0.1:${server.address().port}`;
  return gateway;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function until(predicate, timeoutMs = 3000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await sleep(5);
  }
}

/** A Storage (the localStorage interface) in a Map. */
export class MapStorage {
  map = new Map();
  get length() {
    return this.map.size;
  }
  key(i) {
    return [...this.map.keys()][i] ?? null;
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
  clear() {
    this.map.clear();
  }
}
