/**
 * The `blob` channel (proto-docs/blob.md): a content-addressed store,
 * streamed through Node streams in data frames of at most 1 MiB, so that
 * neither side ever holds a whole blob.
 *
 * ```ts
 * const blobs = await BlobClient.connect();
 * const stored = await blobs.put(createReadStream("photo.png"), { mediaType: "image/png" });
 * await blobs.getTo(stored.hash, createWriteStream("copy.png"));
 * const { content, stream } = await blobs.get(stored.hash, { offset: 0, length: 1024 });
 * ```
 *
 * A transfer that ends early on this side (its `AbortSignal`, a failing
 * source or destination, a download stream destroyed before its end)
 * closes the connection: the daemon then discards a partial put, and no
 * later request can be taken for blob data.
 *
 * @module
 */

import { createReadStream } from "node:fs";
import { stat as statFile } from "node:fs/promises";
import { Readable, type Writable } from "node:stream";
import { pipeline } from "node:stream/promises";

import { ChannelClient, stripType } from "./channel.js";
import { type CallOptions, type ConnectOptions, Connection, type Exchange, unexpected } from "./connection.js";
import { HearthError, LocalIoError, ProtocolError } from "./errors.js";

/** The largest data frame this client sends: full speed, yet only a few MiB in flight. */
export const PUT_CHUNK = 1024 * 1024;

/** A content address: `sha256:<64 lowercase hex digits>`. */
export type BlobHash = `sha256:${string}`;

/** The answer to a put. */
export interface Stored {
  hash: BlobHash;
  size: number;
  /** True when the content was already stored (this put added nothing). */
  existed: boolean;
}

/** The header of a get. */
export interface Content {
  hash: BlobHash;
  /** The whole blob's size. */
  size: number;
  offset: number;
  /** The bytes this get sends. */
  length: number;
  media_type?: string;
}

/** A blob's metadata. */
export interface BlobInfo {
  hash: BlobHash;
  size: number;
  media_type?: string;
  name?: string;
  pinned: boolean;
  created_at_ms: number;
  last_access_at_ms: number;
}

/** The store's totals. */
export interface Usage {
  count: number;
  bytes: number;
  pinned_count: number;
  pinned_bytes: number;
  budget_bytes?: number;
  http_url?: string;
}

/** The answer to `gc`. */
export interface GcReport {
  removed: number;
  freed_bytes: number;
  target_bytes?: number;
  usage: Usage;
}

/** One page of `list`. */
export interface ListPage {
  blobs: BlobInfo[];
  /** The cursor of the next page; absent on the last. */
  next_cursor?: BlobHash;
}

/** What a put announces besides its data; all optional. */
export interface PutOptions extends CallOptions {
  /** The expected address: the put fails with `hash_mismatch` otherwise, and sends nothing if it is stored. */
  sha256?: BlobHash;
  /** The expected length: the put fails with `size_mismatch` otherwise. */
  size?: number;
  /** `type/subtype`, e.g. `image/png`. */
  mediaType?: string;
  /** A label for people. */
  name?: string;
  /** Pin it, so that collection never removes it. */
  pin?: boolean;
}

/** A byte range of a get. */
export interface GetOptions extends CallOptions {
  /** The first byte (default 0); past the end is `range_not_satisfiable`. */
  offset?: number;
  /** How many bytes (default: to the end). */
  length?: number;
}

/** What a put streams from. Strings are taken as UTF-8. */
export type PutSource = Uint8Array | Readable | AsyncIterable<Uint8Array | string> | Iterable<Uint8Array>;

/** A started download: its header, and its bytes as a stream. */
export interface Download {
  content: Content;
  /**
   * The bytes. It errors with the daemon's error if the transfer is cut
   * short. Read it to the end or destroy it: until then it holds the
   * connection.
   */
  stream: Readable;
}

/** A client of the `blob` channel. */
export class BlobClient extends ChannelClient {
  /** Connects and handshakes onto the `blob` channel. */
  static async connect(options: ConnectOptions = {}): Promise<BlobClient> {
    return new BlobClient(await Connection.open("blob", options));
  }

