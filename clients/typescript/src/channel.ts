/**
 * What every channel's client shares: one {@link Connection}, calls that
 * send one request and read one typed answer, and closing.
 *
 * Each channel is one module (`status.ts`, `pool.ts`, `queue.ts`,
 * `blob.ts`) with a class extending {@link ChannelClient}; a new channel
 * is a new module of the same shape.
 *
 * @module
 */

import { type CallOptions, type Connection, type Exchange, unexpected } from "./connection.js";
import type { DaemonIdent } from "./errors.js";

/** A handshaked connection to one channel. */
export abstract class ChannelClient {
  protected constructor(protected readonly conn: Connection) {}

  /** The daemon that accepted the handshake. */
  get daemon(): DaemonIdent {
    return this.conn.daemon;
  }

  /** The largest frame the daemon accepts on this connection. */
  get maxFrame(): number {
    return this.conn.maxFrame;
  }

  /** Whether the connection has ended (every call now fails with `ConnectionClosed`). */
  get closed(): boolean {
    return this.conn.closed;
  }

  /** Closes the connection. */
  close(): void {
    this.conn.close();
  }

  /**
   * Sends `request` and returns its answer, which must be of type
   * `expected`; an error answer rejects with a `RequestError`.
   */
  protected call<T>(what: string, request: object, expected: string, options: CallOptions = {}): Promise<T> {
    const now = this.conn.beginNow(what, options.signal);
    if (now) return answer<T>(now, request, expected);
    return this.conn.begin(what, options.signal).then((exchange) => answer<T>(exchange, request, expected));
  }

  /** Starts an exchange that reads several frames (a stream); end it with `exchange.end()`. */
  protected begin(what: string, options: CallOptions = {}): Promise<Exchange> {
    return this.conn.begin(what, options.signal);
  }
}

async function answer<T>(exchange: Exchange, request: object, expected: string): Promise<T> {
  try {
    const response = await exchange.request(request);
    if (response.type !== expected) throw unexpected(expected, response);
    return response as unknown as T;
  } finally {
    exchange.end();
  }
}

/** An answer without its `type` field. */
export function stripType<T extends { type?: string }>(value: T): Omit<T, "type"> {
  const { type: _type, ...rest } = value;
  return rest;
}
