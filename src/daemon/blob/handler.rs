//! The `blob` channel's sessions: one JSON request at a time, and the two
//! streamed exchanges, `put` and `get`.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::store::{PutMeta, StoreError, is_disk_full};
use super::{BlobService, ingest, media};
use crate::daemon::conn::session::{Closed, Session};
use crate::protocol::blob::{
    BlobChannel, BlobHash, BlobRequest, BlobResponse, Content, DEFAULT_LIST_LIMIT, GetRequest, MAX_LIST_LIMIT,
    MAX_MEDIA_TYPE_LEN, MAX_NAME_LEN, PutRequest, Stored,
};
use crate::protocol::event::EventData;
use crate::protocol::{Channel, ErrorCode, WireError};

/// Data frames queued between the socket and the disk thread, per put.
/// With the client library's 1 MiB frames that is a few MiB per transfer.
const PUT_QUEUE: usize = 4;

/// Largest data frame the daemon sends in a get.
const GET_CHUNK: usize = 1024 * 1024;

pub(crate) async fn serve(mut session: Session<BlobChannel>, service: Arc<BlobService>) {
    while let Some(request) = session.next_request().await {
        let result = match request {
            BlobRequest::Put(put) => receive_put(&mut session, &service, put).await,
            BlobRequest::Get(get) => send_blob(&mut session, &service, get).await,
            other => {
                let response = handle(&service, other).await.unwrap_or_else(BlobResponse::Error);
                session.send(&response).await
            }
        };
        if result.is_err() {
            break;
        }
    }
}

/// The requests that are one frame each way.
async fn handle(service: &Arc<BlobService>, request: BlobRequest) -> Result<BlobResponse, WireError> {
    let store = &service.store;
    Ok(match request {
        BlobRequest::Stat { hash } => BlobResponse::Stat(store.info(&hash).ok_or_else(|| not_found(&hash))?),
        BlobRequest::Has { hash } => BlobResponse::Has { present: store.info(&hash).is_some(), hash },
        BlobRequest::List { cursor, limit } => {
            let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT);
            if !(1..=MAX_LIST_LIMIT).contains(&limit) {
                return Err(invalid(format!("limit must be between 1 and {MAX_LIST_LIMIT}, not {limit}")));
            }
            let Ok(after) = cursor.as_deref().map(BlobHash::parse).transpose() else {
                return Err(invalid("cursor is not a next_cursor this channel returned"));
            };
            let (blobs, more) = store.list(after.as_ref(), limit as usize);
            let next_cursor = if more { blobs.last().map(|b| b.hash.to_string()) } else { None };
            BlobResponse::List { blobs, next_cursor }
        }
        BlobRequest::Usage => BlobResponse::Usage(service.usage()),
        BlobRequest::Delete { hash, force } => {
            let (hash, size) =
                blocking(service, move |s| s.store.delete(&hash, force).map(|size| (hash, size))).await?;
            service.events.publish(Channel::Blob, EventData::BlobDelete { hash: hash.to_string(), size });
            BlobResponse::Deleted { hash, size }
        }
        BlobRequest::Pin { hash } => pin(service, hash, true).await?,
        BlobRequest::Unpin { hash } => pin(service, hash, false).await?,
        BlobRequest::Gc { target_bytes } => {
            let report = blocking(service, move |s| Ok(s.store.collect(target_bytes))).await?;
            service.collected(&report);
            BlobResponse::Gc(report)
        }
        BlobRequest::Put(_) | BlobRequest::Get(_) => unreachable!("streamed requests are handled by serve"),
    })
}

async fn pin(service: &Arc<BlobService>, hash: BlobHash, pinned: bool) -> Result<BlobResponse, WireError> {
    let hash = blocking(service, move |s| s.store.set_pinned(&hash, pinned).map(|()| hash)).await?;
    Ok(BlobResponse::PinState { hash, pinned })
}

/// Runs store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    service: &Arc<BlobService>,
    work: impl FnOnce(&BlobService) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, WireError> {
    let worker = service.clone();
    match tokio::task::spawn_blocking(move || work(&worker)).await {
        Ok(result) => result.map_err(|e| service.wire_error(e)),
        Err(e) => Err(WireError::new(ErrorCode::Internal, format!("blob task failed: {e}"))),
    }
}

impl BlobService {
    /// The wire form of a store failure (I/O details go to the log, not to
    /// the peer); an I/O failure is also remembered for health.
    pub(crate) fn wire_error(&self, e: StoreError) -> WireError {
        if matches!(e, StoreError::Io { .. }) {
            self.store_failed(e.to_string());
        }
        wire_error(e)
    }

    fn io_error(&self, context: &str, e: std::io::Error) -> WireError {
        self.wire_error(StoreError::io(context, e))
    }
}

