//! The daemon's HTTP server on 127.0.0.1: blobs (`/blob/…`, served by the
//! blob service), `/metrics` and the dashboard (`/dashboard/`).
//!
//! One server for everything a browser or a scraper reads, with one set of
//! defences in front of every route:
//!
//! - It binds `127.0.0.1` only, on the configured port or the previous
//!   run's (remembered in `<state-dir>/http-port`), so URLs stay valid
//!   across restarts.
//! - Every request must name a loopback host with this server's port
//!   (`Host: 127.0.0.1:<port>`, `localhost:<port>`, `[::1]:<port>`): a page
//!   on another origin that rebinds its DNS name to 127.0.0.1 is refused.
//! - Every connection is bounded: a cap on connections (more are closed on
//!   accept), a deadline for request headers (which also ends idle
//!   keep-alive connections), a cap on a request's head, and a deadline for
//!   a client that stops reading.
//!
//! Routes add their own rules: the blob route's hashes are capabilities,
//! `/metrics` is open to loopback, and the dashboard needs this daemon's
//! secret (see `dashboard/`).

use std::convert::Infallible;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Shared;
use super::config::HttpConfig;
use super::fsutil;
use super::metrics::{Route, Scrape};
use crate::paths::Paths;

mod dashboard;
mod metrics_route;
pub(crate) mod reply;
mod stall;

pub(crate) use reply::Body;

/// Where the port of the previous run is remembered, in the state directory.
const PORT_FILE: &str = "http-port";
/// Where earlier versions, whose HTTP server was the blob store's, kept it.
const OLD_PORT_FILE: &str = "blobs/http-port";

/// The largest request head (request line and headers) the server reads.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// The HTTP server of one daemon: where it is, or why it is not.
#[derive(Debug)]
pub(crate) struct HttpState {
    /// `http://127.0.0.1:<port>`, while it runs.
    pub(crate) url: Option<String>,
    /// Why it does not run although `http.enabled` is set.
    pub(crate) failure: Option<String>,
    /// `127.0.0.1:<port>`, `localhost:<port>`, `[::1]:<port>`.
    hosts: [String; 3],
    connections: Arc<Semaphore>,
    max_connections: u64,
    refused: AtomicU64,
    header_timeout: Duration,
    write_timeout: Duration,
    metrics_enabled: bool,
    dashboard: Option<dashboard::Dashboard>,
}

