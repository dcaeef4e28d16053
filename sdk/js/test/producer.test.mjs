// The sender against a local HTTP server playing the gateway's answers.
import assert from "node:assert/strict";
import test from "node:test";

import {
  GatewayRefused,
  InvalidEvent,
  MemoryStore,
  Producer,
  ProducerClosed,
  QueueFull,
} from "../dist/hourglass.mjs";
import { accept, sleep, startGateway, until } from "./gateway.mjs";

const TYPE = "music.SongSkipped";
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

function producer(gateway, options = {}) {
  return new Producer({ url: gateway.url, storage: new MemoryStore(), flushIntervalMs: 60_000, ...options });
}

test("batches of at most batchSize, as a CloudEvents batch with the key", async () => {
  const gw = await startGateway();
  const p = producer(gw, { apiKey: "k-web", batchSize: 3 });
  const ids = await Promise.all(Array.from({ length: 7 }, (_, n) => p.emit(TYPE, { n })));
  await p.flush();
  assert.ok(gw.requests.every((r) => r.events.length <= 3), gw.requests.map((r) => r.events.length).join());
  assert.deepEqual(gw.events().map((e) => e.id), ids);
  for (const r of gw.requests) {
    assert.equal(r.method, "POST");
    assert.equal(r.url, "/v1/events");
    assert.equal(r.headers["content-type"], "application/cloudevents-batch+json");
    assert.equal(r.headers["x-api-key"], "k-web");
  }
  const [first] = gw.events();
  assert.deepEqual(Object.keys(first), ["specversion", "id", "source", "type", "time", "data"]);
  assert.equal(first.specversion, "1.0");
  assert.equal(first.source, "browser");
  assert.equal(first.type, TYPE);
  assert.match(first.time, ISO);
  assert.deepEqual(first.data, { n: 0 });
  assert.equal((await p.queued()).count, 0);
  await p.close();
  await gw.close();
});

test("emit options: id, time, source", async () => {
  const gw = await startGateway();
  const p = producer(gw, { source: "https://shop.example" });
  const id = await p.emit(TYPE, { n: 1 }, { id: "order-42", time: new Date(Date.UTC(2026, 10, 26, 12)) });
  assert.equal(id, "order-42");
  await p.flush();
  const [event] = gw.events();
  assert.equal(event.id, "order-42");
  assert.equal(event.source, "https://shop.example");
  assert.equal(event.time, "2026-11-26T12:00:00.000Z");
  await p.close();
  await gw.close();
});

test("a partial batch goes after flushIntervalMs without flush()", async () => {
  const gw = await startGateway();
  const p = producer(gw, { flushIntervalMs: 50 });
  const start = Date.now();
  await p.emit(TYPE, { n: 1 });
  await until(() => gw.requests.length === 1);
  assert.ok(Date.now() - start >= 45);
  await p.close();
  await gw.close();
});

test("200 with rejections: every event leaves the queue, each rejection is reported", async () => {
  const gw = await startGateway((r) => ({
    status: 200,
    body: {
      accepted: r.events.length - 1,
      rejected: [{ index: 1, id: r.events[1].id, reason: "data.position_ms: expected int" }],
    },
  }));
  const rejected = [];
  const p = producer(gw, { onRejected: (event, reason) => rejected.push([event.id, reason]) });
  const ids = await Promise.all([0, 1, 2].map((n) => p.emit(TYPE, { n })));
  await p.flush();
  assert.deepEqual(rejected, [[ids[1], "data.position_ms: expected int"]]);
  assert.equal((await p.queued()).count, 0);
  await p.flush(); // nothing left: no request
  assert.equal(gw.requests.length, 1);
  await p.close();
  await gw.close();
});

test("413: the batch is split; an event too large alone is dropped through onDropped", async () => {
  const gw = await startGateway((r) =>
    r.events.some((e) => e.data.big)
      ? { status: 413, body: { error: "event over max_event_bytes (262144)" } }
      : accept(r),
  );
  const dropped = [];
  const p = producer(gw, { onDropped: (event, reason) => dropped.push([event.id, reason]) });
  const ids = await Promise.all([0, 1, 2, 3, 4].map((n) => p.emit(TYPE, { n, big: n === 2 })));
  await p.flush();
  assert.deepEqual(dropped, [[ids[2], "413: event over max_event_bytes (262144)"]]);
  const delivered = gw.requests.filter((r) => r.events.every((e) => !e.data.big)).flatMap((r) => r.events);
  assert.deepEqual(delivered.map((e) => e.id).sort(), [ids[0], ids[1], ids[3], ids[4]].sort());
  assert.deepEqual(gw.requests.map((r) => r.events.length), [5, 2, 3, 1, 2]);
  assert.equal((await p.queued()).count, 0);
  await p.close();
  await gw.close();
});

