//! Where the load goes and how one connection is opened: the `--url` parsing (ws:// on a
//! loopback address only; any path in it is a prefix; `--token` becomes `?token=` on the plain
//! doors and is kept as given for the client protocol's `connect` command), the choice
//! of a client source address (spread over 127.0.0.2..=127.0.0.255 so thousands of connections
//! do not exhaust one address' ephemeral ports), the socket set-up through socket2 (bind before
//! connect, TCP_NODELAY, optionally a small SO_RCVBUF) and the hand-written opening handshake,
//! timed from the start of the TCP connect to the complete `101` response head, optionally
//! offering permessage-deflate (a connection that offered it fails unless the server agreed;
//! one that did not fails if the server answers with an extension anyway). Batches of
//! connections are opened a bounded number at a time ([`open_many`], [`open_many_with`]).

use crate::deflate;
use crate::ws::{self, FrameReader};
use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// Time allowed for TCP connect plus the handshake of one connection.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// A parsed, loopback-only target.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host` header value.
    host: String,
    /// Path prefix from the URL (no trailing slash).
    prefix: String,
    /// The URL's own query string, without `?` (empty: none).
    url_query: String,
    /// `--token`, as given (the plain doors get it as `?token=`, the client protocol in its
    /// `connect` command).
    token: Option<String>,
}

pub(crate) fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Target {
    /// Parses `ws://HOST[:PORT][/prefix][?query]`; refuses anything but a loopback host.
    pub fn parse(url: &str, token: Option<&str>) -> Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("{url:?}: only ws:// URLs are supported"))?;
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, q.to_string()),
            None => (rest, String::new()),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').context("unterminated [IPv6] host")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse::<u16>().context("bad port")?,
                None if after.is_empty() => 80,
                None => bail!("garbage after [IPv6] host: {after:?}"),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h,
                    p.parse::<u16>()
                        .with_context(|| format!("bad port {p:?}"))?,
                ),
                None => (authority, 80),
            }
        };
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse()
                .with_context(|| format!("{host:?} is not an IP address or localhost"))?
        };
        if !ip.is_loopback() {
            bail!(
                "refusing non-loopback target {ip}: this bench only drives servers on this machine"
            );
        }
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            host: authority.to_string(),
            prefix: path.trim_end_matches('/').to_string(),
            url_query: query,
            token: token.map(str::to_string),
        })
    }

    /// Request target (path and query, `?token=` included) for the plain door `path`
    /// (e.g. `/ws/chat/room-0`).
    pub fn request_path(&self, path: &str) -> String {
        let mut p = self.request_path_without_token(path);
        if let Some(t) = &self.token {
            p.push(if self.url_query.is_empty() { '?' } else { '&' });
            p.push_str("token=");
            p.push_str(&encode_query_value(t));
        }
        p
    }

    /// Request target for `path` with the URL's own query only: the client protocol's door,
    /// which takes its token in the `connect` command.
    pub fn request_path_without_token(&self, path: &str) -> String {
        let mut p = format!("{}{}", self.prefix, path);
        if !self.url_query.is_empty() {
            p.push('?');
            p.push_str(&self.url_query);
        }
        p
    }

    /// The `Host` header value (the URL's authority).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `--token`, as given.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Source address for connection number `i`: one of 127.0.0.2..=127.0.0.255 for an IPv4
    /// target (the kernel picks the port), none (kernel's choice) for IPv6.
    pub fn source_for(&self, i: usize) -> Option<IpAddr> {
        match self.addr {
            SocketAddr::V4(_) => Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 254) as u8))),
            SocketAddr::V6(_) => None,
        }
    }
}

/// The nodes of a cluster (`--url` as a comma list of base URLs, each a [`Target`]): members
/// are spread over them round-robin ([`Nodes::node_for`]); publishers use the first one. One
/// URL is the single-server case, exactly as before.
#[derive(Debug, Clone)]
pub struct Nodes {
    targets: Vec<Target>,
}

