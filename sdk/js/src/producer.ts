/**
 * The browser producer: `emit` puts a CloudEvent in a persistent queue
 * (IndexedDB, else localStorage, else memory) and resolves once it is there; a
 * sender sends the queue's oldest events in batches and takes them out of the
 * queue only after the gateway answered for them (a 200, which accepted or
 * rejected each one; or a 413 for an event alone, which the gateway cannot take).
 *
 * Order of one send: peek the oldest batch → POST it → on 200 remove its events
 * → report the rejections.  A page closed, crashed or offline at any step leaves
 * the events queued; the next page load of the origin sends them again with the
 * same (source, id), and the loader's dedup keeps one copy.  So delivery from
 * the browser is at least once, and the lake holds each event once.
 *
 * One request of the sender is in flight at a time, per Producer; with Web Locks
 * also per queue, across the tabs sharing it.  The exception is the page-hide
 * send (`fetch` with `keepalive`), which cannot wait.
 */

import { GatewayRefused, HourglassError, InvalidEvent, ProducerClosed, QueueFull } from "./errors";
import { Backoff, encodeBatch, post, type Fetch, type Rejection } from "./http";
import { IndexedDBStore } from "./idbstore";
import { uuidv7 } from "./ids";
import { LocalStorageStore } from "./localstore";
import { MemoryStore, type Key, type QueueStore, type StoredEvent } from "./store";

export type StorageKind = "indexeddb" | "localstorage" | "memory";

export interface CloudEvent {
  specversion: "1.0";
  id: string;
  source: string;
  type: string;
  time?: string;
  data?: unknown;
}

export interface ProducerOptions {
  /** The gateway, e.g. "https://events.example.com" (POSTs go to `${url}/v1/events`). */
  url: string;
  /** A publishable key (sent as `X-Api-Key`): give it only the types the page sends. */
  apiKey?: string;
  /** The events' `source`; default `location.origin`, or "browser". */
  source?: string;
  /** Events per request (default 100; at most the gateway's 10,000). */
  batchSize?: number;
  /** How long an event may wait for a batch to fill (default 1,000 ms). */
  flushIntervalMs?: number;
  /** Bound of the queue in events (default 10,000). */
  maxQueued?: number;
  /** Bound of the queue in bytes of JSON (default 5 MiB). */
  maxQueuedBytes?: number;
  /** Bytes per request (default 1 MiB; the gateway takes 8 MiB). */
  maxBatchBytes?: number;
  /** A request not answered within this is abandoned and retried (default 10,000 ms). */
  requestTimeoutMs?: number;
  /** Backoff after 429/503/network errors: full jitter below min(cap, base·2^n). */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** Where the queue lives (default "indexeddb", falling back to "localstorage", then "memory"). */
  storage?: StorageKind | QueueStore;
  /** An event that will never reach the gateway: refused by a full queue, or over the gateway's size limit. */
  onDropped?: (event: CloudEvent, reason: string) => void;
  /** An event the gateway rejected (kept in its failed-events stream, with the reason). */
  onRejected?: (event: CloudEvent, reason: string) => void;
  /** A refusal of a whole batch (401, 403, 400, …: the events stay queued), or a storage failure. */
  onError?: (error: Error) => void;
  /** The fetch to use (default: the page's). */
  fetch?: Fetch;
}

export interface EmitOptions {
  id?: string;
  time?: Date | string;
}

/** What fits in the page-hide `keepalive` requests: browsers allow 64 KiB in flight. */
export const KEEPALIVE_BYTES = 60 * 1024;
const OPEN_TIMEOUT_MS = 3000;
const MAX_EVENTS_PER_REQUEST = 10_000; // the gateway's max_events_per_request

type Sent =
  | { kind: "empty" }
  | { kind: "sent" }
  | { kind: "retry"; retryAfterMs: number | null }
  | { kind: "refused"; status: number; reason: string };

interface Waiter {
  target: Key;
  resolve: () => void;
  reject: (error: Error) => void;
}

// The page's globals, read when used: absent ones (Node, workers) are skipped.
const g = globalThis as any;

const LONE_SURROGATE = /(?:^|[^\\])(?:\\\\)*\\ud[89a-f]/;
const utf8 = new TextEncoder();

