//! The protocol's result shapes for presence, presence stats, history and subscribe, made
//! from what the node found. Shared by the client protocol and the server API (which answers
//! in the same shapes); pure functions of data, no state.
//!
//! Replies that carry publications are cut to a byte budget (what the connection may queue,
//! see `Conn::reply_budget`), so a reply is never what closes a client as a slow consumer.
//! A recovery that does not fit is answered `recovered: false` with the newest publications
//! that fit (contiguous with the live ones that follow); a history page that does not fit is
//! its first publications that fit, in the order asked for, to be continued with `since`.

use std::collections::HashMap;
use std::sync::Arc;

use super::wire::{self, HistoryResult, PresenceResult, PresenceStatsResult, SubscribeResult};
use crate::broker::memory::StreamState;
use crate::broker::{HistoryPage, HistoryRange};
use crate::error::ClientError;
use crate::kind::Encoding;
use crate::publication::{ClientInfo, Publication};

fn publication_bodies(
    publications: &[Arc<Publication>],
    encoding: Encoding,
) -> Vec<wire::PublicationBody> {
    publications.iter().map(|p| p.body(encoding)).collect()
}

/// The bodies a delta subscription recovers: the first whole, each next one as a fossil
/// delta against the one before it in its chain when it directly follows it and the delta
/// is smaller (in JSON, every `data` is a JSON string, as the SDK expects once delta is on).
/// A stream has one chain; a map one per key, and a key's first publication here goes whole:
/// the subscriber's value under it may be from a state page read after it.
fn delta_bodies(
    publications: &[Arc<Publication>],
    encoding: Encoding,
) -> Vec<wire::PublicationBody> {
    let mut previous: Option<&Arc<Publication>> = None;
    let mut previous_of_key: HashMap<&str, &Arc<Publication>> = HashMap::new();
    publications
        .iter()
        .map(|publication| {
            let base = match publication.key.as_deref() {
                Some(key) => {
                    let before = previous_of_key.insert(key, publication);
                    before.filter(|p| !p.removed && !publication.removed)
                }
                None => {
                    let before = previous.replace(publication);
                    before.filter(|p| p.offset != 0 && publication.offset == p.offset + 1)
                }
            };
            publication.delta_body(encoding, base.map(|p| &p.delta_payload(encoding)[..]))
        })
        .collect()
}

/// The state entries a map delta subscriber receives: whole, but in JSON each `data` is a
/// JSON string (the SDK keeps its text as the key's delta base).
pub(super) fn delta_state_bodies<'a>(
    publications: impl Iterator<Item = &'a Arc<Publication>>,
    encoding: Encoding,
) -> Vec<wire::PublicationBody> {
    publications
        .map(|publication| publication.delta_body(encoding, None))
        .collect()
}

/// Room for a reply's own fields (id, epoch, offset, keys) around its publications.
const REPLY_OVERHEAD: usize = 256;

/// How many of `publications`, taken in the order given, fit in `budget` bytes.
pub(super) fn fitting<'a>(
    publications: impl Iterator<Item = &'a Arc<Publication>>,
    budget: usize,
    encoding: Encoding,
) -> usize {
    let mut left = budget.saturating_sub(REPLY_OVERHEAD);
    let mut count = 0;
    for publication in publications {
        let len = publication.body_len(encoding);
        if len > left {
            break;
        }
        left -= len;
        count += 1;
    }
    count
}

/// The subscribe result for what the stream held (and, when asked, what recovery found),
/// its publications cut to `budget` bytes; with `delta`, for a delta subscription.
pub(crate) fn subscribe_result(
    found: StreamState,
    recoverable: bool,
    encoding: Encoding,
    budget: usize,
    delta: bool,
) -> SubscribeResult {
    let mut result = SubscribeResult {
        delta,
        ..SubscribeResult::default()
    };
    let Some(position) = found.position else {
        // No history: nothing to position or recover.
        return result;
    };
    result.recoverable = recoverable;
    result.positioned = recoverable;
    result.offset = position.offset;
    result.epoch = position.epoch.to_string();
    if let Some(recovery) = found.recovery {
        result.was_recovering = true;
        if let Ok(publications) = recovery {
            let fit = fitting(publications.iter().rev(), budget, encoding);
            // All of them, or (a gap the client must be told of) the newest that fit: they
            // end at the stream's top, so the live publications continue them with no gap.
            result.recovered = fit == publications.len();
            let kept = &publications[publications.len() - fit..];
            result.publications = if delta {
                delta_bodies(kept, encoding)
            } else {
                publication_bodies(kept, encoding)
            };
        }
    }
    result
}

/// Who is present in a channel.
pub(crate) fn presence_result(present: &[Arc<ClientInfo>]) -> PresenceResult {
    PresenceResult {
        presence: present
            .iter()
            .map(|info| (info.client.to_string(), info.body()))
            .collect(),
    }
}

/// How many clients and distinct users are present in a channel.
pub(crate) fn presence_stats_result((clients, users): (usize, usize)) -> PresenceStatsResult {
    PresenceStatsResult {
        num_clients: u32::try_from(clients).unwrap_or(u32::MAX),
        num_users: u32::try_from(users).unwrap_or(u32::MAX),
    }
}

