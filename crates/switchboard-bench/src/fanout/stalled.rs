//! Stalled subscribers, for the `slow` scenario: members that read (and answer pings) only
//! until their first warm-up message has proved they joined, then stop reading with their
//! socket left open, so whatever the server sends them piles up in its queue and in the
//! socket buffers. After the measured phase and the drain, [`collect`] lets every one of them
//! read what is left on its socket until a close frame, EOF, an error, a quiet period (nothing
//! more arrives: the server still holds the connection open) or a deadline, and returns how
//! each one ended and how many publications were still waiting for it. On the client
//! protocol's door they answer the server's `{}` pings until they join (as they answer
//! WebSocket pings on the plain door) and then no more, so a server with a heartbeat closes a
//! stall longer than two of its intervals for that (3012 on Switchboard's client protocol).

use super::members::{each_message, Shared, Writer};
use super::Door;
use crate::payload::{bench_message, KIND_PUB, KIND_WARMUP};
use crate::protocol::{self, Msg};
use crate::ws::{self, FrameReader, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// After this long without a byte, a stalled subscriber still open is counted as open: the
/// publishers have stopped, so a server that meant to close it would have sent its close
/// frame (or FIN) behind the backlog by then.
const QUIET: Duration = Duration::from_secs(1);

/// How the server had treated a stalled subscriber, as seen once it read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// A close frame, with its code (`None`: a close frame without a code).
    Closed(Option<u16>),
    /// End of stream without a close frame; `partial` when it cut a frame short.
    Eof {
        /// Bytes of an incomplete frame were left when the stream ended.
        partial: bool,
    },
    /// A read error (e.g. connection reset) or a frame the reader refused.
    Error(String),
    /// Still open: it went quiet (or the deadline came) without a close.
    Open,
    /// Never resumed (the run stopped before the read-out).
    Unread,
}

/// How one stalled subscriber ended.
#[derive(Debug, Clone)]
pub struct End {
    /// What was seen.
    pub how: How,
    /// Publications read after the measured phase (what the server still had for it).
    pub backlog: u64,
    /// Bytes read after the measured phase.
    pub bytes: u64,
}

impl End {
    /// Whether the server ended the connection (close frame, EOF or reset).
    pub fn closed_by_server(&self) -> bool {
        matches!(self.how, How::Closed(_) | How::Eof { .. } | How::Error(_))
    }
}

