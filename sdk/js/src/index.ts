/**
 * @hourglass/producer — send CloudEvents from a web page to an Hourglass gateway.
 *
 *     const producer = new Producer({ url: "https://events.example.com", apiKey: "wk-…" });
 *     await producer.emit("music.SongSkipped", { … });
 *
 * See docs/browser-sdk.md.
 */

export { Producer } from "./producer";
export { KEEPALIVE_BYTES } from "./pagehide";
export type { ProducerOptions } from "./producer";
export type { CloudEvent, EmitOptions } from "./event";
export type { StorageKind } from "./open";
export { GatewayRefused, HourglassError, InvalidEvent, ProducerClosed, QueueFull } from "./errors";
export { IndexedDBStore } from "./idbstore";
export { LocalStorageStore } from "./localstore";
export { MemoryStore } from "./store";
export type { Key, Limits, QueueStore, StoredEvent } from "./store";
export { uuidv7 } from "./ids";
