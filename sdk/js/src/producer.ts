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

import { GatewayRefused, HourglassError, ProducerClosed, QueueFull } from "./errors";
import { decode, encodeEvent, makeEvent, type CloudEvent, type EmitOptions } from "./event";
import { Backoff, encodeBatch, post, type Fetch, type Rejection } from "./http";
import { openStore, type StorageKind } from "./open";
import { PageHideSend } from "./pagehide";
import type { Key, QueueStore, StoredEvent } from "./store";

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
  private readonly hide: PageHideSend;

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
    this.hide = new PageHideSend(
      this.batchSize,
      (bodies) =>
        post(this.fetchFn, this.url, encodeBatch(bodies), {
          apiKey: this.apiKey,
          keepalive: true,
          timeoutMs: this.timeoutMs,
        }),
      async (stored, rejected) => {
        if (!this.store) return;
        await this.acknowledged(this.store, stored, rejected);
        await this.settle(this.store);
      },
      (error) => this.error(error),
    );
    const fetchFn = options.fetch ?? g.fetch;
    if (typeof fetchFn !== "function") throw new TypeError("Producer needs fetch");
    this.fetchFn = options.fetch ?? ((input, init) => g.fetch(input, init));
    // Emits wait for `ready`, so the size seen here is what earlier page loads
    // (or other tabs) left: sent at once, while this page's events wait for a batch.
    this.ready = openStore(options.storage ?? "indexeddb", this.url).then(async (store) => {
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
    const event = makeEvent(this.source, type, data, options);
    const body = encodeEvent(event);
    const bytes = utf8.encode(body).length;
    const appended = this.hide.appendStarted({ body, bytes });
    let key: Key;
    try {
      const store = await this.ready; // close() waits for the emits already started
      key = await store.append(body, bytes, this.limits);
    } catch (error) {
      if (error instanceof QueueFull) this.dropped(event, error.message);
      throw error;
    } finally {
      appended();
    }
    this.hide.remember({ key, body, bytes });
    this.unsent += 1;
    this.wake(this.unsent >= this.batchSize ? 0 : this.flushIntervalMs);
    return event.id;
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
    for (const event of batch) this.hide.remember(event);
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
        this.hide.forget(batch);
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
    this.hide.forget(batch);
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

  private readonly onPageHide = (): void => {
    if (!this.closed && !offline()) this.hide.send(new Set());
  };

  private readonly onVisibilityChange = (): void => {
    if (g.document?.visibilityState !== "hidden" || this.closed || offline()) return;
    this.hide.send(this.inFlight);
  };


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
