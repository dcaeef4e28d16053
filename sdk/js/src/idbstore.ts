/**
 * The queue in IndexedDB (the default): database `hourglass:<name>`, version 1.
 *
 * - `events`: key = the store's auto-increment key generator (rises across every
 *   tab of the origin and is never reused, even after deletes), value
 *   `{body, bytes}`;
 * - `meta`: `totals` = `{count, bytes}` of `events`.
 *
 * Every append and remove changes `events` and `totals` in one readwrite
 * transaction, and IndexedDB runs readwrite transactions on the same stores one
 * after another, across tabs too: the totals are the events' exact sum, and two
 * tabs cannot pass the bounds together.  `open` recounts the totals anyway (cheap
 * at the bounds, and it repairs a database another version of the SDK left).
 *
 * Durability is the browser's default for a transaction ("relaxed" in
 * Chromium: committed to the OS, not flushed to the disk). An event whose emit
 * resolved survives a reload, a tab crash and a browser crash; an OS crash or a
 * power cut may lose the last emits — nothing that was acknowledged by the
 * gateway, since an event leaves only after its answer.
 */

import { QueueFull } from "./errors";
import { full, type Key, type Limits, type QueueStore, type StoredEvent } from "./store";

interface Totals {
  count: number;
  bytes: number;
}

interface Row {
  body: string;
  bytes: number;
}

const EVENTS = "events";
const META = "meta";
const TOTALS = "totals";

export class IndexedDBStore implements QueueStore {
  readonly kind = "indexeddb";
  readonly lockName: string;
  private db: IDBDatabase | null = null;
  private closed = false;

  constructor(
    private readonly factory: IDBFactory,
    private readonly name: string,
  ) {
    this.lockName = `hourglass:${name}`;
  }

  async open(): Promise<void> {
    if (this.db) return;
    this.db = await new Promise<IDBDatabase>((resolve, reject) => {
      const request = this.factory.open(`hourglass:${this.name}`, 1);
      request.onupgradeneeded = () => {
        const db = request.result;
        if (!db.objectStoreNames.contains(EVENTS)) {
          db.createObjectStore(EVENTS, { autoIncrement: true });
        }
        if (!db.objectStoreNames.contains(META)) db.createObjectStore(META);
      };
      request.onsuccess = () => {
        const db = request.result;
        if (this.closed) {
          db.close(); // opened after the producer gave up on it (a slow open)
          reject(new Error("IndexedDB opened too late"));
          return;
        }
        db.onversionchange = () => db.close(); // let a newer version of the page upgrade
        resolve(db);
      };
      request.onerror = () => reject(request.error);
    });
    await this.recount();
  }

  private tx(stores: string[], mode: IDBTransactionMode): IDBTransaction {
    if (!this.db) throw new Error("the IndexedDB queue is not open");
    return this.db.transaction(stores, mode);
  }

