//! The admin web UI at `/admin`: its pages (plain HTML, CSS and JavaScript written for it and
//! embedded in the binary), the login with its session cookie, and the routing of its JSON
//! endpoints (`views`) and live updates (`live`).
//!
//! Off by default: with `admin.enabled` off every `/admin` path is the 404 of a path that does
//! not exist. Every endpoint under `/admin/api/` needs a session (the cookie a login sets) or
//! the admin token (`Authorization: Bearer`); the pages themselves hold no data and are served
//! to anyone, so the login form can load. Actions go through the server API's own methods
//! (`api::invoke`), so a publish or a disconnect from the UI is checked and carried out
//! exactly as a backend's; this module never speaks to the node's broker or hub to change
//! anything.
//!
//! The cookie is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page
//! sends it) and `Secure` when the request came over TLS through a trusted proxy
//! (`X-Forwarded-Proto: https` or `Forwarded: proto=https` from `server.trusted_proxies`).
//! Every POST must be `application/json`, which a form on another site cannot send without
//! the browser asking first: with `SameSite=Strict` that closes cross-site requests twice.

mod live;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::error::{error_body, AdminError};
use crate::login::matches_secret;
use crate::respond::{json, text, Response};
use crate::state::State;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "sb_admin";
/// Largest body an admin endpoint reads (a publication from the UI included).
const MAX_BODY: usize = 256 * 1024;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_CSS: &str = include_str!("ui/admin.css");
const APP_JS: &str = include_str!("ui/admin.js");
const ICON_SVG: &str = include_str!("ui/icon.svg");

/// Who a request to `/admin/api/` comes from.
pub(crate) enum Auth {
    /// A logged-in browser: its session id and how long the session has left.
    Session { id: String, left: Duration },
    /// A script with the admin token.
    Token,
}

