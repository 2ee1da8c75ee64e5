//! Client-side subscriptions and their recovery state, with no I/O: each subscription's
//! stream position (the epoch and the offset of the last publication delivered), what to send
//! to (re)subscribe, and the order of delivery around a subscribe reply — the `Subscribed`
//! event, then the recovered publications, then any live publication that arrived while the
//! reply was outstanding.
//!
//! The position only moves when a publication is delivered, so a publication received but not
//! delivered (the connection dropped first) is asked for again on the next recovery.

use std::collections::BTreeMap;

use tokio::time::Instant;

use crate::error::{Error, ReplyError};
use crate::event::Event;
use crate::protocol::{Publication, Request, StreamPosition, SubscribeResult};

/// Where a subscription stands on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Not subscribed on this connection (no connection yet, or a retry is scheduled).
    Waiting,
    /// `subscribe` sent, reply outstanding.
    Subscribing,
    /// The server confirmed it.
    Subscribed,
}

#[derive(Debug)]
pub(crate) struct Subscription {
    state: State,
    /// The generation of the last `subscribe` sent for it, so a late reply to an older one
    /// (even one sent for an earlier subscription to the same channel) is recognised.
    generation: u64,
    position: Option<StreamPosition>,
    /// Live publications that arrived while the subscribe reply was outstanding.
    buffered: Vec<Publication>,
    /// Consecutive temporary subscribe errors, for the retry backoff.
    retry_attempt: u32,
    retry_at: Option<Instant>,
}

/// Every client-side subscription, by channel.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    by_channel: BTreeMap<String, Subscription>,
    /// The last generation handed out; unique across every subscription of the client.
    last_generation: u64,
}

/// What became of a subscription after a failed `subscribe`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Retry after the backoff for this many consecutive failures.
    Retry { attempt: u32 },
    /// Removed; the event says why.
    Removed,
    /// The reply was stale (the subscription is gone or was re-sent since).
    Ignored,
}

impl Subscriptions {
    /// Registers `channel`, waiting for a connection.
    pub(crate) fn add(&mut self, channel: &str) -> Result<(), Error> {
        if self.by_channel.contains_key(channel) {
            return Err(Error::AlreadySubscribed {
                channel: channel.to_owned(),
            });
        }
        self.by_channel.insert(
            channel.to_owned(),
            Subscription {
                state: State::Waiting,
                generation: 0,
                position: None,
                buffered: Vec::new(),
                retry_attempt: 0,
                retry_at: None,
            },
        );
        Ok(())
    }

    /// Removes `channel`; returns its state, or `None` if it was not subscribed.
    pub(crate) fn remove(&mut self, channel: &str) -> Option<State> {
        self.by_channel.remove(channel).map(|sub| sub.state)
    }

    /// Whether `channel` has a client-side subscription.
    #[cfg(test)]
    pub(crate) fn contains(&self, channel: &str) -> bool {
        self.by_channel.contains_key(channel)
    }

    /// The `subscribe` request for `channel` (recovering from its position, if it has one)
    /// and its generation; marks it subscribing.
    pub(crate) fn subscribe_request(&mut self, channel: &str) -> Option<(Request, u64)> {
        let sub = self.by_channel.get_mut(channel)?;
        self.last_generation += 1;
        sub.state = State::Subscribing;
        sub.generation = self.last_generation;
        sub.retry_at = None;
        sub.buffered.clear();
        Some((
            Request::Subscribe {
                channel: channel.to_owned(),
                recover: sub.position.clone(),
            },
            sub.generation,
        ))
    }

    /// Channels waiting to subscribe with no retry scheduled: all of them right after a
    /// (re)connect.
    pub(crate) fn waiting(&self) -> Vec<String> {
        self.by_channel
            .iter()
            .filter(|(_, sub)| sub.state == State::Waiting && sub.retry_at.is_none())
            .map(|(channel, _)| channel.clone())
            .collect()
    }

