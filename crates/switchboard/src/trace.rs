//! Traces: OpenTelemetry spans, exported over OTLP/HTTP in batches, for the handshake, each
//! server API call, a publication's path (API or client → broker → fan-out on each node) and
//! each hook call. Off by default (`[traces]`); when off, [`Tracer`] holds nothing, every
//! span is [`Span::none`] and no trace context is made or carried, so the hot path pays one
//! branch per publication.
//!
//! The trace context crosses tasks, nodes and processes as a [`TraceParent`] (the W3C
//! `traceparent` fields): a publication carries the broker-publish span's in
//! [`Publication::trace`](crate::publication::Publication), through the broker codec to every
//! node, which hangs its one fan-out span under it (one span per publication per node, never
//! one per delivery). A request's log `trace_id` is the trace id of its span: a request with a
//! `traceparent` continues that trace; one without starts a trace whose id is the request's
//! `X-Trace-ID` when that is 32 hex digits, or the id the node generated for it.
//!
//! For calls to a backend (hooks), [`Tracer::client_span`] makes the client span and its
//! [`Span::traceparent`] is the header to send with the call.
//!
//! The exporter lives behind the `otel` cargo feature (on by default). Without it this module
//! keeps its types, `traces.enabled = true` is a start error, and nothing else changes.

use std::fmt;
#[cfg(feature = "otel")]
use std::sync::Arc;

use crate::config::TracesConfig;

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The exporter could not be built (the endpoint is not a URL, a thread could not start).
    #[error("cannot start the OTLP exporter for {endpoint}: {message}")]
    Exporter {
        /// `traces.endpoint`.
        endpoint: String,
        /// The exporter's reason.
        message: String,
    },
    /// `traces.enabled` in a build without the `otel` feature.
    #[error(
        "traces.enabled is set but this build has no OpenTelemetry exporter (cargo feature `otel`)"
    )]
    NotBuilt,
}

/// A span's identity as it travels: the fields of a W3C `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The parent span's id (never all zero).
    pub span_id: [u8; 8],
    /// Whether the caller recorded it (the `sampled` flag).
    pub sampled: bool,
    /// Whether it came from another process (a header, or a broker message).
    pub remote: bool,
}

fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    (out != [0u8; N]).then_some(out)
}

fn write_hex(out: &mut String, bytes: &[u8]) {
    use fmt::Write;
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
}

/// The trace id in `text` when it is 32 hex digits and not all zero (a request's
/// `X-Trace-ID` that can name an OpenTelemetry trace).
pub fn trace_id_from_hex(text: &str) -> Option<[u8; 16]> {
    hex_bytes(text)
}

impl TraceParent {
    /// Parses a `traceparent` header value: `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero.
    /// A later version is read by its first four fields, as the W3C text asks.
    pub fn parse(header: &str) -> Option<TraceParent> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let hex = |text: &str| text.len() == 2 && text.bytes().all(|b| b.is_ascii_hexdigit());
        // Version ff is invalid; version 00 has exactly four fields.
        if !hex(version) || version.eq_ignore_ascii_case("ff") || !hex(flags) {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent {
            trace_id: hex_bytes(trace)?,
            span_id: hex_bytes(span)?,
            sampled: flags & 1 == 1,
            remote: true,
        })
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        write_hex(&mut out, &self.trace_id);
        out.push('-');
        write_hex(&mut out, &self.span_id);
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }

    /// The trace id as 32 lowercase hex digits (what logs show as `trace_id`).
    pub fn trace_id_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        write_hex(&mut out, &self.trace_id);
        out
    }
}

/// What a span stands for, as OpenTelemetry kinds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request this node serves (handshake, API call).
    Server,
    /// A call this node makes and waits for (a hook).
    Client,
    /// A message this node sends on (a publication to the broker).
    Producer,
    /// A message this node received (a publication's fan-out).
    Consumer,
    /// Work inside the node.
    Internal,
}

/// The node's tracer: disabled (the default), or an OpenTelemetry tracer whose spans are
/// batched to the OTLP/HTTP endpoint. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tracer {
    #[cfg(feature = "otel")]
    inner: Option<Arc<otel::Exporting>>,
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_enabled() {
            "Tracer(exporting)"
        } else {
            "Tracer(off)"
        })
    }
}

impl Tracer {
    /// A tracer that makes no spans.
    pub fn disabled() -> Tracer {
        Tracer::default()
    }

    /// The tracer `config` asks for, `node` naming this node in every span's resource.
    ///
    /// # Errors
    /// [`TraceError`] when tracing is enabled and its exporter cannot start.
    pub fn from_config(config: &TracesConfig, node: &str) -> Result<Tracer, TraceError> {
        if !config.enabled {
            return Ok(Tracer::disabled());
        }
        #[cfg(feature = "otel")]
        {
            Ok(Tracer {
                inner: Some(Arc::new(otel::Exporting::new(config, node)?)),
            })
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = node;
            Err(TraceError::NotBuilt)
        }
    }

