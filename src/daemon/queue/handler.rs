//! The `queue` channel's requests.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::broadcast;

use super::writer::{Canceled, NewJob, Transition};
use super::{KillReason, QueueService, store};
use crate::daemon::conn::session::{Closed, Session};
use crate::protocol::queue::{
    Base64, DEFAULT_LIST_LIMIT, DEFAULT_QUEUE, Job, JobSpec, JobState, LOG_CHUNK, LogsRequest, MAX_ATTEMPTS, MAX_KEY,
    MAX_LIST_LIMIT, MAX_QUEUE_NAME, QueueChannel, QueueRequest, QueueResponse, QueueStats,
};
use crate::protocol::{ErrorCode, WireError};

pub(crate) async fn serve(mut session: Session<QueueChannel>, service: Arc<QueueService>) {
    while let Some(request) = session.next_request().await {
        let result = match request {
            QueueRequest::Wait { id } => wait(&mut session, &service, id).await,
            QueueRequest::Logs(request) => logs(&mut session, &service, request).await,
            other => {
                let response = handle(&service, other).await.unwrap_or_else(QueueResponse::Error);
                session.send(&response).await
            }
        };
        if result.is_err() {
            break;
        }
    }
}

async fn handle(service: &Arc<QueueService>, request: QueueRequest) -> Result<QueueResponse, WireError> {
    match request {
        QueueRequest::Submit(spec) => {
            let new = new_job(service, spec)?;
            let (job, deduplicated) = service.writer.submit(new).await?;
            Ok(QueueResponse::Submitted { job, deduplicated })
        }
        QueueRequest::Get { id } => {
            let (job, attempts) = service
                .read(move |c| {
                    let Some(job) = store::get_job(c, id)? else { return Ok(None) };
                    Ok(Some((job, store::attempts(c, id)?)))
                })
                .await?
                .ok_or_else(|| not_found(id))?;
            Ok(QueueResponse::Job { job, attempts })
        }
        QueueRequest::List(filter) => {
            let limit = filter.limit.unwrap_or(DEFAULT_LIST_LIMIT);
            if limit == 0 || limit > MAX_LIST_LIMIT {
                return Err(invalid(format!("limit must be between 1 and {MAX_LIST_LIMIT}, not {limit}")));
            }
            let (jobs, next_before_id) = service.read(move |c| store::list(c, &filter, limit)).await?;
            Ok(QueueResponse::Jobs { jobs, next_before_id })
        }
        QueueRequest::Cancel { id } => cancel(service, id).await,
        QueueRequest::Stats => stats(service).await,
        QueueRequest::Retry(selection) => {
            check_selection(&selection)?;
            Ok(QueueResponse::Retried { ids: service.writer.retry(selection).await? })
        }
        QueueRequest::Purge(selection) => {
            check_selection(&selection)?;
            let ids = service.writer.purge(selection).await?;
            service.remove_logs(ids.clone()).await;
            Ok(QueueResponse::Purged { ids })
        }
        QueueRequest::Wait { .. } | QueueRequest::Logs(_) => Err(WireError::new(ErrorCode::Internal, "streamed")),
    }
}

fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidRequest, message)
}

fn not_found(id: u64) -> WireError {
    WireError::new(ErrorCode::JobNotFound, format!("no job {id}"))
}

fn check_selection(selection: &crate::protocol::queue::Selection) -> Result<(), WireError> {
    match (selection.all, selection.ids.is_empty()) {
        (true, false) => Err(invalid("give either ids or all, not both")),
        (false, true) => Err(invalid("give the ids of dead jobs, or all: true")),
        _ if selection.queue.is_some() && !selection.all => Err(invalid("queue filters only with all: true")),
        _ => Ok(()),
    }
}

fn check_queue_name(name: &str) -> Result<(), WireError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_QUEUE_NAME
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "queue name {name:?} must be 1 to {MAX_QUEUE_NAME} characters of A-Z, a-z, 0-9, '-', '_' and '.'"
        )))
    }
}

