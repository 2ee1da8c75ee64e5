//! The client protocol over Switchboard's HTTP transports, client side, as far as the bench's
//! subscribers need it (`fanout --door http-stream` and `--door sse`): the same JSON protocol
//! as `crate::protocol`, carried by one long HTTP response instead of WebSocket frames.
//!
//! [`open`] sends the request that opens the stream with the `connect` and `subscribe`
//! commands in it (the POST body of `/connection/http_stream`, or the `cf_connect` query
//! parameter of `/connection/sse`), and reads the response head only, a byte at a time so no
//! byte of the body is taken from the member's reader; the body (the replies, then the
//! pushes) is the member's to read, through a [`Body`]: it undoes the chunked transfer coding
//! and hands over each JSON object (one per line; on SSE, the `data:` lines of the events).
//! A refused connect or subscribe is an error reply on the stream, which the member turns into
//! a failed run.
//!
//! The server's `{}` ping is answered as the SDK does, with `{}` posted to `/emulation` for
//! the session and node its connect reply named ([`pong_request`]), on a connection of its own.

use crate::net::{self, Conn, SocketOpts, Target};
use crate::protocol;
use crate::ws::FrameReader;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest response head accepted.
const MAX_HEAD: usize = 8192;
/// Time allowed from the TCP connect to the whole response head.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Which HTTP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `POST /connection/http_stream`: one JSON reply or push per line.
    HttpStream,
    /// `GET /connection/sse?cf_connect=…`: one event per batch, a `data:` line per object.
    Sse,
}

/// The request that opens the stream, with `connect` (with `token`) and `subscribe` to
/// `channel` as its commands.
fn request(target: &Target, transport: Transport, channel: &str, token: Option<&str>) -> String {
    let [connect, subscribe] = protocol::command_texts(channel, token);
    match transport {
        Transport::HttpStream => {
            let body = format!("{connect}\n{subscribe}");
            format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                target.request_path_without_token("/connection/http_stream"),
                target.host(),
                body.len()
            )
        }
        Transport::Sse => {
            let path = target.request_path_without_token("/connection/sse");
            let joiner = if path.contains('?') { '&' } else { '?' };
            format!(
                "GET {path}{joiner}cf_connect={} HTTP/1.1\r\nHost: {}\r\n\
                 Accept: text/event-stream\r\n\r\n",
                net::encode_query_value(&format!("{connect}\n{subscribe}")),
                target.host(),
            )
        }
    }
}

/// Opens one subscriber's stream to `channel`: the request, and its `200` response head. The
/// returned connection's frame reader is unused (the body is read through a [`Body`]).
pub async fn open(
    target: &Target,
    transport: Transport,
    channel: &str,
    source: Option<IpAddr>,
    opts: &SocketOpts,
) -> Result<Conn> {
    let fut = async {
        let socket = net::client_socket(target, source, opts.rcvbuf)?;
        let started = Instant::now();
        let mut stream = socket
            .connect(target.addr)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        stream
            .write_all(request(target, transport, channel, target.token()).as_bytes())
            .await
            .context("sending the stream request")?;
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_HEAD {
                bail!("a response head over {MAX_HEAD} bytes");
            }
            let byte = stream
                .read_u8()
                .await
                .context("reading the response head")?;
            head.push(byte);
        }
        let text = String::from_utf8_lossy(&head);
        let status = text.split(' ').nth(1).unwrap_or_default();
        if status != "200" {
            bail!(
                "the stream was refused: {}",
                text.lines().next().unwrap_or_default()
            );
        }
        if !text
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            bail!("the stream response is not chunked");
        }
        Ok(Conn {
            stream,
            reader: FrameReader::new(64, 64),
            handshake: started.elapsed(),
        })
    };
    tokio::time::timeout(OPEN_TIMEOUT, fut)
        .await
        .context("timed out opening the stream")?
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Reading a chunk-size line.
    Header,
    /// This many bytes of chunk data left.
    Data(usize),
    /// The CRLF after a chunk's data.
    End,
}

/// A stream's body as it arrives: raw bytes in, JSON objects out.
pub struct Body {
    transport: Transport,
    raw: Vec<u8>,
    /// Decoded body bytes not yet split into lines.
    lines: Vec<u8>,
    chunk: Chunk,
}

impl Body {
    /// An empty body of `transport`.
    pub fn new(transport: Transport) -> Self {
        Body {
            transport,
            raw: Vec::with_capacity(64 * 1024),
            lines: Vec::with_capacity(64 * 1024),
            chunk: Chunk::Header,
        }
    }

    /// Reads what the socket has (at least a byte); `Ok(0)` when the server closed it.
    pub async fn read_from(&mut self, rd: &mut (impl AsyncReadExt + Unpin)) -> Result<usize> {
        let mut buf = [0u8; 64 * 1024];
        let n = rd.read(&mut buf).await.context("reading the stream")?;
        self.raw.extend_from_slice(&buf[..n]);
        self.decode()?;
        Ok(n)
    }

