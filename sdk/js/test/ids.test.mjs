import assert from "node:assert/strict";
import test from "node:test";

import { uuidv7 } from "../dist/hourglass.mjs";

const FORMAT = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

test("UUIDv7: RFC 9562 layout, version 7, variant 0b10", () => {
  for (let i = 0; i < 1000; i++) assert.match(uuidv7(), FORMAT);
});

test("UUIDv7: the first 48 bits are the Unix time in ms", () => {
  const before = Date.now();
  const id = uuidv7();
  const after = Date.now();
  const ms = parseInt(id.replace(/-/g, "").slice(0, 12), 16);
  assert.ok(ms >= before && ms <= after + 1, `${ms} not in [${before}, ${after}]`);
});

test("UUIDv7: ids of one page rise strictly, also within one ms", () => {
  const ids = Array.from({ length: 20_000 }, () => uuidv7());
  for (let i = 1; i < ids.length; i++) assert.ok(ids[i - 1] < ids[i], `${ids[i - 1]} >= ${ids[i]}`);
  assert.equal(new Set(ids).size, ids.length);
});
