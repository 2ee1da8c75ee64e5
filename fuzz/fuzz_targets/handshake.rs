//! The opening handshake: raw request bytes parsed by `httparse` (the HTTP/1 parser hyper
//! runs in front of the gateway), then every check the gateway makes on them that does not
//! need a running node: `ws::handshake::accept_key`, `offered_protocols`, the
//! permessage-deflate offer (`ws::deflate::negotiate`) and the `Origin` allowlist.
//!
//! Checked beyond "no panic":
//! - an accepted key yields a 28-character base64 `Sec-WebSocket-Accept`;
//! - every offered subprotocol is a trimmed, non-empty part of a `Sec-WebSocket-Protocol`;
//! - an agreed deflate offer has windows in 8..=15 (the server's in 9..=15), and the
//!   `Sec-WebSocket-Extensions` the server answers with is itself an offer that negotiates
//!   to the same server window and context takeover;
//! - an `Origin` with userinfo or a path, or one that is not visible ASCII, is never allowed.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use libfuzzer_sys::fuzz_target;
use switchboard::origin::OriginPolicy;
use switchboard::ws::deflate::{self, negotiate_offers};
use switchboard::ws::handshake::{accept_key, offered_protocols};

fuzz_target!(|data: &[u8]| {
    let mut raw_headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut raw_headers);
    let Ok(httparse::Status::Complete(_)) = request.parse(data) else {
        return;
    };
    let Ok(method) = Method::from_bytes(request.method.unwrap_or("").as_bytes()) else {
        return;
    };
    let version = match request.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // hyper refuses a request whose header names or values do not convert; so does this.
    let mut headers = HeaderMap::new();
    for header in request.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) else {
            return;
        };
        headers.append(name, value);
    }

    if let Ok(key) = accept_key(&method, version, &headers) {
        assert_eq!(key.len(), 28, "Sec-WebSocket-Accept is a base64 SHA-1");
    }

    for protocol in offered_protocols(&headers) {
        assert!(!protocol.is_empty() && protocol == protocol.trim());
        assert!(!protocol.contains(','));
    }

    if let Some(agreed) = deflate::negotiate(&headers) {
        assert!((8..=15).contains(&agreed.client_max_window_bits));
        assert!((9..=15).contains(&agreed.server_window_bits()));
        let answer = agreed.response_header();
        let again = negotiate_offers([answer.as_str()]).expect("the answer is a valid offer");
        assert_eq!(again.server_max_window_bits, agreed.server_max_window_bits);
        assert_eq!(
            again.client_no_context_takeover,
            agreed.client_no_context_takeover
        );
    }

    let policy = OriginPolicy::new(
        &[
            "https://*.example.com".to_owned(),
            "http://app.example.org:8080".to_owned(),
        ],
        true,
    );
    for origin in headers.get_all(http::header::ORIGIN) {
        let text = origin.to_str().ok();
        let allowed = policy.allows(Some(text.unwrap_or("\u{fffd}")));
        if allowed {
            let text = text.unwrap_or("");
            let rest = text.split_once("://").map_or("", |(_, rest)| rest);
            assert!(!rest.contains('@'), "userinfo allowed: {text:?}");
            assert!(!rest.contains('/'), "a path allowed: {text:?}");
        }
    }
});