/// The stream range a history request asks for, and the epoch its `since` names.
pub(crate) fn history_range(request: &wire::HistoryRequest) -> (HistoryRange, String) {
    let range = HistoryRange {
        since: request.since.as_ref().map(|since| since.offset),
        limit: usize::try_from(request.limit).ok(),
        reverse: request.reverse,
    };
    let epoch = request
        .since
        .as_ref()
        .map(|since| since.epoch.clone())
        .unwrap_or_default();
    (range, epoch)
}

/// The history result for what the stream held: its first publications (in the order
/// asked for) that fit in `budget` bytes.
///
/// # Errors
/// [`ClientError::Unrecoverable`] when `since_epoch` names another epoch than the stream's.
pub(crate) fn history_result(
    page: HistoryPage,
    since_epoch: &str,
    encoding: Encoding,
    budget: usize,
) -> Result<HistoryResult, ClientError> {
    if !since_epoch.is_empty() && since_epoch != &*page.position.epoch {
        return Err(ClientError::Unrecoverable);
    }
    let fit = fitting(page.publications.iter(), budget, encoding);
    Ok(HistoryResult {
        publications: publication_bodies(&page.publications[..fit], encoding),
        epoch: page.position.epoch.to_string(),
        offset: page.position.offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Position;
    use bytes::Bytes;

    /// Publications `offsets`, each about 1 KiB.
    fn kept(offsets: std::ops::RangeInclusive<u64>) -> Vec<Arc<Publication>> {
        offsets
            .map(|offset| {
                let data = Bytes::from(format!("\"{}\"", "x".repeat(1000)));
                Arc::new(Publication::json(data).positioned(offset, None))
            })
            .collect()
    }

    fn offsets_of(bodies: &[wire::PublicationBody]) -> Vec<u64> {
        bodies.iter().map(|body| body.offset).collect()
    }

    fn recovering(publications: Vec<Arc<Publication>>) -> StreamState {
        StreamState {
            position: Some(Position {
                offset: 10,
                epoch: "e".into(),
            }),
            recovery: Some(Ok(publications)),
        }
    }

    #[test]
    fn a_recovery_within_the_budget_is_recovered_whole() {
        let result = subscribe_result(
            recovering(kept(1..=10)),
            true,
            Encoding::Json,
            1 << 20,
            false,
        );
        assert!(result.recovered);
        assert_eq!(
            offsets_of(&result.publications),
            (1..=10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_recovery_over_the_budget_is_not_recovered_and_keeps_the_newest_that_fit() {
        let result = subscribe_result(recovering(kept(1..=10)), true, Encoding::Json, 4096, false);
        assert!(result.was_recovering && !result.recovered);
        let got = offsets_of(&result.publications);
        assert!(!got.is_empty() && got.len() < 10, "{got:?}");
        assert_eq!(got, (11 - got.len() as u64..=10).collect::<Vec<_>>());
    }

    #[test]
    fn a_map_catch_up_chains_deltas_per_key_and_a_removal_resets_the_key() {
        let set = |key: &str, v: u32, offset: u64| {
            let data = Bytes::from(format!(r#"{{"v":{v},"pad":"{}"}}"#, "y".repeat(300)));
            Arc::new(Publication::json(data).keyed(key).positioned(offset, None))
        };
        let removal =
            |key: &str, offset: u64| Arc::new(Publication::removal(key).positioned(offset, None));
        let catch_up = vec![
            set("a", 1, 1),
            set("b", 1, 2),
            set("a", 2, 3),
            removal("a", 4),
            set("a", 3, 5),
            set("b", 2, 6),
        ];
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let bodies = delta_bodies(&catch_up, encoding);
            let deltas: Vec<bool> = bodies.iter().map(|body| body.delta).collect();
            // a and b first whole; a again against a; the removal and the set after it
            // whole; b against b (not against the a before it).
            assert_eq!(
                deltas,
                [false, false, true, false, false, true],
                "{encoding:?}"
            );
            let base = catch_up[0].delta_payload(encoding);
            let back = fossil_delta::apply(base, delta_data(&bodies[2], encoding)).unwrap();
            assert_eq!(&back[..], &catch_up[2].delta_payload(encoding)[..]);
        }
        // The SDK decodes every JSON `data` of a delta subscription, a removal's too.
        let json = delta_bodies(&catch_up, Encoding::Json);
        assert_eq!(&json[3].data[..], br#""null""#);
    }

    /// A delta body's `data` as the SDK applies it: JSON carries it as a JSON string.
    fn delta_data(body: &wire::PublicationBody, encoding: Encoding) -> Vec<u8> {
        match encoding {
            Encoding::Json => serde_json::from_slice::<String>(&body.data)
                .unwrap()
                .into_bytes(),
            Encoding::Protobuf => body.data.to_vec(),
        }
    }

    #[test]
    fn a_history_page_over_the_budget_keeps_the_first_in_the_order_asked() {
        let page = |publications| HistoryPage {
            publications,
            position: Position {
                offset: 10,
                epoch: "e".into(),
            },
        };
        let oldest_first = history_result(page(kept(1..=10)), "", Encoding::Json, 4096).unwrap();
        let got = offsets_of(&oldest_first.publications);
        assert!(!got.is_empty() && got.len() < 10, "{got:?}");
        assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
        let mut newest = kept(1..=10);
        newest.reverse();
        let newest_first = history_result(page(newest), "", Encoding::Json, 4096).unwrap();
        assert_eq!(offsets_of(&newest_first.publications)[0], 10);
        assert_eq!(newest_first.offset, 10);
    }
}
