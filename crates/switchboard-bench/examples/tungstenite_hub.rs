//! A measuring stick for docs/websocket.md: the plain chat door (`/ws/chat/{room}`, `/ws` echo,
//! `/healthz`) built on `tokio-tungstenite`, the way a careful crate-based gateway is written:
//! Bytes-backed messages (a publication's payload is shared, not copied), read and write
//! buffers lowered from the 128 KiB defaults, a bounded queue per connection drained by one
//! writer task that feeds everything queued and flushes once, and a slow consumer dropped when
//! its queue is full. It exists only to be benchmarked against Switchboard's own codec with the
//! same load generator; nothing in the gateway uses it.
//!
//! `cargo run --release -p switchboard-bench --example tungstenite_hub -- PORT`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Messages queued per connection before it counts as a slow consumer (the Go/Gin peer's 256).
const QUEUE: usize = 256;

type Members = Vec<(u64, mpsc::Sender<Message>)>;
type Rooms = Arc<Mutex<HashMap<String, Members>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8090);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let rooms: Rooms = Rooms::default();
    let mut next_id = 0u64;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        next_id += 1;
        tokio::spawn(serve(tcp, Arc::clone(&rooms), next_id));
    }
}

fn lock(rooms: &Rooms) -> std::sync::MutexGuard<'_, HashMap<String, Members>> {
    rooms.lock().unwrap_or_else(|e| e.into_inner())
}

// The handshake callback's error type is tungstenite's own, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn serve(tcp: TcpStream, rooms: Rooms, id: u64) {
    let mut path = String::new();
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20));
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        path = req.uri().path().to_owned();
        if path == "/healthz" {
            let mut ok = ErrorResponse::new(Some("ok".into()));
            *ok.status_mut() = StatusCode::OK;
            return Err(ok);
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    let room = path.strip_prefix("/ws/chat/").map(str::to_owned);
    if let Some(room) = &room {
        lock(&rooms)
            .entry(room.clone())
            .or_default()
            .push((id, tx.clone()));
    }
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Text(_) | Message::Binary(_) => match &room {
                Some(room) => {
                    let mut rooms = lock(&rooms);
                    if let Some(members) = rooms.get_mut(room) {
                        // A full queue is a slow consumer: drop it (its writer then ends).
                        members.retain(|(_, member)| member.try_send(message.clone()).is_ok());
                    }
                }
                None => {
                    let _ = tx.try_send(message);
                }
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
    if let Some(room) = &room {
        let mut rooms = lock(&rooms);
        if let Some(members) = rooms.get_mut(room) {
            members.retain(|(member, _)| *member != id);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
