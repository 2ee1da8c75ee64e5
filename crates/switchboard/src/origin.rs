//! The `Origin` allowlist, checked before any upgrade.
//!
//! A pattern is `scheme://host[:port]`, where the host may start with `*.` to allow any
//! subdomain; `*` alone allows everything. Matching is exact otherwise (case-insensitive), so
//! `https://example.com` does not allow `https://example.com.evil.net`. A request with no
//! `Origin` header is not a browser's and passes (the token rules still apply).

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `*`: any origin.
    Any,
    /// A scheme, a host (possibly `*.`-prefixed) and an optional port.
    Exact {
        /// `http` or `https`.
        scheme: String,
        /// Lower-cased host; a leading `*.` matches one or more labels.
        host: String,
        /// Port as written, if any.
        port: Option<String>,
    },
}

impl OriginPattern {
    /// Parses `*` or `scheme://host[:port]`.
    ///
    /// # Errors
    /// A message saying what is malformed.
    pub fn parse(text: &str) -> Result<OriginPattern, &'static str> {
        if text == "*" {
            return Ok(OriginPattern::Any);
        }
        let (scheme, host, port) = split_origin(text).ok_or("expected scheme://host[:port]")?;
        if host.is_empty() || host[if host.starts_with("*.") { 2 } else { 0 }..].contains('*') {
            return Err("'*' is only allowed as the first label, as in https://*.example.com");
        }
        Ok(OriginPattern::Exact { scheme, host, port })
    }

    fn matches(&self, scheme: &str, host: &str, port: Option<&str>) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact {
                scheme: s,
                host: h,
                port: p,
            } => {
                let host_ok = match h.strip_prefix("*.") {
                    Some(suffix) => {
                        host.len() > suffix.len() + 1
                            && host.ends_with(suffix)
                            && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                    }
                    None => h == host,
                };
                s == scheme && host_ok && p.as_deref() == port
            }
        }
    }
}

/// Splits `scheme://host[:port]` into lower-cased parts; `None` when it is not of that form.
fn split_origin(text: &str) -> Option<(String, String, Option<String>)> {
    let (scheme, rest) = text.split_once("://")?;
    // A browser never sends a path or userinfo in `Origin`; `https://user@a.example.com`
    // names nobody's allowlisted origin.
    if rest.contains('/') || rest.contains('@') || scheme.is_empty() {
        return None;
    }
    let (host, port) = if let Some(v6_end) = rest.find(']') {
        let (host, after) = rest.split_at(v6_end + 1);
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    Some((
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase(),
        port.map(str::to_owned),
    ))
}

/// The allowlist as configured, plus localhost in `--dev`.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    patterns: Vec<OriginPattern>,
    allow_localhost: bool,
}

impl OriginPolicy {
    /// Builds the policy; `patterns` were checked by config validation, bad ones are skipped.
    pub fn new(patterns: &[String], allow_localhost: bool) -> Self {
        OriginPolicy {
            patterns: patterns
                .iter()
                .filter_map(|p| OriginPattern::parse(p).ok())
                .collect(),
            allow_localhost,
        }
    }

    /// Whether a request with this `Origin` header value (or none) may upgrade.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let Some((scheme, host, port)) = split_origin(origin) else {
            return false;
        };
        if self.allow_localhost
            && matches!(scheme.as_str(), "http" | "https")
            && matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]")
        {
            return true;
        }
        self.patterns
            .iter()
            .any(|p| p.matches(&scheme, &host, port.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> OriginPolicy {
        let owned: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        OriginPolicy::new(&owned, false)
    }

    #[test]
    fn userinfo_in_an_origin_never_matches() {
        let allowed = policy(&["https://a.example.com", "https://*.example.com"]);
        assert!(allowed.allows(Some("https://a.example.com")));
        assert!(!allowed.allows(Some("https://user@a.example.com")));
        assert!(!allowed.allows(Some("https://a.example.com@evil.example.net")));
    }

    #[test]
    fn no_origin_header_passes() {
        assert!(policy(&[]).allows(None));
    }

    #[test]
    fn empty_allowlist_refuses_browsers() {
        assert!(!policy(&[]).allows(Some("https://example.com")));
    }

    #[test]
    fn exact_match_includes_scheme_and_port() {
        let p = policy(&["https://app.example.com", "http://localhost:3000"]);
        assert!(p.allows(Some("https://app.example.com")));
        assert!(p.allows(Some("https://APP.example.com")));
        assert!(!p.allows(Some("http://app.example.com")));
        assert!(!p.allows(Some("https://app.example.com:8443")));
        assert!(p.allows(Some("http://localhost:3000")));
        assert!(!p.allows(Some("http://localhost:3001")));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = policy(&["https://*.example.com"]);
        assert!(p.allows(Some("https://a.example.com")));
        assert!(p.allows(Some("https://a.b.example.com")));
        assert!(!p.allows(Some("https://example.com")));
        assert!(!p.allows(Some("https://evilexample.com")));
        assert!(!p.allows(Some("https://a.example.com.evil.net")));
    }

    #[test]
    fn star_allows_any_and_null_origin_is_refused_otherwise() {
        assert!(policy(&["*"]).allows(Some("https://whatever.io")));
        assert!(!policy(&["https://a.com"]).allows(Some("null")));
    }

    #[test]
    fn dev_allows_localhost_on_any_port() {
        let p = OriginPolicy::new(&[], true);
        assert!(p.allows(Some("http://localhost:5173")));
        assert!(p.allows(Some("http://127.0.0.1:8000")));
        assert!(p.allows(Some("http://[::1]:8000")));
        assert!(!p.allows(Some("http://localhost.evil.com")));
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        assert!(OriginPattern::parse("example.com").is_err());
        assert!(OriginPattern::parse("https://a.*.com").is_err());
        assert!(OriginPattern::parse("https://a.com/path").is_err());
    }
}
