/**
 * The queue's storage: events wait here, encoded as the JSON the gateway will
 * read, from `emit` until a gateway answer for them (a 200 that accepted or
 * rejected them, or a 413 for the event alone) was seen.
 *
 * Invariants every store keeps:
 * - an event is in the store once `append` resolved, until `remove` of its key;
 *   nothing else takes it out (no eviction: at the bounds `append` refuses);
 * - keys rise in append order, across the tabs sharing the store, and are never
 *   reused, so `peek` returns the oldest events first;
 * - `remove` of a key already gone (another tab sent and removed it) is a no-op,
 *   and says which keys it really removed, so an answer seen twice is reported once.
 *
 * A crash between the gateway's 200 and `remove` leaves the events in the store:
 * they are sent again, with the same (source, id), and the loader's dedup keeps
 * one copy.
 */

import { QueueFull } from "./errors";

export type Key = number | string;

export interface StoredEvent {
  key: Key;
  body: string; // one CloudEvent, JSON
  bytes: number; // UTF-8 length of body
}

export interface Limits {
  maxCount: number;
  maxBytes: number;
}

export interface QueueStore {
  /** Which kind, for messages: "indexeddb", "localstorage", "memory", or a custom name. */
  readonly kind: string;
  /** Shared with other tabs of the origin: then senders take a Web Lock of this name. */
  readonly lockName: string | null;
  open(): Promise<void>;
  /** Queue one event; throws QueueFull when the bounds would be passed. */
  append(body: string, bytes: number, limits: Limits): Promise<Key>;
  /** The oldest events: at most maxCount, within maxBytes (but at least one). */
  peek(maxCount: number, maxBytes: number): Promise<StoredEvent[]>;
  remove(keys: Key[]): Promise<Key[]>;
  /** The newest key, or undefined when empty. */
  lastKey(): Promise<Key | undefined>;
  /** Whether an event with a key <= key is still queued. */
  hasUpTo(key: Key): Promise<boolean>;
  size(): Promise<{ count: number; bytes: number }>;
  close(): void;
}

export function full(count: number, bytes: number, add: number, limits: Limits): QueueFull | null {
  if (count + 1 > limits.maxCount) {
    return new QueueFull(`queue full: ${count} events queued (maxQueued ${limits.maxCount})`);
  }
  if (bytes + add > limits.maxBytes) {
    return new QueueFull(
      `queue full: ${bytes} + ${add} bytes over maxQueuedBytes ${limits.maxBytes}`,
    );
  }
  return null;
}

/** Events in this page's memory only: lost on reload; shared by the Producers given it. */
export class MemoryStore implements QueueStore {
  readonly kind = "memory";
  readonly lockName = null;
  private events = new Map<number, StoredEvent>();
  private next = 1;
  private bytes = 0;

  async open(): Promise<void> {}

  async append(body: string, bytes: number, limits: Limits): Promise<Key> {
    const refusal = full(this.events.size, this.bytes, bytes, limits);
    if (refusal) throw refusal;
    const key = this.next++;
    this.events.set(key, { key, body, bytes });
    this.bytes += bytes;
    return key;
  }

  async peek(maxCount: number, maxBytes: number): Promise<StoredEvent[]> {
    const out: StoredEvent[] = [];
    let size = 0;
    for (const event of this.events.values()) {
      // Map iteration is insertion order, which is key order here
      if (out.length >= maxCount || (out.length > 0 && size + event.bytes > maxBytes)) break;
      out.push(event);
      size += event.bytes + 1;
    }
    return out;
  }

  async remove(keys: Key[]): Promise<Key[]> {
    const removed: Key[] = [];
    for (const key of keys) {
      const event = this.events.get(key as number);
      if (event) {
        this.events.delete(key as number);
        this.bytes -= event.bytes;
        removed.push(key);
      }
    }
    return removed;
  }

  async lastKey(): Promise<Key | undefined> {
    return this.events.size ? this.next - 1 : undefined;
  }

  async hasUpTo(key: Key): Promise<boolean> {
    const first = this.events.keys().next();
    return !first.done && first.value <= (key as number);
  }

  async size(): Promise<{ count: number; bytes: number }> {
    return { count: this.events.size, bytes: this.bytes };
  }

  close(): void {}
}