impl Nodes {
    /// Parses `URL[,URL...]` (each as [`Target::parse`]: loopback only), with the same token
    /// for every node.
    pub fn parse(urls: &str, token: Option<&str>) -> Result<Self> {
        let targets = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| Target::parse(u, token))
            .collect::<Result<Vec<_>>>()?;
        if targets.is_empty() {
            bail!("--url {urls:?} names no server");
        }
        Ok(Self { targets })
    }

    /// How many nodes.
    pub fn count(&self) -> usize {
        self.targets.len()
    }

    /// The node index of the `i`-th spread connection: round-robin, `i % count`.
    pub fn index_for(&self, i: usize) -> usize {
        i % self.targets.len()
    }

    /// The node of the `i`-th spread connection ([`Nodes::index_for`]).
    pub fn node_for(&self, i: usize) -> &Target {
        &self.targets[self.index_for(i)]
    }

    /// Every node's address, comma-separated (the report's `url`: the bare address for one node).
    pub fn describe(&self) -> String {
        self.targets
            .iter()
            .map(|t| t.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// An open WebSocket connection: the TCP stream and the reader holding any bytes that came
/// after the handshake response.
pub struct Conn {
    /// The TCP stream (TCP_NODELAY on).
    pub stream: TcpStream,
    /// Frame reader with its buffer.
    pub reader: FrameReader,
    /// From the start of the TCP connect to the complete, checked `101` response head.
    pub handshake: Duration,
}

/// How the client sockets of a batch are set up.
#[derive(Debug, Clone, Copy)]
pub struct SocketOpts {
    /// Initial size of the frame reader's buffer.
    pub read_buf: usize,
    /// Largest server frame payload accepted.
    pub max_payload: usize,
    /// SO_RCVBUF, set before connect so the advertised window is small from the first
    /// segment (`None`: the kernel's default and autotuning).
    pub rcvbuf: Option<usize>,
    /// Offer permessage-deflate and require the server to agree (compressed frames are then
    /// inflated by the connection's reader).
    pub deflate: bool,
}

impl SocketOpts {
    /// A reader of `read_buf` bytes taking frames up to `max_payload`; kernel-default buffers.
    pub fn new(read_buf: usize, max_payload: usize) -> Self {
        Self {
            read_buf,
            max_payload,
            rcvbuf: None,
            deflate: false,
        }
    }
}

/// Opens a connection to the door `path` of `target` from `source` and completes the handshake.
pub async fn open(
    target: &Target,
    path: &str,
    source: Option<IpAddr>,
    opts: &SocketOpts,
) -> Result<Conn> {
    open_request(target, &target.request_path(path), source, opts).await
}

/// A client TCP socket for `target`, not yet connected: TCP_NODELAY, non-blocking, an optional
/// SO_RCVBUF (set before connect), bound to `source` when given.
pub fn client_socket(
    target: &Target,
    source: Option<IpAddr>,
    rcvbuf: Option<usize>,
) -> Result<TcpSocket> {
    let socket = Socket::new(
        Domain::for_address(target.addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .context("socket()")?;
    socket.set_nodelay(true).context("TCP_NODELAY")?;
    socket.set_nonblocking(true).context("O_NONBLOCK")?;
    if let Some(size) = rcvbuf {
        socket
            .set_recv_buffer_size(size)
            .with_context(|| format!("SO_RCVBUF {size}"))?;
    }
    if let Some(ip) = source {
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .with_context(|| format!("binding the client socket to {ip}"))?;
    }
    let std_stream: std::net::TcpStream = socket.into();
    Ok(TcpSocket::from_std_stream(std_stream))
}

/// Like [`open`], with the request target (path and query) given as is (see
/// [`Target::request_path_without_token`]).
pub async fn open_request(
    target: &Target,
    request_path: &str,
    source: Option<IpAddr>,
    opts: &SocketOpts,
) -> Result<Conn> {
    let fut = async {
        let socket = client_socket(target, source, opts.rcvbuf)?;
        let started = Instant::now();
        let mut stream = socket
            .connect(target.addr)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        let key = ws::new_key();
        let offer = opts.deflate.then_some(deflate::OFFER);
        let request = ws::handshake_request(&target.host, request_path, &key, offer);
        stream
            .write_all(request.as_bytes())
            .await
            .context("sending the handshake")?;
        let mut reader = FrameReader::new(opts.read_buf, opts.max_payload);
        let extensions = reader.read_handshake(&mut stream, &key).await?;
        if opts.deflate {
            deflate::check_accepted(extensions.as_deref())?;
            reader.enable_deflate();
        } else if let Some(e) = extensions {
            bail!("the server answered Sec-WebSocket-Extensions {e:?} although none was offered");
        }
        Ok(Conn {
            stream,
            reader,
            handshake: started.elapsed(),
        })
    };
    tokio::time::timeout(OPEN_TIMEOUT, fut)
        .await
        .with_context(|| {
            // Without the query: it may hold the token.
            let path = request_path.split('?').next().unwrap_or_default();
            format!("opening {path}: no handshake within {OPEN_TIMEOUT:?}")
        })?
}

/// What opening a batch of connections gave: one slot per requested path, in order.
pub struct Opened {
    /// The connections (`None` where opening failed).
    pub conns: Vec<Option<Conn>>,
    /// How many failed.
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<anyhow::Error>,
}

/// Opens one connection per entry of `paths` (connection `i` to [`Nodes::node_for`]`(i)`, from
/// its [`Target::source_for`]`(i)`), at most `concurrency` handshakes at a time, ticking `progress` per finished attempt.
/// Must run inside a `LocalSet`.
pub async fn open_many(
    nodes: &Nodes,
    paths: &[String],
    concurrency: usize,
    opts: &SocketOpts,
    progress: &indicatif::ProgressBar,
) -> Opened {
    let opts = *opts;
    let nodes = std::rc::Rc::new(nodes.clone());
    open_many_with(paths.len(), concurrency, progress, |i| {
        let (n, path) = (nodes.clone(), paths[i].clone());
        async move {
            let t = n.node_for(i);
            open(t, &path, t.source_for(i), &opts).await
        }
    })
    .await
}

/// Runs `open_one(i)` for every `i` in `0..count`, at most `concurrency` at a time (each a
/// local task), ticking `progress` per finished attempt; the connections in order of `i`.
/// What one attempt does beyond the handshake (e.g. the client protocol's connect and
/// subscribe) is up to `open_one`. Must run inside a `LocalSet`.
pub async fn open_many_with<F, Fut>(
    count: usize,
    concurrency: usize,
    progress: &indicatif::ProgressBar,
    mut open_one: F,
) -> Opened
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Conn>> + 'static,
{
    let mut conns: Vec<Option<Conn>> = (0..count).map(|_| None).collect();
    let mut failed = 0;
    let mut first_error = None;
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut take = |res: Result<(usize, Result<Conn>), tokio::task::JoinError>| match res {
        Ok((i, Ok(c))) => conns[i] = Some(c),
        Ok((_, Err(e))) => {
            failed += 1;
            first_error.get_or_insert(e);
        }
        Err(e) => {
            failed += 1;
            first_error.get_or_insert(anyhow::anyhow!("connect task failed: {e}"));
        }
    };
    while next < count || !set.is_empty() {
        while next < count && set.len() < concurrency.max(1) {
            let (i, fut) = (next, open_one(next));
            set.spawn_local(async move { (i, fut.await) });
            next += 1;
        }
        if let Some(res) = set.join_next().await {
            take(res);
            progress.inc(1);
        }
    }
    Opened {
        conns,
        failed,
        first_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls() {
        let t = Target::parse("ws://127.0.0.1:8081", None).expect("ok");
        assert_eq!(t.addr, "127.0.0.1:8081".parse().expect("addr"));
        assert_eq!(t.request_path("/ws"), "/ws");
        let t = Target::parse("ws://localhost:9/base/?x=1", Some("a b&c")).expect("ok");
        assert_eq!(
            t.request_path("/ws/chat/r"),
            "/base/ws/chat/r?x=1&token=a%20b%26c"
        );
        let t = Target::parse("ws://[::1]:7", Some("t")).expect("ok");
        assert_eq!(t.request_path("/ws"), "/ws?token=t");
        assert_eq!(t.request_path_without_token("/ws"), "/ws");
        assert_eq!(t.token(), Some("t"));
        assert_eq!(t.source_for(3), None);
        let t = Target::parse("ws://127.0.0.1", None).expect("ok");
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.source_for(0), Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(t.source_for(253), Some("127.0.0.255".parse().expect("ip")));
        assert_eq!(t.source_for(254), Some("127.0.0.2".parse().expect("ip")));
        let t = Target::parse("ws://127.0.0.1:1/p?x=1", Some("t")).expect("ok");
        assert_eq!(
            t.request_path_without_token("/connection/websocket"),
            "/p/connection/websocket?x=1"
        );
    }

    #[test]
    fn spreads_over_nodes_round_robin() {
        let n = Nodes::parse(
            "ws://127.0.0.1:1, ws://127.0.0.1:2,ws://localhost:3",
            Some("t"),
        )
        .expect("ok");
        assert_eq!(n.count(), 3);
        assert_eq!(n.node_for(0).addr.port(), 1);
        let ports: Vec<u16> = (0..7).map(|i| n.node_for(i).addr.port()).collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(n.describe(), "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3");
        assert_eq!(n.node_for(2).token(), Some("t"));
        // One URL: the single-server case.
        let one = Nodes::parse("ws://127.0.0.1:9", None).expect("ok");
        assert_eq!((one.count(), one.index_for(5)), (1, 0));
        assert_eq!(one.describe(), "127.0.0.1:9");
        // Every node must be loopback; an empty list names nothing.
        assert!(Nodes::parse("ws://127.0.0.1:1,ws://10.0.0.1:2", None).is_err());
        assert!(Nodes::parse(" , ", None).is_err());
    }

    #[test]
    fn refuses_other_targets() {
        for u in [
            "ws://10.0.0.1:80",
            "ws://example.com",
            "wss://127.0.0.1",
            "http://127.0.0.1",
            "ws://192.168.1.1:1",
        ] {
            assert!(Target::parse(u, None).is_err(), "{u}");
        }
    }
}
