//! The queue's store: one SQLite file, `<state-dir>/queue/queue.db`.
//!
//! Every connection is opened by [`open_connection`], which sets WAL,
//! `synchronous=FULL`, foreign keys, stable query plans and a busy timeout (pragmas are
//! per-connection, so setting them once is not enough). One writer thread
//! owns the only write connection (see `writer.rs`); reads use their own
//! connections. The schema carries its version in `PRAGMA user_version`.
//!
//! A store that cannot be opened or fails its integrity check is never
//! written to: it is moved aside (`queue.db.corrupt-<ms>`, with its `-wal`
//! and `-shm`) and a fresh store is started; [`Opened::recovery`] says so.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};

use crate::protocol::queue::{Attempt, Job, JobState, ListFilter, Outcome, StateCounts, StoreRecovery};

/// The schema version this code writes (`PRAGMA user_version`).
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// The store's file name inside `<state-dir>/queue/`.
pub(crate) const DB_FILE: &str = "queue.db";

/// How long a connection waits for a lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where time comes from: the system clock in the daemon, a hand-driven one
/// in tests (idempotency windows, backoff and pruning depend on it).
pub(crate) trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::time::now_ms()
    }
}

/// A clock that moves only when told to.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct ManualClock(std::sync::atomic::AtomicU64);

#[cfg(test)]
impl ManualClock {
    /// A clock reading `ms`.
    pub(crate) fn new(ms: u64) -> Self {
        Self(std::sync::atomic::AtomicU64::new(ms))
    }

    /// Moves the clock forward.
    pub(crate) fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Opens (or creates) the database at `path` with the pragmas every
/// connection of the store needs.
pub(crate) fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        let error = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN);
        return Err(rusqlite::Error::SqliteFailure(
            error,
            Some(format!("cannot switch to WAL (journal_mode is {mode})")),
        ));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // Plans that do not depend on the values bound: otherwise SQLite (built
    // with STAT4) prepares a statement again each time a parameter it could
    // plan with (a time, a LIMIT) is bound, as the dispatcher does each time.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    argv TEXT NOT NULL,
    env TEXT NOT NULL,
    cwd TEXT NOT NULL,
    input BLOB,
    input_bytes INTEGER NOT NULL,
    idem_key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    timeout_ms INTEGER,
    backoff_base_ms INTEGER NOT NULL,
    backoff_cap_ms INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    run_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER,
    finished_at_ms INTEGER,
    exit_code INTEGER,
    signal INTEGER,
    last_error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_pending ON jobs(priority DESC, id) WHERE state IN ('queued', 'retry_wait');
CREATE INDEX jobs_pending_at ON jobs(run_at_ms) WHERE state IN ('queued', 'retry_wait');
CREATE INDEX jobs_state ON jobs(state, id);
CREATE INDEX jobs_queue ON jobs(queue, state, id);
CREATE INDEX jobs_finished ON jobs(finished_at_ms) WHERE finished_at_ms IS NOT NULL;
CREATE TABLE attempts (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    pid INTEGER,
    pid_start_time INTEGER,
    outcome TEXT,
    exit_code INTEGER,
    signal INTEGER,
    error TEXT,
    counted INTEGER NOT NULL DEFAULT 1,
    stdout_bytes INTEGER NOT NULL DEFAULT 0,
    stderr_bytes INTEGER NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;
CREATE TABLE idempotency_keys (
    queue TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_job ON idempotency_keys(job_id);
CREATE INDEX idempotency_expiry ON idempotency_keys(expires_at_ms);
";

/// Why the store cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The store was written by a newer hearth; it is left alone.
    #[error("{path:?} has schema version {found}, newer than this hearthd's {SCHEMA_VERSION}; upgrade hearthd")]
    TooNew { path: PathBuf, found: i64 },
    /// Neither the existing store nor a fresh one can be used.
    #[error("cannot open {path:?}: {message}")]
    Unusable { path: PathBuf, message: String },
}

/// An open store: the write connection and what happened to get it.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) conn: Connection,
    pub(crate) recovery: Option<StoreRecovery>,
}

