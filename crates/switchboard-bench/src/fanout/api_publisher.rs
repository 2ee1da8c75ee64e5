//! The HTTP API side of a Pusher publisher (`--door pusher`): it sends each signed
//! `POST /apps/{id}/events` and reads the answers, whatever the server then does with the
//! connection. The first request goes alone and its answer decides how the rest travel:
//!
//! - the server keeps the connection alive: every later request is pipelined on it (as many in
//!   flight as the publisher's window allows), the answers read in order by a task of its own;
//! - the server closes after the answer (`Connection: close`, or an HTTP/1.0 answer; Sockudo
//!   does this): one request per connection. Each send opens a connection, writes the request
//!   and leaves a small task to read its one answer, so the window's requests are in flight on
//!   as many connections at once.
//!
//! A kept-alive connection that the server ends with nothing left unanswered (a limit of
//! requests per connection) is replaced, starting again with a lone request. A non-2xx answer,
//! a connection ended with requests unanswered, or one that cannot be opened ends the run with
//! the reason (`Shared::first_error`).

use super::members::Shared;
use crate::api::{parse_response, Response};
use crate::net::{self, Target};
use anyhow::{anyhow, bail, Context, Result};
use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// How requests travel, learnt from the first answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No answer yet (or the kept-alive connection ended): the next request goes alone.
    Unknown,
    /// Pipelined on one kept-alive connection.
    Pipelined,
    /// Each on a connection of its own, which the server closes after answering.
    OnePerConnection,
}

/// A kept-alive connection carrying pipelined requests.
struct Pipe {
    wr: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Requests written on it after the first (whose answer opened the pipe).
    sent: Cell<u64>,
    answered: Cell<u64>,
    /// Set by its reader once the server will answer nothing more on it.
    ended: Cell<bool>,
}

impl Pipe {
    fn unanswered(&self) -> u64 {
        self.sent.get().saturating_sub(self.answered.get())
    }
}

/// One Pusher publisher's way to the HTTP API.
pub(super) struct ApiPublisher {
    sh: Rc<Shared>,
    target: Rc<Target>,
    source: Option<IpAddr>,
    mode: Cell<Mode>,
    /// The connection opened while everyone connected, used by the first request.
    spare: RefCell<Option<TcpStream>>,
    pipe: RefCell<Option<Rc<Pipe>>>,
    /// The answer readers (dropping the set ends them).
    readers: RefCell<JoinSet<()>>,
}

impl ApiPublisher {
    /// A publisher to `target` from `source`, whose first request will use `opened`.
    pub(super) fn new(
        sh: Rc<Shared>,
        target: Rc<Target>,
        source: Option<IpAddr>,
        opened: TcpStream,
    ) -> Self {
        Self {
            sh,
            target,
            source,
            mode: Cell::new(Mode::Unknown),
            spare: RefCell::new(Some(opened)),
            pipe: RefCell::new(None),
            readers: RefCell::new(JoinSet::new()),
        }
    }

    /// Sends one request (the signed HTTP request as a whole). Its answer is checked here for
    /// the first request, later by a reader task.
    pub(super) async fn send(&self, request: &[u8]) -> Result<()> {
        // Forget the readers that are done (one per request when the server closes).
        while self.readers.borrow_mut().try_join_next().is_some() {}
        if self.mode.get() == Mode::Pipelined {
            let pipe = self.pipe.borrow().clone();
            match pipe {
                Some(pipe) if !pipe.ended.get() => {
                    pipe.sent.set(pipe.sent.get() + 1);
                    return pipe
                        .wr
                        .lock()
                        .await
                        .write_all(request)
                        .await
                        .context("sending on the HTTP API connection");
                }
                _ => self.mode.set(Mode::Unknown),
            }
        }
        let mut stream = self.connection().await?;
        stream
            .write_all(request)
            .await
            .context("sending on a new HTTP API connection")?;
        match self.mode.get() {
            Mode::OnePerConnection => {
                let sh = self.sh.clone();
                self.readers.borrow_mut().spawn_local(async move {
                    let mut buf = Vec::new();
                    let answered = next_answer(&mut stream, &mut buf)
                        .await
                        .and_then(|a| {
                            a.ok_or_else(|| {
                                anyhow!("server closed an HTTP API connection without answering")
                            })
                        })
                        .and_then(|a| check(&a));
                    if let Err(e) = answered {
                        fail(&sh, e);
                    }
                });
                Ok(())
            }
            Mode::Unknown | Mode::Pipelined => self.first_answer(stream).await,
        }
    }

