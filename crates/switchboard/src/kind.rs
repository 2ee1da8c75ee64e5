//! The leaf types every layer names: the door a connection came through, the client
//! protocol's encoding, and the frame format a publication is sent in. Imports nothing of
//! the crate, so anything may import it.

/// The door a WebSocket came through (also a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `/ws`: echo.
    Echo = 0,
    /// `/ws/chat/{room}`: plain rooms.
    Chat = 1,
    /// `/ws/notify/user/{id}`: plain user push.
    Notify = 2,
    /// `/connection/websocket`: the client protocol (JSON commands, replies, pushes).
    Protocol = 3,
    /// `/app/{key}`: the Pusher channels protocol (`door/pusher`).
    Pusher = 4,
}

impl Door {
    /// Every door, in index order.
    pub const ALL: [Door; 5] = [
        Door::Echo,
        Door::Chat,
        Door::Notify,
        Door::Protocol,
        Door::Pusher,
    ];

    /// The label used in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Door::Echo => "echo",
            Door::Chat => "chat",
            Door::Notify => "notify",
            Door::Protocol => "protocol",
            Door::Pusher => "pusher",
        }
    }
}

/// How a connection encodes the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON objects in text frames.
    Json,
    /// Length-delimited Protobuf messages in binary frames.
    Protobuf,
}

/// The frame formats a publication is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The payload itself (plain doors).
    Plain = 0,
    /// A JSON push (client protocol, JSON).
    Json = 1,
    /// A Protobuf push (client protocol, Protobuf).
    Protobuf = 2,
    /// A Pusher event (`{"event":…,"channel":…,"data":…}`, Pusher door).
    Pusher = 3,
}

impl Format {
    /// The format a connection of `door` speaking `encoding` receives.
    pub fn of(door: Door, encoding: Encoding) -> Format {
        match (door, encoding) {
            (Door::Protocol, Encoding::Json) => Format::Json,
            (Door::Protocol, Encoding::Protobuf) => Format::Protobuf,
            (Door::Pusher, _) => Format::Pusher,
            _ => Format::Plain,
        }
    }
}
