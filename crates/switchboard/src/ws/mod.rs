//! The WebSocket wire protocol (RFC 6455), written for the gateway's hot path.
//!
//! This module owns bytes only: the opening handshake's checks ([`handshake`]), the frame
//! format ([`frame`]) and the reassembly of client frames into messages ([`reader`]). It never
//! touches a socket, so all of it is tested without one. The connection task (`conn`) owns the
//! I/O. Why hand-written rather than a crate: docs/websocket.md (frames are encoded once per
//! publication and shared by every subscriber, and an idle connection holds no buffer at all).

pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod reader;

pub use frame::Opcode;
pub use reader::{Event, MessageReader};
