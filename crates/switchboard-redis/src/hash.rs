//! Which shard, and which of its pub/sub connections, carries a channel: a stable hash of the
//! channel's name (FNV-1a, the same on every node and build) fed to jump consistent hash
//! (Lamping and Veach, 2014), so going from n to n+1 shards moves only about 1/(n+1) of the
//! channels, all of them to the new shard.
//!
//! On a Redis Cluster the cluster decides instead: [`slot`] is the slot Redis gives a key or a
//! sharded pub/sub channel (CRC16 of its hash tag, modulo 16384).

/// FNV-1a, 64 bits: stable across processes, builds and platforms (unlike `DefaultHasher`).
pub(crate) fn stable_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The bucket in `0..buckets` of `key` by jump consistent hash; 0 when `buckets` is 0.
pub(crate) fn jump(mut key: u64, buckets: usize) -> usize {
    let buckets = i64::try_from(buckets).unwrap_or(i64::MAX);
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < buckets {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let step = f64::from(1u32 << 31) / ((key >> 33) as f64 + 1.0);
        next = ((bucket + 1) as f64 * step) as i64;
    }
    usize::try_from(bucket).unwrap_or(0)
}

/// The shard of `channel` among `shards`.
pub(crate) fn shard_of(channel: &str, shards: usize) -> usize {
    jump(stable_hash(channel), shards)
}

/// The pub/sub connection of `channel` among `connections` of its shard: drawn from other
/// bits than the shard, so a shard's channels still spread evenly over its connections.
pub(crate) fn connection_of(channel: &str, connections: usize) -> usize {
    let mixed = stable_hash(channel)
        .rotate_left(32)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    usize::try_from(mixed >> 32).unwrap_or(0) % connections.max(1)
}

/// How many slots a Redis Cluster has.
pub(crate) const SLOTS: u16 = 16_384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster hashes with.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |mut crc, &byte| {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// The cluster slot of `name`: the hash of the text between its first `{` and the first `}`
/// after it when that text is not empty, else of the whole name (Redis' hash-tag rule).
pub(crate) fn slot(name: &[u8]) -> u16 {
    let tagged = name.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &name[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        Some(&rest[..close]).filter(|tag| !tag.is_empty())
    });
    crc16(tagged.unwrap_or(name)) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> impl Iterator<Item = String> {
        (0..10_000).map(|i| format!("chat:room-{i}"))
    }

    #[test]
    fn adding_a_shard_moves_only_its_share_and_only_to_it() {
        for shards in 1..8 {
            let mut moved = 0;
            for name in names() {
                let before = shard_of(&name, shards);
                let after = shard_of(&name, shards + 1);
                if before != after {
                    assert_eq!(after, shards, "a moved channel goes to the new shard");
                    moved += 1;
                }
            }
            let fair = 10_000 / (shards + 1);
            assert!(
                moved > fair * 8 / 10 && moved < fair * 12 / 10,
                "{shards}->{}: moved {moved}, about {fair} expected",
                shards + 1
            );
        }
    }

    #[test]
    fn channels_spread_evenly_over_shards_and_connections() {
        let mut shards = [0usize; 4];
        let mut connections = [0usize; 4];
        for name in names() {
            shards[shard_of(&name, 4)] += 1;
            connections[connection_of(&name, 4)] += 1;
        }
        for count in shards.iter().chain(&connections) {
            assert!((2_000..3_000).contains(count), "{shards:?} {connections:?}");
        }
    }

    #[test]
    fn slots_follow_redis_hash_tags() {
        // Values from Redis' `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(
            slot(b"foo{}{bar}"),
            slot(b"foo{}{bar}"),
            "an empty tag: the whole name"
        );
        assert_ne!(slot(b"a{}x"), slot(b"b{}x"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    #[test]
    fn the_hash_is_stable() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(jump(42, 0), 0);
    }
}
