//! The hooks' HTTP client: one pooled HTTP/1.1 client with keep-alive for every upstream
//! (hyper-util's), which POSTs a JSON body and reads a bounded JSON reply. It knows nothing of
//! hooks, breakers or retries: one attempt, with its timeout, and a typed failure. The Pusher
//! webhooks (`webhooks`) send through it too.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// No reply within the timeout.
    #[error("timed out")]
    Timeout,
    /// The upstream could not be reached, or the connection broke.
    #[error("transport: {0}")]
    Transport(String),
    /// An HTTP status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The reply was larger than `hooks.max_reply_bytes`.
    #[error("reply larger than hooks.max_reply_bytes")]
    TooLarge,
}

/// A pooled keep-alive client.
pub(crate) struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    max_reply_bytes: usize,
}

impl HttpClient {
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration, max_reply_bytes: usize) -> Self {
        let mut connector = HttpConnector::new();
        // Hook calls are small request/reply exchanges: no Nagle delay on them.
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_idle)
            .pool_idle_timeout(idle_timeout)
            .pool_timer(TokioTimer::new())
            .build(connector);
        HttpClient {
            client,
            max_reply_bytes,
        }
    }

    /// POSTs `body` to `uri` with `headers`, within `timeout`; the reply's body on 200.
    pub(crate) async fn post(
        &self,
        uri: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, AttemptError> {
        let (status, body) = self.exchange(uri, headers, body, timeout).await?;
        if status != StatusCode::OK {
            return Err(AttemptError::Status(status.as_u16()));
        }
        Ok(body)
    }

    /// POSTs `body` like [`HttpClient::post`], where any 2xx status is success and the reply's
    /// body is read (bounded) and dropped: what a webhook receiver answers.
    pub(crate) async fn deliver(
        &self,
        uri: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<(), AttemptError> {
        let (status, _) = self.exchange(uri, headers, body, timeout).await?;
        if !status.is_success() {
            return Err(AttemptError::Status(status.as_u16()));
        }
        Ok(())
    }

    async fn exchange(
        &self,
        uri: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), AttemptError> {
        let mut request = Request::post(uri.clone())
            .body(Full::new(body))
            .map_err(|e| AttemptError::Transport(e.to_string()))?;
        let map = request.headers_mut();
        for (name, value) in headers {
            map.append(name.clone(), value.clone());
        }
        map.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| AttemptError::Transport(e.to_string()))?;
            let status = response.status();
            let limited = Limited::new(response.into_body(), self.max_reply_bytes);
            let body = limited.collect().await.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    AttemptError::TooLarge
                } else {
                    AttemptError::Transport(e.to_string())
                }
            })?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| AttemptError::Timeout)?
    }
}