  /**
   * Stores everything `source` yields, in frames of at most 1 MiB. If the
   * daemon rejects the put part-way (a size mismatch, a full disk), the
   * upload stops at once and the daemon's error is thrown. If reading the
   * source fails, the connection is closed (the daemon discards what it
   * got) and a {@link LocalIoError} is thrown.
   */
  async put(source: PutSource, options: PutOptions = {}): Promise<Stored> {
    const request: Record<string, unknown> = { type: "put" };
    if (options.sha256 !== undefined) request.sha256 = options.sha256;
    if (options.size !== undefined) request.size = options.size;
    else if (source instanceof Uint8Array) request.size = source.length;
    if (options.mediaType !== undefined) request.media_type = options.mediaType;
    if (options.name !== undefined) request.name = options.name;
    if (options.pin) request.pin = true;
    const exchange = await this.begin("blob put", options);
    try {
      const sent = exchange.send(request);
      if (sent) await sent;
      const first = await exchange.readAnswer();
      if (first.type === "stored") {
        // The announced content is already stored: nothing to send.
        exchange.complete();
        return storedOf(first);
      }
      if (first.type !== "ready") throw unexpected("ready", first);
      const early = await streamData(exchange, source);
      if (early !== undefined) throw early;
      await exchange.sendData(EMPTY);
      const answer = await exchange.readAnswer();
      if (answer.type !== "stored") throw unexpected("stored", answer);
      exchange.complete();
      return storedOf(answer);
    } finally {
      exchange.end("the put did not finish");
    }
  }

  /** Stores a file, announcing its size. */
  async putFile(path: string, options: PutOptions = {}): Promise<Stored> {
    let size: number;
    try {
      size = (await statFile(path)).size;
    } catch (error) {
      throw new LocalIoError(`cannot read ${path}`, error);
    }
    const file = createReadStream(path, { highWaterMark: PUT_CHUNK });
    try {
      return await this.put(file, { size, name: basename(path), ...options });
    } finally {
      file.destroy();
    }
  }

  /**
   * Starts a download: resolves with the header once the daemon has
   * answered (an error such as `blob_not_found` rejects here), and the
   * bytes as a {@link Readable} that follows the consumer's pace.
   */
  async get(hash: BlobHash | string, options: GetOptions = {}): Promise<Download> {
    const exchange = await this.begin(`get ${hash}`, options);
    let content: Content;
    try {
      content = await this.startGet(exchange, hash, options);
    } catch (error) {
      exchange.end("the get failed");
      throw error;
    }
    const stream = Readable.from(receiveData(exchange, content), { objectMode: false });
    return { content, stream };
  }

  /**
   * Downloads a blob (or a range) into `destination`, at its pace, and
   * ends it (unless `end: false`) once everything is written. Returns the
   * header.
   */
  async getTo(
    hash: BlobHash | string,
    destination: Writable,
    options: GetOptions & { end?: boolean } = {},
  ): Promise<Content> {
    const { content, stream } = await this.get(hash, options);
    try {
      await pipeline(stream, destination, { end: options.end ?? true });
    } catch (error) {
      if (error instanceof HearthError) throw error;
      throw new LocalIoError("cannot write the blob", error);
    }
    return content;
  }

  /** A whole blob in memory (for small blobs; stream big ones with {@link get} or {@link getTo}). */
  async getBytes(hash: BlobHash | string, options: GetOptions = {}): Promise<Buffer> {
    const { stream } = await this.get(hash, options);
    const parts: Buffer[] = [];
    for await (const part of stream) parts.push(part as Buffer);
    return Buffer.concat(parts);
  }

  private async startGet(exchange: Exchange, hash: string, options: GetOptions): Promise<Content> {
    const request: Record<string, unknown> = { type: "get", hash };
    if (options.offset !== undefined) request.offset = options.offset;
    if (options.length !== undefined) request.length = options.length;
    const sent = exchange.send(request);
    if (sent) await sent;
    const header = await exchange.readAnswer();
    if (header.type !== "content") throw unexpected("content", header);
    return stripType(header) as unknown as Content;
  }

  /** A blob's metadata. */
  async stat(hash: BlobHash | string, options?: CallOptions): Promise<BlobInfo> {
    return stripType(await this.call<BlobInfo & { type?: string }>(`stat ${hash}`, { type: "stat", hash }, "stat", options));
  }

  /** Whether a blob is stored. */
  async has(hash: BlobHash | string, options?: CallOptions): Promise<boolean> {
    return (await this.call<{ present: boolean }>(`has ${hash}`, { type: "has", hash }, "has", options)).present;
  }

