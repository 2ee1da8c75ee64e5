//! The client protocol's Protobuf decoder (`wire::decode_commands` with
//! `Encoding::Protobuf`): a binary frame of length-delimited commands, as the SDKs' protobuf
//! builds send it. Decoded commands go through `switchboard_fuzz::check_commands` (round
//! trip, channel-name checks); the whole frame must also re-encode to a frame that decodes
//! to the same commands.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchboard::wire::{decode_commands, Encoding};

fuzz_target!(|data: &[u8]| {
    let Ok(commands) = decode_commands(Encoding::Protobuf, data) else {
        return;
    };
    // Every command takes at least its one length byte.
    assert!(commands.len() <= data.len());
    let mut frame = Vec::new();
    for command in &commands {
        command
            .encode_length_delimited(&mut frame)
            .expect("a Vec grows as needed");
    }
    assert_eq!(
        decode_commands(Encoding::Protobuf, &frame).ok(),
        Some(commands.clone())
    );
    switchboard_fuzz::check_commands(&commands);
});
