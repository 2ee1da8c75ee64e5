//! The client protocol's JSON decoder (`wire::decode_commands` with `Encoding::Json`): a text
//! frame of newline-separated commands, as the SDKs' JSON builds send it. Decoded commands go
//! through `switchboard_fuzz::check_commands` (Protobuf round trip, channel-name checks).

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::wire::{decode_commands, Encoding};

fuzz_target!(|data: &[u8]| {
    // The reader hands the door only UTF-8 text frames; anything else never reaches here.
    if std::str::from_utf8(data).is_err() {
        return;
    }
    if let Ok(commands) = decode_commands(Encoding::Json, data) {
        let lines = data
            .split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .count();
        assert_eq!(commands.len(), lines, "one command per non-blank line");
        switchboard_fuzz::check_commands(&commands);
    }
});