/// Tally of [`End`]s by outcome, with keys such as `4000`, `1000`, `close (no code)`,
/// `eof`, `eof mid-frame`, `error: ...`, `open`.
pub fn tally(ends: &[End]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for e in ends {
        let key = match &e.how {
            How::Closed(Some(code)) => code.to_string(),
            How::Closed(None) => "close (no code)".to_string(),
            How::Eof { partial: false } => "eof".to_string(),
            How::Eof { partial: true } => "eof mid-frame".to_string(),
            How::Error(e) => format!("error: {e}"),
            How::Open => "open".to_string(),
            How::Unread => "unread".to_string(),
        };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// Reads until the first warm-up message (answering pings). `Err` when the connection ended.
async fn join(
    sh: &Shared,
    door: Door,
    room: usize,
    rd: &mut OwnedReadHalf,
    fr: &mut FrameReader,
    wr: &Writer,
) -> Result<(), How> {
    let mut ctrl = Vec::new();
    loop {
        let mut joined = false;
        while !joined {
            let f = match fr.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(How::Error(format!("{e:#}"))),
            };
            match f.opcode {
                OP_PING => ws::encode_frame(&mut ctrl, OP_PONG, f.payload),
                OP_CLOSE => return Err(How::Closed(close_code(f.payload))),
                OP_TEXT | OP_BINARY => each_message(door, f.payload, |m| match m {
                    Msg::Data(p) if p.first() == Some(&KIND_WARMUP) => joined = true,
                    Msg::Ping => ws::encode_frame(&mut ctrl, OP_TEXT, protocol::PONG),
                    _ => {}
                }),
                _ => {}
            }
        }
        if !ctrl.is_empty() {
            wr.send(&ctrl)
                .await
                .map_err(|e| How::Error(e.to_string()))?;
            ctrl.clear();
        }
        if joined {
            sh.mark_joined(room);
            return Ok(());
        }
        match fr.read_from(rd).await {
            Ok(0) => {
                return Err(How::Eof {
                    partial: !fr.pending().is_empty(),
                })
            }
            Ok(_) => {}
            Err(e) => return Err(How::Error(e.to_string())),
        }
    }
}

fn close_code(payload: &[u8]) -> Option<u16> {
    match payload {
        [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// Reads what is left (frames already buffered first) until the connection ends, goes quiet,
/// or `deadline` passes.
async fn read_out(
    door: Door,
    rd: &mut OwnedReadHalf,
    fr: &mut FrameReader,
    deadline: Instant,
    end: &mut End,
) -> How {
    loop {
        loop {
            let f = match fr.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return How::Error(format!("{e:#}")),
            };
            match f.opcode {
                OP_CLOSE => return How::Closed(close_code(f.payload)),
                OP_TEXT | OP_BINARY => each_message(door, f.payload, |m| {
                    if matches!(m, Msg::Data(p) if bench_message(p).first() == Some(&KIND_PUB)) {
                        end.backlog += 1;
                    }
                }),
                _ => {}
            }
        }
        let wait = (Instant::now() + QUIET).min(deadline);
        match tokio::time::timeout_at(wait.into(), fr.read_from(rd)).await {
            Err(_) => return How::Open,
            Ok(Ok(0)) => {
                return How::Eof {
                    partial: !fr.pending().is_empty(),
                }
            }
            Ok(Ok(n)) => end.bytes += n as u64,
            Ok(Err(e)) => return How::Error(e.to_string()),
        }
    }
}

/// One stalled subscriber: joins, stops reading until `resume` carries a deadline, then
/// reads what is left. The write half is kept (unused after the join) so the socket stays open.
pub(super) async fn member(
    sh: Rc<Shared>,
    door: Door,
    room: usize,
    mut rd: OwnedReadHalf,
    mut fr: FrameReader,
    wr: Rc<Writer>,
    mut resume: watch::Receiver<Option<Instant>>,
) -> End {
    let mut end = End {
        how: How::Unread,
        backlog: 0,
        bytes: 0,
    };
    if let Err(how) = join(&sh, door, room, &mut rd, &mut fr, &wr).await {
        end.how = how;
        return end;
    }
    // The stall: nothing is read from here until the read-out.
    let deadline = match resume.wait_for(Option::is_some).await {
        Ok(d) => *d,
        Err(_) => return end,
    };
    if let Some(deadline) = deadline {
        let how = read_out(door, &mut rd, &mut fr, deadline, &mut end).await;
        end.how = how;
    }
    drop(wr);
    end
}

/// Resumes every stalled subscriber and waits (at most `limit`, plus a little) for each to
/// tell how it ended. A task that does not answer in time counts as open.
pub(super) async fn collect(
    resume: &watch::Sender<Option<Instant>>,
    tasks: &mut [JoinHandle<End>],
    limit: Duration,
) -> Vec<End> {
    let deadline = Instant::now() + limit;
    resume.send_replace(Some(deadline));
    let hard = deadline + Duration::from_millis(500);
    let mut ends = Vec::with_capacity(tasks.len());
    for t in tasks.iter_mut() {
        let how = match tokio::time::timeout_at(hard.into(), t).await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => End {
                how: How::Error(format!("task failed: {e}")),
                backlog: 0,
                bytes: 0,
            },
            Err(_) => End {
                how: How::Open,
                backlog: 0,
                bytes: 0,
            },
        };
        ends.push(how);
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_by_outcome() {
        let e = |how| End {
            how,
            backlog: 0,
            bytes: 0,
        };
        let ends = [
            e(How::Closed(Some(4000))),
            e(How::Closed(Some(4000))),
            e(How::Eof { partial: true }),
            e(How::Open),
        ];
        let t = tally(&ends);
        assert_eq!(t.get("4000"), Some(&2));
        assert_eq!(t.get("eof mid-frame"), Some(&1));
        assert_eq!(t.get("open"), Some(&1));
        assert_eq!(ends.iter().filter(|e| e.closed_by_server()).count(), 3);
        assert_eq!(close_code(&[0x0f, 0xa0, b'x']), Some(4000));
        assert_eq!(close_code(&[]), None);
    }
}
