//! Pusher webhooks: what the Pusher door and the node tell an app's backend (channel_occupied,
//! channel_vacated, member_added, member_removed, client_event), in Pusher's format.
//!
//! This module owns the way out, not the decisions: the node decides when a channel is
//! occupied or a member added (once per user, across nodes where it can), the door when a
//! client event went out; both hand the event to [`Webhooks::emit`], which never waits. Each
//! configured URL has a bounded queue and one task that collects events for
//! `pusher.webhook_batch_window`, POSTs them as one signed request
//! (`{"time_ms", "events"}` with `X-Pusher-Key` and `X-Pusher-Signature`, the hex HMAC-SHA256 of
//! the body under the app's secret) and retries a failed request with backoff and jitter. A full
//! queue drops the new event and counts it; the connection that caused it never notices.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::PusherConfig;
use crate::hooks::client::{AttemptError, HttpClient};
use crate::metrics::WebhookMetrics;
use crate::pusher_wire;

/// The events Pusher's webhooks carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WebhookKind {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    ClientEvent,
}

impl WebhookKind {
    const ALL: [WebhookKind; 5] = [
        WebhookKind::ChannelOccupied,
        WebhookKind::ChannelVacated,
        WebhookKind::MemberAdded,
        WebhookKind::MemberRemoved,
        WebhookKind::ClientEvent,
    ];

    /// The event's `name` in the webhook body (and in `events = [...]`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            WebhookKind::ChannelOccupied => "channel_occupied",
            WebhookKind::ChannelVacated => "channel_vacated",
            WebhookKind::MemberAdded => "member_added",
            WebhookKind::MemberRemoved => "member_removed",
            WebhookKind::ClientEvent => "client_event",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    fn mask_of(names: &[String]) -> u8 {
        if names.is_empty() {
            return Self::ALL.iter().fold(0, |mask, kind| mask | kind.bit());
        }
        Self::ALL
            .iter()
            .filter(|kind| names.iter().any(|n| n == kind.name()))
            .fold(0, |mask, kind| mask | kind.bit())
    }
}

/// One URL's queue.
struct Target {
    wants: u8,
    queue: mpsc::Sender<Value>,
}

/// One app's URLs.
struct AppHooks {
    wants: u8,
    targets: Vec<Target>,
}

/// What one URL's task needs.
struct Delivery {
    uri: Uri,
    key: HeaderValue,
    secret: String,
    queue: mpsc::Receiver<Value>,
}

/// Every app's webhooks on this node.
pub(crate) struct Webhooks {
    apps: HashMap<String, AppHooks>,
    metrics: WebhookMetrics,
    settings: Settings,
    /// The delivery tasks' halves, until [`Webhooks::start`] takes them.
    waiting: Mutex<Vec<Delivery>>,
    /// Events dropped since start: the warning is logged at the 1st, 2nd, 4th, 8th… drop, so a
    /// receiver that is down does not flood the log.
    dropped: AtomicU64,
}

#[derive(Clone, Copy)]
struct Settings {
    window: Duration,
    max_batch: usize,
    timeout: Duration,
    attempts: u32,
}

/// The first wait before a retry; it doubles each time, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A webhook receiver's answer is read and dropped; more than this is not read.
const MAX_REPLY_BYTES: usize = 64 * 1024;

impl Webhooks {
    /// The webhooks of every app in `config` (none configured: every `emit` is a no-op).
    pub(crate) fn from_config(config: &PusherConfig, metrics: &WebhookMetrics) -> Self {
        let mut apps = HashMap::new();
        let mut waiting = Vec::new();
        for app in &config.apps {
            let mut hooks = AppHooks {
                wants: 0,
                targets: Vec::new(),
            };
            for hook in &app.webhooks {
                // The config check refused URLs and keys that do not parse.
                let (Ok(uri), Ok(key)) = (hook.url.parse::<Uri>(), HeaderValue::from_str(&app.key))
                else {
                    continue;
                };
                let wants = WebhookKind::mask_of(&hook.events);
                let (sender, receiver) = mpsc::channel(config.webhook_queue);
                hooks.wants |= wants;
                hooks.targets.push(Target {
                    wants,
                    queue: sender,
                });
                waiting.push(Delivery {
                    uri,
                    key,
                    secret: app.secret.clone(),
                    queue: receiver,
                });
            }
            if !hooks.targets.is_empty() {
                apps.insert(app.id.clone(), hooks);
            }
        }
        Webhooks {
            apps,
            metrics: metrics.clone(),
            settings: Settings {
                window: config.webhook_batch_window,
                max_batch: config.webhook_max_batch,
                timeout: config.webhook_timeout,
                attempts: config.webhook_attempts,
            },
            waiting: Mutex::new(waiting),
            dropped: AtomicU64::new(0),
        }
    }