    /// The earliest scheduled retry.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.by_channel.values().filter_map(|s| s.retry_at).min()
    }

    /// Channels whose retry is due at `now`; their schedule is cleared.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (channel, sub) in &mut self.by_channel {
            if sub.retry_at.is_some_and(|at| at <= now) {
                sub.retry_at = None;
                due.push(channel.clone());
            }
        }
        due
    }

    /// Schedules a retry of `channel` at `at`.
    pub(crate) fn schedule_retry(&mut self, channel: &str, at: Instant) {
        if let Some(sub) = self.by_channel.get_mut(channel) {
            sub.retry_at = Some(at);
        }
    }

    /// The connection is gone: every subscription waits for the next one, keeping its
    /// position; publications received but not delivered are dropped (recovery asks again).
    pub(crate) fn on_connection_lost(&mut self) {
        for sub in self.by_channel.values_mut() {
            sub.state = State::Waiting;
            sub.retry_at = None;
            sub.retry_attempt = 0;
            sub.buffered.clear();
        }
    }

    /// Applies a successful subscribe reply; returns the events in delivery order.
    pub(crate) fn on_subscribed(
        &mut self,
        channel: &str,
        generation: u64,
        result: SubscribeResult,
    ) -> Vec<Event> {
        let Some(sub) = self.by_channel.get_mut(channel) else {
            return Vec::new();
        };
        if sub.generation != generation || sub.state != State::Subscribing {
            return Vec::new();
        }
        sub.state = State::Subscribed;
        sub.retry_attempt = 0;
        sub.position = result.recoverable.then(|| StreamPosition {
            offset: result.offset,
            epoch: result.epoch.clone(),
        });
        let mut events = Vec::with_capacity(1 + result.publications.len() + sub.buffered.len());
        events.push(Event::Subscribed {
            channel: channel.to_owned(),
            recovered: result.recovered,
            was_recovering: result.was_recovering,
            recoverable: result.recoverable,
            position: sub.position.clone(),
        });
        let buffered = std::mem::take(&mut sub.buffered);
        for publication in result.publications.into_iter().chain(buffered) {
            events.push(sub.deliver(channel, publication));
        }
        events
    }

    /// Applies a failed subscribe reply: temporary errors are retried, others remove the
    /// subscription and say so in the returned event.
    pub(crate) fn on_failed(
        &mut self,
        channel: &str,
        generation: u64,
        error: ReplyError,
    ) -> (AfterFailure, Option<Event>) {
        let Some(sub) = self.by_channel.get_mut(channel) else {
            return (AfterFailure::Ignored, None);
        };
        if sub.generation != generation || sub.state != State::Subscribing {
            return (AfterFailure::Ignored, None);
        }
        if crate::codes::subscribe_error_is_temporary(&error) {
            sub.state = State::Waiting;
            sub.buffered.clear();
            let attempt = sub.retry_attempt;
            sub.retry_attempt = sub.retry_attempt.saturating_add(1);
            return (AfterFailure::Retry { attempt }, None);
        }
        self.by_channel.remove(channel);
        (
            AfterFailure::Removed,
            Some(Event::SubscriptionFailed {
                channel: channel.to_owned(),
                error,
            }),
        )
    }

    /// A live publication: delivered now, held until the subscribe reply has been applied, or
    /// (for a channel with no client-side subscription: a server-side one) passed through.
    pub(crate) fn on_publication(
        &mut self,
        channel: &str,
        publication: Publication,
    ) -> Option<Event> {
        match self.by_channel.get_mut(channel) {
            Some(sub) => match sub.state {
                State::Subscribed => Some(sub.deliver(channel, publication)),
                State::Subscribing => {
                    sub.buffered.push(publication);
                    None
                }
                // Not subscribed on this connection: a stray push; recovery covers it.
                State::Waiting => None,
            },
            None => Some(publication_event(channel, publication)),
        }
    }
}

impl Subscription {
    fn deliver(&mut self, channel: &str, publication: Publication) -> Event {
        if let (Some(position), Some(offset)) = (&mut self.position, publication.offset) {
            position.offset = offset;
        }
        publication_event(channel, publication)
    }
}

