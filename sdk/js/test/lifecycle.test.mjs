// Page events, played by stand-ins for the page's globals (this file runs in a
// process of its own under node --test): online/offline, pagehide and
// visibilitychange, Web Locks.
import assert from "node:assert/strict";
import test from "node:test";

import { KEEPALIVE_BYTES, LocalStorageStore, MemoryStore, Producer } from "../dist/hourglass.mjs";
import { MapStorage, accept, sleep, startGateway, until } from "./gateway.mjs";

const TYPE = "music.SongSkipped";
const page = new EventTarget();
globalThis.addEventListener = page.addEventListener.bind(page);
globalThis.removeEventListener = page.removeEventListener.bind(page);
const document = Object.assign(new EventTarget(), { visibilityState: "visible" });
globalThis.document = document;
Object.defineProperty(globalThis, "navigator", { value: { onLine: true }, writable: true, configurable: true });

test("offline: nothing is tried; `online` resumes at once", async () => {
  const gw = await startGateway();
  navigator.onLine = false;
  const p = new Producer({ url: gw.url, storage: new MemoryStore(), flushIntervalMs: 10 });
  await p.emit(TYPE, { n: 1 });
  let flushed = false;
  const flush = p.flush().then(() => (flushed = true));
  await sleep(150);
  assert.equal(gw.requests.length, 0);
  assert.equal(flushed, false);
  navigator.onLine = true;
  page.dispatchEvent(new Event("online"));
  await flush;
  assert.equal(gw.requests.length, 1);
  await p.close();
  await gw.close();
});

test("going offline during a backoff: `online` retries without waiting it out", async () => {
  const gw = await startGateway((r, n) => (n === 1 ? "destroy" : accept(r)));
  const p = new Producer({ url: gw.url, storage: new MemoryStore(), backoffBaseMs: 20_000, backoffCapMs: 20_000 });
  await p.emit(TYPE, { n: 1 });
  const flush = p.flush();
  await until(() => gw.requests.length === 1);
  navigator.onLine = false;
  await sleep(20);
  navigator.onLine = true;
  page.dispatchEvent(new Event("online"));
  await flush;
  assert.equal(gw.requests.length, 2);
  await p.close();
  await gw.close();
});

function spy(calls) {
  return (url, init) => {
    calls.push(init);
    return fetch(url, init);
  };
}

test("pagehide: what is queued goes in one keepalive request, within the budget", async () => {
  const gw = await startGateway();
  const calls = [];
  const p = new Producer({ url: gw.url, apiKey: "k", storage: new MemoryStore(), flushIntervalMs: 60_000, fetch: spy(calls) });
  const big = "x".repeat(20 * 1024);
  const ids = [];
  for (let n = 0; n < 4; n++) ids.push(await p.emit(TYPE, { n, big }));
  page.dispatchEvent(new Event("pagehide"));
  assert.equal(calls.length, 1); // sent within the event's handler
  assert.equal(calls[0].keepalive, true);
  assert.equal(calls[0].credentials, "omit");
  assert.equal(calls[0].mode, "cors");
  assert.ok(calls[0].body.length <= KEEPALIVE_BYTES, `${calls[0].body.length}`);
  page.dispatchEvent(new Event("pagehide")); // the same events are not sent twice meanwhile
  await until(() => gw.requests.length === 1);
  assert.deepEqual(gw.requests[0].events.map((e) => e.id), ids.slice(0, 2));
  assert.equal(gw.requests[0].headers["x-api-key"], "k");
  // The page lived to read the 200: those events left the queue.
  await until(async () => (await p.queued()).count === 2);
  await p.close();
  await gw.close();
});

test("pagehide right after emit (a click on a link): the event not yet stored goes too", async () => {
  const gw = await startGateway();
  const calls = [];
  const p = new Producer({ url: gw.url, storage: new MemoryStore(), flushIntervalMs: 60_000, fetch: spy(calls) });
  await p.emit(TYPE, { n: 0 });
  const late = p.emit(TYPE, { n: 1 }); // its append has not committed yet
  page.dispatchEvent(new Event("pagehide"));
  assert.equal(calls.length, 1);
  assert.deepEqual(JSON.parse(calls[0].body).map((e) => e.data.n), [0, 1]);
  const id = await late;
  await until(() => gw.requests.length === 1);
  assert.deepEqual(gw.requests[0].events.map((e) => e.id).slice(1), [id]);
  // The page lived: the stored copy of the late event is still queued and goes again
  // (the loader's dedup drops it), the first left with the answer.
  await until(async () => (await p.queued()).count === 1);
  await p.flush();
  assert.deepEqual(gw.requests[1].events.map((e) => e.id), [id]);
  await p.close();
  await gw.close();
});

test("visibilitychange to hidden sends too; visible does not", async () => {
  const gw = await startGateway();
  const calls = [];
  const p = new Producer({ url: gw.url, storage: new MemoryStore(), flushIntervalMs: 60_000, fetch: spy(calls) });
  await p.emit(TYPE, { n: 1 });
  document.visibilityState = "visible";
  document.dispatchEvent(new Event("visibilitychange"));
  assert.equal(calls.length, 0);
  document.visibilityState = "hidden";
  document.dispatchEvent(new Event("visibilitychange"));
  assert.equal(calls.length, 1);
  assert.equal(calls[0].keepalive, true);
  await until(async () => (await p.queued()).count === 0);
  document.visibilityState = "visible";
  await p.close();
  assert.equal(calls.length, 1, "close sends nothing: the queue is empty");
  await gw.close();
});

test("Web Locks: tabs sharing a queue take turns, so no event is sent twice", async () => {
  let held = Promise.resolve();
  const names = new Set();
  navigator.locks = {
    request(name, callback) {
      names.add(name);
      const run = held.then(() => callback());
      held = run.catch(() => {});
      return run;
    },
  };
  try {
    const gw = await startGateway(async (r) => {
      await sleep(5);
      return accept(r);
    });
    const storage = new MapStorage(); // one origin's localStorage, two tabs
    const tab = () =>
      new Producer({ url: gw.url, storage: new LocalStorageStore(storage, "shared"), batchSize: 5, flushIntervalMs: 0 });
    const [a, b] = [tab(), tab()];
    const emits = [];
    for (let n = 0; n < 40; n++) emits.push((n % 2 ? a : b).emit(TYPE, { n }));
    await Promise.all(emits);
    await Promise.all([a.flush(), b.flush()]);
    const ids = gw.events().map((e) => e.id);
    assert.equal(ids.length, 40);
    assert.equal(new Set(ids).size, 40);
    assert.deepEqual([...names], ["hourglass:shared"]);
    assert.equal(gw.maxInflight, 1);
    await a.close();
    await b.close();
    await gw.close();
  } finally {
    delete navigator.locks;
  }
});
