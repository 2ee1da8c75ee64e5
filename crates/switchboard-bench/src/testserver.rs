//! Test-only: a tiny plain-door server on 127.0.0.1:0 (`/ws` echo, `/ws/chat/{room}`
//! broadcast to the room, sender included) so the scenarios can be run end to end in unit
//! tests without a reference peer. It can also ping every client once on connect, to check
//! that the bench answers with a pong.

use crate::ws;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Rooms = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Vec<u8>>>>>>;

/// What the server saw, for assertions.
#[derive(Default)]
pub struct Seen {
    /// Pong payloads received.
    pub pongs: Mutex<Vec<Vec<u8>>>,
}

fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        v.push(len as u8);
    } else if len <= 65535 {
        v.push(126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
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

async fn serve_conn(mut s: TcpStream, rooms: Rooms, seen: Arc<Seen>, ping: bool) {
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
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut first = resp.into_bytes();
    if ping {
        first.extend(server_frame(ws::OP_PING, b"are you there"));
    }
    tokio::spawn(async move {
        if wr.write_all(&first).await.is_err() {
            return;
        }
        while let Some(m) = rx.recv().await {
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
            .push(tx.clone());
    }
    while let Some((op, p)) = read_client_frame(&mut rd).await {
        match (op, &room) {
            (ws::OP_PONG, _) => seen.pongs.lock().expect("lock").push(p),
            (ws::OP_CLOSE, _) => return,
            (ws::OP_TEXT, Some(r)) => {
                let f = server_frame(ws::OP_TEXT, &p);
                for m in rooms.lock().expect("lock").get(r).into_iter().flatten() {
                    let _ = m.send(f.clone());
                }
            }
            (ws::OP_TEXT | ws::OP_BINARY, None) => {
                let _ = tx.send(server_frame(op, &p));
            }
            _ => {}
        }
    }
}

/// Starts the server; returns its address and what it sees.
pub async fn start(ping: bool) -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let rooms: Rooms = Arc::default();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve_conn(s, rooms.clone(), s2.clone(), ping));
        }
    });
    (addr, seen)
}