  private recount(): Promise<void> {
    return new Promise((resolve, reject) => {
      const tx = this.tx([EVENTS, META], "readwrite");
      const totals: Totals = { count: 0, bytes: 0 };
      const cursor = tx.objectStore(EVENTS).openCursor();
      cursor.onsuccess = () => {
        const c = cursor.result;
        if (c) {
          totals.count += 1;
          totals.bytes += (c.value as Row).bytes;
          c.continue();
        } else {
          tx.objectStore(META).put(totals, TOTALS);
        }
      };
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  append(body: string, bytes: number, limits: Limits): Promise<Key> {
    return new Promise((resolve, reject) => {
      const tx = this.tx([EVENTS, META], "readwrite");
      const meta = tx.objectStore(META);
      let key: Key | undefined;
      let refusal: QueueFull | null = null;
      const get = meta.get(TOTALS);
      get.onsuccess = () => {
        const totals = (get.result as Totals | undefined) ?? { count: 0, bytes: 0 };
        refusal = full(totals.count, totals.bytes, bytes, limits);
        if (refusal) {
          tx.abort();
          return;
        }
        const add = tx.objectStore(EVENTS).add({ body, bytes } satisfies Row);
        add.onsuccess = () => {
          key = add.result as number;
        };
        meta.put({ count: totals.count + 1, bytes: totals.bytes + bytes }, TOTALS);
      };
      tx.oncomplete = () => resolve(key as Key);
      tx.onabort = () => reject(refusal ?? quota(tx.error));
    });
  }

  peek(maxCount: number, maxBytes: number): Promise<StoredEvent[]> {
    return new Promise((resolve, reject) => {
      const tx = this.tx([EVENTS], "readonly");
      const out: StoredEvent[] = [];
      let size = 0;
      const cursor = tx.objectStore(EVENTS).openCursor();
      cursor.onsuccess = () => {
        const c = cursor.result;
        if (!c) return;
        const row = c.value as Row;
        if (out.length >= maxCount || (out.length > 0 && size + row.bytes > maxBytes)) return;
        out.push({ key: c.key as number, body: row.body, bytes: row.bytes });
        size += row.bytes + 1;
        c.continue();
      };
      tx.oncomplete = () => resolve(out);
      tx.onerror = () => reject(tx.error);
    });
  }

  remove(given: Key[]): Promise<Key[]> {
    // Each get is queued before any delete runs: a key given twice would be found twice.
    const keys = [...new Set(given)];
    if (!keys.length) return Promise.resolve([]);
    return new Promise((resolve, reject) => {
      const tx = this.tx([EVENTS, META], "readwrite");
      const events = tx.objectStore(EVENTS);
      const meta = tx.objectStore(META);
      const removed: Key[] = [];
      const get = meta.get(TOTALS);
      get.onsuccess = () => {
        const totals = (get.result as Totals | undefined) ?? { count: 0, bytes: 0 };
        let pending = keys.length;
        for (const key of keys) {
          const row = events.get(key);
          row.onsuccess = () => {
            const found = row.result as Row | undefined;
            if (found) {
              events.delete(key);
              totals.count -= 1;
              totals.bytes -= found.bytes;
              removed.push(key);
            }
            if (--pending === 0) meta.put(totals, TOTALS);
          };
        }
      };
      tx.oncomplete = () => resolve(removed);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  lastKey(): Promise<Key | undefined> {
    return this.keyCursor("prev");
  }

  async hasUpTo(key: Key): Promise<boolean> {
    // No IDBKeyRange: it is a global of the page, not of the factory passed in.
    const first = await this.keyCursor("next");
    return first !== undefined && this.factory.cmp(first, key) <= 0;
  }

  private keyCursor(direction: IDBCursorDirection): Promise<Key | undefined> {
    return new Promise((resolve, reject) => {
      const tx = this.tx([EVENTS], "readonly");
      const request = tx.objectStore(EVENTS).openKeyCursor(null, direction);
      let key: Key | undefined;
      request.onsuccess = () => {
        key = request.result ? (request.result.key as number) : undefined;
      };
      tx.oncomplete = () => resolve(key);
      tx.onerror = () => reject(tx.error);
    });
  }

  size(): Promise<Totals> {
    return new Promise((resolve, reject) => {
      const tx = this.tx([META], "readonly");
      const get = tx.objectStore(META).get(TOTALS);
      get.onsuccess = () => resolve((get.result as Totals | undefined) ?? { count: 0, bytes: 0 });
      tx.onerror = () => reject(tx.error);
    });
  }

  close(): void {
    this.closed = true;
    this.db?.close();
    this.db = null;
  }
}

function quota(error: DOMException | null): Error {
  if (error && error.name === "QuotaExceededError") {
    return new QueueFull(`queue full: IndexedDB refused the event (${error.message})`);
  }
  return error ?? new Error("IndexedDB transaction aborted");
}