fn wire_error(e: StoreError) -> WireError {
    match e {
        StoreError::NotFound(hash) => not_found(&hash),
        StoreError::Pinned(_) => WireError::new(ErrorCode::BlobPinned, e.to_string()),
        StoreError::Io { ref source, .. } if is_disk_full(source) => {
            tracing::warn!("blob store: {e}");
            WireError::new(ErrorCode::StorageFull, "the blob store's filesystem is full")
        }
        StoreError::Io { .. } => {
            tracing::error!("blob store: {e}");
            WireError::new(ErrorCode::Internal, "the blob store failed; the daemon's log has details")
        }
    }
}

fn not_found(hash: &BlobHash) -> WireError {
    WireError::new(ErrorCode::BlobNotFound, format!("no blob {hash} is stored"))
}

fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidRequest, message)
}

/// Checks the put header's fields.
fn check_put(put: &PutRequest, max_blob_size: Option<u64>) -> Result<(), WireError> {
    if let Some(name) = &put.name
        && (name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control))
    {
        return Err(invalid(format!("name must be 1 to {MAX_NAME_LEN} bytes without control characters")));
    }
    if let Some(media_type) = &put.media_type
        && (media_type.len() > MAX_MEDIA_TYPE_LEN || !media::is_valid(media_type))
    {
        return Err(invalid(format!("media_type {media_type:?} is not a media type like \"image/png\"")));
    }
    if let (Some(size), Some(max)) = (put.size, max_blob_size)
        && size > max
    {
        return Err(too_large(max));
    }
    Ok(())
}

fn too_large(max: u64) -> WireError {
    WireError::new(ErrorCode::BlobTooLarge, format!("blobs are limited to {max} bytes (blob.max_blob_size)"))
}

/// How the data frames of a put ended.
enum Ended {
    /// The end marker arrived.
    Complete,
    /// The put must fail; the rest of its frames are discarded.
    Rejected(WireError),
    /// The disk thread stopped; its result says why.
    WriterStopped,
}

async fn receive_put(
    session: &mut Session<BlobChannel>,
    service: &Arc<BlobService>,
    put: PutRequest,
) -> Result<(), Closed> {
    let max = service.max_blob_size;
    if let Err(e) = check_put(&put, max) {
        return session.send(&BlobResponse::Error(e)).await;
    }
    // The client named the content and it is stored: no data needs to travel.
    if let Some(hash) = put.sha256.clone() {
        let stored_size = service.store.info(&hash).map(|info| info.size);
        if let (Some(expected), Some(size)) = (put.size, stored_size)
            && expected != size
        {
            return session.send(&BlobResponse::Error(size_mismatch(expected, size))).await;
        }
        let pin = put.pin;
        let known = blocking(service, move |s| s.store.put_known(&hash, pin).map(|size| size.map(|s| (hash, s)))).await;
        match known {
            Ok(Some((hash, size))) => {
                let stored = Stored { hash, size, existed: true };
                service.put_event(&stored);
                return session.send(&BlobResponse::Stored(stored)).await;
            }
            Ok(None) => {}
            Err(e) => return session.send(&BlobResponse::Error(e)).await,
        }
    }
    let temp = match blocking(service, |s| s.store.create_temp()).await {
        Ok(temp) => temp,
        Err(e) => return session.send(&BlobResponse::Error(e)).await,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(PUT_QUEUE);
    let writer = tokio::task::spawn_blocking(move || ingest::receive(temp, rx));
    session.send(&BlobResponse::Ready).await?;

    let mut received = 0u64;
    let ended = loop {
        // `None`: the client went away (or the daemon is stopping). Dropping
        // the sender ends the disk thread, and its temp file goes with it.
        let frame = session.next_frame().await.ok_or(Closed)?;
        if frame.is_empty() {
            break Ended::Complete;
        }
        received += frame.len() as u64;
        if let Some(expected) = put.size
            && received > expected
        {
            break Ended::Rejected(size_mismatch(expected, received));
        }
        if let Some(max) = max
            && received > max
        {
            break Ended::Rejected(too_large(max));
        }
        if tx.send(frame).await.is_err() {
            break Ended::WriterStopped;
        }
    };
    drop(tx);
    // After the end marker, nothing of this put is left to discard.
    let marker_read = matches!(ended, Ended::Complete);
    let written = match writer.await {
        Ok(Ok(written)) => Ok(written),
        Ok(Err(e)) => Err(service.io_error("cannot write a put", e)),
        Err(e) => Err(WireError::new(ErrorCode::Internal, format!("blob writer failed: {e}"))),
    };
    let outcome = match (ended, written) {
        (Ended::Rejected(e), _) | (Ended::WriterStopped | Ended::Complete, Err(e)) => Err(e),
        (Ended::WriterStopped, Ok(_)) => Err(WireError::new(ErrorCode::Internal, "the blob writer stopped early")),
        (Ended::Complete, Ok(written)) => Ok(written),
    };
    let written = match outcome {
        Ok(written) => written,
        Err(e) => {
            session.send(&BlobResponse::Error(e)).await?;
            if marker_read {
                return Ok(());
            }
            return drain(session).await;
        }
    };
    let response = match finish_put(service, written, put).await {
        Ok(stored) => BlobResponse::Stored(stored),
        Err(e) => BlobResponse::Error(e),
    };
    session.send(&response).await
}

/// Checks the received data against the client's expectations, syncs it and
/// moves it into place.
async fn finish_put(
    service: &Arc<BlobService>,
    written: ingest::Received,
    put: PutRequest,
) -> Result<Stored, WireError> {
    let size = written.size();
    if let Some(expected) = put.size
        && expected != size
    {
        return Err(size_mismatch(expected, size));
    }
    let service2 = service.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let (temp, hash) = written.finish().map_err(|e| service2.io_error("cannot sync a put", e))?;
        if let Some(expected) = &put.sha256
            && *expected != hash
        {
            return Err(WireError::new(
                ErrorCode::HashMismatch,
                format!("the data hashes to {hash}, not to the announced {expected}; nothing was stored"),
            ));
        }
        let meta = PutMeta { media_type: put.media_type, name: put.name, pin: put.pin };
        let existed = service2.store.commit(temp, &hash, size, &meta).map_err(|e| service2.wire_error(e))?;
        Ok(Stored { hash, size, existed })
    })
    .await
    .map_err(|e| WireError::new(ErrorCode::Internal, format!("blob commit failed: {e}")))??;
    if !stored.existed {
        tracing::debug!(hash = %stored.hash, size, "stored a blob");
        service.after_put();
    }
    service.put_event(&stored);
    Ok(stored)
}

