//! Fossil delta compression of publications: the `data` of a publication as a fossil delta
//! against the previous publication's `data` on the same channel, which the SDKs apply when a
//! subscription asked for `delta: "fossil"`.
//!
//! The algorithm is the `fossil-delta` crate's. Every delta made here is checked by applying
//! it before it is used (a linear pass), and a panic inside the crate is caught: either way
//! the publication goes whole, never wrong. A delta is used only when it is smaller than the
//! data it replaces. In the JSON encoding a delta travels as a JSON string, so it must be
//! UTF-8 (a copy boundary inside a multi-byte character would not survive the string); one
//! that is not is not used either.
//!
//! This module owns no state: the hub keeps each channel's base and asks the publication for
//! its delta frame once per publication (`Publication::delta_frame`).

use bytes::Bytes;

/// The fossil delta that turns `base` into `target`, when it is smaller than `target`, checked,
/// and (with `utf8`) valid UTF-8.
pub fn fossil(base: &[u8], target: &[u8], utf8: bool) -> Option<Bytes> {
    let made = std::panic::catch_unwind(|| {
        let mut out = Vec::with_capacity(target.len() / 4 + 16);
        fossil_delta::generate_delta(target, base, &mut out);
        out
    })
    .ok()?;
    if made.len() >= target.len() {
        return None;
    }
    if utf8 && std::str::from_utf8(&made).is_err() {
        return None;
    }
    let applied = std::panic::catch_unwind(|| fossil_delta::apply(base, &made)).ok()?;
    match applied {
        Ok(back) if back == target => Some(Bytes::from(made)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(n: u32) -> String {
        let items: Vec<String> = (0..40)
            .map(|i| {
                format!(
                    r#"{{"id":{i},"name":"item number {i}","price":{}}}"#,
                    i * 10 + u32::from(i == n % 40) * n
                )
            })
            .collect();
        format!(r#"{{"version":{n},"items":[{}]}}"#, items.join(","))
    }

    #[test]
    fn a_small_change_to_a_large_document_is_a_small_delta_that_applies_back() {
        for n in 1..20 {
            let (base, target) = (document(n - 1), document(n));
            let delta = fossil(base.as_bytes(), target.as_bytes(), true).unwrap();
            assert!(
                delta.len() * 10 < target.len(),
                "{} of {}",
                delta.len(),
                target.len()
            );
            assert_eq!(
                fossil_delta::apply(&base, &delta).unwrap(),
                target.as_bytes()
            );
        }
    }

    #[test]
    fn unrelated_or_tiny_data_goes_whole() {
        assert_eq!(fossil(b"", b"{}", true), None);
        assert_eq!(fossil(b"abc", b"xyz", true), None);
        let random: Vec<u8> = (0..500).map(|_| fastrand::u8(..)).collect();
        let other: Vec<u8> = (0..500).map(|_| fastrand::u8(..)).collect();
        assert_eq!(fossil(&random, &other, false), None);
    }

    #[test]
    fn a_delta_that_is_not_utf8_is_not_used_in_json() {
        // Binary data: a delta may copy literal bytes that are not UTF-8.
        let base: Vec<u8> = (0..400u32).map(|i| (i % 251) as u8 | 0x80).collect();
        let mut target = base.clone();
        target[200] = 0xFF;
        target.extend_from_slice(&[0xC3]);
        let binary = fossil(&base, &target, false).unwrap();
        assert_eq!(fossil_delta::apply(&base, &binary).unwrap(), target);
        if std::str::from_utf8(&binary).is_err() {
            assert_eq!(fossil(&base, &target, true), None);
        }
    }

    #[test]
    fn random_edits_always_round_trip() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut base: Vec<u8> = (0..2000).map(|_| rng.u8(b'a'..=b'z')).collect();
        for _ in 0..300 {
            let mut target = base.clone();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(..target.len());
                match rng.u8(..3) {
                    0 => target[at] = rng.u8(b'a'..=b'z'),
                    1 => target.insert(at, rng.u8(b'a'..=b'z')),
                    _ => {
                        target.remove(at);
                    }
                }
            }
            if let Some(delta) = fossil(&base, &target, true) {
                assert_eq!(fossil_delta::apply(&base, &delta).unwrap(), target);
            }
            base = target;
        }
    }
}
