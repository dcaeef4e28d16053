/**
 * One POST of a batch, and what the gateway's answer means (as the Python SDK's
 * `producer/http.py` reads it):
 *
 * - 200: each event accepted (durable on the bus) or rejected with a reason (kept
 *   in the gateway's failed-events stream): both final, the events leave the queue;
 * - 413: the batch, or one event in it, is over a gateway limit: split it;
 * - 400, 401, 403, 404, 405, 415: the request itself is refused (a bad key, a type
 *   the key may not send, a wrong URL); resending the same cannot help until
 *   someone fixes it, so the events stay queued and are retried slowly;
 * - 429, 503, any other status, a network error or a timeout: retry after
 *   `Retry-After` or a backoff.
 */

export const BATCH = "application/cloudevents-batch+json";
export const EVENTS_PATH = "/v1/events";

export interface Rejection {
  index: number;
  id: string;
  reason: string;
}

export type Outcome =
  | { kind: "done"; accepted: number; rejected: Rejection[] }
  | { kind: "too_large"; status: number; reason: string }
  | { kind: "refused"; status: number; reason: string }
  | { kind: "retry"; status: number | null; reason: string; retryAfterMs: number | null };

export type Fetch = (input: string, init: RequestInit) => Promise<Response>;

export interface PostOptions {
  apiKey: string | undefined;
  keepalive: boolean;
  timeoutMs: number;
}

const REFUSED = new Set([400, 401, 403, 404, 405, 415]);

export function encodeBatch(bodies: string[]): string {
  return `[${bodies.join(",")}]`;
}

export async function post(
  fetchFn: Fetch,
  url: string,
  body: string,
  options: PostOptions,
): Promise<Outcome> {
  const headers: Record<string, string> = { "content-type": BATCH };
  if (options.apiKey) headers["x-api-key"] = options.apiKey;
  // A page being unloaded cannot wait for an answer: no timeout on keepalive sends.
  const abort = options.keepalive ? null : new AbortController();
  const timer = abort ? setTimeout(() => abort.abort(), options.timeoutMs) : undefined;
  try {
    const response = await fetchFn(url + EVENTS_PATH, {
      method: "POST",
      headers,
      body,
      mode: "cors",
      credentials: "omit",
      cache: "no-store",
      keepalive: options.keepalive,
      signal: abort?.signal,
    });
    return await classify(response);
  } catch (exc) {
    return { kind: "retry", status: null, reason: `gateway unreachable: ${String(exc)}`, retryAfterMs: null };
  } finally {
    if (timer !== undefined) clearTimeout(timer);
  }
}

export async function classify(response: Response): Promise<Outcome> {
  const status = response.status;
  const text = await response.text();
  if (status === 200) {
    const answer = parse(text);
    if (answer && typeof answer.accepted === "number" && Array.isArray(answer.rejected)) {
      return { kind: "done", accepted: answer.accepted, rejected: answer.rejected as Rejection[] };
    }
    return { kind: "retry", status, reason: "unreadable 200 answer", retryAfterMs: null };
  }
  const reason = errorText(text);
  if (status === 413) return { kind: "too_large", status, reason };
  if (REFUSED.has(status)) return { kind: "refused", status, reason };
  return { kind: "retry", status, reason, retryAfterMs: retryAfter(response.headers.get("retry-after")) };
}

function parse(text: string): any {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function errorText(text: string): string {
  const answer = parse(text);
  if (answer && typeof answer.error === "string") return answer.error;
  return text.slice(0, 500);
}

/** `Retry-After` in ms: delta-seconds or an HTTP date. */
export function retryAfter(value: string | null): number | null {
  if (value === null || value.trim() === "") return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - Date.now());
}

/**
 * Exponential backoff with full jitter (a uniform draw below min(cap, base·2^n)).
 * A `Retry-After` is honoured as given (up to 10 minutes, against a broken
 * header), plus a jitter below `base` so that pages told the same second do not
 * all come back in it.
 */
export class Backoff {
  attempt = 0;

  constructor(
    readonly baseMs: number,
    readonly capMs: number,
  ) {}

  next(retryAfterMs: number | null): number {
    this.attempt += 1;
    if (retryAfterMs !== null) {
      return Math.min(retryAfterMs, 600_000) + Math.random() * this.baseMs;
    }
    const ceiling = Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.attempt, 30));
    return Math.random() * ceiling;
  }

  /** For refusals someone must fix: between half the cap and the cap. */
  slow(): number {
    this.attempt += 1;
    return this.capMs * (0.5 + Math.random() / 2);
  }

  reset(): void {
    this.attempt = 0;
  }
}
