//! The connection task: the only owner of the socket. It runs the reconnect loop (backoff,
//! handshake, `connect`, resubscribe with recovery), reads every frame (answering pings,
//! matching replies to commands by id, turning pushes into events) and serves the commands of
//! the [`Client`](crate::Client) handles. Commands that arrive while disconnected wait in a
//! queue; commands in flight when the connection drops fail with
//! [`Error::Disconnected`], since they may or may not have taken effect.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::Command;
use crate::codes::{self, close, Action};
use crate::config::Config;
use crate::error::Error;
use crate::event::Event;
use crate::protocol::{
    decode_frame, encode_command, ConnectResult, Incoming, PushKind, ReplyBody, Request, PONG,
};
use crate::subscription::{AfterFailure, Subscriptions};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Who to tell once the task has finished closing (`None`: every handle was dropped).
type Closer = Option<oneshot::Sender<()>>;

/// How long the task lingers over a close handshake before dropping the socket.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// How one connection attempt ended.
enum SessionEnd {
    /// The connection never got to `Connected`.
    Failed {
        code: u32,
        reason: String,
        action: Action,
    },
    /// An established connection ended.
    Lost {
        code: u32,
        reason: String,
        action: Action,
    },
    /// The application closed the client.
    Closed(Closer),
}

impl SessionEnd {
    fn transport(reason: String) -> SessionEnd {
        SessionEnd::Failed {
            code: u32::from(close::ABNORMAL),
            reason,
            action: Action::Reconnect,
        }
    }

    /// The same ending, for a connection that had been established.
    fn into_lost(self) -> SessionEnd {
        match self {
            SessionEnd::Failed {
                code,
                reason,
                action,
            } => SessionEnd::Lost {
                code,
                reason,
                action,
            },
            other => other,
        }
    }
}

/// A command sent on the current connection and waiting for its reply.
enum Pending {
    Call(oneshot::Sender<Result<ReplyBody, Error>>),
    Subscribe { channel: String, generation: u64 },
    Unsubscribe { channel: String },
}

/// What one read from the socket brought.
enum Received {
    Objects(Vec<Incoming>),
    Nothing,
    Ended { code: u16, reason: String },
}

/// Per-connection state of an established connection.
struct Connection {
    ws: Socket,
    pending: HashMap<u32, Pending>,
    /// The code and reason of a `disconnect` push, for when no close frame follows.
    disconnect: Option<(u32, String)>,
    /// The peer is presumed gone (it went silent): no close handshake is attempted.
    dead: bool,
}

pub(crate) struct Task {
    config: Config,
    rng: fastrand::Rng,
    commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    subs: Subscriptions,
    queued: Vec<(Request, oneshot::Sender<Result<ReplyBody, Error>>)>,
    next_id: u32,
}

impl Task {
    pub(crate) fn new(
        config: Config,
        commands: mpsc::Receiver<Command>,
        events: mpsc::UnboundedSender<Event>,
    ) -> Task {
        let rng = match config.backoff_seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Task {
            config,
            rng,
            commands,
            events,
            subs: Subscriptions::default(),
            queued: Vec::new(),
            next_id: 0,
        }
    }

