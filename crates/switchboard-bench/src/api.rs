//! The api-publish scenario: how many publications per second the server HTTP API takes.
//! `--connections` keep-alive HTTP/1.1 connections (spread round-robin over the nodes of
//! `--url`, from source addresses spread over 127.0.0.2..=127.0.0.255 as everywhere) each send
//! `POST /api/publish` with `{"channel": C, "data": {"text": "..."}}` one after the other for
//! the measured phase (one request outstanding per connection, so `--connections` is the
//! concurrency), read each response (`Content-Length` or chunked) and time it. Reports
//! publishes/s, the request→response latency percentiles, the statuses, how many answers carry
//! an `offset` (the channel keeps history: the publication was appended to its stream), and
//! the CPU per publish of the server processes and the generator. Any non-2xx answer or lost
//! connection makes the run incomplete.

use crate::net::{self, Nodes, Target};
use crate::report::{self, Report};
use crate::stats::{CpuMeter, Hist};
use anyhow::{bail, Context, Result};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Parameters of an api-publish run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Keep-alive connections (each with one request in flight).
    pub connections: usize,
    /// The channel published to.
    pub channel: String,
    /// Size of the `text` in each publication's data.
    pub size: usize,
    /// `X-API-Key` sent with every request (none: an open API, as with `--dev`).
    pub api_key: Option<String>,
    /// Measured phase.
    pub duration: Duration,
    /// Time allowed after the phase for the last responses.
    pub drain: Duration,
}

#[derive(Default)]
struct Shared {
    /// Requests sent.
    sent: Cell<u64>,
    /// Responses read (any status).
    answered: Cell<u64>,
    /// 2xx responses within the measured phase.
    ok_in_window: Cell<u64>,
    /// 2xx responses whose body has an `"offset"`.
    with_offset: Cell<u64>,
    /// Responses by status code.
    statuses: RefCell<BTreeMap<u16, u64>>,
    /// The first non-2xx body, for the report.
    first_refusal: RefCell<Option<String>>,
    measuring: Cell<bool>,
    stopping: Cell<bool>,
    closed_early: Cell<u64>,
    first_error: RefCell<Option<String>>,
}