    /// Whether spans are made.
    pub fn is_enabled(&self) -> bool {
        #[cfg(feature = "otel")]
        {
            self.inner.is_some()
        }
        #[cfg(not(feature = "otel"))]
        {
            false
        }
    }

    /// The span of a request this node serves: a child of the request's `traceparent` when
    /// it has a valid one, else the root of a new trace whose id is `trace_id` when that is 32
    /// hex digits (the request's log trace id), else a random one.
    pub fn server_span(&self, name: &str, traceparent: Option<&str>, trace_id: &str) -> Span {
        #[cfg(feature = "otel")]
        if let Some(inner) = &self.inner {
            let parent = traceparent.and_then(TraceParent::parse);
            let root_id = trace_id_from_hex(trace_id);
            return inner.start(name, Kind::Server, parent, root_id);
        }
        let _ = (name, traceparent, trace_id);
        Span::none()
    }

    /// A span under `parent`; none when there is no parent (work that no traced request
    /// caused starts no trace of its own) or when tracing is off.
    pub fn child(&self, name: &str, kind: Kind, parent: Option<TraceParent>) -> Span {
        #[cfg(feature = "otel")]
        if let (Some(inner), Some(parent)) = (&self.inner, parent) {
            return inner.start(name, kind, Some(parent), None);
        }
        let _ = (name, kind, parent);
        Span::none()
    }

    /// The span of a call to a backend (a hook) made for the request or connection whose
    /// context is `parent`: send [`Span::traceparent`] with the call as the `traceparent`
    /// header, set `http.response.status_code` (or [`Span::fail`]) and end it when the call
    /// is over. With no parent the call starts a trace of its own (it is still worth seeing).
    pub fn client_span(&self, name: &str, parent: Option<TraceParent>) -> Span {
        #[cfg(feature = "otel")]
        if let Some(inner) = &self.inner {
            return inner.start(name, Kind::Client, parent, None);
        }
        let _ = (name, parent);
        Span::none()
    }

    /// Sends what is batched and stops the exporter (at the end of shutdown). Runs on a
    /// blocking thread: the SDK waits for its export thread.
    pub async fn shutdown(&self) {
        #[cfg(feature = "otel")]
        if let Some(inner) = &self.inner {
            let inner = Arc::clone(inner);
            let _ = tokio::task::spawn_blocking(move || inner.shutdown()).await;
        }
    }
}

/// One span, ended when dropped (or by [`Span::end`]). [`Span::none`] when tracing is off or
/// the span has no parent to hang under: every method is then a no-op.
#[derive(Default)]
pub struct Span {
    #[cfg(feature = "otel")]
    inner: Option<opentelemetry_sdk::trace::Span>,
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.context() {
            Some(context) => write!(f, "Span({})", context.header()),
            None => f.write_str("Span(none)"),
        }
    }
}

impl Span {
    /// No span.
    pub fn none() -> Span {
        Span::default()
    }

    /// This span's context for its children and for the wire, when it is sampled (an
    /// unsampled span has no exported children, so nothing is carried for it).
    pub fn context(&self) -> Option<TraceParent> {
        #[cfg(feature = "otel")]
        if let Some(span) = &self.inner {
            use opentelemetry::trace::Span as _;
            let context = span.span_context();
            if context.is_valid() && context.is_sampled() {
                return Some(TraceParent {
                    trace_id: context.trace_id().to_bytes(),
                    span_id: context.span_id().to_bytes(),
                    sampled: true,
                    remote: false,
                });
            }
        }
        None
    }

    /// The `traceparent` header value for a call made under this span.
    pub fn traceparent(&self) -> Option<String> {
        self.context().map(|context| context.header())
    }

    /// Adds the `traceparent` header of a call made under this span (a hook's request) to
    /// `headers`; nothing when there is no span.
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        if let Some(value) = self
            .traceparent()
            .and_then(|v| http::HeaderValue::from_str(&v).ok())
        {
            headers.insert("traceparent", value);
        }
    }

    /// Records a text attribute.
    pub fn set_str(&mut self, key: &'static str, value: &str) {
        #[cfg(feature = "otel")]
        if let Some(span) = &mut self.inner {
            use opentelemetry::trace::Span as _;
            span.set_attribute(opentelemetry::KeyValue::new(key, value.to_owned()));
        }
        let _ = (key, value);
    }

    /// Records a number attribute.
    pub fn set_int(&mut self, key: &'static str, value: i64) {
        #[cfg(feature = "otel")]
        if let Some(span) = &mut self.inner {
            use opentelemetry::trace::Span as _;
            span.set_attribute(opentelemetry::KeyValue::new(key, value));
        }
        let _ = (key, value);
    }

    /// Renames the span (an API call's method is known once its body is read).
    pub fn rename(&mut self, name: &str) {
        #[cfg(feature = "otel")]
        if let Some(span) = &mut self.inner {
            use opentelemetry::trace::Span as _;
            span.update_name(name.to_owned());
        }
        let _ = name;
    }

    /// Marks the span failed, with why.
    pub fn fail(&mut self, message: &str) {
        #[cfg(feature = "otel")]
        if let Some(span) = &mut self.inner {
            use opentelemetry::trace::Span as _;
            span.set_status(opentelemetry::trace::Status::error(message.to_owned()));
        }
        let _ = message;
    }

    /// Ends the span now (dropping it does the same).
    pub fn end(self) {}
}

