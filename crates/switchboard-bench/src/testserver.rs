//! Test-only: a tiny plain-door server on 127.0.0.1:0 (`/ws` echo, `/ws/chat/{room}`
//! broadcast to the room, sender included) so the scenarios can be run end to end in unit
//! tests without a reference peer. It can also ping every client once on connect, to check
//! that the bench answers with a pong, and bound each member's queue: a member whose queue is
//! full is dropped from its room and closed with 4000 once its writer gets to it (the
//! accepted sockets then get a small SO_SNDBUF, so a member that does not read fills it fast).

use crate::ws;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A room member: its queue, and the flag that marks it a slow consumer.
type Member = (mpsc::Sender<Vec<u8>>, Arc<AtomicBool>);
type Rooms = Arc<Mutex<HashMap<String, Vec<Member>>>>;

/// Queue length per connection when none is given (effectively unbounded for the tests).
const DEFAULT_QUEUE: usize = 1 << 16;

/// What the server saw, for assertions.
#[derive(Default)]
pub struct Seen {
    /// Pong payloads received.
    pub pongs: Mutex<Vec<Vec<u8>>>,
    /// Connections accepted.
    pub accepted: std::sync::atomic::AtomicUsize,
}

/// Reads one masked client frame: (opcode, unmasked payload); `None` at EOF.
async fn read_client_frame(s: &mut tokio::net::tcp::OwnedReadHalf) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.ok()?;
    assert!(h[1] & 0x80 != 0, "client frame not masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    s.read_exact(&mut mask).await.ok()?;
    let mut p = vec![0u8; len as usize];
    s.read_exact(&mut p).await.ok()?;
    for (i, b) in p.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Some((h[0] & 0x0f, p))
}

async fn serve_conn(mut s: TcpStream, rooms: Rooms, seen: Arc<Seen>, ping: bool, queue: usize) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read_exact(&mut b).await.is_err() {
            return;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let path = text
        .split(' ')
        .nth(1)
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("")
        .to_string();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap_or("")
        .trim()
        .to_string();
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        ws::accept_for(&key)
    );
    let (mut rd, mut wr) = s.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(queue);
    let slow = Arc::new(AtomicBool::new(false));
    let mut first = resp.into_bytes();
    if ping {
        first.extend(ws::server_frame(ws::OP_PING, true, b"are you there"));
    }
    let slow2 = slow.clone();
    tokio::spawn(async move {
        if wr.write_all(&first).await.is_err() {
            return;
        }
        while let Some(m) = rx.recv().await {
            if slow2.load(Ordering::Relaxed) {
                let _ = wr
                    .write_all(&ws::server_frame(
                        ws::OP_CLOSE,
                        true,
                        &4000u16.to_be_bytes(),
                    ))
                    .await;
                return;
            }
            if wr.write_all(&m).await.is_err() {
                return;
            }
        }
    });
    let room = path.strip_prefix("/ws/chat/").map(str::to_string);
    if let Some(r) = &room {
        rooms
            .lock()
            .expect("lock")
            .entry(r.clone())
            .or_default()
            .push((tx.clone(), slow));
    }
    while let Some((op, p)) = read_client_frame(&mut rd).await {
        match (op, &room) {
            (ws::OP_PONG, _) => seen.pongs.lock().expect("lock").push(p),
            (ws::OP_CLOSE, _) => return,
            (ws::OP_TEXT, Some(r)) => {
                let f = ws::server_frame(ws::OP_TEXT, true, &p);
                let mut rooms = rooms.lock().expect("lock");
                if let Some(members) = rooms.get_mut(r) {
                    // A member whose queue is full is dropped; its writer sends the close.
                    members.retain(|(m, slow)| match m.try_send(f.clone()) {
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            slow.store(true, Ordering::Relaxed);
                            false
                        }
                        _ => true,
                    });
                }
            }
            (ws::OP_TEXT | ws::OP_BINARY, None) => {
                let _ = tx.send(ws::server_frame(op, true, &p)).await;
            }
            _ => {}
        }
    }
}

/// Starts the server; returns its address and what it sees.
pub async fn start(ping: bool) -> (SocketAddr, Arc<Seen>) {
    start_with(ping, None).await
}

/// Starts the server with at most `queue` messages queued per member (then closed with 4000;
/// the accepted sockets get a 4 KiB SO_SNDBUF), or the default queue and buffers for `None`.
pub async fn start_with(ping: bool, queue: Option<usize>) -> (SocketAddr, Arc<Seen>) {
    listen(ping, queue, Rooms::default()).await
}

/// Starts `n` servers that share their rooms, like the nodes of a cluster joined by a broker:
/// a member's text reaches the room's members on every one of them. Each sees its own.
pub async fn start_cluster(n: usize) -> Vec<(SocketAddr, Arc<Seen>)> {
    let rooms = Rooms::default();
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(listen(false, None, rooms.clone()).await);
    }
    nodes
}

async fn listen(ping: bool, queue: Option<usize>, rooms: Rooms) -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            s2.accepted.fetch_add(1, Ordering::Relaxed);
            if queue.is_some() {
                socket2::SockRef::from(&s)
                    .set_send_buffer_size(4096)
                    .expect("SO_SNDBUF");
            }
            let q = queue.unwrap_or(DEFAULT_QUEUE);
            tokio::spawn(serve_conn(s, rooms.clone(), s2.clone(), ping, q));
        }
    });
    (addr, seen)
}
