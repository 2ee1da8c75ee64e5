//! Which shard, and which of its pub/sub connections, carries a channel: a stable hash of the
//! channel's name (FNV-1a, the same on every node and build) fed to jump consistent hash
//! (Lamping and Veach, 2014), so going from n to n+1 shards moves only about 1/(n+1) of the
//! channels, all of them to the new shard.

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
    fn the_hash_is_stable() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(jump(42, 0), 0);
    }
}