  /** Removes a blob (a pinned one only with `force`); returns its size. */
  async delete(hash: BlobHash | string, options: CallOptions & { force?: boolean } = {}): Promise<number> {
    const request: Record<string, unknown> = { type: "delete", hash };
    if (options.force) request.force = true;
    return (await this.call<{ size: number }>(`delete ${hash}`, request, "deleted", options)).size;
  }

  /** One page of blobs in hash order, after `cursor`. */
  async list(options: CallOptions & { cursor?: string; limit?: number } = {}): Promise<ListPage> {
    const request: Record<string, unknown> = { type: "list" };
    if (options.cursor !== undefined) request.cursor = options.cursor;
    if (options.limit !== undefined) request.limit = options.limit;
    const page = await this.call<ListPage>("list", request, "list", options);
    return page.next_cursor === undefined ? { blobs: page.blobs } : { blobs: page.blobs, next_cursor: page.next_cursor };
  }

  /** Every blob, page by page. */
  async *listAll(options: CallOptions & { pageSize?: number } = {}): AsyncGenerator<BlobInfo, void, undefined> {
    let cursor: string | undefined;
    do {
      const page = await this.list({
        ...(options.signal ? { signal: options.signal } : {}),
        ...(cursor ? { cursor } : {}),
        ...(options.pageSize ? { limit: options.pageSize } : {}),
      });
      yield* page.blobs;
      cursor = page.next_cursor;
    } while (cursor !== undefined);
  }

  /** Pins a blob: collection never removes it. */
  async pin(hash: BlobHash | string, options?: CallOptions): Promise<void> {
    await this.call(`pin ${hash}`, { type: "pin", hash }, "pin_state", options);
  }

  /** Unpins a blob. */
  async unpin(hash: BlobHash | string, options?: CallOptions): Promise<void> {
    await this.call(`unpin ${hash}`, { type: "unpin", hash }, "pin_state", options);
  }

  /** Collects least-recently-used unpinned blobs down to `targetBytes` (default: the budget). */
  async gc(options: CallOptions & { targetBytes?: number } = {}): Promise<GcReport> {
    const request: Record<string, unknown> = { type: "gc" };
    if (options.targetBytes !== undefined) request.target_bytes = options.targetBytes;
    return stripType(await this.call<GcReport & { type?: string }>("gc", request, "gc", options));
  }

  /** The store's totals, budget and HTTP URL. */
  async usage(options?: CallOptions): Promise<Usage> {
    return stripType(await this.call<Usage & { type?: string }>("usage", { type: "usage" }, "usage", options));
  }
}

const EMPTY = new Uint8Array(0);

function storedOf(answer: Record<string, unknown>): Stored {
  return { hash: answer.hash as BlobHash, size: answer.size as number, existed: answer.existed as boolean };
}

function basename(path: string): string {
  const cut = path.lastIndexOf("/");
  return cut >= 0 ? path.slice(cut + 1) : path;
}

/**
 * Sends `source` as data frames. Returns the daemon's error if it gave up
 * on the put part-way (after sending the end marker, so that the
 * connection stays usable); throws when the connection itself fails.
 *
 * Chunks are gathered into frames of up to {@link PUT_CHUNK} bytes, but
 * what has been gathered is sent as soon as the source has nothing more
 * ready (a slow pipe), so that the daemon sees the data, and can judge it,
 * as it comes.
 */
