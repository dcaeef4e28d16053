/**
 * One CloudEvent as the SDK makes it at `emit`, and its JSON: checked here, so
 * that nothing the gateway could not decode reaches the queue (a batch the
 * gateway cannot read is refused whole, and would be refused for ever).
 */

import { InvalidEvent } from "./errors";
import { uuidv7 } from "./ids";

export interface CloudEvent {
  specversion: "1.0";
  id: string;
  source: string;
  type: string;
  time?: string;
  data?: unknown;
}

export interface EmitOptions {
  id?: string;
  time?: Date | string;
}

const LONE_SURROGATE = /(?:^|[^\\])(?:\\\\)*\\ud[89a-f]/;

export function makeEvent(source: string, type: string, data: unknown, options: EmitOptions): CloudEvent {
  if (typeof type !== "string" || !type) throw new InvalidEvent("type must be a non-empty string");
  const id = options.id ?? uuidv7();
  if (typeof id !== "string" || !id) throw new InvalidEvent("id must be a non-empty string");
  let time: string;
  if (options.time === undefined) time = new Date().toISOString();
  else if (options.time instanceof Date) {
    if (Number.isNaN(options.time.getTime())) throw new InvalidEvent("time is an invalid Date");
    time = options.time.toISOString();
  } else time = String(options.time);
  return { specversion: "1.0", id, source, type, time, data };
}


export function encodeEvent(event: CloudEvent): string {
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

export function decode(body: string): CloudEvent {
  return JSON.parse(body) as CloudEvent;
}
