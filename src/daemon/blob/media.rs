//! Media types: what a put may store, and what the HTTP server dares to
//! serve.
//!
//! A stored media type is only a label. Over HTTP it is served as stored
//! only when it is on an allowlist of inert types (no HTML, SVG, XML or
//! script, which a browser would run in the server's origin); everything
//! else is served as `application/octet-stream`.

/// Types served as stored (compared without parameters, case-insensitively).
const INERT: &[&str] = &[
    "application/octet-stream",
    "application/json",
    "application/x-ndjson",
    "application/pdf",
    "application/zip",
    "application/gzip",
    "application/x-tar",
    "application/zstd",
    "text/plain",
    "text/csv",
    "text/markdown",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/bmp",
    "image/tiff",
    "audio/mpeg",
    "audio/ogg",
    "audio/wav",
    "audio/webm",
    "audio/flac",
    "audio/aac",
    "audio/mp4",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "font/woff",
    "font/woff2",
    "font/ttf",
    "font/otf",
];

/// The fallback for anything not on the allowlist.
pub(crate) const OCTET_STREAM: &str = "application/octet-stream";

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
}

/// `type/subtype`, optionally `; name=value` parameters, in RFC 6838 token
/// characters (so it is also a safe header value).
pub(crate) fn is_valid(media_type: &str) -> bool {
    if !media_type.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return false;
    }
    let mut parts = media_type.split(';');
    let Some((kind, sub)) = parts.next().unwrap_or_default().trim().split_once('/') else { return false };
    is_token(kind)
        && is_token(sub)
        && parts.all(|p| p.trim().split_once('=').is_some_and(|(k, v)| is_token(k.trim()) && is_token(v.trim())))
}

/// The `Content-Type` to serve for a stored media type.
pub(crate) fn served(stored: Option<&str>) -> String {
    let Some(stored) = stored.filter(|m| is_valid(m)) else { return OCTET_STREAM.into() };
    let essence = stored.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if !INERT.contains(&essence.as_str()) {
        return OCTET_STREAM.into();
    }
    // Text may keep its charset; no other parameter is passed on.
    let charset = stored
        .split(';')
        .skip(1)
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, v)| v.trim().to_ascii_lowercase());
    match charset {
        Some(charset) if essence.starts_with("text/") => format!("{essence}; charset={charset}"),
        _ => essence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_inert_types_are_served_as_stored() {
        assert_eq!(served(Some("image/png")), "image/png");
        assert_eq!(served(Some("IMAGE/PNG")), "image/png");
        assert_eq!(served(Some("text/plain; charset=UTF-8")), "text/plain; charset=utf-8");
        assert_eq!(served(Some("application/json; foo=bar")), "application/json");
        for dangerous in ["text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/javascript"] {
            assert_eq!(served(Some(dangerous)), OCTET_STREAM, "{dangerous}");
        }
        assert_eq!(served(None), OCTET_STREAM);
        assert_eq!(served(Some("text/plain\r\nX-Evil: 1")), OCTET_STREAM);
    }

    #[test]
    fn validation() {
        for ok in ["image/png", "text/plain; charset=utf-8", "application/vnd.api+json"] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["", "png", "image/", "/png", "text/plain; charset", "text/plain\n", "a/b c", "text/plain; a=\"b\""]
        {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }
}
