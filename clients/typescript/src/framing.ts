/**
 * The frame layout, both ways: a 4-byte big-endian length `N`, then `N`
 * bytes of payload (proto-docs/framing.md).
 *
 * ```text
 *   0        1        2        3        4                      4+N
 *   +--------+--------+--------+--------+---------- ... ---------+
 *   |        length N (u32, big-endian) |  payload: N bytes      |
 *   +--------+--------+--------+--------+---------- ... ---------+
 * ```
 *
 * {@link FrameDecoder} is pure (no I/O): a socket's reads are pushed in as
 * they come, however they cut the stream (a frame split over many reads,
 * many frames in one read), and whole frames come out.
 *
 * @module
 */

/** The default maximum frame, before a handshake says otherwise (16 MiB). */
export const DEFAULT_MAX_FRAME = 16 * 1024 * 1024;

/** The length prefix's size. */
export const HEADER_LEN = 4;

/** A frame's length prefix exceeds the maximum the reader accepts. */
export class FrameTooLargeError extends Error {
  constructor(
    readonly length: number,
    readonly max: number,
  ) {
    super(`the daemon announced a frame of ${length} bytes, above the maximum of ${max}`);
  }
}

/** The 4-byte header of a frame of `length` bytes. */
export function frameHeader(length: number): Buffer {
  const header = Buffer.allocUnsafe(HEADER_LEN);
  header.writeUInt32BE(length, 0);
  return header;
}

/** A whole frame (header and payload) in one buffer, for small payloads. */
export function encodeFrame(payload: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(HEADER_LEN + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  frame.set(payload, HEADER_LEN);
  return frame;
}

/** A JSON object as a frame. */
export function encodeJsonFrame(value: unknown): Buffer {
  const text = JSON.stringify(value);
  const length = Buffer.byteLength(text);
  const frame = Buffer.allocUnsafe(HEADER_LEN + length);
  frame.writeUInt32BE(length, 0);
  frame.write(text, HEADER_LEN, "utf8");
  return frame;
}

/**
 * Cuts a byte stream into frames. It holds at most one incomplete frame
 * plus the read that completes it, and never reserves an announced length
 * before its bytes arrive.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(public maxFrame: number = DEFAULT_MAX_FRAME) {}

  /** Bytes held that are not yet a whole frame. */
  get pendingBytes(): number {
    return this.buffered;
  }

  /**
   * Adds `chunk` and returns the frames it completes, in order. Throws
   * {@link FrameTooLargeError} as soon as a length prefix above `maxFrame`
   * is seen (the stream cannot be resynchronised after that).
   */
  push(chunk: Buffer): Buffer[] {
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    const frames: Buffer[] = [];
    for (;;) {
      if (this.buffered < HEADER_LEN) return frames;
      const length = this.peekLength();
      if (length > this.maxFrame) throw new FrameTooLargeError(length, this.maxFrame);
      if (this.buffered < HEADER_LEN + length) return frames;
      this.consume(HEADER_LEN);
      frames.push(this.consume(length));
    }
  }

  private peekLength(): number {
    const first = this.chunks[0] as Buffer;
    if (first.length >= HEADER_LEN) return first.readUInt32BE(0);
    const header = Buffer.allocUnsafe(HEADER_LEN);
    let filled = 0;
    for (const chunk of this.chunks) {
      const n = Math.min(chunk.length, HEADER_LEN - filled);
      chunk.copy(header, filled, 0, n);
      filled += n;
      if (filled === HEADER_LEN) break;
    }
    return header.readUInt32BE(0);
  }

  /** Removes and returns the next `n` bytes (`n <= buffered`), without copying when one chunk holds them. */
  private consume(n: number): Buffer {
    this.buffered -= n;
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let used = 0;
    while (filled < n) {
      const chunk = this.chunks[used] as Buffer;
      const take = Math.min(chunk.length, n - filled);
      chunk.copy(out, filled, 0, take);
      filled += take;
      if (take === chunk.length) used++;
      else this.chunks[used] = chunk.subarray(take);
    }
    // One splice: shifting chunk by chunk is quadratic when reads are tiny.
    this.chunks.splice(0, used);
    return out;
  }
}
