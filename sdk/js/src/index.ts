/**
 * @hourglass/producer — send CloudEvents from a web page to an Hourglass gateway.
 *
 *     const producer = new Producer({ url: "https://events.example.com", apiKey: "wk-…" });
 *     await producer.emit("music.SongSkipped", { … });
 *
 * See docs/browser-sdk.md.
 */

export { Producer, KEEPALIVE_BYTES } from "./producer";
export type { CloudEvent, EmitOptions, ProducerOptions, StorageKind } from "./producer";
export { GatewayRefused, HourglassError, InvalidEvent, ProducerClosed, QueueFull } from "./errors";
export { IndexedDBStore } from "./idbstore";
export { LocalStorageStore } from "./localstore";
export { MemoryStore } from "./store";
export type { Key, Limits, QueueStore, StoredEvent } from "./store";
export { uuidv7 } from "./ids";