impl HttpState {
    /// Binds the server as configured (before the services start, so that
    /// they know its URL); the listener is served by [`serve`] once the
    /// daemon exists.
    pub(crate) fn bind(config: &HttpConfig, paths: &Paths) -> (HttpState, Option<std::net::TcpListener>) {
        let mut state = HttpState {
            url: None,
            failure: None,
            hosts: Default::default(),
            connections: Arc::new(Semaphore::new(usize::try_from(config.max_connections).unwrap_or(usize::MAX))),
            max_connections: config.max_connections,
            refused: AtomicU64::new(0),
            header_timeout: config.header_timeout.0,
            write_timeout: config.write_timeout.0,
            metrics_enabled: config.metrics,
            dashboard: None,
        };
        if !config.enabled {
            return (state, None);
        }
        let bound = bind(paths.state_dir(), config.port).and_then(|listener| {
            let port = listener.local_addr()?.port();
            listener.set_nonblocking(true)?;
            Ok((listener, port))
        });
        let (listener, port) = match bound {
            Ok(bound) => bound,
            Err(e) => {
                tracing::error!("the HTTP server cannot start: {e}");
                state.failure = Some(e.to_string());
                return (state, None);
            }
        };
        if config.dashboard {
            match dashboard::Dashboard::new(port, config.max_event_streams.min(config.max_connections)) {
                Ok(d) => state.dashboard = Some(d),
                Err(e) => tracing::error!("the dashboard cannot start: no secret from the kernel's random source: {e}"),
            }
        }
        state.hosts = [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")];
        let url = format!("http://127.0.0.1:{port}");
        tracing::info!(%url, "HTTP server listening");
        state.url = Some(url);
        (state, Some(listener))
    }

    /// `<url>/metrics`, when served.
    pub(crate) fn metrics_url(&self) -> Option<String> {
        self.url.as_ref().filter(|_| self.metrics_enabled).map(|u| format!("{u}/metrics"))
    }

    /// `<url>/dashboard/`, when served.
    pub(crate) fn dashboard_url(&self) -> Option<String> {
        self.url.as_ref().filter(|_| self.dashboard.is_some()).map(|u| format!("{u}{}", dashboard::ROOT))
    }

    /// The dashboard's secret, for `daemon.json` (mode 0600) only.
    pub(crate) fn dashboard_secret(&self) -> Option<String> {
        self.dashboard.as_ref().map(|d| d.secret().to_owned())
    }

    /// Exactly one `Host`, naming loopback with this port (and an
    /// absolute-form target, if any, naming the same).
    fn host_allowed(&self, req: &Request<Incoming>) -> bool {
        let known = |h: &str| self.hosts.iter().any(|k| k.eq_ignore_ascii_case(h));
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let (Some(host), None) = (hosts.next(), hosts.next()) else { return false };
        host.to_str().is_ok_and(known) && req.uri().authority().is_none_or(|a| known(a.as_str()))
    }

    /// The server's own metrics, for `/metrics`.
    pub(crate) fn collect(&self, scrape: &mut Scrape<'_, '_>) -> std::fmt::Result {
        if self.url.is_none() {
            return Ok(());
        }
        let in_use = self.max_connections - self.connections.available_permits() as u64;
        scrape.gauge("http_connections", "HTTP connections open", None, in_use)?;
        scrape.gauge(
            "http_connection_limit",
            "HTTP connections served at once (http.max_connections)",
            None,
            self.max_connections,
        )?;
        scrape.counter(
            "http_connections_refused",
            "HTTP connections closed on accept: over the cap",
            None,
            self.refused.load(Ordering::Relaxed),
        )?;
        if let Some(d) = &self.dashboard {
            scrape.gauge("http_event_streams", "Dashboard event streams open", None, d.streams_open())?;
        }
        Ok(())
    }
}

/// The configured port; or, when none is configured, the previous run's
/// port if it is free, else any free port (remembered for the next run).
fn bind(state_dir: &Path, configured: Option<u16>) -> io::Result<std::net::TcpListener> {
    let any = || std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0));
    if let Some(port) = configured {
        return std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind 127.0.0.1:{port} (http.port): {e}")));
    }
    let file = state_dir.join(PORT_FILE);
    let remembered = |path: PathBuf| {
        fsutil::read_small(&path, 16)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()?.trim().parse::<u16>().ok())
            .filter(|p| *p != 0)
    };
    let last = remembered(file.clone()).or_else(|| remembered(state_dir.join(OLD_PORT_FILE)));
    let listener = match last {
        Some(port) => std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).or_else(|e| {
            tracing::warn!("the HTTP port of the previous run, {port}, is not available ({e}); choosing another");
            any()
        })?,
        None => any()?,
    };
    let port = listener.local_addr()?.port();
    if remembered(file.clone()) != Some(port)
        && let Err(e) = fsutil::write_atomic(&file, port.to_string().as_bytes(), 0o600, false)
    {
        tracing::warn!("cannot remember the HTTP port: {e}");
    }
    Ok(listener)
}

/// Accepts connections until the daemon stops. It never awaits a peer:
/// accept, take a slot (or close), spawn.
pub(crate) async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => return tracing::error!("the HTTP server cannot run: {e}"),
    };
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                let Ok(permit) = shared.http.connections.clone().try_acquire_owned() else {
                    shared.http.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("HTTP server at its connection limit; closing a new connection");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared2 = shared.clone();
                shared.tracker.spawn(async move {
                    serve_connection(stream, shared2).await;
                    drop(permit);
                });
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                tracing::debug!("HTTP accept failed: {e}; retrying in {backoff:?}");
                tokio::select! {
                    () = shared.stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let io = TokioIo::new(stall::StallGuard::new(stream, shared.http.write_timeout));
    let stop = shared.stop.clone();
    let header_timeout = shared.http.header_timeout;
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service);
    tokio::select! {
        () = stop.cancelled() => {}
        result = conn => if let Err(e) = result {
            tracing::debug!("HTTP connection ended: {e}");
        },
    }
}

async fn respond(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (route, response) = route(shared, req).await;
    shared.metrics.http_request(route, response.status().as_u16());
    response
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> (Route, Response<Body>) {
    if !shared.http.host_allowed(&req) {
        let message = "requests must name 127.0.0.1, localhost or [::1] with this server's port\n";
        return (Route::Other, reply::text(StatusCode::FORBIDDEN, message));
    }
    let path = req.uri().path();
    if let Some((channel, service)) = shared.services.http_route(path) {
        return (Route::Service(channel), service.serve_http(req).await);
    }
    if path == metrics_route::PATH && shared.http.metrics_enabled {
        return (Route::Metrics, metrics_route::respond(shared, &req));
    }
    if let Some(d) = shared.http.dashboard.as_ref().filter(|_| dashboard::is_dashboard_path(path)) {
        return (Route::Dashboard, d.respond(shared, req).await);
    }
    (Route::Other, reply::text(StatusCode::NOT_FOUND, "not found: this server has /blob/…, /metrics and /dashboard/\n"))
}
