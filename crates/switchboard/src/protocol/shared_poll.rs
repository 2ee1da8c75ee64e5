//! Shared-poll subscriptions, one connection's side: the subscribe (type 4), and the
//! `sub_refresh` commands that track keys (type 1, each batch under a signature from the
//! application's backend) and untrack them (type 2). The polling and the pushes of changed
//! items belong to `crate::poll`; this module checks what the client may do and answers.
//!
//! A shared-poll subscription does not join the hub: its items go to exactly the
//! connections tracking their keys, never to the channel as a whole. Shared-poll channels
//! take shared-poll subscriptions only, and other channels refuse them, each with error 108.

use std::sync::Arc;

use super::{expiry, ttl_of, ClientSession, Granted, Subscription};
use crate::channels::ChannelRules;
use crate::error::ClientError;
use crate::keyed::check_key;
use crate::node::encode_frame;
use crate::poll::signature::{self, SignatureError};
use crate::publication::ClientInfo;
use crate::wire::{
    ExpiryResult, Reply, SubRefreshRequest, SubscribeRequest, SubscribeResult,
    SUBSCRIPTION_SHARED_POLL, SUB_REFRESH_TRACK, SUB_REFRESH_UNTRACK,
};

/// Whether a subscribe of `kind` fits a channel under `rules`: shared-poll subscriptions to
/// shared-poll channels only, and only those there.
pub(super) fn kind_fits(rules: &ChannelRules, kind: i32) -> Result<(), ClientError> {
    match (
        rules.shared_poll.is_some(),
        kind == SUBSCRIPTION_SHARED_POLL,
    ) {
        (true, false) => Err(ClientError::IsSharedPoll),
        (false, true) => Err(ClientError::NotSharedPoll),
        _ => Ok(()),
    }
}

impl ClientSession {
    /// A granted shared-poll subscribe: registers the connection with the channel's poll and
    /// answers with the epoch its versions belong to.
    pub(super) fn shared_poll_subscribe(
        &mut self,
        id: u32,
        request: SubscribeRequest,
        rules: ChannelRules,
        granted: Granted,
    ) {
        let channel = request.channel.as_str();
        let Some(poll_rules) = rules.shared_poll.clone() else {
            return self.reply_error(id, ClientError::NotSharedPoll);
        };
        let info = Arc::new(ClientInfo::new(
            &self.client_id,
            self.conn.user(),
            self.conn_info.as_ref(),
            granted.chan_info.as_ref(),
        ));
        self.generations += 1;
        self.subscriptions.insert(
            channel.into(),
            Subscription {
                rules,
                info,
                expires_at: granted.expires_at,
                generation: self.generations,
                pending: None,
                by_hook: granted.renewed_by_hook,
                shared_poll: true,
            },
        );
        self.conn.set_subscription_count(self.subscriptions.len());
        let epoch = self.state.polls.subscribe(channel, &poll_rules, &self.conn);
        self.track_subscription_expiry();
        let told = if granted.renewed_by_hook {
            ExpiryResult::default()
        } else {
            expiry(granted.expires_at)
        };
        tracing::debug!(
            event = "subscribe",
            conn_id = self.conn.id,
            channel,
            kind = "shared_poll",
            "subscribed"
        );
        if id != 0 {
            self.send(&Reply {
                id,
                subscribe: Some(SubscribeResult {
                    expires: told.expires,
                    ttl: told.ttl,
                    epoch,
                    ..SubscribeResult::default()
                }),
                ..Reply::default()
            });
        }
    }

    /// `sub_refresh` of type track or untrack: answers `id` itself.
    pub(super) fn shared_poll_refresh(&mut self, id: u32, request: SubRefreshRequest) {
        if let Err(error) = self.shared_poll_refresh_checked(id, request) {
            self.reply_error(id, error);
        }
    }

    fn shared_poll_refresh_checked(
        &mut self,
        id: u32,
        request: SubRefreshRequest,
    ) -> Result<(), ClientError> {
        let channel = request.channel.as_str();
        let rules = self.state.channels().rules(channel)?;
        if rules.shared_poll.is_none() {
            return Err(ClientError::NotSharedPoll);
        }
        // Tracking is for subscribers: the subscribe checked who may read the channel.
        if !self
            .subscriptions
            .get(channel)
            .is_some_and(|s| s.shared_poll)
        {
            return Err(ClientError::PermissionDenied);
        }
        let polls = Arc::clone(&self.state.polls);
        match request.kind {
            SUB_REFRESH_UNTRACK => {
                polls.untrack(channel, self.conn.id, &request.untrack);
                if id != 0 {
                    self.send(&Reply {
                        id,
                        sub_refresh: Some(ExpiryResult::default()),
                        ..Reply::default()
                    });
                }
                Ok(())
            }
            SUB_REFRESH_TRACK => {
                let now = crate::auth::unix_now();
                let mut earliest: Option<u64> = None;
                let mut track = Vec::new();
                for batch in &request.track {
                    for item in &batch.items {
                        check_key(&item.key).map_err(|_| ClientError::BadRequest)?;
                    }
                    let signed = signature::verify(
                        polls.secret(),
                        &batch.signature,
                        self.conn.user(),
                        channel,
                        batch.items.iter().map(|i| i.key.as_str()),
                        now,
                    )
                    .map_err(|error| {
                        tracing::info!(event = "track_refused", conn_id = self.conn.id, channel, %error, "shared-poll track refused");
                        match error {
                            SignatureError::Invalid => ClientError::BadTrackSignature,
                            SignatureError::Expired => ClientError::TokenExpired,
                        }
                    })?;
                    earliest =
                        Some(earliest.map_or(signed.expires_at, |e| e.min(signed.expires_at)));
                    track.extend(
                        batch
                            .items
                            .iter()
                            .map(|i| (i.key.clone(), i.version, signed.expires_at)),
                    );
                }
                let (conn, encoding) = (Arc::clone(&self.conn), self.encoding());
                polls.track(
                    self.state.hooks.as_ref(),
                    channel,
                    self.conn.id,
                    &request.untrack,
                    &track,
                    |tracked| {
                        if id == 0 {
                            return;
                        }
                        let result = ExpiryResult {
                            expires: earliest.is_some(),
                            ttl: earliest.map_or(0, ttl_of),
                            items: tracked.items,
                        };
                        let reply = Reply {
                            id,
                            sub_refresh: Some(result),
                            ..Reply::default()
                        };
                        conn.push(&encode_frame(&reply, encoding));
                    },
                )
            }
            _ => Err(ClientError::BadRequest),
        }
    }
}