/// Opens `<dir>/queue.db`, creating or migrating its schema. A corrupt or
/// unopenable store is moved aside and replaced by a fresh one.
pub(crate) fn open_store(dir: &Path, now_ms: u64) -> Result<Opened, OpenError> {
    let path = dir.join(DB_FILE);
    match try_open(&path) {
        Ok(conn) => Ok(Opened { conn, recovery: None }),
        Err(Failure::TooNew(found)) => Err(OpenError::TooNew { path, found }),
        Err(Failure::Transient(message)) => Err(OpenError::Unusable { path, message }),
        Err(Failure::Broken(reason)) => {
            let moved_to = move_aside(&path, now_ms).map_err(|e| OpenError::Unusable {
                path: path.clone(),
                message: format!("{reason}; and it cannot be moved aside: {e}"),
            })?;
            tracing::error!(
                store = %path.display(),
                moved_to = %moved_to.display(),
                "THE QUEUE STORE IS CORRUPT OR UNOPENABLE ({reason}); it was moved aside and a fresh, \
                 empty store was started. Jobs recorded in the old store are not in the new one."
            );
            let conn =
                try_open(&path).map_err(|f| OpenError::Unusable { path: path.clone(), message: f.to_string() })?;
            let recovery = StoreRecovery { moved_to: moved_to.display().to_string(), reason, at_ms: now_ms };
            Ok(Opened { conn, recovery: Some(recovery) })
        }
    }
}

#[derive(Debug)]
enum Failure {
    TooNew(i64),
    /// Locked or busy: another process uses it; never move it aside for that.
    Transient(String),
    Broken(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::TooNew(v) => write!(f, "schema version {v} is newer than {SCHEMA_VERSION}"),
            Failure::Transient(m) | Failure::Broken(m) => f.write_str(m),
        }
    }
}

fn classify(e: &rusqlite::Error) -> Failure {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(
            C::DatabaseBusy
            | C::DatabaseLocked
            | C::OutOfMemory
            | C::DiskFull
            | C::PermissionDenied
            | C::ReadOnly
            | C::SystemIoFailure,
        ) => Failure::Transient(e.to_string()),
        _ => Failure::Broken(e.to_string()),
    }
}

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Refuses a non-empty file that is not an SQLite database before SQLite
/// sees it: SQLite would otherwise clean up (delete) a `-wal` beside it.
fn check_header(path: &Path) -> Result<(), Failure> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Failure::Transient(format!("cannot read {path:?}: {e}"))),
    };
    let mut header = Vec::with_capacity(16);
    (&mut file).take(16).read_to_end(&mut header).map_err(|e| Failure::Transient(e.to_string()))?;
    if header.is_empty() || header == SQLITE_HEADER {
        return Ok(());
    }
    Err(Failure::Broken("the file is not an SQLite database".into()))
}

/// The store's files are the user's alone, like the 0700 `queue/` that
/// holds them. SQLite creates a database 0644 (less the umask) and gives its
/// `-wal` and `-shm` the database's mode, so the database is created 0600
/// before SQLite opens it, and files an older hearthd left looser are
/// tightened. A failure here only costs the tightening: it is logged.
fn keep_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    match crate::daemon::fsutil::create_new(path, 0o600) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => tracing::warn!(store = %path.display(), "cannot create the store 0600: {e}"),
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        // Only a regular file: a link is never followed (SQLite refuses one anyway).
        let Ok(meta) = std::fs::symlink_metadata(&file) else { continue };
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_file()
            && mode & 0o077 != 0
            && let Err(e) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))
        {
            tracing::warn!(file = %file.display(), "cannot make it private: {e}");
        }
    }
}

