/**
 * The page-hide send: when the page may be about to go (`pagehide`, or
 * `visibilitychange` to hidden), what fits in one `fetch(..., {keepalive: true})`
 * goes at once, since a page being unloaded cannot wait for storage or for the
 * sender (`sendBeacon` is not used: it cannot set the content type or the key).
 *
 * It cannot read the queue (storage is asynchronous), so it keeps in memory the
 * oldest events this page knows of, at most KEEPALIVE_BYTES of them, and the
 * events emitted whose append has not committed yet (a click on a link that
 * emits and navigates).  Nothing leaves the queue for this send: if the page
 * lives to read a 200, the events it names leave as after any 200; else the
 * next page load sends them again and the loader's dedup drops the copy.
 */

import type { Outcome, Rejection } from "./http";
import type { Key, StoredEvent } from "./store";

/** What fits in the page-hide `keepalive` requests: browsers allow 64 KiB in flight. */
export const KEEPALIVE_BYTES = 60 * 1024;

export class PageHideSend {
  private readonly known = new Map<Key, StoredEvent>(); // stored, oldest this page saw
  private knownBytes = 0;
  private readonly appending = new Set<StoredEvent>(); // emitted, not yet stored
  private readonly sending = new Set<Key>(); // in a keepalive request now
  private inFlightBytes = 0;

  constructor(
    private readonly batchSize: number,
    /** POST these bodies with keepalive. */
    private readonly post: (bodies: string[]) => Promise<Outcome>,
    /** A 200 for `stored` (the keepalive's first events): take them out of the queue. */
    private readonly answered: (stored: StoredEvent[], rejected: Rejection[]) => Promise<void>,
    private readonly error: (error: Error) => void,
  ) {}

  /** An emit is appending `event` (key unknown yet); returns the call that ends that. */
  appendStarted(event: { body: string; bytes: number }): () => void {
    const pending = { key: -1, ...event };
    this.appending.add(pending);
    return () => this.appending.delete(pending);
  }

  remember(event: StoredEvent): void {
    if (this.known.has(event.key) || this.knownBytes + event.bytes > KEEPALIVE_BYTES) return;
    this.known.set(event.key, event);
    this.knownBytes += event.bytes;
  }

  forget(events: StoredEvent[]): void {
    for (const event of events) {
      if (this.known.delete(event.key)) this.knownBytes -= event.bytes;
    }
  }

  /**
   * Send now. `skip`: the sender's in-flight batch, left out when the page is only
   * hidden (that request goes on); when unloading it is included, since the
   * browser cancels that request.
   */
  send(skip: ReadonlySet<Key>): void {
    let budget = KEEPALIVE_BYTES - this.inFlightBytes - 2;
    const stored: StoredEvent[] = [];
    const oldest = [...this.known.values()].sort((a, b) => (a.key < b.key ? -1 : 1));
    for (const event of oldest) {
      if (stored.length >= this.batchSize) break;
      if (this.sending.has(event.key) || skip.has(event.key) || event.bytes + 1 > budget) continue;
      stored.push(event);
      budget -= event.bytes + 1;
    }
    // Not yet stored: sent, but not removed by the answer (no key yet); if the
    // page lives, the stored copy goes again and the loader's dedup drops it.
    const unstored: string[] = [];
    for (const event of this.appending) {
      if (stored.length + unstored.length >= this.batchSize) break;
      if (event.bytes + 1 > budget) continue;
      unstored.push(event.body);
      budget -= event.bytes + 1;
    }
    if (!stored.length && !unstored.length) return;
    const size = KEEPALIVE_BYTES - this.inFlightBytes - budget;
    this.inFlightBytes += size;
    for (const event of stored) this.sending.add(event.key);
    this.post([...stored.map((e) => e.body), ...unstored])
      .then(async (outcome) => {
        if (outcome.kind !== "done") return;
        await this.answered(stored, outcome.rejected.filter((r) => r.index < stored.length));
      })
      .catch((error: Error) => this.error(error))
      .finally(() => {
        this.inFlightBytes -= size;
        for (const event of stored) this.sending.delete(event.key);
      });
  }
}
