//! The dashboard: a read-only page at `/dashboard/` that shows what the
//! daemon does, kept live by the event bus through server-sent events.
//!
//! Unlike a blob's hash, the dashboard shows commands, environments and
//! logs, so it is closed to anyone who does not hold this daemon's secret:
//!
//! - The secret is new at every start and written only to `daemon.json`
//!   (mode 0600, in the 0700 state directory). `hearth dashboard` opens
//!   `/dashboard/?token=<secret>`.
//! - That request is answered with an `HttpOnly`, `SameSite=Strict` session
//!   cookie (scripts cannot read it; no other site's request carries it)
//!   and a page that moves on to `/dashboard/`, so the secret leaves the
//!   address bar at once. Every other dashboard request without the cookie
//!   gets `403`.
//! - Everything it serves is embedded in the binary and served with a
//!   strict Content-Security-Policy (scripts, styles and connections from
//!   this origin only; no inline code; no framing; no referrer).
//! - It only reads: `GET` and `HEAD`. Its data comes from the services
//!   through the same requests a client sends (`api.rs`), its live updates
//!   from the event bus (`sse.rs`).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Semaphore;

use super::reply::{self, Body};
use crate::daemon::Shared;

mod api;
mod sse;

/// Where the dashboard is.
pub(crate) const ROOT: &str = "/dashboard/";

/// What the dashboard's pages may load and run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page and its assets, embedded in the binary.
const ASSETS: &[(&str, &str, &str)] = &[
    ("", "text/html; charset=utf-8", include_str!("assets/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("assets/app.css")),
    ("icon.svg", "image/svg+xml", include_str!("assets/icon.svg")),
];

/// The page that carries the session cookie and moves on to the dashboard:
/// a same-site navigation, so the `Strict` cookie goes with it even when
/// the link was opened from another site.
const ENTER: &str = "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url=/dashboard/\">\
                     <title>hearth</title><a href=\"/dashboard/\">Open the dashboard</a>\n";

pub(super) fn is_dashboard_path(path: &str) -> bool {
    path == "/dashboard" || path.starts_with(ROOT)
}

/// The dashboard of one daemon: its secret and session, and its streams.
#[derive(Debug)]
pub(crate) struct Dashboard {
    secret: String,
    /// The cookie's value, handed out for the secret.
    session: String,
    /// `hearth_<port>`: daemons on other ports keep their own cookie.
    cookie: String,
    streams: Arc<Semaphore>,
    max_streams: u64,
}

impl Dashboard {
    pub(super) fn new(port: u16, max_streams: u64) -> std::io::Result<Self> {
        Ok(Self {
            secret: crate::daemon::random::hex(32)?,
            session: crate::daemon::random::hex(32)?,
            cookie: format!("hearth_{port}"),
            streams: Arc::new(Semaphore::new(usize::try_from(max_streams).unwrap_or(usize::MAX))),
            max_streams,
        })
    }

    pub(super) fn secret(&self) -> &str {
        &self.secret
    }

    pub(super) fn streams_open(&self) -> u64 {
        self.max_streams - self.streams.available_permits() as u64
    }

    pub(super) async fn respond(&self, shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
        let mut response = self.route(shared, req).await;
        harden(response.headers_mut());
        response
    }

    async fn route(&self, shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply::method_not_allowed("GET, HEAD");
        }
        let path = req.uri().path();
        if path == "/dashboard" {
            let builder = Response::builder().status(StatusCode::PERMANENT_REDIRECT).header(header::LOCATION, ROOT);
            return reply::finish(builder, reply::empty());
        }
        if let Some(token) = query_param(req.uri().query(), "token") {
            if path != ROOT || !same(token.as_bytes(), self.secret.as_bytes()) {
                return forbidden("this is not the dashboard's key; run `hearth dashboard` for the current one\n");
            }
            let cookie = format!("{}={}; Path={ROOT}; HttpOnly; SameSite=Strict", self.cookie, self.session);
            let builder = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .header(header::SET_COOKIE, cookie);
            return reply::finish(builder, reply::full(ENTER));
        }
        if !self.authorized(req.headers()) {
            return forbidden("the dashboard opens with its key: run `hearth dashboard`\n");
        }
        let rest = &path[ROOT.len()..];
        if rest == "events" {
            return sse::respond(shared, &req, &self.streams);
        }
        if let Some(section) = rest.strip_prefix("api/") {
            return api::respond(shared, section, req.method() == Method::HEAD).await;
        }
        match ASSETS.iter().find(|(name, _, _)| *name == rest) {
            Some((_, content_type, text)) => {
                let builder = Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, *content_type)
                    .header(header::CONTENT_LENGTH, text.len());
                let body = if req.method() == Method::HEAD { reply::empty() } else { reply::full(*text) };
                reply::finish(builder, body)
            }
            None => reply::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Whether the request carries this daemon's session cookie.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| name == self.cookie && same(value.as_bytes(), self.session.as_bytes()))
    }
}

/// Compares without stopping at the first difference, so that the time a
/// wrong guess takes says nothing about how much of it was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of `name` in a query string (not percent-decoded: the values
/// it is used for are hex).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').filter_map(|pair| pair.split_once('=')).find(|(n, _)| *n == name).map(|(_, v)| v)
}

fn forbidden(message: &'static str) -> Response<Body> {
    reply::text(StatusCode::FORBIDDEN, message)
}

/// The headers every dashboard answer carries.
fn harden(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others_and_compared_exactly() {
        let d = Dashboard::new(4000, 4).unwrap();
        let mut headers = HeaderMap::new();
        assert!(!d.authorized(&headers));
        let cookie = format!("a=b; hearth_4000={}; c=d", d.session);
        headers.insert(header::COOKIE, cookie.parse().unwrap());
        assert!(d.authorized(&headers));
        let other_port = format!("hearth_4001={}", d.session);
        headers.insert(header::COOKIE, other_port.parse().unwrap());
        assert!(!d.authorized(&headers));
        let secret_as_cookie = format!("hearth_4000={}", d.secret);
        headers.insert(header::COOKIE, secret_as_cookie.parse().unwrap());
        assert!(!d.authorized(&headers), "the secret itself is not a session");
        let short = format!("hearth_4000={}", &d.session[..63]);
        headers.insert(header::COOKIE, short.parse().unwrap());
        assert!(!d.authorized(&headers));
        assert_ne!(d.secret, Dashboard::new(4000, 4).unwrap().secret, "a new secret for every start");
    }

    #[test]
    fn tokens_are_read_from_the_query_without_decoding() {
        assert_eq!(query_param(Some("token=ab12"), "token"), Some("ab12"));
        assert_eq!(query_param(Some("x=1&token=ab12&y"), "token"), Some("ab12"));
        assert_eq!(query_param(Some("tokens=ab12"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