fn try_open(path: &Path) -> Result<Connection, Failure> {
    check_header(path)?;
    keep_private(path);
    let mut conn = open_connection(path).map_err(|e| classify(&e))?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| classify(&e))?;
    if check != "ok" {
        return Err(Failure::Broken(format!("integrity check failed: {check}")));
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| classify(&e))?;
    match version {
        0 => {
            let tx = conn.transaction().map_err(|e| classify(&e))?;
            let empty: i64 =
                tx.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0)).map_err(|e| classify(&e))?;
            if empty != 0 {
                return Err(Failure::Broken("the file holds tables but no hearth schema version".into()));
            }
            tx.execute_batch(SCHEMA).map_err(|e| classify(&e))?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(|e| classify(&e))?;
            tx.commit().map_err(|e| classify(&e))?;
        }
        SCHEMA_VERSION => {}
        newer if newer > SCHEMA_VERSION => return Err(Failure::TooNew(newer)),
        older => return Err(Failure::Broken(format!("unknown schema version {older}"))),
    }
    Ok(conn)
}

/// Renames `queue.db` (and its `-wal` and `-shm`) to `queue.db.corrupt-<ms>`.
fn move_aside(path: &Path, now_ms: u64) -> std::io::Result<PathBuf> {
    let mut target = PathBuf::from(format!("{}.corrupt-{now_ms}", path.display()));
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{}.corrupt-{now_ms}.{n}", path.display()));
        n += 1;
    }
    for suffix in ["-wal", "-shm", ""] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        let to = PathBuf::from(format!("{}{suffix}", target.display()));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(dir) = path.parent() {
        crate::daemon::fsutil::fsync_dir(dir)?;
    }
    Ok(target)
}

// --- rows -------------------------------------------------------------------

/// The columns of `jobs` that [`job_from_row`] reads, in order.
pub(crate) const JOB_COLUMNS: &str = "id, queue, state, priority, argv, env, cwd, input_bytes, idem_key, attempts, \
     max_attempts, timeout_ms, backoff_base_ms, backoff_cap_ms, created_at_ms, run_at_ms, started_at_ms, \
     finished_at_ms, exit_code, signal, last_error";

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn opt_u(v: Option<i64>) -> Option<u64> {
    v.map(u)
}

/// `u64` for SQLite, which stores signed 64-bit integers.
pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn json_error(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

pub(crate) fn state_from_sql(text: &str) -> rusqlite::Result<JobState> {
    JobState::from_name(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Text,
            format!("unknown job state {text:?}").into(),
        )
    })
}

pub(crate) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let argv: String = row.get(4)?;
    let env: String = row.get(5)?;
    Ok(Job {
        id: u(row.get(0)?),
        queue: row.get(1)?,
        state: state_from_sql(&row.get::<_, String>(2)?)?,
        priority: row.get(3)?,
        argv: serde_json::from_str(&argv).map_err(json_error)?,
        env: serde_json::from_str::<BTreeMap<String, String>>(&env).map_err(json_error)?,
        cwd: row.get(6)?,
        input_bytes: u(row.get(7)?),
        key: row.get(8)?,
        attempts: row.get(9)?,
        max_attempts: row.get(10)?,
        timeout_ms: opt_u(row.get(11)?),
        backoff_base_ms: u(row.get(12)?),
        backoff_cap_ms: u(row.get(13)?),
        created_at_ms: u(row.get(14)?),
        run_at_ms: u(row.get(15)?),
        started_at_ms: opt_u(row.get(16)?),
        finished_at_ms: opt_u(row.get(17)?),
        exit_code: row.get(18)?,
        signal: row.get(19)?,
        last_error: row.get(20)?,
    })
}

fn outcome_from_sql(text: Option<String>) -> Option<Outcome> {
    use Outcome as O;
    let text = text?;
    [O::Succeeded, O::Failed, O::TimedOut, O::SpawnFailed, O::Canceled, O::Interrupted, O::Lost]
        .into_iter()
        .find(|o| o.as_str() == text)
}

fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        n: row.get(0)?,
        started_at_ms: u(row.get(1)?),
        ended_at_ms: opt_u(row.get(2)?),
        pid: row.get(3)?,
        outcome: outcome_from_sql(row.get(4)?),
        exit_code: row.get(5)?,
        signal: row.get(6)?,
        error: row.get(7)?,
        counted: row.get(8)?,
        stdout_bytes: u(row.get(9)?),
        stderr_bytes: u(row.get(10)?),
        truncated: row.get(11)?,
    })
}

