//! The client protocol (`/connection/websocket`, JSON) spoken by hand over a real socket: one
//! connection, its command ids, and the replies and pushes read back, for the tests of
//! protocol behaviour, bounds and scale.
#![allow(dead_code, clippy::unwrap_used)]

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{connect, next_text, token, Client, TestServer};

/// A client-protocol connection spoken by hand.
pub struct Proto {
    pub ws: Client,
    next_id: u64,
}

impl Proto {
    /// Opens the socket; no `connect` command yet.
    pub async fn open(server: &TestServer) -> Proto {
        let ws = connect(&server.url("/connection/websocket")).await.unwrap();
        Proto { ws, next_id: 0 }
    }

    /// Opens and connects with a token for `user`.
    pub async fn connected(server: &TestServer, user: &str) -> Proto {
        Proto::connected_with_result(server, user).await.0
    }

    /// Opens and connects with a token for `user`; returns the connect result too.
    pub async fn connected_with_result(server: &TestServer, user: &str) -> (Proto, Value) {
        let mut proto = Proto::open(server).await;
        let reply = proto
            .call("connect", json!({ "token": token(user, 3600) }))
            .await;
        let result = reply["connect"].clone();
        assert!(result["client"].is_string(), "{reply}");
        (proto, result)
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Sends one command and returns its reply (pushes before it are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id });
        command[method] = params;
        self.send_raw(&command.to_string()).await;
        loop {
            let message = self.next_json().await;
            if message["id"] == id {
                return message;
            }
        }
    }

    /// The next JSON object from the server (a frame may hold several, one per line),
    /// skipping the server's `{}` pings.
    pub async fn next_json(&mut self) -> Value {
        loop {
            let text = next_text(&mut self.ws).await;
            for line in text.lines() {
                let value: Value = serde_json::from_str(line).unwrap();
                if value != json!({}) {
                    return value;
                }
            }
        }
    }

    /// The next push (a message with no id).
    pub async fn next_push(&mut self) -> Value {
        loop {
            let message = self.next_json().await;
            if message.get("push").is_some() {
                return message["push"].clone();
            }
        }
    }

    /// The next publication pushed to this client.
    pub async fn next_publication(&mut self) -> Value {
        loop {
            let message = self.next_json().await;
            if message["push"]["pub"].is_object() {
                return message["push"]["pub"].clone();
            }
        }
    }

    /// The connection still answers commands.
    pub async fn served(&mut self) {
        assert!(self.call("ping", json!({})).await.get("ping").is_some());
    }
}