export class Producer {
  private readonly url: string;
  private readonly apiKey: string | undefined;
  private readonly source: string;
  private readonly batchSize: number;
  private readonly flushIntervalMs: number;
  private readonly limits: { maxCount: number; maxBytes: number };
  private readonly maxBatchBytes: number;
  private readonly timeoutMs: number;
  private readonly fetchFn: Fetch;
  private readonly options: ProducerOptions;
  private readonly backoff: Backoff;
  private readonly ready: Promise<QueueStore>;
  private store: QueueStore | null = null;

  private closed = false;
  private closing: Promise<void> | null = null;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private timerAt = 0;
  private notBefore = 0; // no send before this (backoff, Retry-After)
  private refused = false; // the last answer was a refusal someone must fix
  private running: Promise<void> | null = null;
  private rerun = false;
  private unsent = 0; // appended since the last peek: a full batch is sent at once
  private readonly emits = new Set<Promise<unknown>>();
  private readonly waiters: Waiter[] = [];
  private readonly inFlight = new Set<Key>();
  // The oldest events this page knows of, for the page-hide send, which cannot
  // wait for storage: at most KEEPALIVE_BYTES of them.
  private readonly mirror = new Map<Key, StoredEvent>();
  private mirrorBytes = 0;
  private readonly beaconed = new Set<Key>();
  private readonly appending = new Set<StoredEvent>(); // emitted, not yet in the store
  private keepaliveBytes = 0;

  constructor(options: ProducerOptions) {
    if (!options || typeof options.url !== "string" || !options.url) {
      throw new TypeError("Producer needs { url } of the gateway");
    }
    if (!g.crypto?.getRandomValues) throw new TypeError("Producer needs crypto.getRandomValues");
    this.options = options;
    this.url = options.url.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    const origin = g.location?.origin;
    this.source = options.source ?? (origin && origin !== "null" ? origin : "browser");
    this.batchSize = clamp(options.batchSize ?? 100, 1, MAX_EVENTS_PER_REQUEST);
    this.flushIntervalMs = Math.max(0, options.flushIntervalMs ?? 1000);
    this.limits = {
      maxCount: Math.max(1, options.maxQueued ?? 10_000),
      maxBytes: Math.max(1, options.maxQueuedBytes ?? 5 * 1024 * 1024),
    };
    this.maxBatchBytes = Math.max(1024, options.maxBatchBytes ?? 1024 * 1024);
    this.timeoutMs = options.requestTimeoutMs ?? 10_000;
    this.backoff = new Backoff(options.backoffBaseMs ?? 500, options.backoffCapMs ?? 30_000);
    const fetchFn = options.fetch ?? g.fetch;
    if (typeof fetchFn !== "function") throw new TypeError("Producer needs fetch");
    this.fetchFn = options.fetch ?? ((input, init) => g.fetch(input, init));
    // Emits wait for `ready`, so the size seen here is what earlier page loads
    // (or other tabs) left: sent at once, while this page's events wait for a batch.
    this.ready = this.openStore(options.storage ?? "indexeddb", this.url).then(async (store) => {
      this.store = store;
      if ((await store.size()).count) this.wake(0);
      return store;
    });
    this.ready.catch((error: Error) => this.error(error));
    g.addEventListener?.("online", this.onOnline);
    g.addEventListener?.("pagehide", this.onPageHide);
    g.document?.addEventListener?.("visibilitychange", this.onVisibilityChange);
  }

  // ------------------------------------------------------------------ API

  /** Queue one event; resolves with its id once it is in the queue. */
  emit(type: string, data: unknown, options: EmitOptions = {}): Promise<string> {
    const done = this.append(type, data, options);
    this.emits.add(done);
    const untrack = () => this.emits.delete(done);
    done.then(untrack, untrack);
    return done;
  }

  /** Resolves once every event queued at the call was answered by the gateway. */
  async flush(): Promise<void> {
    if (this.closed) throw new ProducerClosed();
    await Promise.allSettled([...this.emits]);
    const store = await this.ready;
    const target = await store.lastKey();
    if (target === undefined) return;
    await new Promise<void>((resolve, reject) => {
      this.waiters.push({ target, resolve, reject });
      if (this.refused) this.retryNow(); // the caller may have fixed the key: try once now
      this.wake(0);
    });
  }

  /** A last flush attempt, then stop; what was not acknowledged stays queued for the next page load. */
  close(): Promise<void> {
    if (!this.closing) this.closing = this.shutdown();
    return this.closing;
  }