fn size_mismatch(expected: u64, got: u64) -> WireError {
    let got = if got > expected { format!("more than {expected}") } else { got.to_string() };
    WireError::new(
        ErrorCode::SizeMismatch,
        format!("the put announced {expected} bytes but sent {got}; nothing was stored"),
    )
}

/// Discards the data frames of a rejected put, up to its end marker, so
/// the connection stays in step.
async fn drain(session: &mut Session<BlobChannel>) -> Result<(), Closed> {
    loop {
        let frame = session.next_frame().await.ok_or(Closed)?;
        if frame.is_empty() {
            return Ok(());
        }
    }
}

async fn send_blob(
    session: &mut Session<BlobChannel>,
    service: &Arc<BlobService>,
    get: GetRequest,
) -> Result<(), Closed> {
    let hash = get.hash.clone();
    let opened = blocking(service, move |s| s.store.open_blob(&hash)).await;
    let (file, info) = match opened {
        Ok(opened) => opened,
        Err(e) => return session.send(&BlobResponse::Error(e)).await,
    };
    let offset = get.offset.unwrap_or(0);
    if offset > info.size {
        let e = WireError::new(
            ErrorCode::RangeNotSatisfiable,
            format!("offset {offset} is past the end of the blob ({} bytes)", info.size),
        );
        return session.send(&BlobResponse::Error(e)).await;
    }
    let length = get.length.unwrap_or(u64::MAX).min(info.size - offset);
    service.store.touch(&get.hash);
    let header = Content { hash: get.hash, size: info.size, offset, length, media_type: info.media_type };
    session.send(&BlobResponse::Content(header)).await?;

    let chunk = GET_CHUNK.min(session.shared().config.server.max_frame.as_usize());
    let mut chunks = super::store::spawn_reader(file, offset, length, chunk);
    let stop = session.shared().stop.clone();
    let mut sent = 0u64;
    let failure = loop {
        if sent == length {
            break None;
        }
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break Some(WireError::new(ErrorCode::ShuttingDown, "the daemon is shutting down")),
            next = chunks.recv() => next,
        };
        match next {
            Some(Ok(bytes)) => {
                sent += bytes.len() as u64;
                session.send_frame(bytes).await?;
            }
            Some(Err(e)) => break Some(service.io_error("cannot read a blob", e)),
            None => break Some(WireError::new(ErrorCode::Internal, "the blob reader stopped early")),
        }
    };
    // The end marker; before `length` bytes it announces an error frame.
    session.send_frame(Bytes::new()).await?;
    match failure {
        None => Ok(()),
        Some(e) => {
            let stopping = e.code == ErrorCode::ShuttingDown;
            session.send(&BlobResponse::Error(e)).await?;
            if stopping { Err(Closed) } else { Ok(()) }
        }
    }
}
