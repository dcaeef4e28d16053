/**
 * The SDK's errors.
 *
 *     HourglassError
 *     ├── QueueFull         emit: the queue is at maxQueued / maxQueuedBytes (or the
 *     │                     storage quota); the event was not queued, onDropped was called
 *     ├── InvalidEvent      emit: the event cannot be sent as JSON the gateway reads
 *     ├── GatewayRefused    flush / onError: the gateway refused a whole batch
 *     │                     (400, 401, 403, 404, 405, 415); its events stay queued
 *     └── ProducerClosed    emit / flush after close()
 *
 * Retryable failures (429, 503, network errors, offline) are not errors: the
 * producer waits and sends again.
 *
 * Each class sets `name` itself: the bundle is minified, and a class's own name
 * would not survive it.
 */

export class HourglassError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HourglassError";
  }
}

export class QueueFull extends HourglassError {
  constructor(message: string) {
    super(message);
    this.name = "QueueFull";
  }
}

export class InvalidEvent extends HourglassError {
  constructor(message: string) {
    super(message);
    this.name = "InvalidEvent";
  }
}

export class GatewayRefused extends HourglassError {
  readonly status: number;
  readonly reason: string;

  constructor(status: number, reason: string) {
    super(`the gateway refused the batch (${status}): ${reason}`);
    this.name = "GatewayRefused";
    this.status = status;
    this.reason = reason;
  }
}

export class ProducerClosed extends HourglassError {
  constructor() {
    super("the producer is closed");
    this.name = "ProducerClosed";
  }
}