  /** The queue's size (every tab's events, for a shared queue). */
  async queued(): Promise<{ count: number; bytes: number }> {
    return (await this.ready).size();
  }

  // ----------------------------------------------------------------- emit

  private async append(type: string, data: unknown, options: EmitOptions): Promise<string> {
    if (this.closed) throw new ProducerClosed();
    const event = this.event(type, data, options);
    const body = encodeEvent(event);
    const bytes = utf8.encode(body).length;
    // Until the append commits, a page-hide send takes the event from here: a
    // click on a link that emits and navigates must not lose it.
    const pending = { key: -1, body, bytes };
    this.appending.add(pending);
    let key: Key;
    try {
      const store = await this.ready; // close() waits for the emits already started
      key = await store.append(body, bytes, this.limits);
    } catch (error) {
      if (error instanceof QueueFull) this.dropped(event, error.message);
      throw error;
    } finally {
      this.appending.delete(pending);
    }
    this.remember({ key, body, bytes });
    this.unsent += 1;
    this.wake(this.unsent >= this.batchSize ? 0 : this.flushIntervalMs);
    return event.id;
  }

  private event(type: string, data: unknown, options: EmitOptions): CloudEvent {
    if (typeof type !== "string" || !type) throw new InvalidEvent("type must be a non-empty string");
    const id = options.id ?? uuidv7();
    if (typeof id !== "string" || !id) throw new InvalidEvent("id must be a non-empty string");
    let time: string;
    if (options.time === undefined) time = new Date().toISOString();
    else if (options.time instanceof Date) {
      if (Number.isNaN(options.time.getTime())) throw new InvalidEvent("time is an invalid Date");
      time = options.time.toISOString();
    } else time = String(options.time);
    return { specversion: "1.0", id, source: this.source, type, time, data };
  }

  // --------------------------------------------------------------- sender