// --- reads ------------------------------------------------------------------

/// One job, if it exists.
pub(crate) fn get_job(conn: &Connection, id: u64) -> rusqlite::Result<Option<Job>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    conn.prepare_cached(&sql)?.query_row([i(id)], job_from_row).optional()
}

/// A job's attempts, oldest first.
pub(crate) fn attempts(conn: &Connection, id: u64) -> rusqlite::Result<Vec<Attempt>> {
    let mut stmt = conn.prepare_cached(
        "SELECT n, started_at_ms, ended_at_ms, pid, outcome, exit_code, signal, error, counted, stdout_bytes, \
         stderr_bytes, truncated FROM attempts WHERE job_id = ?1 ORDER BY n",
    )?;
    stmt.query_map([i(id)], attempt_from_row)?.collect()
}

/// Jobs matching `filter`, newest first, and the cursor of the next page.
pub(crate) fn list(conn: &Connection, filter: &ListFilter, limit: u32) -> rusqlite::Result<(Vec<Job>, Option<u64>)> {
    let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if !filter.states.is_empty() {
        let marks = vec!["?"; filter.states.len()].join(", ");
        sql.push_str(&format!(" AND state IN ({marks})"));
        args.extend(filter.states.iter().map(|s| s.as_str().to_owned().into()));
    }
    if let Some(queue) = &filter.queue {
        sql.push_str(" AND queue = ?");
        args.push(queue.clone().into());
    }
    if let Some(before) = filter.before_id {
        sql.push_str(" AND id < ?");
        args.push(i(before).into());
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    args.push(i64::from(limit).saturating_add(1).into());
    let mut stmt = conn.prepare(&sql)?;
    let mut jobs: Vec<Job> =
        stmt.query_map(rusqlite::params_from_iter(args), job_from_row)?.collect::<Result<_, _>>()?;
    let next = if jobs.len() > limit as usize {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    Ok((jobs, next))
}

/// A job picked to run, with its input.
#[derive(Debug)]
pub(crate) struct Runnable {
    pub(crate) job: Job,
    pub(crate) input: Option<Vec<u8>>,
    /// The number its next attempt gets in its history (see [`next_attempt`]).
    pub(crate) attempt: u32,
}

/// The number the next attempt of job `id` gets: attempts are numbered from
/// 1 over the job's whole life.
pub(crate) fn next_attempt(conn: &Connection, id: u64) -> rusqlite::Result<u32> {
    conn.prepare_cached("SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE job_id = ?1")?
        .query_row([i(id)], |r| r.get(0))
}

/// Jobs that may start now, highest priority first, then oldest first;
/// none of `exclude_queues` and none of `exclude_ids`; each with the number
/// its next attempt gets (one statement, so the two agree).
///
/// The dispatcher runs this after every commit, so it must not cost more
/// as the queue grows: a range lookup on `jobs_pending_at` first says
/// whether anything is due at all (jobs parked for later are never read),
/// then `jobs_pending` is walked in priority order until `limit` due jobs
/// are found, with no sort. (Left to itself the planner scans every waiting
/// job through `jobs_state` and sorts them, on every dispatch.)
pub(crate) fn runnable(
    conn: &Connection,
    now_ms: u64,
    exclude_queues: &[String],
    exclude_ids: &[u64],
    limit: usize,
) -> rusqlite::Result<Vec<Runnable>> {
    let due: bool = conn.prepare_cached(ANY_DUE)?.query_row([i(now_ms)], |r| r.get(0))?;
    if !due {
        return Ok(Vec::new());
    }
    let mut args: Vec<rusqlite::types::Value> = vec![i(now_ms).into()];
    args.extend(exclude_queues.iter().map(|q| q.clone().into()));
    args.extend(exclude_ids.iter().map(|id| i(*id).into()));
    args.push((limit as i64).into());
    let mut stmt = conn.prepare_cached(&runnable_sql(exclude_queues.len(), exclude_ids.len()))?;
    stmt.query_map(rusqlite::params_from_iter(args), |row| {
        Ok(Runnable { job: job_from_row(row)?, input: row.get(21)?, attempt: row.get(22)? })
    })?
    .collect()
}

/// Whether any waiting job is due at `?1`.
const ANY_DUE: &str = "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_pending_at \
     WHERE state IN ('queued', 'retry_wait') AND run_at_ms <= ?1)";

/// The earliest time after `?1` at which a waiting job becomes due.
const NEXT_RUN_AT: &str = "SELECT MIN(run_at_ms) FROM jobs INDEXED BY jobs_pending_at \
     WHERE state IN ('queued', 'retry_wait') AND run_at_ms > ?1";

/// [`runnable`]'s query, leaving out `queues` queues and `ids` jobs.
fn runnable_sql(queues: usize, ids: usize) -> String {
    let mut sql = format!(
        "SELECT {JOB_COLUMNS}, input, (SELECT COALESCE(MAX(n), 0) + 1 FROM attempts WHERE attempts.job_id = jobs.id) \
         FROM jobs INDEXED BY jobs_pending WHERE state IN ('queued', 'retry_wait') \
         AND run_at_ms <= ?"
    );
    if queues > 0 {
        sql.push_str(&format!(" AND queue NOT IN ({})", vec!["?"; queues].join(", ")));
    }
    if ids > 0 {
        sql.push_str(&format!(" AND id NOT IN ({})", vec!["?"; ids].join(", ")));
    }
    sql.push_str(" ORDER BY priority DESC, id LIMIT ?");
    sql
}

/// The earliest time after `now_ms` at which a waiting job becomes runnable.
pub(crate) fn next_run_at(conn: &Connection, now_ms: u64) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached(NEXT_RUN_AT)?.query_row([i(now_ms)], |r| r.get::<_, Option<i64>>(0)).map(opt_u)
}

/// When the job that has waited longest for a worker became runnable.
pub(crate) fn oldest_runnable(conn: &Connection, now_ms: u64) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached(
        "SELECT MIN(run_at_ms) FROM jobs INDEXED BY jobs_pending_at WHERE state IN ('queued', 'retry_wait')",
    )?
    .query_row([], |r| r.get::<_, Option<i64>>(0))
    .map(|v| opt_u(v).filter(|at| *at <= now_ms))
}