async function streamData(exchange: Exchange, source: PutSource): Promise<HearthError | undefined> {
  const chunkSize = Math.max(1, Math.min(exchange.maxFrame, PUT_CHUNK));
  if (source instanceof Uint8Array) {
    for (let at = 0; at < source.length; at += chunkSize) {
      if (exchange.conn.hasArrival()) return endEarly(exchange);
      await exchange.sendData(source.subarray(at, at + chunkSize));
    }
    return undefined;
  }
  const iterator = toAsyncIterator(source);
  let buffer = Buffer.allocUnsafe(chunkSize);
  let filled = 0;
  const flush = async (data: Uint8Array): Promise<HearthError | undefined> => {
    if (exchange.conn.hasArrival()) return endEarly(exchange);
    await exchange.sendData(data);
    return undefined;
  };
  try {
    for (;;) {
      const next = iterator.next();
      let outcome = await nextOrEvent(exchange, next, filled > 0);
      if (outcome === IDLE) {
        const early = await flush(buffer.subarray(0, filled));
        if (early) return early;
        // The socket may still hold the sent buffer: fill a new one.
        buffer = Buffer.allocUnsafe(chunkSize);
        filled = 0;
        outcome = await nextOrEvent(exchange, next, false);
      }
      if (outcome === ARRIVED) {
        // The daemon gave up on the put (or went away) while the source was busy.
        next.catch(() => undefined);
        return await endEarly(exchange);
      }
      if (outcome === IDLE) continue;
      if ("failure" in outcome) throw new LocalIoError("cannot read the data to put", outcome.failure);
      if (outcome.step.done) break;
      const value = outcome.step.value;
      let chunk = typeof value === "string" ? Buffer.from(value) : value;
      if (filled === 0 && chunk.length === chunkSize) {
        const early = await flush(chunk);
        if (early) return early;
        continue;
      }
      while (chunk.length > 0) {
        const take = Math.min(chunk.length, chunkSize - filled);
        buffer.set(chunk.subarray(0, take), filled);
        filled += take;
        chunk = chunk.subarray(take);
        if (filled === chunkSize) {
          const early = await flush(buffer);
          if (early) return early;
          buffer = Buffer.allocUnsafe(chunkSize);
          filled = 0;
        }
      }
    }
    if (filled > 0) return await flush(buffer.subarray(0, filled));
    return undefined;
  } finally {
    // Not awaited: a source busy producing (a generator inside an `await`)
    // answers `return` only once that step ends, which may be never.
    iterator.return?.()?.catch(() => undefined);
  }
}

const ARRIVED: unique symbol = Symbol("arrived");
const IDLE: unique symbol = Symbol("idle");

type Outcome = { step: IteratorResult<Uint8Array | string> } | { failure: unknown } | typeof ARRIVED | typeof IDLE;

/**
 * Whichever comes first: the source's next chunk, a frame from the daemon,
 * or (with `idle`) the source having nothing ready by the event loop's
 * next turn.
 */
function nextOrEvent(
  exchange: Exchange,
  next: Promise<IteratorResult<Uint8Array | string>>,
  idle: boolean,
): Promise<Outcome> {
  return new Promise<Outcome>((resolve) => {
    let settled = false;
    let cancelArrival: (() => void) | undefined;
    let timer: NodeJS.Immediate | undefined;
    const settle = (outcome: Outcome): void => {
      if (settled) return;
      settled = true;
      cancelArrival?.();
      if (timer) clearImmediate(timer);
      resolve(outcome);
    };
    cancelArrival = exchange.onArrival(() => settle(ARRIVED));
    if (!settled && idle) timer = setImmediate(() => settle(IDLE));
    next.then(
      (step) => settle({ step }),
      (failure: unknown) => settle({ failure }),
    );
  });
}

/**
 * A frame arrived before the end of the put: the daemon gave up on it and
 * discards data up to the end marker. Sends the marker (so the connection
 * stays usable) and returns the daemon's error.
 */
async function endEarly(exchange: Exchange): Promise<HearthError> {
  const response = await exchange.readResponse();
  if (response.type !== "error") throw unexpected("nothing before the end of the put", response);
  const error = exchange.errorOf(response);
  if (!error.connectionUsable) return error;
  await exchange.sendData(EMPTY);
  exchange.complete();
  return error;
}

function toAsyncIterator(source: Exclude<PutSource, Uint8Array>): AsyncIterator<Uint8Array | string> {
  if (Symbol.asyncIterator in source) return (source as AsyncIterable<Uint8Array | string>)[Symbol.asyncIterator]();
  const iterator = (source as Iterable<Uint8Array>)[Symbol.iterator]();
  return {
    next: async () => iterator.next(),
    return: async () => iterator.return?.() ?? { done: true, value: undefined },
  };
}

/** The data frames of a get, then its end (or its error). */
async function* receiveData(exchange: Exchange, content: Content): AsyncGenerator<Buffer, void, undefined> {
  try {
    let received = 0;
    for (;;) {
      const frame = await exchange.readFrame();
      if (frame.length === 0) break;
      received += frame.length;
      if (received > content.length) {
        throw new ProtocolError(`the daemon sent more than the ${content.length} bytes it announced`);
      }
      yield frame;
    }
    if (received < content.length) {
      // An early end marker announces one error frame.
      const response = await exchange.readResponse();
      exchange.complete();
      if (response.type === "error") throw exchange.errorOf(response);
      throw unexpected("an error after a short get", response);
    }
    exchange.complete();
  } finally {
    exchange.end("the download was not read to its end");
  }
}
