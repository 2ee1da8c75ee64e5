//! The server side of the opening handshake (RFC 6455 §4.2): checks that a request is a
//! WebSocket upgrade and computes `Sec-WebSocket-Accept`.

use base64::Engine;
use http::{header, HeaderMap, Method, Version};
use sha1::{Digest, Sha1};

use crate::error::Rejection;

const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Checks an upgrade request and returns the `Sec-WebSocket-Accept` value to answer with.
///
/// # Errors
/// [`Rejection::BadUpgrade`] naming the first rule the request breaks.
pub fn accept_key(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<String, Rejection> {
    if method != Method::GET {
        return Err(Rejection::BadUpgrade("method must be GET"));
    }
    if version != Version::HTTP_11 {
        return Err(Rejection::BadUpgrade("HTTP/1.1 required"));
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(Rejection::BadUpgrade("missing Connection: upgrade"));
    }
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        return Err(Rejection::BadUpgrade("missing Upgrade: websocket"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(Rejection::BadUpgrade("Sec-WebSocket-Version must be 13"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(Rejection::BadUpgrade("missing Sec-WebSocket-Key"))?
        .as_bytes();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| Rejection::BadUpgrade("Sec-WebSocket-Key is not base64"))?;
    if decoded.len() != 16 {
        return Err(Rejection::BadUpgrade("Sec-WebSocket-Key must be 16 bytes"));
    }
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    Ok(base64::engine::general_purpose::STANDARD.encode(sha.finalize()))
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .map(|text| {
                text.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
            .unwrap_or(false)
    })
}

/// The values offered in `Sec-WebSocket-Protocol`, in order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','))
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn upgrade_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        headers
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        let key = accept_key(&Method::GET, Version::HTTP_11, &upgrade_headers()).unwrap();
        assert_eq!(key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn each_missing_piece_is_named() {
        for (name, expected) in [
            (header::UPGRADE, "missing Upgrade: websocket"),
            (header::SEC_WEBSOCKET_KEY, "missing Sec-WebSocket-Key"),
            (
                header::SEC_WEBSOCKET_VERSION,
                "Sec-WebSocket-Version must be 13",
            ),
        ] {
            let mut headers = upgrade_headers();
            headers.remove(&name);
            let result = accept_key(&Method::GET, Version::HTTP_11, &headers);
            assert_eq!(result, Err(Rejection::BadUpgrade(expected)));
        }
        let result = accept_key(&Method::POST, Version::HTTP_11, &upgrade_headers());
        assert_eq!(result, Err(Rejection::BadUpgrade("method must be GET")));
    }

    #[test]
    fn protocols_are_split_and_trimmed() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("a, b"),
        );
        headers.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("c"),
        );
        assert_eq!(offered_protocols(&headers), ["a", "b", "c"]);
    }
}
