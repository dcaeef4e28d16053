/**
 * Where the queue lives: the store asked for, else the next that opens here
 * (IndexedDB, then localStorage, then this page's memory, with a warning that
 * events may be lost). Storage can be missing, blocked (a SecurityError when a
 * global is read) or hang (an IndexedDB open that never answers in some private
 * modes): each is a failure of that kind, and the next is tried.
 */

import { IndexedDBStore } from "./idbstore";
import { LocalStorageStore } from "./localstore";
import { MemoryStore, type QueueStore } from "./store";

export type StorageKind = "indexeddb" | "localstorage" | "memory";

const OPEN_TIMEOUT_MS = 3000;

// The page's globals, read when used: absent ones (Node, workers) are skipped.
const g = globalThis as any;

export async function openStore(choice: StorageKind | QueueStore, name: string): Promise<QueueStore> {
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

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