/// Checks a submitted spec and fills in the configured defaults.
fn new_job(service: &QueueService, spec: JobSpec) -> Result<NewJob, WireError> {
    let config = &service.config;
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err(invalid("argv must name a program: it is empty"));
    }
    if spec.argv.iter().any(|a| a.contains('\0')) {
        return Err(invalid("argv must not contain NUL bytes"));
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(invalid(format!(
                "invalid environment variable {k:?}: names are non-empty, without '=' or NUL"
            )));
        }
    }
    let cwd = match spec.cwd {
        Some(cwd) if !cwd.starts_with('/') || cwd.contains('\0') => {
            return Err(invalid(format!("cwd must be an absolute path, not {cwd:?}")));
        }
        Some(cwd) => cwd,
        None => service.home.clone(),
    };
    let queue = spec.queue.unwrap_or_else(|| DEFAULT_QUEUE.into());
    check_queue_name(&queue)?;
    if let Some(key) = &spec.key
        && (key.is_empty() || key.len() > MAX_KEY)
    {
        return Err(invalid(format!("an idempotency key must be 1 to {MAX_KEY} bytes")));
    }
    let max_attempts = spec.max_attempts.unwrap_or(config.max_attempts);
    if max_attempts == 0 || max_attempts > MAX_ATTEMPTS {
        return Err(invalid(format!("max_attempts must be between 1 and {MAX_ATTEMPTS}, not {max_attempts}")));
    }
    let input = match spec.input {
        None => None,
        Some(serde_json::Value::String(text)) => Some(text.into_bytes()),
        Some(value) => Some(serde_json::to_vec(&value).map_err(|e| invalid(format!("input: {e}")))?),
    };
    if let Some(input) = &input
        && input.len() as u64 > config.max_input.0
    {
        return Err(WireError::new(
            ErrorCode::InputTooLarge,
            format!("the input is {} bytes; queue.max_input is {}", input.len(), config.max_input),
        ));
    }
    let ms = |d: crate::units::HumanDuration| d.0.as_millis() as u64;
    let backoff_base_ms = spec.backoff_base_ms.unwrap_or(ms(config.backoff_base));
    let backoff_cap_ms = spec.backoff_cap_ms.unwrap_or(ms(config.backoff_cap).max(backoff_base_ms));
    if backoff_cap_ms < backoff_base_ms {
        return Err(invalid("backoff_cap_ms must not be smaller than backoff_base_ms"));
    }
    let timeout_ms = spec.timeout_ms.or(Some(ms(config.timeout))).filter(|t| *t > 0);
    Ok(NewJob {
        queue,
        priority: spec.priority.unwrap_or(0),
        argv: spec.argv,
        env: spec.env,
        cwd,
        input,
        key: spec.key,
        max_attempts,
        timeout_ms,
        backoff_base_ms,
        backoff_cap_ms,
        run_at_ms: spec.run_at_ms,
        key_retention_ms: ms(config.key_retention),
    })
}

async fn get(service: &Arc<QueueService>, id: u64) -> Result<Job, WireError> {
    service.read(move |c| store::get_job(c, id)).await?.ok_or_else(|| not_found(id))
}

/// Cancels a job; for a running one, kills its group and answers once the
/// attempt's end is committed.
async fn cancel(service: &Arc<QueueService>, id: u64) -> Result<QueueResponse, WireError> {
    let mut events = service.events.subscribe();
    if let Canceled::Done(job) = service.writer.cancel(id).await? {
        return Ok(QueueResponse::Canceled { job: *job });
    }
    if let Some(f) = service.lock_in_flight().get(&id) {
        f.kill.send_replace(Some(KillReason::Cancel));
    }
    loop {
        let job = get(service, id).await?;
        if job.state.is_final() {
            return match job.state {
                JobState::Canceled => Ok(QueueResponse::Canceled { job }),
                other => Err(WireError::new(ErrorCode::JobFinished, format!("job {id} ended ({other}) first"))),
            };
        }
        next_event_for(&mut events, id).await;
    }
}