fn publication_event(channel: &str, publication: Publication) -> Event {
    Event::Publication {
        channel: channel.to_owned(),
        offset: publication.offset,
        data: publication.data,
        info: publication.info,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn publication(offset: u64) -> Publication {
        Publication {
            offset: Some(offset),
            data: json!({ "n": offset }),
            info: None,
        }
    }

    fn offsets(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Publication { offset, .. } => *offset,
                _ => None,
            })
            .collect()
    }

    fn recover_of(request: &Request) -> Option<StreamPosition> {
        match request {
            Request::Subscribe { recover, .. } => recover.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn first_subscribe_does_not_recover_then_the_position_follows_publications() {
        let mut subs = Subscriptions::default();
        subs.add("news").unwrap();
        assert!(matches!(
            subs.add("news"),
            Err(Error::AlreadySubscribed { .. })
        ));
        let (request, generation) = subs.subscribe_request("news").unwrap();
        assert_eq!(recover_of(&request), None);
        let events = subs.on_subscribed(
            "news",
            generation,
            SubscribeResult {
                recoverable: true,
                epoch: "e1".into(),
                offset: 3,
                ..SubscribeResult::default()
            },
        );
        assert!(matches!(
            &events[0],
            Event::Subscribed { recovered: false, was_recovering: false, position: Some(p), .. }
                if p.offset == 3 && p.epoch == "e1"
        ));
        for offset in 4..=6 {
            assert!(subs.on_publication("news", publication(offset)).is_some());
        }
        subs.on_connection_lost();
        assert_eq!(subs.waiting(), vec!["news".to_owned()]);
        let (request, _) = subs.subscribe_request("news").unwrap();
        assert_eq!(
            recover_of(&request),
            Some(StreamPosition {
                offset: 6,
                epoch: "e1".into()
            })
        );
    }

    #[test]
    fn recovered_publications_come_after_subscribed_and_before_live_ones() {
        let mut subs = Subscriptions::default();
        subs.add("news").unwrap();
        let (_, generation) = subs.subscribe_request("news").unwrap();
        // A live publication overtakes the reply: it is held back.
        assert!(subs.on_publication("news", publication(9)).is_none());
        let events = subs.on_subscribed(
            "news",
            generation,
            SubscribeResult {
                recoverable: true,
                recovered: true,
                was_recovering: true,
                epoch: "e".into(),
                offset: 8,
                publications: vec![publication(7), publication(8)],
                ..SubscribeResult::default()
            },
        );
        assert!(matches!(
            events[0],
            Event::Subscribed {
                recovered: true,
                was_recovering: true,
                ..
            }
        ));
        assert_eq!(offsets(&events), vec![7, 8, 9]);
        let Some(Event::Publication { offset, .. }) = subs.on_publication("news", publication(10))
        else {
            panic!("live publication not delivered");
        };
        assert_eq!(offset, Some(10));
    }

    #[test]
    fn undelivered_publications_are_recovered_again() {
        let mut subs = Subscriptions::default();
        subs.add("news").unwrap();
        let (_, generation) = subs.subscribe_request("news").unwrap();
        assert!(subs.on_publication("news", publication(5)).is_none());
        subs.on_connection_lost();
        let (request, _) = subs.subscribe_request("news").unwrap();
        // The first reply never came: nothing was delivered and no position is known.
        assert_eq!(recover_of(&request), None);
        assert!(subs
            .on_subscribed("news", generation, SubscribeResult::default())
            .is_empty());
    }

    #[test]
    fn a_reply_to_an_earlier_subscription_of_the_channel_is_ignored() {
        let mut subs = Subscriptions::default();
        subs.add("news").unwrap();
        let (_, old) = subs.subscribe_request("news").unwrap();
        subs.remove("news");
        subs.add("news").unwrap();
        let (_, new) = subs.subscribe_request("news").unwrap();
        assert!(subs
            .on_subscribed("news", old, SubscribeResult::default())
            .is_empty());
        assert_eq!(
            subs.on_subscribed("news", new, SubscribeResult::default())
                .len(),
            1
        );
    }

    #[test]
    fn non_recoverable_channels_keep_no_position() {
        let mut subs = Subscriptions::default();
        subs.add("plain").unwrap();
        let (_, generation) = subs.subscribe_request("plain").unwrap();
        subs.on_subscribed("plain", generation, SubscribeResult::default());
        let mut unnumbered = publication(1);
        unnumbered.offset = None;
        assert!(subs.on_publication("plain", unnumbered).is_some());
        subs.on_connection_lost();
        let (request, _) = subs.subscribe_request("plain").unwrap();
        assert_eq!(recover_of(&request), None);
    }

    #[test]
    fn temporary_errors_retry_and_others_remove() {
        let mut subs = Subscriptions::default();
        subs.add("a").unwrap();
        let (_, generation) = subs.subscribe_request("a").unwrap();
        let temporary = ReplyError {
            code: 100,
            message: "internal server error".into(),
            temporary: true,
        };
        let (after, event) = subs.on_failed("a", generation, temporary.clone());
        assert_eq!((after, event), (AfterFailure::Retry { attempt: 0 }, None));
        let (_, generation) = subs.subscribe_request("a").unwrap();
        let (after, _) = subs.on_failed("a", generation, temporary);
        assert_eq!(after, AfterFailure::Retry { attempt: 1 });
        let (_, generation) = subs.subscribe_request("a").unwrap();
        let denied = ReplyError {
            code: 103,
            message: "permission denied".into(),
            temporary: false,
        };
        let (after, event) = subs.on_failed("a", generation, denied.clone());
        assert_eq!(after, AfterFailure::Removed);
        assert_eq!(
            event,
            Some(Event::SubscriptionFailed {
                channel: "a".into(),
                error: denied
            })
        );
        assert!(!subs.contains("a"));
    }

    #[test]
    fn publications_without_a_client_subscription_pass_through() {
        let mut subs = Subscriptions::default();
        assert!(matches!(
            subs.on_publication("server-side", publication(1)),
            Some(Event::Publication { channel, .. }) if channel == "server-side"
        ));
    }
}