    /// Starts one delivery task per URL; they stop with `shutdown`.
    pub(crate) fn start(&self, shutdown: &CancellationToken) {
        let deliveries = std::mem::take(
            &mut *self
                .waiting
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        if deliveries.is_empty() {
            return;
        }
        let client = Arc::new(HttpClient::new(4, Duration::from_secs(60), MAX_REPLY_BYTES));
        for delivery in deliveries {
            tokio::spawn(deliver(
                delivery,
                Arc::clone(&client),
                self.settings,
                self.metrics.clone(),
                shutdown.clone(),
            ));
        }
    }

    /// Whether app `app` sends `kind` anywhere (cheap: callers check before building events).
    pub(crate) fn wants(&self, app: &str, kind: WebhookKind) -> bool {
        self.apps
            .get(app)
            .is_some_and(|hooks| hooks.wants & kind.bit() != 0)
    }

    /// Queues `kind` on hub channel `hub` (`app:name`) with `fields` (besides `name` and
    /// `channel`) for every URL of its app that wants it; never waits.
    pub(crate) fn emit(&self, hub: &str, kind: WebhookKind, fields: &[(&str, Value)]) {
        let Some((app, channel)) = hub.split_once(':') else {
            return;
        };
        let Some(hooks) = self.apps.get(app) else {
            return;
        };
        if hooks.wants & kind.bit() == 0 {
            return;
        }
        let mut event = serde_json::Map::new();
        event.insert("name".into(), Value::from(kind.name()));
        event.insert("channel".into(), Value::from(channel));
        for (key, value) in fields {
            event.insert((*key).into(), value.clone());
        }
        let event = Value::Object(event);
        for target in hooks.targets.iter().filter(|t| t.wants & kind.bit() != 0) {
            if target.queue.try_send(event.clone()).is_err() {
                self.metrics.events.with_label_values(&["dropped"]).inc();
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        event = "webhook_dropped",
                        app,
                        kind = kind.name(),
                        dropped,
                        "a webhook queue is full (pusher.webhook_queue); events are dropped"
                    );
                }
            }
        }
    }
}

/// One URL's task: collects a batch, sends it, again.
async fn deliver(
    mut delivery: Delivery,
    client: Arc<HttpClient>,
    settings: Settings,
    metrics: WebhookMetrics,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = delivery.queue.recv() => event,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        let deadline = Instant::now() + settings.window;
        while batch.len() < settings.max_batch {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                event = delivery.queue.recv() => match event {
                    Some(event) => batch.push(event),
                    None => break,
                },
            }
        }
        let count = batch.len() as u64;
        let sent = send(&delivery, &client, settings, &metrics, &shutdown, batch).await;
        let outcome = if sent { "sent" } else { "failed" };
        metrics.events.with_label_values(&[outcome]).inc_by(count);
    }
}

/// Sends one batch, retrying with backoff and jitter; whether a try got a 2xx.
async fn send(
    delivery: &Delivery,
    client: &HttpClient,
    settings: Settings,
    metrics: &WebhookMetrics,
    shutdown: &CancellationToken,
    events: Vec<Value>,
) -> bool {
    let time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let body = json!({ "time_ms": time_ms, "events": events }).to_string();
    let Ok(signature) = HeaderValue::from_str(&pusher_wire::sign(&delivery.secret, &body)) else {
        return false;
    };
    let headers = [
        (
            HeaderName::from_static("x-pusher-key"),
            delivery.key.clone(),
        ),
        (HeaderName::from_static("x-pusher-signature"), signature),
    ];
    let body = Bytes::from(body);
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=settings.attempts {
        let result = client
            .deliver(&delivery.uri, &headers, body.clone(), settings.timeout)
            .await;
        let error = match result {
            Ok(()) => {
                metrics.requests.with_label_values(&["ok"]).inc();
                return true;
            }
            Err(error) => error,
        };
        metrics.requests.with_label_values(&["error"]).inc();
        // A 4xx says the receiver will not take this body however often it is sent.
        let retry = !matches!(error, AttemptError::Status(status) if (400..500).contains(&status));
        tracing::warn!(event = "webhook_failed", url = %delivery.uri, attempt, %error, retry, "a webhook request failed");
        if !retry || attempt == settings.attempts {
            break;
        }
        // Jitter spreads the retries of many nodes after a shared receiver's outage.
        let wait = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lists_select_kinds() {
        let all = WebhookKind::mask_of(&[]);
        assert!(WebhookKind::ALL.iter().all(|k| all & k.bit() != 0));
        let some = WebhookKind::mask_of(&["member_added".to_owned()]);
        assert_eq!(some, WebhookKind::MemberAdded.bit());
    }
}
