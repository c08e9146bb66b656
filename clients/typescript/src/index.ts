/**
 * hearth-client: talk to hearth, the per-user singleton daemon, from
 * Node.js.
 *
 * - {@link ensureDaemonRunning} connects, starting `hearthd` if none runs.
 * - One client class per channel: {@link StatusClient}, {@link PoolClient},
 *   {@link QueueClient}, {@link BlobClient}; each owns one connection.
 * - {@link SyncDoc} opens a live document of the `sync` channel as JSON.
 * - `StatusClient.events()` streams what the daemon does ({@link Notice}).
 * - Every failure is a {@link HearthError} with a stable `code`.
 *
 * @module
 */

export * from "./errors.js";
export {
  type Accepted,
  type AnyResponse,
  type CallOptions,
  type ConnectOptions,
  Connection,
  DEFAULT_CLIENT_NAME,
  DEFAULT_CONNECT_TIMEOUT_MS,
  Exchange,
  PROTOCOL_VERSION,
} from "./connection.js";
export { DEFAULT_MAX_FRAME, FrameDecoder, FrameTooLargeError, encodeFrame, encodeJsonFrame } from "./framing.js";
export * from "./paths.js";
export * from "./ensure.js";
export { ChannelClient } from "./channel.js";
export * from "./status.js";
export {
  type BlobDeleteEvent,
  type BlobGcEvent,
  type BlobPutEvent,
  EVENT_KINDS,
  type EventHead,
  type EventKind,
  EventStream,
  type EventsOptions,
  type HealthChangedEvent,
  type HearthEvent,
  type JobStateEvent,
  type Lagged,
  type Notice,
  type PoolBuildEndedEvent,
  type PoolBuildStartedEvent,
  type PoolReleaseEvent,
  type PoolTakeEvent,
  type SyncCompactedEvent,
  type SyncPeerJoinedEvent,
  type SyncPeerLeftEvent,
  type SyncRoomClosedEvent,
  type SyncRoomOpenedEvent,
  type SyncSettingsEditEvent,
  type UnknownEvent,
} from "./events.js";
export * from "./pool.js";
export * from "./queue.js";
export * from "./blob.js";
export * from "./sync.js";
export { VERSION } from "./version.js";