    /// Moves the chunk data of `raw` to `lines`.
    fn decode(&mut self) -> Result<()> {
        let mut at = 0;
        loop {
            match self.chunk {
                Chunk::Header => {
                    let Some(eol) = self.raw[at..].windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let line = std::str::from_utf8(&self.raw[at..at + eol])
                        .context("a chunk-size line that is not text")?;
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(size, 16)
                        .with_context(|| format!("a bad chunk-size line {line:?}"))?;
                    if size == 0 {
                        bail!("the server ended the stream");
                    }
                    at += eol + 2;
                    self.chunk = Chunk::Data(size);
                }
                Chunk::Data(left) => {
                    let take = left.min(self.raw.len() - at);
                    if take == 0 {
                        break;
                    }
                    self.lines.extend_from_slice(&self.raw[at..at + take]);
                    at += take;
                    self.chunk = if take == left {
                        Chunk::End
                    } else {
                        Chunk::Data(left - take)
                    };
                }
                Chunk::End => {
                    if self.raw.len() - at < 2 {
                        break;
                    }
                    if &self.raw[at..at + 2] != b"\r\n" {
                        bail!("chunk data not followed by CRLF");
                    }
                    at += 2;
                    self.chunk = Chunk::Header;
                }
            }
        }
        self.raw.drain(..at);
        Ok(())
    }

    /// Calls `on` for each whole JSON object received so far, and forgets them.
    pub fn each_object(&mut self, mut on: impl FnMut(&[u8])) {
        let mut start = 0;
        while let Some(eol) = self.lines[start..].iter().position(|&b| b == b'\n') {
            let line = &self.lines[start..start + eol];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let object = match self.transport {
                Transport::HttpStream => Some(line),
                Transport::Sse => line
                    .strip_prefix(b"data:")
                    .map(|rest| rest.strip_prefix(b" ").unwrap_or(rest)),
            };
            if let Some(object) = object.filter(|o| !o.is_empty()) {
                on(object);
            }
            start += eol + 1;
        }
        self.lines.drain(..start);
    }
}

/// The session and node a connect reply names, when `object` is the successful reply to
/// the `connect`; an error when it is an error reply to `connect` or `subscribe`.
pub fn check_reply(object: &[u8]) -> Result<Option<(String, String)>> {
    if !object.starts_with(b"{\"id\":") {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(object).context("a reply that is not JSON")?;
    if let Some(e) = v.get("error") {
        bail!("command {} refused: {e}", v["id"]);
    }
    let connect = &v["connect"];
    match (connect["session"].as_str(), connect["node"].as_str()) {
        (Some(session), Some(node)) => Ok(Some((session.to_owned(), node.to_owned()))),
        _ => Ok(None),
    }
}

/// The emulation request answering the server's ping for `session` on `node`.
pub fn pong_request(target: &Target, session: &str, node: &str) -> Vec<u8> {
    let body = serde_json::json!({"session": session, "node": node, "data": "{}"}).to_string();
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        target.request_path_without_token("/emulation"),
        target.host(),
        body.len()
    )
    .into_bytes()
}

/// Posts `request` (a [`pong_request`]) on a new connection and reads the answer's status.
pub async fn post(target: &Target, request: &[u8]) -> Result<()> {
    let mut stream = tokio::net::TcpStream::connect(target.addr)
        .await
        .context("connecting for /emulation")?;
    stream.write_all(request).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!(
            "/emulation answered {}",
            String::from_utf8_lossy(answer.split(|&b| b == b'\r').next().unwrap_or_default())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_anywhere_give_the_same_objects() {
        let wire = b"19\r\n{\"id\":1,\"connect\":{}}\n{}\n\r\n6\r\n{\"a\":1\r\n2\r\n}\n\r\n";
        for split in 0..wire.len() {
            let mut body = Body::new(Transport::HttpStream);
            let mut seen = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                body.raw.extend_from_slice(part);
                body.decode().unwrap();
                body.each_object(|o| seen.push(String::from_utf8_lossy(o).into_owned()));
            }
            assert_eq!(
                seen,
                ["{\"id\":1,\"connect\":{}}", "{}", "{\"a\":1}"],
                "split {split}"
            );
        }
    }

    #[test]
    fn sse_objects_are_the_data_lines() {
        let mut body = Body::new(Transport::Sse);
        body.raw
            .extend_from_slice(b"18\r\ndata: {}\ndata: {\"b\":2}\n\n\r\n");
        body.decode().unwrap();
        let mut seen = Vec::new();
        body.each_object(|o| seen.push(String::from_utf8_lossy(o).into_owned()));
        assert_eq!(seen, ["{}", "{\"b\":2}"]);
    }
}