/// Jobs that reached a final state since `since_ms`.
pub(crate) fn finished_since(conn: &Connection, since_ms: u64) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT COUNT(*) FROM jobs WHERE finished_at_ms >= ?1")?
        .query_row([i(since_ms)], |r| r.get::<_, i64>(0))
        .map(u)
}

/// Job counts per queue and state.
pub(crate) fn counts(conn: &Connection) -> rusqlite::Result<BTreeMap<String, StateCounts>> {
    let mut out: BTreeMap<String, StateCounts> = BTreeMap::new();
    let mut stmt = conn.prepare("SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
    for row in rows {
        let (queue, state, n) = row?;
        *out.entry(queue).or_default().get_mut(state_from_sql(&state)?) += u(n);
    }
    Ok(out)
}

/// An attempt that was running when the previous daemon stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Orphan {
    pub(crate) job_id: u64,
    pub(crate) n: u32,
    pub(crate) pid: Option<u32>,
    pub(crate) pid_start_time: Option<u64>,
}

/// Attempts of running jobs that have not ended.
pub(crate) fn orphans(conn: &Connection) -> rusqlite::Result<Vec<Orphan>> {
    let mut stmt = conn.prepare(
        "SELECT a.job_id, a.n, a.pid, a.pid_start_time FROM attempts a JOIN jobs j ON j.id = a.job_id \
         WHERE j.state = 'running' AND a.ended_at_ms IS NULL ORDER BY a.job_id",
    )?;
    stmt.query_map([], |r| {
        Ok(Orphan {
            job_id: u(r.get(0)?),
            n: r.get(1)?,
            pid: r.get(2)?,
            pid_start_time: r.get::<_, Option<i64>>(3)?.map(u),
        })
    })?
    .collect()
}