/// Waits for a state change of job `id` (or a lag, after which the caller re-reads).
async fn next_event_for(events: &mut broadcast::Receiver<Transition>, id: u64) {
    loop {
        match events.recv().await {
            Ok(t) if t.id == id => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

fn shutting_down() -> QueueResponse {
    QueueResponse::Error(WireError::new(ErrorCode::ShuttingDown, "the daemon is shutting down"))
}

async fn wait(session: &mut Session<QueueChannel>, service: &Arc<QueueService>, id: u64) -> Result<(), Closed> {
    let stop = session.shared().stop.clone();
    let mut events = service.events.subscribe();
    let mut last: Option<(JobState, u32)> = None;
    loop {
        let job = match get(service, id).await {
            Ok(job) => job,
            Err(e) => return session.send(&QueueResponse::Error(e)).await,
        };
        let done = job.state.is_final();
        if last != Some((job.state, job.attempts)) {
            last = Some((job.state, job.attempts));
            session.send(&QueueResponse::JobEvent { job }).await?;
        }
        if done {
            return Ok(());
        }
        tokio::select! {
            () = stop.cancelled() => {
                session.send(&shutting_down()).await?;
                return Err(Closed);
            }
            () = session.peer_closed() => return Err(Closed),
            () = next_event_for(&mut events, id) => {}
        }
    }
}

async fn logs(
    session: &mut Session<QueueChannel>,
    service: &Arc<QueueService>,
    req: LogsRequest,
) -> Result<(), Closed> {
    let stop = session.shared().stop.clone();
    let path = service.log_path(req.id, req.stream);
    let mut events = service.events.subscribe();
    let mut offset = req.offset;
    loop {
        // Subscribe before reading, so that nothing written after the read is missed.
        let mut output = service.lock_in_flight().get(&req.id).map(|f| f.output.subscribe());
        let state = match get(service, req.id).await {
            Ok(job) => job.state,
            Err(e) => return session.send(&QueueResponse::Error(e)).await,
        };
        loop {
            let chunk = match read_chunk(&path, offset).await {
                Ok(chunk) => chunk,
                Err(e) => {
                    let error = WireError::new(ErrorCode::Internal, format!("cannot read the log: {e}"));
                    return session.send(&QueueResponse::Error(error)).await;
                }
            };
            if chunk.is_empty() {
                break;
            }
            let len = chunk.len() as u64;
            session.send(&QueueResponse::LogData { offset, data: Base64(chunk) }).await?;
            offset += len;
        }
        if !req.follow || state.is_final() {
            return session.send(&QueueResponse::LogEnd { offset, state }).await;
        }
        let grew = async {
            match output.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => {
                session.send(&shutting_down()).await?;
                return Err(Closed);
            }
            () = session.peer_closed() => return Err(Closed),
            () = grew => {}
            () = next_event_for(&mut events, req.id) => {}
        }
    }
}

/// Up to [`LOG_CHUNK`] bytes of `path` from `offset`; empty at the end (or
/// when the job has written nothing yet).
async fn read_chunk(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut file = match tokio::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::with_capacity(LOG_CHUNK);
    (&mut file).take(LOG_CHUNK as u64).read_to_end(&mut buf).await?;
    Ok(buf)
}

async fn stats(service: &Arc<QueueService>) -> Result<QueueResponse, WireError> {
    let (states, queues) = service.total_counts();
    let now = service.clock.now_ms();
    let (oldest, finished_last_minute) = service
        .read(move |c| Ok((store::oldest_runnable(c, now)?, store::finished_since(c, now.saturating_sub(60_000))?)))
        .await?;
    Ok(QueueResponse::Stats(Box::new(QueueStats {
        states,
        queues: queues.into_iter().filter(|(_, c)| *c != Default::default()).collect(),
        oldest_queued_ms: oldest.map(|at| now.saturating_sub(at)),
        finished_last_minute,
        workers: service.workers,
        busy_workers: service.busy_workers(),
        store: service.db_path.display().to_string(),
        store_recovered: service.recovery.clone(),
    })))
}