test("429: Retry-After is honoured", async () => {
  const gw = await startGateway((r, n) =>
    n === 1 ? { status: 429, body: { error: "too many events in flight" }, headers: { "retry-after": "1" } } : accept(r),
  );
  const p = producer(gw, { backoffBaseMs: 20 });
  const id = await p.emit(TYPE, { n: 1 });
  await p.flush();
  assert.equal(gw.requests.length, 2);
  const waited = gw.requests[1].at - gw.requests[0].at;
  assert.ok(waited >= 990 && waited < 2000, `waited ${waited} ms`);
  assert.deepEqual(gw.events().map((e) => e.id), [id, id]);
  await p.close();
  await gw.close();
});

test("503 and network errors: exponential backoff, then delivery of the same events", async () => {
  const gw = await startGateway((r, n) =>
    n === 1 ? "destroy" : n <= 3 ? { status: 503, body: { error: "the bus is unreachable" } } : accept(r),
  );
  const errors = [];
  const p = producer(gw, { backoffBaseMs: 10, backoffCapMs: 100, onError: (e) => errors.push(e) });
  const ids = await Promise.all([0, 1].map((n) => p.emit(TYPE, { n })));
  await p.flush();
  assert.equal(gw.requests.length, 4);
  for (const r of gw.requests) assert.deepEqual(r.events.map((e) => e.id), ids);
  assert.deepEqual(errors, []); // retryable: not an error
  await p.close();
  await gw.close();
});

test("401/403/400 of the whole body: flush rejects, onError, the events stay queued", async () => {
  const gw = await startGateway(() => ({ status: 401, body: { error: "missing or unknown API key" } }));
  const errors = [];
  const p = producer(gw, { backoffCapMs: 60_000, onError: (e) => errors.push(e) });
  await p.emit(TYPE, { n: 1 });
  await assert.rejects(p.flush(), (e) => e instanceof GatewayRefused && e.status === 401);
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof GatewayRefused);
  assert.match(errors[0].message, /missing or unknown API key/);
  assert.equal((await p.queued()).count, 1);
  gw.handler = accept; // the key was fixed: flush tries at once, not after the slow retry
  await p.flush();
  assert.equal((await p.queued()).count, 0);
  assert.equal(gw.requests.length, 2);
  await p.close();
  await gw.close();
});

test("the queue bound: QueueFull and onDropped, never a silent drop", async () => {
  const gw = await startGateway(() => ({ status: 503, body: { error: "down" } }));
  const dropped = [];
  const onDropped = (event, reason) => dropped.push([event.data.n, reason]);
  const p = producer(gw, { maxQueued: 3, onDropped });
  for (const n of [0, 1, 2]) await p.emit(TYPE, { n });
  await assert.rejects(p.emit(TYPE, { n: 3 }), (e) => e instanceof QueueFull && e.name === "QueueFull");
  assert.equal(dropped.length, 1);
  assert.equal(dropped[0][0], 3);
  assert.match(dropped[0][1], /maxQueued 3/);
  await p.close();

  const q = producer(gw, { maxQueuedBytes: 400, onDropped });
  await q.emit(TYPE, { s: "x".repeat(100) });
  await assert.rejects(q.emit(TYPE, { n: 4, s: "x".repeat(200) }), QueueFull);
  assert.match(dropped[1][1], /maxQueuedBytes 400/);
  assert.equal((await q.queued()).count, 1);
  await q.close();
  await gw.close();
});

test("one request in flight at a time", async () => {
  const gw = await startGateway(async (r) => {
    await sleep(20);
    return accept(r);
  });
  const p = producer(gw, { batchSize: 2, flushIntervalMs: 0 });
  const emits = [];
  for (let n = 0; n < 10; n++) emits.push(p.emit(TYPE, { n }));
  await Promise.all(emits);
  await p.flush();
  assert.equal(gw.events().length, 10);
  assert.equal(gw.maxInflight, 1);
  await p.close();
  await gw.close();
});

test("close(): a last attempt, then emit and flush refuse", async () => {
  const gw = await startGateway();
  const p = producer(gw);
  await p.emit(TYPE, { n: 1 });
  const pending = p.emit(TYPE, { n: 2 }); // started before close: still queued and sent
  await p.close();
  await pending;
  assert.equal(gw.events().length, 2);
  await assert.rejects(p.emit(TYPE, { n: 3 }), ProducerClosed);
  await assert.rejects(p.flush(), ProducerClosed);
  await p.close(); // twice is fine
  await gw.close();
});

test("events the gateway could not decode are refused at emit", async () => {
  const gw = await startGateway();
  const p = producer(gw);
  await assert.rejects(p.emit("", {}), InvalidEvent);
  await assert.rejects(p.emit(TYPE, { s: "a\ud800b" }), InvalidEvent); // lone surrogate
  await assert.rejects(p.emit(TYPE, { n: 1n }), InvalidEvent);
  await assert.rejects(p.emit(TYPE, {}, { time: new Date(NaN) }), InvalidEvent);
  await p.emit(TYPE, { s: "\\ud800 is text, 🎵 a pair" });
  await p.flush();
  assert.equal(gw.events()[0].data.s, "\\ud800 is text, 🎵 a pair");
  await p.close();
  await gw.close();
});