    /// Connects, and reconnects with backoff, until told to stop.
    pub(crate) async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut first = true;
        let closer = loop {
            let delay = if first {
                Duration::ZERO
            } else {
                self.config.backoff.delay(attempt, &mut self.rng)
            };
            first = false;
            self.emit(Event::Connecting { attempt, delay });
            if let Err(closer) = self.wait(delay).await {
                self.emit_closed();
                break closer;
            }
            match self.session().await {
                SessionEnd::Closed(closer) => {
                    self.emit_closed();
                    break closer;
                }
                SessionEnd::Failed {
                    code,
                    reason,
                    action: Action::Reconnect,
                } => {
                    tracing::debug!(attempt, code, %reason, "switchboard client: connect failed; retrying");
                    attempt = attempt.saturating_add(1);
                }
                SessionEnd::Failed {
                    code,
                    reason,
                    action: Action::Stop,
                } => {
                    tracing::warn!(code, %reason, "switchboard client: connect refused; stopping");
                    self.emit(Event::Disconnected {
                        code,
                        reason,
                        reconnect: false,
                    });
                    break None;
                }
                SessionEnd::Lost {
                    code,
                    reason,
                    action,
                } => {
                    let reconnect = action == Action::Reconnect;
                    tracing::info!(code, %reason, reconnect, "switchboard client: disconnected");
                    self.emit(Event::Disconnected {
                        code,
                        reason,
                        reconnect,
                    });
                    if !reconnect {
                        break None;
                    }
                    attempt = 0;
                }
            }
        };
        // Queued calls and commands still in the channel are dropped: their callers see
        // `Error::Closed`.
        self.queued.clear();
        self.commands.close();
        drop(self);
        if let Some(done) = closer {
            let _ = done.send(());
        }
    }

    fn emit(&self, event: Event) {
        // A dropped receiver only means the application stopped listening.
        let _ = self.events.send(event);
    }

    fn emit_closed(&self) {
        self.emit(Event::Disconnected {
            code: u32::from(close::NORMAL),
            reason: "client closed".to_owned(),
            reconnect: false,
        });
    }

    fn take_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        if self.next_id == 0 {
            self.next_id = 1;
        }
        self.next_id
    }

    /// Waits `delay` while serving commands offline.
    async fn wait(&mut self, delay: Duration) -> Result<(), Closer> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return Ok(()),
                command = self.commands.recv() => self.offline(command)?,
            }
        }
    }

    /// Serves a command while there is no established connection.
    fn offline(&mut self, command: Option<Command>) -> Result<(), Closer> {
        match command {
            None => return Err(None),
            Some(Command::Close { done }) => return Err(Some(done)),
            Some(Command::Subscribe { channel, done }) => {
                let _ = done.send(self.subs.add(&channel));
            }
            Some(Command::Unsubscribe { channel, done }) => {
                let _ = done.send(self.unsubscribed_by_app(&channel).map(|_| ()));
            }
            Some(Command::Call { request, reply }) => {
                self.queued.retain(|(_, reply)| !reply.is_closed());
                self.queued.push((request, reply));
            }
            Some(Command::SetToken(token)) => self.config.token = token,
        }
        Ok(())
    }

    /// Removes an application's subscription; returns its former state.
    fn unsubscribed_by_app(&mut self, channel: &str) -> Result<crate::subscription::State, Error> {
        let state = self
            .subs
            .remove(channel)
            .ok_or_else(|| Error::NotSubscribed {
                channel: channel.to_owned(),
            })?;
        self.emit(Event::Unsubscribed {
            channel: channel.to_owned(),
            code: 0,
            reason: "unsubscribe called".to_owned(),
        });
        Ok(state)
    }

    /// One connection: handshake, `connect`, then serve until it ends.
    async fn session(&mut self) -> SessionEnd {
        let handshake = tokio::time::timeout(
            self.config.connect_timeout,
            tokio_tungstenite::connect_async(self.config.url.clone()),
        );
        tokio::pin!(handshake);
        let ws = loop {
            tokio::select! {
                result = &mut handshake => match result {
                    Ok(Ok((ws, _response))) => break ws,
                    Ok(Err(error)) => {
                        return SessionEnd::transport(format!("WebSocket handshake failed: {error}"))
                    }
                    Err(_) => return SessionEnd::transport("WebSocket handshake timed out".to_owned()),
                },
                command = self.commands.recv() => {
                    if let Err(closer) = self.offline(command) {
                        return SessionEnd::Closed(closer);
                    }
                }
            }
        };
        let mut conn = Connection {
            ws,
            pending: HashMap::new(),
            disconnect: None,
            dead: false,
        };
        let (result, rest) = match self.connect(&mut conn).await {
            Ok(connected) => connected,
            Err(end) => {
                conn.finish(None).await;
                return end;
            }
        };
        self.emit(Event::Connected {
            client: result.client.clone(),
            version: result.version.clone(),
        });
        let end = match self.serve(&mut conn, &result, rest).await {
            Err(end) => end.into_lost(),
            Ok(never) => match never {},
        };
        for (_, pending) in conn.pending.drain() {
            if let Pending::Call(reply) = pending {
                let error = match end {
                    SessionEnd::Closed(_) => Error::Closed,
                    _ => Error::Disconnected,
                };
                let _ = reply.send(Err(error));
            }
        }
        self.subs.on_connection_lost();
        conn.finish(None).await;
        end
    }

    /// Sends `connect` and waits for its reply; returns the result and whatever followed it
    /// in the same frame.
    async fn connect(
        &mut self,
        conn: &mut Connection,
    ) -> Result<(ConnectResult, Vec<Incoming>), SessionEnd> {
        let id = self.take_id();
        let request = Request::Connect {
            token: self.config.token.clone(),
            name: self.config.name.clone(),
            version: self.config.version.clone(),
        };
        conn.send(encode_command(id, &request))
            .await
            .map_err(SessionEnd::transport)?;
        let deadline = tokio::time::sleep(self.config.connect_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                message = conn.ws.next() => {
                    let objects = conn.receive(message)?;
                    let mut objects = objects.into_iter();
                    while let Some(incoming) = objects.next() {
                        match incoming {
                            Incoming::Reply(reply) if reply.id == id => {
                                return match reply.outcome {
                                    Ok(ReplyBody { connect: Some(result), .. }) => {
                                        Ok((result, objects.collect()))
                                    }
                                    Ok(_) => Err(SessionEnd::Failed {
                                        code: u32::from(close::ABNORMAL),
                                        reason: "the connect reply carries no connect result".to_owned(),
                                        action: Action::Reconnect,
                                    }),
                                    Err(error) => Err(SessionEnd::Failed {
                                        action: codes::after_connect_error(&error),
                                        code: error.code,
                                        reason: error.message,
                                    }),
                                };
                            }
                            Incoming::Ping => conn.send(PONG.to_owned()).await.map_err(SessionEnd::transport)?,
                            Incoming::Push(push) => {
                                if let PushKind::Disconnect { code, reason } = push.kind {
                                    conn.disconnect = Some((code, reason));
                                }
                            }
                            Incoming::Reply(reply) => {
                                tracing::debug!(id = reply.id, "switchboard client: reply before connect; ignored");
                            }
                        }
                    }
                }
                command = self.commands.recv() => {
                    if let Err(closer) = self.offline(command) {
                        conn.close_normally().await;
                        return Err(SessionEnd::Closed(closer));
                    }
                }
                () = &mut deadline => {
                    conn.dead = true;
                    return Err(SessionEnd::transport("no connect reply in time".to_owned()));
                }
            }
        }
    }

    /// Serves an established connection until it ends (the error is how it ended).
    async fn serve(
        &mut self,
        conn: &mut Connection,
        result: &ConnectResult,
        rest: Vec<Incoming>,
    ) -> Result<std::convert::Infallible, SessionEnd> {
        // Resubscribe (recovering) and send the queued calls, in one frame.
        let mut batch = Vec::new();
        for channel in self.subs.waiting() {
            batch.extend(self.subscribe_command(conn, &channel));
        }
        for (request, reply) in std::mem::take(&mut self.queued) {
            if reply.is_closed() {
                continue;
            }
            let id = self.take_id();
            batch.push(encode_command(id, &request));
            conn.pending.insert(id, Pending::Call(reply));
        }
        if !batch.is_empty() {
            conn.send(batch.join("\n"))
                .await
                .map_err(SessionEnd::transport)?;
        }
        for incoming in rest {
            self.on_incoming(conn, incoming).await?;
        }
        // A server that pings promises a frame at least every `ping` seconds.
        let ping_window = (result.ping > 0)
            .then(|| Duration::from_secs(u64::from(result.ping)) + self.config.max_ping_delay);
        let mut ping_deadline = ping_window.map(|window| Instant::now() + window);
        loop {
            let retry_at = self.subs.next_retry();
            tokio::select! {
                message = conn.ws.next() => {
                    ping_deadline = ping_window.map(|window| Instant::now() + window);
                    for incoming in conn.receive(message)? {
                        self.on_incoming(conn, incoming).await?;
                    }
                }
                command = self.commands.recv() => self.online(conn, command).await?,
                () = sleep_until(ping_deadline) => {
                    conn.dead = true;
                    return Err(SessionEnd::transport("no ping from the server in time".to_owned()));
                }
                () = sleep_until(retry_at) => {
                    for channel in self.subs.due(Instant::now()) {
                        if let Some(command) = self.subscribe_command(conn, &channel) {
                            conn.send(command).await.map_err(SessionEnd::transport)?;
                        }
                    }
                }
            }
        }
    }

    /// Encodes a `subscribe` for `channel` and records it as pending.
    fn subscribe_command(&mut self, conn: &mut Connection, channel: &str) -> Option<String> {
        let (request, generation) = self.subs.subscribe_request(channel)?;
        let id = self.take_id();
        conn.pending.insert(
            id,
            Pending::Subscribe {
                channel: channel.to_owned(),
                generation,
            },
        );
        Some(encode_command(id, &request))
    }

    /// Serves a command on an established connection.
    async fn online(
        &mut self,
        conn: &mut Connection,
        command: Option<Command>,
    ) -> Result<(), SessionEnd> {
        match command {
            None => {
                conn.close_normally().await;
                return Err(SessionEnd::Closed(None));
            }
            Some(Command::Close { done }) => {
                conn.close_normally().await;
                return Err(SessionEnd::Closed(Some(done)));
            }
            Some(Command::Subscribe { channel, done }) => {
                let added = self.subs.add(&channel);
                let ok = added.is_ok();
                let _ = done.send(added);
                if ok {
                    if let Some(command) = self.subscribe_command(conn, &channel) {
                        conn.send(command).await.map_err(SessionEnd::transport)?;
                    }
                }
            }
            Some(Command::Unsubscribe { channel, done }) => {
                let state = self.unsubscribed_by_app(&channel);
                let sent = matches!(state, Ok(s) if s != crate::subscription::State::Waiting);
                let _ = done.send(state.map(|_| ()));
                if sent {
                    let id = self.take_id();
                    let request = Request::Unsubscribe {
                        channel: channel.clone(),
                    };
                    conn.pending.insert(id, Pending::Unsubscribe { channel });
                    conn.send(encode_command(id, &request))
                        .await
                        .map_err(SessionEnd::transport)?;
                }
            }
            Some(Command::Call { request, reply }) => {
                if !reply.is_closed() {
                    let id = self.take_id();
                    conn.pending.insert(id, Pending::Call(reply));
                    conn.send(encode_command(id, &request))
                        .await
                        .map_err(SessionEnd::transport)?;
                }
            }
            Some(Command::SetToken(token)) => self.config.token = token,
        }
        Ok(())
    }

    /// Handles one object from the server on an established connection.
    async fn on_incoming(
        &mut self,
        conn: &mut Connection,
        incoming: Incoming,
    ) -> Result<(), SessionEnd> {
        match incoming {
            Incoming::Ping => conn
                .send(PONG.to_owned())
                .await
                .map_err(SessionEnd::transport)?,
            Incoming::Reply(reply) => match conn.pending.remove(&reply.id) {
                Some(Pending::Call(answer)) => {
                    let _ = answer.send(reply.outcome.map_err(Error::Reply));
                }
                Some(Pending::Subscribe {
                    channel,
                    generation,
                }) => self.on_subscribe_reply(&channel, generation, reply.outcome),
                Some(Pending::Unsubscribe { channel }) => {
                    if let Err(error) = reply.outcome {
                        tracing::debug!(%channel, %error, "switchboard client: unsubscribe refused");
                    }
                }
                None => {
                    tracing::debug!(
                        id = reply.id,
                        "switchboard client: reply to no pending command"
                    );
                }
            },
            Incoming::Push(push) => {
                let channel = push.channel;
                match push.kind {
                    PushKind::Publication(publication) => {
                        if let Some(event) = self.subs.on_publication(&channel, publication) {
                            self.emit(event);
                        }
                    }
                    PushKind::Join(info) => self.emit(Event::Join { channel, info }),
                    PushKind::Leave(info) => self.emit(Event::Leave { channel, info }),
                    PushKind::Subscribe => self.emit(Event::ServerSubscribed { channel }),
                    PushKind::Unsubscribe { code, reason } => {
                        self.subs.remove(&channel);
                        self.emit(Event::Unsubscribed {
                            channel,
                            code,
                            reason,
                        });
                    }
                    PushKind::Disconnect { code, reason } => {
                        conn.disconnect = Some((code, reason));
                    }
                    PushKind::Message(data) => self.emit(Event::Message { data }),
                    // This client does not refresh tokens; after an expiry close (3005) it
                    // reconnects with the token the application set last.
                    PushKind::Refresh { .. } | PushKind::Unknown => {}
                }
            }
        }
        Ok(())
    }

    fn on_subscribe_reply(
        &mut self,
        channel: &str,
        generation: u64,
        outcome: Result<ReplyBody, crate::error::ReplyError>,
    ) {
        match outcome {
            Ok(body) => {
                // An empty `subscribe` result is a subscription with nothing to recover.
                let result = body.subscribe.unwrap_or_default();
                for event in self.subs.on_subscribed(channel, generation, result) {
                    self.emit(event);
                }
            }
            Err(error) => {
                let (after, event) = self.subs.on_failed(channel, generation, error);
                if let AfterFailure::Retry { attempt } = after {
                    let delay = self.config.backoff.delay(attempt, &mut self.rng);
                    self.subs.schedule_retry(channel, Instant::now() + delay);
                }
                if let Some(event) = event {
                    self.emit(event);
                }
            }
        }
    }
}

