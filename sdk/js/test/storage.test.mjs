// The queue survives the page: a new Producer on the same storage sends what an
// earlier one left, with the same ids.
import assert from "node:assert/strict";
import test from "node:test";

import { IDBFactory } from "fake-indexeddb";

import {
  IndexedDBStore,
  LocalStorageStore,
  MemoryStore,
  Producer,
  QueueFull,
} from "../dist/hourglass.mjs";
import { MapStorage, startGateway } from "./gateway.mjs";

const TYPE = "music.SongSkipped";
const down = () => ({ status: 503, body: { error: "the bus is unreachable" }, headers: { "retry-after": "1" } });

const kinds = {
  indexeddb: () => {
    const factory = new IDBFactory();
    return () => new IndexedDBStore(factory, "test");
  },
  localstorage: () => {
    const storage = new MapStorage();
    return () => new LocalStorageStore(storage, "test");
  },
  memory: () => {
    const store = new MemoryStore();
    return () => store;
  },
};

for (const [kind, backing] of Object.entries(kinds)) {
  test(`${kind}: events left by a closed producer are sent by the next one`, async () => {
    const makeStore = backing();
    const gwDown = await startGateway(down);
    const first = new Producer({ url: gwDown.url, storage: makeStore(), flushIntervalMs: 60_000 });
    const ids = [];
    for (let n = 0; n < 5; n++) ids.push(await first.emit(TYPE, { n }));
    assert.equal((await first.queued()).count, 5);
    await first.close(); // the last attempt gets a 503: the events stay
    assert.ok(gwDown.requests.length >= 1);
    await gwDown.close();

    const gw = await startGateway();
    const second = new Producer({ url: gw.url, storage: makeStore(), flushIntervalMs: 60_000 });
    await second.flush();
    assert.deepEqual(gw.events().map((e) => e.id), ids);
    assert.deepEqual(gw.events().map((e) => e.data.n), [0, 1, 2, 3, 4]);
    assert.equal((await second.queued()).count, 0);
    await second.close();

    const third = new Producer({ url: gw.url, storage: makeStore(), flushIntervalMs: 60_000 });
    assert.deepEqual(await third.queued(), { count: 0, bytes: 0 });
    await third.close();
    await gw.close();
  });

  test(`${kind}: the bounds hold across producers on one queue`, async () => {
    const makeStore = backing();
    const gw = await startGateway(down);
    const options = { url: gw.url, flushIntervalMs: 60_000, maxQueued: 4, onDropped: () => {} };
    const a = new Producer({ ...options, storage: makeStore() });
    const b = new Producer({ ...options, storage: makeStore() });
    for (let n = 0; n < 4; n++) await (n % 2 ? a : b).emit(TYPE, { n });
    await assert.rejects(a.emit(TYPE, { n: 4 }), QueueFull);
    await assert.rejects(b.emit(TYPE, { n: 4 }), QueueFull);
    assert.equal((await a.queued()).count, 4);
    await a.close();
    await b.close();
    await gw.close();
  });
}

test("indexeddb: byte totals are exact after removals and a reopen", async () => {
  const factory = new IDBFactory();
  const store = new IndexedDBStore(factory, "totals");
  await store.open();
  const limits = { maxCount: 100, maxBytes: 1000 };
  const keys = [];
  for (const bytes of [10, 20, 30]) keys.push(await store.append(`{"b":${bytes}}`, bytes, limits));
  assert.deepEqual(await store.size(), { count: 3, bytes: 60 });
  assert.deepEqual(await store.remove([keys[1], keys[1], 999]), [keys[1]]);
  assert.deepEqual(await store.size(), { count: 2, bytes: 40 });
  assert.deepEqual((await store.peek(10, 1000)).map((e) => e.key), [keys[0], keys[2]]);
  assert.equal(await store.hasUpTo(keys[0]), true);
  await store.remove([keys[0]]);
  assert.equal(await store.hasUpTo(keys[1]), false);
  assert.equal(await store.lastKey(), keys[2]);
  store.close();
  const again = new IndexedDBStore(factory, "totals");
  await again.open();
  assert.deepEqual(await again.size(), { count: 1, bytes: 30 });
  const next = await again.append("{}", 2, limits);
  assert.ok(next > keys[2], "keys are never reused");
  again.close();
});

test("without IndexedDB or localStorage the default falls back to memory, with a warning", async (t) => {
  const warn = t.mock.method(console, "warn", () => {});
  const gw = await startGateway();
  const p = new Producer({ url: gw.url, flushIntervalMs: 60_000 });
  await p.emit(TYPE, { n: 1 });
  await p.flush();
  assert.equal(gw.events().length, 1);
  assert.equal(warn.mock.callCount(), 1);
  assert.match(warn.mock.calls[0].arguments[0], /no persistent storage/);
  await p.close();
  await gw.close();
});
