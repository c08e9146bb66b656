//! `GET /metrics`: OpenMetrics text (or the Prometheus text format, for a
//! scraper that asks only for that).

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Response, StatusCode};

use super::reply::{self, Body};
use crate::daemon::Shared;
use crate::daemon::metrics::{OPENMETRICS, PROMETHEUS_TEXT};

pub(super) const PATH: &str = "/metrics";

pub(super) fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply::method_not_allowed("GET, HEAD");
    }
    if req.uri().query().is_some() {
        return reply::text(StatusCode::BAD_REQUEST, "/metrics takes no query string\n");
    }
    if has_body(req.headers()) {
        return reply::text(StatusCode::BAD_REQUEST, "a metrics request has no body\n");
    }
    let Some(openmetrics) = negotiate(req.headers()) else {
        return reply::text(
            StatusCode::NOT_ACCEPTABLE,
            "metrics are served as application/openmetrics-text or text/plain\n",
        );
    };
    let text = match shared.metrics.encode(openmetrics) {
        Ok(text) => text,
        Err(e) => {
            tracing::error!("cannot encode the metrics: {e}");
            return reply::text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n");
        }
    };
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, if openmetrics { OPENMETRICS } else { PROMETHEUS_TEXT })
        .header(header::CONTENT_LENGTH, text.len())
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    let body = if req.method() == Method::HEAD { reply::empty() } else { reply::full(text) };
    reply::finish(builder, body)
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
}

/// `Some(true)` for OpenMetrics, `Some(false)` for the Prometheus text
/// format, `None` when the client accepts neither. OpenMetrics unless the
/// `Accept` header ranks `text/plain` above it (or leaves it out).
fn negotiate(headers: &HeaderMap) -> Option<bool> {
    let mut openmetrics: Option<f32> = None;
    let mut plain: Option<f32> = None;
    let mut any: Option<f32> = None;
    let values: Vec<&str> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    if values.is_empty() {
        return Some(true);
    }
    for range in values.iter().flat_map(|v| v.split(',')) {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let slot = match media.as_str() {
            "application/openmetrics-text" => &mut openmetrics,
            "text/plain" | "text/*" => &mut plain,
            "*/*" | "application/*" => &mut any,
            _ => continue,
        };
        *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
    }
    let om = openmetrics.or(any).filter(|q| *q > 0.0);
    let pt = plain.or(any).filter(|q| *q > 0.0);
    match (om, pt) {
        (Some(a), Some(b)) => Some(a >= b),
        (Some(_), None) => Some(true),
        (None, Some(_)) => Some(false),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Option<bool> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().unwrap());
        negotiate(&headers)
    }

    #[test]
    fn openmetrics_unless_the_scraper_prefers_plain_text() {
        assert_eq!(negotiate(&HeaderMap::new()), Some(true));
        // What Prometheus sends.
        let prometheus = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                          application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
        assert_eq!(accept(prometheus), Some(true));
        assert_eq!(accept("text/plain;version=0.0.4"), Some(false));
        assert_eq!(accept("*/*"), Some(true));
        assert_eq!(accept("text/plain;q=0.9, application/openmetrics-text;q=0.1"), Some(false));
        assert_eq!(accept("application/json"), None);
        assert_eq!(accept("application/openmetrics-text;q=0"), None);
    }
}
