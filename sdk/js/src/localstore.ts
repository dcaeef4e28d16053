/**
 * The queue in localStorage: the fallback where IndexedDB cannot be opened.
 *
 * One item per event, `<prefix><uuidv7>.<bytes>` → the event's JSON.  There is no
 * shared counter or index item: tabs of one origin may write at the same moment
 * (localStorage has no transactions across tabs), and a read-modify-write of a
 * shared item could lose an event.  Each item is written once and removed once,
 * so no write can undo another's.  Keys are time-ordered UUIDv7s, so sorted keys
 * are the queue's order; the byte count in the key lets the bounds be checked
 * from the key list alone, without reading the events.
 *
 * The bounds are checked against a scan of the keys at each append; two tabs
 * appending at once can pass them by an event each.  A write over the storage
 * quota is refused as QueueFull.
 */

import { QueueFull } from "./errors";
import { uuidv7 } from "./ids";
import { full, type Key, type Limits, type QueueStore, type StoredEvent } from "./store";

export class LocalStorageStore implements QueueStore {
  readonly kind = "localstorage";
  readonly lockName: string;
  private readonly prefix: string;

  constructor(
    private readonly storage: Storage,
    name: string,
  ) {
    this.prefix = `hourglass:${name}:`;
    this.lockName = `hourglass:${name}`;
  }

  async open(): Promise<void> {
    // Throws where storage is blocked (SecurityError) or unusable (quota 0).
    const probe = `${this.prefix}probe`;
    this.storage.setItem(probe, "1");
    this.storage.removeItem(probe);
  }

  private keys(): { key: string; bytes: number }[] {
    const out: { key: string; bytes: number }[] = [];
    const n = this.storage.length;
    for (let i = 0; i < n; i++) {
      const key = this.storage.key(i);
      if (key === null || !key.startsWith(this.prefix)) continue;
      const dot = key.lastIndexOf(".");
      const bytes = Number(key.slice(dot + 1));
      if (dot > this.prefix.length && Number.isFinite(bytes)) out.push({ key, bytes });
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async append(body: string, bytes: number, limits: Limits): Promise<Key> {
    const keys = this.keys();
    const refusal = full(keys.length, keys.reduce((s, k) => s + k.bytes, 0), bytes, limits);
    if (refusal) throw refusal;
    const key = `${this.prefix}${uuidv7()}.${bytes}`;
    try {
      this.storage.setItem(key, body);
    } catch (exc) {
      throw new QueueFull(`queue full: localStorage refused the event (${String(exc)})`);
    }
    return key;
  }

  async peek(maxCount: number, maxBytes: number): Promise<StoredEvent[]> {
    const out: StoredEvent[] = [];
    let size = 0;
    for (const { key, bytes } of this.keys()) {
      if (out.length >= maxCount || (out.length > 0 && size + bytes > maxBytes)) break;
      const body = this.storage.getItem(key);
      if (body === null) continue; // removed by another tab meanwhile
      out.push({ key, body, bytes });
      size += bytes + 1;
    }
    return out;
  }

  async remove(keys: Key[]): Promise<Key[]> {
    const removed: Key[] = [];
    for (const key of keys) {
      if (this.storage.getItem(key as string) !== null) {
        this.storage.removeItem(key as string);
        removed.push(key);
      }
    }
    return removed;
  }

  async lastKey(): Promise<Key | undefined> {
    const keys = this.keys();
    return keys.length ? keys[keys.length - 1].key : undefined;
  }

  async hasUpTo(key: Key): Promise<boolean> {
    const keys = this.keys();
    return keys.length > 0 && keys[0].key <= (key as string);
  }

  async size(): Promise<{ count: number; bytes: number }> {
    const keys = this.keys();
    return { count: keys.length, bytes: keys.reduce((s, k) => s + k.bytes, 0) };
  }

  close(): void {}
}