    /// Reads the answer of a lone request on `stream` and sets the mode from it.
    async fn first_answer(&self, mut stream: TcpStream) -> Result<()> {
        let mut buf = Vec::new();
        let answer = next_answer(&mut stream, &mut buf)
            .await?
            .context("server closed the HTTP API connection without answering")?;
        check(&answer)?;
        if answer.closes {
            self.mode.set(Mode::OnePerConnection);
            return Ok(());
        }
        let (mut rd, wr) = stream.into_split();
        let pipe = Rc::new(Pipe {
            wr: tokio::sync::Mutex::new(wr),
            sent: Cell::new(0),
            answered: Cell::new(0),
            ended: Cell::new(false),
        });
        let (sh, reading) = (self.sh.clone(), pipe.clone());
        self.readers.borrow_mut().spawn_local(async move {
            let read = async {
                loop {
                    let answer = next_answer(&mut rd, &mut buf).await;
                    // The server answers nothing more after an error, a close, or a last answer.
                    let last = !matches!(answer, Ok(Some(ref a)) if !a.closes);
                    if last {
                        reading.ended.set(true);
                    }
                    if let Some(a) = answer? {
                        reading.answered.set(reading.answered.get() + 1);
                        check(&a)?;
                    }
                    if !last {
                        continue;
                    }
                    let lost = reading.unanswered();
                    if lost > 0 {
                        bail!(
                            "the server ended the kept-alive HTTP API connection with {lost} \
                             pipelined request(s) unanswered"
                        );
                    }
                    return Ok(());
                }
            };
            if let Err(e) = read.await {
                fail(&sh, e);
            }
        });
        *self.pipe.borrow_mut() = Some(pipe);
        self.mode.set(Mode::Pipelined);
        Ok(())
    }

    /// The connection opened at set-up if still unused, else a new one.
    async fn connection(&self) -> Result<TcpStream> {
        if let Some(s) = self.spare.borrow_mut().take() {
            return Ok(s);
        }
        let socket = net::client_socket(&self.target, self.source, None)?;
        let stream = socket
            .connect(self.target.addr)
            .await
            .with_context(|| format!("connecting to {} for the HTTP API", self.target.addr))?;
        let c = &self.sh.c.api_connections;
        c.set(c.get() + 1);
        Ok(stream)
    }
}

/// Reads the next answer from `rd` (`buf` holds what was read past the previous one); `None`
/// when the server closed the connection before another answer began.
async fn next_answer<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Response>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((answer, used)) = parse_response(buf)? {
            buf.drain(..used);
            return Ok(Some(answer));
        }
        let n = rd
            .read(&mut chunk)
            .await
            .context("reading the HTTP API's answer")?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            bail!("server closed the HTTP API connection in the middle of an answer");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A 2xx answer passes; any other ends the run with its status and the start of its body.
fn check(answer: &Response) -> Result<()> {
    if (200..300).contains(&answer.status) {
        return Ok(());
    }
    bail!(
        "the HTTP API answered {}: {}",
        answer.status,
        String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)])
    )
}

/// Records what went wrong (unless the run is stopping).
fn fail(sh: &Shared, e: anyhow::Error) {
    if !sh.stopping.get() {
        sh.c.closed_early.set(sh.c.closed_early.get() + 1);
        sh.first_error
            .borrow_mut()
            .get_or_insert_with(|| format!("{e:#}"));
    }
}