/// Handles one request under `/admin`.
pub(crate) async fn handle(
    state: &Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response {
    if !state.config.admin.enabled {
        return crate::respond::rejection(&crate::error::Rejection::NotFound);
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let result = match (&method, path.as_str()) {
        (&Method::GET, "/admin" | "/admin/") => Ok(asset(INDEX_HTML, "text/html; charset=utf-8")),
        (&Method::GET, "/admin/admin.css") => Ok(asset(APP_CSS, "text/css; charset=utf-8")),
        (&Method::GET, "/admin/admin.js") => Ok(asset(APP_JS, "text/javascript; charset=utf-8")),
        (&Method::GET, "/admin/icon.svg") => Ok(asset(ICON_SVG, "image/svg+xml")),
        (&Method::POST, "/admin/login") => login(state, peer, req).await,
        (&Method::POST, "/admin/logout") => Ok(logout(state, peer, &req)),
        (_, api) if api.starts_with("/admin/api/") => match authenticate(state, req.headers()) {
            Ok(auth) => views::handle(state, req, auth).await,
            Err(error) => Err(error),
        },
        _ => Err(AdminError::NotFound),
    };
    let mut response = result.unwrap_or_else(|error| error_response(&error));
    secure_headers(response.headers_mut());
    response
}

/// The JSON error response for `error`.
pub(crate) fn error_response(error: &AdminError) -> Response {
    let mut response = json(
        error.status(),
        error_body(&error.code(), &error.to_string()),
    );
    if let AdminError::TooManyAttempts { retry_after_secs } = error {
        if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = text(StatusCode::OK, Bytes::from_static(body.as_bytes()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// What every admin response carries: no caching (the data is live and private), no
/// framing, no sniffing, no referrer, and a policy that lets the page load nothing but its
/// own files and talk to nothing but its own origin (no inline script, no CDN).
fn secure_headers(headers: &mut HeaderMap) {
    let set = [
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// The session cookie's value, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// The session or admin token a request to `/admin/api/` carries.
fn authenticate(state: &State, headers: &HeaderMap) -> Result<Auth, AdminError> {
    if let Some(id) = session_cookie(headers) {
        if let Some(left) = state.logins.check(id, Instant::now()) {
            return Ok(Auth::Session {
                id: id.to_owned(),
                left,
            });
        }
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    match bearer {
        Some(given) if matches_secret(given, &state.config.admin.token.0) => Ok(Auth::Token),
        _ => Err(AdminError::Unauthorized),
    }
}

/// Whether the browser reached us over TLS: only a trusted proxy is believed when it says so
/// (the gateway itself speaks plain HTTP).
fn over_tls(state: &State, peer: SocketAddr, headers: &HeaderMap) -> bool {
    if !state.proxies.trusts(peer.ip().to_canonical()) {
        return false;
    }
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([';', ',']))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("proto")
                && value.trim().trim_matches('"').eq_ignore_ascii_case("https")
        });
    forwarded_proto || forwarded
}

/// The `Set-Cookie` value for session `id` lasting `max_age` (0: remove the cookie).
fn cookie(id: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/admin; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// Reads a JSON POST body, bounded: refuses a body that is not `application/json`.
pub(crate) async fn json_body(req: Request<Incoming>) -> Result<Bytes, AdminError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(AdminError::NotJson);
    }
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|_| AdminError::BodyTooLarge)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    password: String,
}

/// `POST /admin/login {"password"}`: counts the attempt against the address's minute, then
/// opens a session when the password (or the admin token) is right.
async fn login(
    state: &Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response, AdminError> {
    let client = state.proxies.client_ip(peer.ip(), req.headers());
    let secure = over_tls(state, peer, req.headers());
    let now = Instant::now();
    if let Err(limited) = state.logins.attempt(state.limit_key(client), now) {
        tracing::warn!(event = "admin_login_limited", client_ip = %client, "admin login refused: too many attempts from this address");
        return Err(AdminError::TooManyAttempts {
            retry_after_secs: limited.retry_after.as_secs().max(1),
        });
    }
    let body = json_body(req).await?;
    let login: Login =
        serde_json::from_slice(&body).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    let admin = &state.config.admin;
    let given = login.password.as_bytes();
    // `|`, not `||`: both comparisons always run, so timing does not tell which one is set.
    let right = matches_secret(given, &admin.password.0) | matches_secret(given, &admin.token.0);
    if !right {
        tracing::warn!(event = "admin_login_failed", client_ip = %client, "admin login refused: wrong password");
        return Err(AdminError::WrongPassword);
    }
    let id = state.logins.open(now).map_err(|error| {
        tracing::error!(event = "admin_login_error", %error, "admin login failed");
        AdminError::Internal
    })?;
    let ttl = state.logins.ttl();
    tracing::info!(
        event = "admin_login",
        client_ip = %client,
        secure_cookie = secure,
        session_ttl_secs = ttl.as_secs(),
        "admin logged in"
    );
    let body = serde_json::json!({ "expires_in": ttl.as_secs() }).to_string();
    let mut response = json(StatusCode::OK, body);
    if let Ok(value) = HeaderValue::from_str(&cookie(&id, ttl, secure)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// `POST /admin/logout`: ends the session on the server and removes the cookie.
fn logout(state: &State, peer: SocketAddr, req: &Request<Incoming>) -> Response {
    let client = state.proxies.client_ip(peer.ip(), req.headers());
    if let Some(id) = session_cookie(req.headers()) {
        if state.logins.close(id) {
            tracing::info!(event = "admin_logout", client_ip = %client, "admin logged out");
        }
    }
    let secure = over_tls(state, peer, req.headers());
    let mut response = json(StatusCode::OK, "{}".to_owned());
    if let Ok(value) = HeaderValue::from_str(&cookie("", Duration::ZERO, secure)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sb_admin=abc ; b=2"),
        );
        assert_eq!(session_cookie(&headers), Some("abc"));
        headers.insert(header::COOKIE, HeaderValue::from_static("sb_adminx=1"));
        assert_eq!(session_cookie(&headers), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_when_asked() {
        let plain = cookie("id", Duration::from_secs(60), false);
        assert_eq!(
            plain,
            "sb_admin=id; Path=/admin; Max-Age=60; HttpOnly; SameSite=Strict"
        );
        assert!(cookie("id", Duration::from_secs(60), true).ends_with("; Secure"));
    }
}
