//! What the client-protocol fuzz targets (`protocol_json`, `protocol_protobuf`) share: the
//! checks every decoded command goes through. The targets themselves are in `fuzz_targets/`;
//! docs/fuzzing.md says what each one checks.

use prost::Message;
use switchboard::channels;
use switchboard::wire::{decode_commands, Command, Encoding};

/// Every channel name a command carries.
fn channels_of(command: &Command) -> Vec<&str> {
    let mut names = Vec::new();
    if let Some(connect) = &command.connect {
        names.extend(connect.subs.keys().map(String::as_str));
        names.extend(connect.subs.values().map(|sub| sub.channel.as_str()));
    }
    names.extend(command.subscribe.iter().map(|r| r.channel.as_str()));
    names.extend(command.unsubscribe.iter().map(|r| r.channel.as_str()));
    names.extend(command.publish.iter().map(|r| r.channel.as_str()));
    names.extend(command.presence.iter().map(|r| r.channel.as_str()));
    names.extend(command.presence_stats.iter().map(|r| r.channel.as_str()));
    names.extend(command.history.iter().map(|r| r.channel.as_str()));
    names.extend(command.sub_refresh.iter().map(|r| r.channel.as_str()));
    names
}

/// Checks what the client-protocol door does with decoded commands before any state is
/// touched, and that the two encodings agree:
/// - a command survives a Protobuf round trip unchanged (the JSON and Protobuf decoders fill
///   the same types, so a JSON command has exactly one Protobuf form);
/// - the channel-name checks accept only 1 to 255 bytes with no whitespace or control
///   characters, a namespace is a prefix of its channel, and a user-limited channel never
///   admits the anonymous (empty) user.
///
/// # Panics
/// When any of those does not hold (which is what the fuzzer reports).
pub fn check_commands(commands: &[Command]) {
    for command in commands {
        let mut encoded = Vec::new();
        command
            .encode_length_delimited(&mut encoded)
            .expect("a Vec grows as needed");
        let again = decode_commands(Encoding::Protobuf, &encoded).expect("own encoding decodes");
        assert_eq!(again.as_slice(), std::slice::from_ref(command));

        for channel in channels_of(command) {
            if channels::check_name(channel).is_ok() {
                assert!(!channel.is_empty() && channel.len() <= 255);
                assert!(!channel.chars().any(|c| c.is_whitespace() || c.is_control()));
            }
            if let Some(namespace) = channels::namespace_of(channel) {
                assert!(channel.starts_with(namespace));
            }
            assert_ne!(channels::user_limited(channel, ""), Some(true));
            let _ = channels::user_limited(channel, "42");
        }
    }
}