#[cfg(feature = "otel")]
mod otel {
    //! The OpenTelemetry SDK behind [`Tracer`](super::Tracer).

    use std::cell::Cell;

    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::trace::{
        IdGenerator, RandomIdGenerator, Sampler, SdkTracer, SdkTracerProvider,
    };
    use opentelemetry_sdk::Resource;

    use super::{Kind, Span, TraceError, TraceParent};
    use crate::config::{OtlpProtocol, TracesConfig};

    thread_local! {
        /// The trace id the next root span on this thread takes (see [`Ids`]).
        static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
    }

    /// Random ids, except that a root span started by [`Exporting::start`] with a trace id
    /// takes that one: the SDK asks its id generator for a root's trace id, and this is how
    /// the request's log `trace_id` becomes its trace's id.
    #[derive(Debug)]
    struct Ids(RandomIdGenerator);

    impl IdGenerator for Ids {
        fn new_trace_id(&self) -> TraceId {
            NEXT_TRACE_ID
                .with(Cell::take)
                .unwrap_or_else(|| self.0.new_trace_id())
        }

        fn new_span_id(&self) -> SpanId {
            self.0.new_span_id()
        }
    }

    /// The provider (owning the batch export thread) and its tracer.
    pub(super) struct Exporting {
        provider: SdkTracerProvider,
        tracer: SdkTracer,
    }

    impl Exporting {
        pub(super) fn new(config: &TracesConfig, node: &str) -> Result<Exporting, TraceError> {
            let protocol = match config.protocol {
                OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
                OtlpProtocol::HttpJson => Protocol::HttpJson,
            };
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(config.endpoint.clone())
                .with_protocol(protocol)
                .build()
                .map_err(|e| TraceError::Exporter {
                    endpoint: config.endpoint.clone(),
                    message: e.to_string(),
                })?;
            let resource = Resource::builder()
                .with_service_name(config.service_name.clone())
                .with_attribute(KeyValue::new("service.instance.id", node.to_owned()))
                .build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    config.sampling_ratio,
                ))))
                .with_id_generator(Ids(RandomIdGenerator::default()))
                .with_resource(resource)
                .build();
            let tracer = provider.tracer("switchboard");
            Ok(Exporting { provider, tracer })
        }

        pub(super) fn start(
            &self,
            name: &str,
            kind: Kind,
            parent: Option<TraceParent>,
            root_id: Option<[u8; 16]>,
        ) -> Span {
            let context = match parent {
                Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from_bytes(parent.trace_id),
                    SpanId::from_bytes(parent.span_id),
                    if parent.sampled {
                        TraceFlags::SAMPLED
                    } else {
                        TraceFlags::default()
                    },
                    parent.remote,
                    TraceState::default(),
                )),
                None => {
                    if let Some(id) = root_id {
                        NEXT_TRACE_ID.with(|next| next.set(Some(TraceId::from_bytes(id))));
                    }
                    Context::new()
                }
            };
            let kind = match kind {
                Kind::Server => SpanKind::Server,
                Kind::Client => SpanKind::Client,
                Kind::Producer => SpanKind::Producer,
                Kind::Consumer => SpanKind::Consumer,
                Kind::Internal => SpanKind::Internal,
            };
            let span = self
                .tracer
                .span_builder(name.to_owned())
                .with_kind(kind)
                .start_with_context(&self.tracer, &context);
            // Not taken when the provider was already shut down: never leak it to the next.
            NEXT_TRACE_ID.with(|next| next.set(None));
            Span { inner: Some(span) }
        }

        pub(super) fn shutdown(&self) {
            if let Err(error) = self.provider.shutdown() {
                tracing::warn!(event = "traces_shutdown_failed", %error, "the last spans may not have been exported");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_survives_the_trip_and_bad_ones_are_refused() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(header).unwrap();
        assert!(parsed.sampled && parsed.remote);
        assert_eq!(parsed.header(), header);
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!unsampled.unwrap().sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        assert!(TraceParent::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"
        )
        .is_some());
    }

    #[test]
    fn a_disabled_tracer_makes_no_spans_and_carries_nothing() {
        let tracer = Tracer::from_config(&TracesConfig::default(), "n").unwrap();
        assert!(!tracer.is_enabled());
        let span = tracer.server_span("api", None, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.context(), None);
        let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(tracer.child("x", Kind::Internal, parent).context(), None);
        assert_eq!(tracer.client_span("hook", parent).traceparent(), None);
    }
}