impl Connection {
    async fn send(&mut self, text: String) -> Result<(), String> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|error| format!("send failed: {error}"))
    }

    /// Turns one read into objects, or into the end of the connection.
    fn receive(
        &mut self,
        message: Option<Result<Message, WsError>>,
    ) -> Result<Vec<Incoming>, SessionEnd> {
        let received = match message {
            Some(Ok(Message::Text(text))) => match decode_frame(text.as_str()) {
                Ok(objects) => Received::Objects(objects),
                Err(error) => Received::Ended {
                    code: 1002,
                    reason: format!("{error}"),
                },
            },
            Some(Ok(Message::Close(Some(frame)))) => Received::Ended {
                code: u16::from(frame.code),
                reason: frame.reason.to_string(),
            },
            Some(Ok(Message::Close(None))) => Received::Ended {
                code: close::NO_STATUS,
                reason: String::new(),
            },
            // Binary frames are not part of the JSON protocol; WebSocket pings are answered
            // by tungstenite itself.
            Some(Ok(
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_),
            )) => Received::Nothing,
            Some(Err(error)) => Received::Ended {
                code: close::ABNORMAL,
                reason: format!("{error}"),
            },
            None => Received::Ended {
                code: close::ABNORMAL,
                reason: "connection closed".to_owned(),
            },
        };
        match received {
            Received::Objects(objects) => Ok(objects),
            Received::Nothing => Ok(Vec::new()),
            Received::Ended { code, reason } => {
                // With no close frame, the `disconnect` push that preceded it says why.
                let (code, reason) = match self.disconnect.take() {
                    Some(pushed) if code == close::ABNORMAL || code == close::NO_STATUS => pushed,
                    _ => (u32::from(code), reason),
                };
                let action = match u16::try_from(code) {
                    Ok(code) => codes::after_close(code),
                    Err(_) => Action::Reconnect,
                };
                Err(SessionEnd::Failed {
                    code,
                    reason,
                    action,
                })
            }
        }
    }

    /// Sends a normal close (1000, "client closed") and waits for the server's answer.
    async fn close_normally(&mut self) {
        self.finish(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "client closed".into(),
        }))
        .await;
    }

    /// Ends the connection politely, within [`CLOSE_LINGER`]: starts the close handshake (or
    /// answers the server's close), then reads until the server ends the connection. On a
    /// connection that is already gone both steps return at once.
    async fn finish(&mut self, frame: Option<CloseFrame>) {
        if self.dead {
            return;
        }
        let ws = &mut self.ws;
        let handshake = async {
            let _ = ws.close(frame).await;
            while let Some(Ok(_)) = ws.next().await {}
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, handshake).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