/// Whether attempt `n` of job `id` is in the store (`None`: it is not),
/// and has ended.
pub(crate) fn attempt_ended(conn: &Connection, id: u64, n: u32) -> rusqlite::Result<Option<bool>> {
    conn.prepare_cached("SELECT ended_at_ms IS NOT NULL FROM attempts WHERE job_id = ?1 AND n = ?2")?
        .query_row(rusqlite::params![i(id), n], |r| r.get(0))
        .optional()
}

/// Pool of read connections.
#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    idle: std::sync::Mutex<Vec<Connection>>,
}

impl Readers {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path, idle: std::sync::Mutex::new(Vec::new()) }
    }

    /// Runs `f` on an idle read connection (opening one when none is idle).
    /// Blocking: call it off the async workers.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let conn = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        let conn = match conn {
            Some(conn) => conn,
            None => open_connection(&self.path)?,
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < 8 {
            idle.push(conn);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_gets_the_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let opened = open_store(dir.path(), 1).unwrap();
        assert!(opened.recovery.is_none());
        // A second, independent connection (as a reader opens one).
        let second = open_connection(&dir.path().join(DB_FILE)).unwrap();
        for conn in [&opened.conn, &second] {
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
            assert_eq!(sync, 2, "synchronous=FULL");
            let fk: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0)).unwrap();
            assert_eq!(fk, 1);
            let stable = conn.db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG).unwrap();
            assert!(stable, "query plans do not depend on bound values");
            let busy: i64 = conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0)).unwrap();
            assert_eq!(busy, BUSY_TIMEOUT.as_millis() as i64);
            let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
            assert_eq!(version, SCHEMA_VERSION);
        }
    }

    #[test]
    fn the_dispatch_queries_are_not_prepared_again_as_time_moves() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_store(dir.path(), 1).unwrap().conn;
        conn.execute_batch(
            "INSERT INTO jobs (queue, state, priority, argv, env, cwd, input_bytes, max_attempts, backoff_base_ms, \
             backoff_cap_ms, created_at_ms, run_at_ms) VALUES ('default', 'queued', 0, '[\"true\"]', '{}', '/', 0, 3, \
             1000, 60000, 1, 500)",
        )
        .unwrap();
        for now in [100, 200, 600, 700] {
            let picked = runnable(&conn, now, &[], &[], 2).unwrap();
            assert_eq!(picked.len(), usize::from(now >= 500));
            assert_eq!(next_run_at(&conn, now).unwrap(), (now < 500).then_some(500));
        }
        for sql in [ANY_DUE.to_owned(), NEXT_RUN_AT.to_owned(), runnable_sql(0, 0)] {
            let stmt = conn.prepare_cached(&sql).unwrap();
            assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0, "{sql}");
        }
    }

    #[test]
    fn a_garbage_store_is_moved_aside_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = b"this is not a database, but somebody's data all the same".repeat(100);
        std::fs::write(dir.path().join(DB_FILE), &garbage).unwrap();
        std::fs::write(dir.path().join(format!("{DB_FILE}-wal")), b"wal garbage").unwrap();

        let opened = open_store(dir.path(), 1_795_000_000_123).unwrap();
        let recovery = opened.recovery.expect("a recovery is reported");
        assert!(recovery.moved_to.ends_with("queue.db.corrupt-1795000000123"), "{}", recovery.moved_to);
        assert!(!recovery.reason.is_empty());
        assert_eq!(std::fs::read(&recovery.moved_to).unwrap(), garbage, "the old bytes are kept as they were");
        assert_eq!(std::fs::read(format!("{}-wal", recovery.moved_to)).unwrap(), b"wal garbage");
        // The fresh store works.
        let n: i64 = opened.conn.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
        drop(opened.conn);
        assert!(open_store(dir.path(), 2).unwrap().recovery.is_none(), "the fresh store opens cleanly next time");
    }

    #[test]
    fn a_store_from_a_newer_hearth_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_store(dir.path(), 1).unwrap());
        let conn = open_connection(&dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = open_store(dir.path(), 2).unwrap_err();
        assert!(matches!(err, OpenError::TooNew { found: 99, .. }), "{err}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!names.iter().any(|n| n.to_string_lossy().contains("corrupt")), "{names:?}");
    }
}
