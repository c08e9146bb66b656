//! The `process` channel's requests.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::ProcessService;
use super::logs::LogReader;
use crate::daemon::conn::session::{Closed, Session};
use crate::protocol::process::{ProcessChannel, ProcessRequest, ProcessResponse, ProcessState, Selector};
use crate::protocol::queue::Base64;
use crate::protocol::{ErrorCode, WireError};

/// The most log bytes in one `log_data` frame.
const LOG_CHUNK: usize = 64 << 10;
/// Room for a `log_data` frame's JSON around its base64.
const FRAME_OVERHEAD: usize = 64;

pub(crate) async fn serve(mut session: Session<ProcessChannel>, service: Arc<ProcessService>) {
    let stop = session.shared().stop.clone();
    while let Some(request) = session.next_request().await {
        if let ProcessRequest::Logs { name, lines, follow } = request {
            if logs(&mut session, &service, &name, lines, follow).await.is_err() {
                break;
            }
            continue;
        }
        // A client that gives up while its request waits (for a process to
        // become ready, to stop) frees its connection at once; what it
        // asked for goes on.
        let response = tokio::select! {
            response = handle(&service, request, &stop) => response.unwrap_or_else(ProcessResponse::Error),
            () = session.peer_closed() => break,
        };
        if session.send(&response).await.is_err() {
            break;
        }
    }
}

fn selected(select: &Selector) -> Result<(), WireError> {
    if select.given() == 1 {
        return Ok(());
    }
    Err(WireError::new(
        ErrorCode::InvalidRequest,
        "name exactly one of \"name\", \"label\" or \"all\": true to say which processes",
    ))
}

async fn handle(
    service: &ProcessService,
    request: ProcessRequest,
    stop: &CancellationToken,
) -> Result<ProcessResponse, WireError> {
    Ok(match request {
        ProcessRequest::Status { select } => {
            if select.given() > 1 {
                selected(&select)?;
            }
            ProcessResponse::Status(service.status(&select)?)
        }
        ProcessRequest::Define { definition, start } => {
            let name = definition.name.clone();
            let (source, changed, state) = service.define(*definition, start)?;
            ProcessResponse::Defined { name, source, changed, state }
        }
        ProcessRequest::Remove { name } => {
            let source = service.remove(&name, stop).await?;
            ProcessResponse::Removed { name, source }
        }
        ProcessRequest::Start { select, no_wait } => {
            selected(&select)?;
            ProcessResponse::Started { processes: service.start(&select, no_wait, stop).await? }
        }
        ProcessRequest::Stop { select } => {
            selected(&select)?;
            ProcessResponse::Stopped { processes: service.stop(&select, stop).await? }
        }
        ProcessRequest::Restart { select, rolling, no_wait } => {
            selected(&select)?;
            if rolling && no_wait {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    "a rolling restart waits for each process: it cannot be no_wait",
                ));
            }
            ProcessResponse::Restarted { processes: service.restart(&select, rolling, no_wait, stop).await? }
        }
        ProcessRequest::Logs { .. } => unreachable!("streamed by serve"),
    })
}

/// Streams the log of `name`: its last `lines` lines (or all of it), then,
/// with `follow`, what it writes next, until the client closes, the process
/// is removed, or the daemon stops.
async fn logs(
    session: &mut Session<ProcessChannel>,
    service: &Arc<ProcessService>,
    name: &str,
    lines: Option<u32>,
    follow: bool,
) -> Result<(), Closed> {
    let stop = session.shared().stop.clone();
    let Some((path, mut written)) = service.log_of(name) else {
        return session.send(&ProcessResponse::Error(super::state::unknown_process(name))).await;
    };
    let mut changed = service.changed.subscribe();
    let opened = tokio::task::spawn_blocking(move || LogReader::open(path, lines)).await;
    let mut reader = match opened {
        Ok(Ok(reader)) => reader,
        Ok(Err(e)) => return session.send(&internal(format!("cannot read the log: {e}"))).await,
        Err(e) => return session.send(&internal(format!("cannot read the log: {e}"))).await,
    };
    let max_frame = session.shared().config.server.max_frame.as_usize();
    let chunk = LOG_CHUNK.min(max_frame.saturating_sub(FRAME_OVERHEAD) / 4 * 3).max(1);
    loop {
        loop {
            let read = tokio::task::spawn_blocking(move || {
                let data = reader.read(chunk);
                (reader, data)
            })
            .await;
            let data = match read {
                Ok((back, Ok(data))) => {
                    reader = back;
                    data
                }
                Ok((_, Err(e))) => return session.send(&internal(format!("cannot read the log: {e}"))).await,
                Err(e) => return session.send(&internal(format!("cannot read the log: {e}"))).await,
            };
            if data.is_empty() {
                break;
            }
            session.send(&ProcessResponse::LogData { data: Base64(data) }).await?;
        }
        let state = service.state_of(name);
        if !follow || state.is_none() {
            let state = state.unwrap_or(ProcessState::Stopped);
            return session.send(&ProcessResponse::LogEnd { state }).await;
        }
        tokio::select! {
            () = stop.cancelled() => {
                let e = WireError::new(ErrorCode::ShuttingDown, "the daemon is shutting down");
                session.send(&ProcessResponse::Error(e)).await?;
                return Err(Closed);
            }
            () = session.peer_closed() => return Err(Closed),
            r = written.changed() => if r.is_err() { written = service.log_of(name).map_or(written, |(_, w)| w) },
            _ = changed.changed() => {}
        }
    }
}

fn internal(message: String) -> ProcessResponse {
    ProcessResponse::Error(WireError::new(ErrorCode::Internal, message))
}