/// The request of one publication (`seq` makes each one's data distinct).
fn request(target: &Target, p: &Params, path: &str, seq: u64, out: &mut Vec<u8>) {
    let text_len = p.size.saturating_sub(20).max(1);
    let body = format!(
        r#"{{"channel":{},"data":{{"seq":{seq:>12},"text":"{}"}}}}"#,
        serde_json::Value::from(p.channel.as_str()),
        "x".repeat(text_len)
    );
    out.clear();
    out.extend_from_slice(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            target.host(),
            body.len()
        )
        .as_bytes(),
    );
    if let Some(k) = &p.api_key {
        out.extend_from_slice(format!("X-API-Key: {k}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// One parsed HTTP response: its status and body, and whether the server closes the
/// connection after it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    /// `Connection: close`, or an HTTP/1.0 answer without `Connection: keep-alive`: no further
    /// request is answered on this connection.
    pub(crate) closes: bool,
}

/// Parses one complete response at the start of `buf`: `Some((response, bytes used))`, or
/// `None` when more bytes are needed.
pub(crate) fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            bail!("no end of the response head within 64 KiB");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    // HTTP/1.0 closes unless told otherwise; HTTP/1.1 keeps the connection unless told.
    let mut closes = status_line.starts_with("HTTP/1.0");
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().context("bad Content-Length")?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("connection") {
            for token in v.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    closes = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    closes = false;
                }
            }
        }
    }
    let mut at = head_end + 4;
    if chunked {
        let mut body = Vec::new();
        loop {
            let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let size_text = std::str::from_utf8(&buf[at..at + eol]).context("chunk size")?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            at += eol + 2;
            if size == 0 {
                // No trailers expected: the final CRLF.
                if buf.len() < at + 2 {
                    return Ok(None);
                }
                return Ok(Some((
                    Response {
                        status,
                        body,
                        closes,
                    },
                    at + 2,
                )));
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    let length = length.unwrap_or(0);
    if buf.len() < at + length {
        return Ok(None);
    }
    let body = buf[at..at + length].to_vec();
    at += length;
    Ok(Some((
        Response {
            status,
            body,
            closes,
        },
        at,
    )))
}

async fn conn_loop(
    sh: &Shared,
    hist: &RefCell<Hist>,
    target: &Target,
    p: &Params,
    mut stream: TcpStream,
    end: Instant,
) -> Result<()> {
    let path = target.request_path_without_token("/api/publish");
    let (mut req, mut buf) = (Vec::with_capacity(p.size + 256), Vec::with_capacity(4096));
    let mut chunk = vec![0u8; 16 * 1024];
    let mut seq = 0u64;
    while Instant::now() < end {
        request(target, p, &path, seq, &mut req);
        seq += 1;
        let t = Instant::now();
        sh.sent.set(sh.sent.get() + 1);
        stream.write_all(&req).await.context("sending a request")?;
        let resp = loop {
            if let Some((resp, used)) = parse_response(&buf)? {
                buf.drain(..used);
                break resp;
            }
            let n = stream
                .read(&mut chunk)
                .await
                .context("reading a response")?;
            if n == 0 {
                bail!("server closed the connection");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let took = t.elapsed();
        sh.answered.set(sh.answered.get() + 1);
        *sh.statuses.borrow_mut().entry(resp.status).or_default() += 1;
        if (200..300).contains(&resp.status) {
            if sh.measuring.get() {
                sh.ok_in_window.set(sh.ok_in_window.get() + 1);
                hist.borrow_mut()
                    .record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            }
            if resp.body.windows(8).any(|w| w == b"\"offset\"") {
                sh.with_offset.set(sh.with_offset.get() + 1);
            }
        } else {
            sh.first_refusal.borrow_mut().get_or_insert_with(|| {
                format!(
                    "HTTP {}: {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                )
            });
        }
    }
    Ok(())
}

/// Runs the scenario against `nodes` (connections spread round-robin) and returns its report.
pub async fn run(
    nodes: &Nodes,
    p: &Params,
    server_pids: &[u32],
    concurrency: usize,
) -> Result<Report> {
    if p.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if p.channel.is_empty() || p.channel.chars().any(char::is_whitespace) {
        bail!("--channel must be a channel name (no whitespace)");
    }
    // Connect everyone first (bounded), then measure.
    let pb = report::bar(p.connections as u64, "connect");
    let t_connect = Instant::now();
    let mut streams: Vec<Option<TcpStream>> = (0..p.connections).map(|_| None).collect();
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < p.connections || !set.is_empty() {
        while next < p.connections && set.len() < concurrency.max(1) {
            let (i, t) = (next, nodes.node_for(next).clone());
            set.spawn_local(async move {
                let s = net::client_socket(&t, t.source_for(i), None)?;
                let s = tokio::time::timeout(Duration::from_secs(15), s.connect(t.addr))
                    .await
                    .with_context(|| format!("connecting to {}: timed out", t.addr))?
                    .with_context(|| format!("connecting to {}", t.addr))?;
                anyhow::Ok((i, s))
            });
            next += 1;
        }
        if let Some(res) = set.join_next().await {
            let (i, s) = res.context("connect task")??;
            streams[i] = Some(s);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let connect_s = t_connect.elapsed().as_secs_f64();

    let sh = Rc::new(Shared::default());
    let hist = Rc::new(RefCell::new(Hist::new()?));
    let p2 = Rc::new(p.clone());
    let cpu = CpuMeter::start(server_pids)?;
    let t0 = Instant::now();
    let end = t0 + p.duration;
    sh.measuring.set(true);
    let mut tasks = Vec::with_capacity(p.connections);
    for (i, s) in streams.into_iter().enumerate() {
        let Some(stream) = s else {
            bail!("connection {i} missing")
        };
        let (sh, hist, p, t) = (
            sh.clone(),
            hist.clone(),
            p2.clone(),
            nodes.node_for(i).clone(),
        );
        tasks.push(tokio::task::spawn_local(async move {
            if let Err(e) = conn_loop(&sh, &hist, &t, &p, stream, end).await {
                if !sh.stopping.get() {
                    sh.closed_early.set(sh.closed_early.get() + 1);
                    sh.first_error
                        .borrow_mut()
                        .get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }));
    }
    report::measure_phase(p.duration, t0, end, "publishes", || sh.ok_in_window.get()).await;
    sh.measuring.set(false);
    let used = cpu.stop()?;
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    // Each connection ends after the answer to its last request.
    let drain_end = tokio::time::Instant::now() + p.drain;
    let mut unfinished = 0u64;
    for t in &mut tasks {
        if tokio::time::timeout_at(drain_end, t).await.is_err() {
            unfinished += 1;
        }
    }
    sh.stopping.set(true);
    for t in &tasks {
        t.abort();
    }

    let ok_in_window = sh.ok_in_window.get();
    let ok: u64 = sh
        .statuses
        .borrow()
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    let mut r = Report::new("api-publish");
    r.param("url", nodes.describe());
    r.param("connections", p.connections);
    r.param("channel", p.channel.clone());
    r.param("size", p.size);
    r.param("api_key", p.api_key.is_some());
    r.param("duration_s", p.duration.as_secs_f64());
    r.param("server_pid", crate::stats::Pids::param(server_pids));
    r.num("connect_s", "connect time (s)", connect_s);
    r.num(
        "publishes_per_s",
        "publishes/s (2xx answers)",
        ok_in_window as f64 / wall,
    );
    r.int("sent", "requests sent", sh.sent.get());
    r.int("answered", "responses received", sh.answered.get());
    r.int("ok", "2xx responses", ok);
    r.int(
        "ok_in_window",
        "2xx responses in measured phase",
        ok_in_window,
    );
    r.int(
        "with_offset",
        "2xx responses with an offset (kept in history)",
        sh.with_offset.get(),
    );
    let statuses = sh.statuses.borrow().clone();
    r.value(
        "statuses",
        "responses by status",
        statuses
            .iter()
            .map(|(s, n)| format!("{s} ×{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        serde_json::Value::Object(
            statuses
                .iter()
                .map(|(s, n)| (s.to_string(), (*n).into()))
                .collect(),
        ),
    );
    r.int("closed_early", "connections lost", sh.closed_early.get());
    r.int(
        "unfinished",
        "connections still waiting after drain",
        unfinished,
    );
    r.latency("latency", "request→response", &hist.borrow());
    r.cpu("", &used, Some((ok_in_window, "publish")));
    if let Some(e) = sh.first_error.borrow().as_ref() {
        r.fail(format!(
            "{} connection(s) lost during the run; first: {e}",
            sh.closed_early.get()
        ));
    }
    if let Some(refusal) = sh.first_refusal.borrow().as_ref() {
        r.fail(format!(
            "{} requests were not answered 2xx; first: {refusal}",
            sh.answered.get() - ok
        ));
    }
    if ok_in_window == 0 {
        r.fail("no publish answered 2xx during the measured phase");
    }
    if used.generator_s > 0.9 * used.wall_s {
        r.note("the generator used >90% of a core: the result may be bounded by the generator");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let body = r#"{"result":{"offset":1,"epoch":"e"}}"#;
        let one = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        // What follows is the next response's start.
        let r = format!("{one}HTTP");
        let (resp, used) = parse_response(r.as_bytes()).expect("ok").expect("complete");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, body.as_bytes());
        assert_eq!(used, one.len());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab")
                .expect("ok")
                .is_none()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n")
            .expect("ok")
            .is_none());
        let c = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nHTTP";
        let (resp, used) = parse_response(c).expect("ok").expect("complete");
        assert_eq!((resp.status, resp.body.as_slice()), (503, &b"abcde"[..]));
        assert_eq!(used, c.len() - 4);
        assert!(parse_response(&c[..c.len() - 6]).expect("ok").is_none());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(!resp.closes);
    }

    #[test]
    fn responses_say_whether_the_connection_closes() {
        let closes = |r: &[u8]| parse_response(r).expect("ok").expect("complete").0.closes;
        assert!(!closes(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(closes(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(closes(
            b"HTTP/1.1 200 OK\r\nconnection: Upgrade, Close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(closes(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!closes(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn requests_are_json_posts() {
        let t = Target::parse("ws://127.0.0.1:9/p", None).expect("target");
        let p = Params {
            connections: 1,
            channel: "chat:a\"b".into(),
            size: 40,
            api_key: Some("k".into()),
            duration: Duration::from_secs(1),
            drain: Duration::from_secs(1),
        };
        let mut out = Vec::new();
        request(&t, &p, "/p/api/publish", 7, &mut out);
        let text = String::from_utf8(out).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("POST /p/api/publish HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(head.contains("X-API-Key: k"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["channel"], "chat:a\"b");
        assert_eq!(v["data"]["seq"], 7);
        assert_eq!(v["data"]["text"].as_str().map(str::len), Some(20));
    }
}