  /** Have the sender run in `delay` ms (or when the backoff allows), unless it will sooner. */
  private wake(delay: number): void {
    if (this.closed) return;
    const at = Math.max(Date.now() + delay, this.notBefore);
    if (this.timer !== undefined && this.timerAt <= at) return;
    clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.run();
    }, at - Date.now());
  }

  private retryNow(): void {
    this.notBefore = 0;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private run(): void {
    if (this.running) {
      this.rerun = true;
      return;
    }
    this.rerun = false;
    this.running = this.pass()
      .catch((error: Error) => {
        this.error(error);
        this.notBefore = Date.now() + this.backoff.next(null);
        return "waiting" as const;
      })
      .then((state) => {
        this.running = null;
        if (state === "waiting" || this.rerun) this.wake(0);
      });
  }

  /** Send batches until the queue is empty or the gateway does not take one. */
  private async pass(): Promise<"idle" | "waiting" | "offline"> {
    const store = await this.ready;
    this.unsent = 0;
    let state: "idle" | "waiting" | "offline" = "idle";
    for (;;) {
      if (offline()) {
        state = "offline"; // `online` wakes the sender
        break;
      }
      const sent = await this.locked(store, () => this.sendOldest(store));
      if (sent.kind === "empty") break;
      if (sent.kind === "sent") {
        this.backoff.reset();
        this.refused = false;
        await this.settle(store);
        continue;
      }
      if (sent.kind === "retry") {
        if (offline()) {
          state = "offline";
          break;
        }
        this.notBefore = Date.now() + this.backoff.next(sent.retryAfterMs);
      } else {
        const refusal = new GatewayRefused(sent.status, sent.reason);
        this.refused = true;
        this.notBefore = Date.now() + this.backoff.slow();
        this.error(refusal);
        for (const waiter of this.waiters.splice(0)) waiter.reject(refusal);
      }
      state = "waiting";
      break;
    }
    await this.settle(store);
    return state;
  }

  private locked<T>(store: QueueStore, send: () => Promise<T>): Promise<T> {
    const locks = g.navigator?.locks;
    if (!store.lockName || typeof locks?.request !== "function") return send();
    return locks.request(store.lockName, send);
  }

  private async sendOldest(store: QueueStore): Promise<Sent> {
    const batch = await store.peek(this.batchSize, this.maxBatchBytes);
    if (!batch.length) return { kind: "empty" };
    for (const event of batch) this.remember(event);
    return this.deliver(store, batch);
  }

  private async deliver(store: QueueStore, batch: StoredEvent[]): Promise<Sent> {
    for (const event of batch) this.inFlight.add(event.key);
    const outcome = await post(this.fetchFn, this.url, encodeBatch(batch.map((e) => e.body)), {
      apiKey: this.apiKey,
      keepalive: false,
      timeoutMs: this.timeoutMs,
    });
    this.inFlight.clear();
    switch (outcome.kind) {
      case "done":
        await this.acknowledged(store, batch, outcome.rejected);
        return { kind: "sent" };
      case "too_large": {
        if (batch.length > 1) {
          const half = batch.length >> 1;
          const first = await this.deliver(store, batch.slice(0, half));
          return first.kind === "sent" ? this.deliver(store, batch.slice(half)) : first;
        }
        const removed = await store.remove([batch[0].key]);
        this.forget(batch);
        if (removed.length) this.dropped(decode(batch[0].body), `413: ${outcome.reason}`);
        return { kind: "sent" };
      }
      case "refused":
        return { kind: "refused", status: outcome.status, reason: outcome.reason };
      default:
        return { kind: "retry", retryAfterMs: outcome.retryAfterMs };
    }
  }

  /** The gateway answered 200 for `batch`: out of the queue, then report its rejections. */
  private async acknowledged(
    store: QueueStore,
    batch: StoredEvent[],
    rejected: Rejection[],
  ): Promise<void> {
    const removed = new Set(await store.remove(batch.map((e) => e.key)));
    this.forget(batch);
    for (const rejection of rejected) {
      const event = batch[rejection.index];
      // Reported once, by whichever answer (sender or page-hide send) removed it.
      if (event && removed.has(event.key)) this.rejected(decode(event.body), rejection.reason);
    }
  }

  /** Resolve the flushes whose events have all left the queue. */
  private async settle(store: QueueStore): Promise<void> {
    for (const waiter of [...this.waiters]) {
      if (!(await store.hasUpTo(waiter.target))) {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        waiter.resolve();
      }
    }
  }

  // ------------------------------------------------------- page lifecycle

  private readonly onOnline = (): void => {
    this.backoff.reset();
    this.retryNow();
    this.wake(0);
  };

  private readonly onPageHide = (): void => this.sendOnHide(true);

  private readonly onVisibilityChange = (): void => {
    if (g.document?.visibilityState === "hidden") this.sendOnHide(false);
  };

  /**
   * The page may be about to go: send what fits in a `keepalive` request now
   * (`sendBeacon` cannot set the content type or the key).  The events stay
   * queued; if the page lives to read the answer they leave the queue as after
   * any 200, else the next page load sends them again (dedup drops the copy).
   * When only hidden, the sender's in-flight batch is left out; when unloading it
   * is included, since the browser cancels that request.
   */
  private sendOnHide(unloading: boolean): void {
    if (this.closed || offline()) return;
    let budget = KEEPALIVE_BYTES - this.keepaliveBytes - 2;
    const picked: StoredEvent[] = [];
    const known = [...this.mirror.values()].sort((a, b) => (a.key < b.key ? -1 : 1));
    for (const event of known) {
      if (picked.length >= this.batchSize) break;
      if (this.beaconed.has(event.key) || (!unloading && this.inFlight.has(event.key))) continue;
      if (event.bytes + 1 > budget) continue;
      picked.push(event);
      budget -= event.bytes + 1;
    }
    // Events whose append has not committed yet: sent, not removed by the answer
    // (they have no key yet); if the page lives, the queued copy goes again and
    // the loader's dedup drops it.
    const extra: string[] = [];
    for (const event of this.appending) {
      if (picked.length + extra.length >= this.batchSize) break;
      if (event.bytes + 1 > budget) continue;
      extra.push(event.body);
      budget -= event.bytes + 1;
    }
    if (!picked.length && !extra.length) return;
    const size = KEEPALIVE_BYTES - this.keepaliveBytes - budget;
    this.keepaliveBytes += size;
    for (const event of picked) this.beaconed.add(event.key);
    post(this.fetchFn, this.url, encodeBatch([...picked.map((e) => e.body), ...extra]), {
      apiKey: this.apiKey,
      keepalive: true,
      timeoutMs: this.timeoutMs,
    })
      .then(async (outcome) => {
        const store = this.store;
        if (outcome.kind !== "done" || !store) return;
        const rejected = outcome.rejected.filter((r) => r.index < picked.length);
        await this.acknowledged(store, picked, rejected);
        await this.settle(store);
      })
      .catch((error: Error) => this.error(error))
      .finally(() => {
        this.keepaliveBytes -= size;
        for (const event of picked) this.beaconed.delete(event.key);
      });
  }

  private remember(event: StoredEvent): void {
    if (this.mirror.has(event.key) || this.mirrorBytes + event.bytes > KEEPALIVE_BYTES) return;
    this.mirror.set(event.key, event);
    this.mirrorBytes += event.bytes;
  }

  private forget(events: StoredEvent[]): void {
    for (const event of events) {
      if (this.mirror.delete(event.key)) this.mirrorBytes -= event.bytes;
    }
  }

  // ------------------------------------------------------------ lifecycle

  private async shutdown(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.emits]);
    clearTimeout(this.timer);
    this.timer = undefined;
    g.removeEventListener?.("online", this.onOnline);
    g.removeEventListener?.("pagehide", this.onPageHide);
    g.document?.removeEventListener?.("visibilitychange", this.onVisibilityChange);
    let store: QueueStore | null = null;
    try {
      store = await this.ready;
      await this.running;
      this.notBefore = 0;
      await this.pass(); // the last attempt; a failure leaves the events queued
    } catch (error) {
      this.error(error as Error);
    }
    for (const waiter of this.waiters.splice(0)) waiter.reject(new ProducerClosed());
    store?.close();
  }

  private async openStore(choice: StorageKind | QueueStore, name: string): Promise<QueueStore> {
    if (typeof choice === "object") {
      await choice.open();
      return choice;
    }
    const order: StorageKind[] =
      choice === "memory"
        ? ["memory"]
        : choice === "localstorage"
          ? ["localstorage", "memory"]
          : ["indexeddb", "localstorage", "memory"];
    const failures: string[] = [];
    for (const kind of order) {
      if (kind === "memory") break;
      let store: QueueStore | null = null;
      try {
        // Reading these globals throws where the page may not use storage.
        const api = kind === "indexeddb" ? g.indexedDB : g.localStorage;
        if (!api) throw new Error("not available");
        store = kind === "indexeddb" ? new IndexedDBStore(api, name) : new LocalStorageStore(api, name);
        await withTimeout(store.open(), OPEN_TIMEOUT_MS);
        return store;
      } catch (error) {
        store?.close();
        failures.push(`${kind}: ${String(error)}`);
      }
    }
    if (choice !== "memory") {
      console.warn(
        `hourglass: no persistent storage (${failures.join("; ")}); ` +
          "queued events are kept in memory only and lost if the page goes before they are sent",
      );
    }
    return new MemoryStore();
  }

  private dropped(event: CloudEvent, reason: string): void {
    this.callback(this.options.onDropped, event, reason);
  }

  private rejected(event: CloudEvent, reason: string): void {
    this.callback(this.options.onRejected, event, reason);
  }

  private error(error: Error): void {
    const onError = this.options.onError;
    if (!onError) {
      if (!(error instanceof HourglassError)) console.error("hourglass:", error);
      else console.warn(`hourglass: ${error.message}`);
      return;
    }
    try {
      onError(error);
    } catch (exc) {
      console.error("hourglass: onError failed", exc);
    }
  }

  private callback(
    fn: ((event: CloudEvent, reason: string) => void) | undefined,
    event: CloudEvent,
    reason: string,
  ): void {
    if (!fn) {
      console.warn(`hourglass: event ${event.id} (${event.type}): ${reason}`);
      return;
    }
    try {
      fn(event, reason);
    } catch (exc) {
      console.error("hourglass: callback failed", exc);
    }
  }
}

function offline(): boolean {
  return g.navigator?.onLine === false;
}

function clamp(n: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, Math.floor(n)));
}

function encodeEvent(event: CloudEvent): string {
  let body: string;
  try {
    body = JSON.stringify(event);
  } catch (exc) {
    throw new InvalidEvent(`data cannot be encoded as JSON: ${String(exc)}`);
  }
  // JSON.stringify writes a lone UTF-16 surrogate as a \ud8xx escape, which the
  // gateway cannot decode: it would refuse the whole batch with 400, for ever.
  if (LONE_SURROGATE.test(body)) {
    throw new InvalidEvent("a string holds a lone UTF-16 surrogate (not valid Unicode)");
  }
  return body;
}

function decode(body: string): CloudEvent {
  return JSON.parse(body) as CloudEvent;
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
