//! The protocol's result shapes for presence, presence stats, history and subscribe, made
//! from what the node found. Shared by the client protocol and the server API (which answers
//! in the same shapes); pure functions of data, no state.

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

/// The subscribe result for what the stream held (and, when asked, what recovery found).
pub(crate) fn subscribe_result(
    found: StreamState,
    recoverable: bool,
    encoding: Encoding,
) -> SubscribeResult {
    let mut result = SubscribeResult::default();
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
            result.recovered = true;
            result.publications = publication_bodies(&publications, encoding);
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

/// The history result for what the stream held.
///
/// # Errors
/// [`ClientError::Unrecoverable`] when `since_epoch` names another epoch than the stream's.
pub(crate) fn history_result(
    page: HistoryPage,
    since_epoch: &str,
    encoding: Encoding,
) -> Result<HistoryResult, ClientError> {
    if !since_epoch.is_empty() && since_epoch != &*page.position.epoch {
        return Err(ClientError::Unrecoverable);
    }
    Ok(HistoryResult {
        publications: publication_bodies(&page.publications, encoding),
        epoch: page.position.epoch.to_string(),
        offset: page.position.offset,
    })
}
