//! A channel worker: on a remote broker, everything that happens to one channel on this node
//! happens in order in one worker (channels are spread over a few by hash): listening and
//! unlistening in the broker, deliveries, joins and position checks. Its maps are its own, so
//! nothing here takes a lock.
//!
//! Why in order: a join subscribes in the broker first, then reads the stream, then joins the
//! hub, all before the worker takes the next delivery. A publication that reached the worker
//! before the join is in what the join read; one that comes after is delivered to the joined
//! subscriber, unless it was already in what the join read (the hub skips offsets at or below
//! the subscriber's `since`). So a recovering subscriber loses nothing and gets nothing twice.
//!
//! Pub/sub is at most once, so the worker tracks each channel's last delivered offset and
//! epoch: a jump, an epoch change, or a stream top that stays ahead of what was delivered
//! across two position checks (at once after the broker link comes back) means publications
//! were missed, and the channel's recovering subscribers are closed with 3010 so that their
//! SDKs reconnect and recover from history.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{JoinReply, JoinRequest, Node, TicketState};
use crate::broker::memory::StreamState;
use crate::broker::{HistoryPage, HistoryRange, Position};
use crate::conn::ServerCommand;
use crate::error::{ClientError, CloseReason};
use crate::history::Unrecoverable;
use crate::kind::Door;
use crate::publication::Publication;

/// What a channel worker is asked to do.
pub(super) enum Work {
    /// A publication from the broker.
    Deliver {
        channel: Box<str>,
        publication: Arc<Publication>,
        epoch: Box<str>,
        /// When the broker's link handed it to the node (`switchboard_delivery_seconds`).
        received: Instant,
    },
    /// A connection joins.
    Join {
        request: Box<JoinRequest>,
        reply: JoinReply,
    },
    /// Listen to the channel in the broker (a plain door's member arrived).
    Listen { channel: Box<str> },
    /// Stop listening, if nobody arrived meanwhile.
    Unlisten { channel: Box<str> },
    /// Read every tracked channel's stream top from the broker (off the worker) and send
    /// back a `Check` for each.
    CheckAll { strict: bool },
    /// The broker's stream top for the channel, to compare with what was delivered;
    /// `strict`: a difference is a gap at once (after the link came back).
    Check {
        channel: Box<str>,
        top: Position,
        strict: bool,
    },
}

impl Work {
    /// The channel it is about (which decides the worker).
    pub(super) fn channel(&self) -> &str {
        match self {
            Work::Deliver { channel, .. }
            | Work::Listen { channel }
            | Work::Unlisten { channel }
            | Work::Check { channel, .. } => channel,
            Work::Join { request, .. } => &request.channel,
            // Sent to every worker directly, never routed by channel.
            Work::CheckAll { .. } => "",
        }
    }
}

/// A delivery held for `node.delivery_batch_delay`.
struct Held {
    channel: Box<str>,
    publication: Arc<Publication>,
    epoch: Box<str>,
    received: Instant,
}

/// What was delivered of one channel.
struct Tracked {
    epoch: Box<str>,
    offset: u64,
    /// A stream top seen ahead of `offset` at the last check.
    suspect: Option<u64>,
}

/// Why a channel's subscribers are made to recover.
#[derive(Debug, Clone, Copy)]
enum Cause {
    Gap,
    Epoch,
    PositionCheck,
}

impl Cause {
    fn label(self) -> &'static str {
        match self {
            Cause::Gap => "gap",
            Cause::Epoch => "epoch",
            Cause::PositionCheck => "position_check",
        }
    }
}

/// One channel worker and its channels.
pub(super) struct ChannelWorker {
    node: Arc<Node>,
    index: usize,
    listened: HashSet<Box<str>>,
    tracked: HashMap<Box<str>, Tracked>,
}

impl ChannelWorker {
    /// Worker number `index` of `node`.
    pub(super) fn new(node: Arc<Node>, index: usize) -> Self {
        ChannelWorker {
            node,
            index,
            listened: HashSet::new(),
            tracked: HashMap::new(),
        }
    }

    /// Takes work until shutdown.
    ///
    /// With `node.delivery_batch_delay` set, a delivery is held until that long after the
    /// first one held, and the held ones are fanned out together: each subscriber's writer
    /// then finds several publications to send in one write. Any other work releases what is
    /// held first, so the order above (a join after the deliveries before it) stays.
    pub(super) async fn run(mut self, mut work: mpsc::Receiver<Work>, shutdown: CancellationToken) {
        let delay = self.node.settings.delivery_batch_delay;
        let mut held: Vec<Held> = Vec::new();
        let hold_until = tokio::time::sleep(delay);
        tokio::pin!(hold_until);
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                () = &mut hold_until, if !held.is_empty() => {
                    self.release(&mut held);
                    continue;
                }
                next = work.recv() => next,
            };
            let Some(next) = next else { return };
            match next {
                Work::Deliver {
                    channel,
                    publication,
                    epoch,
                    received,
                } if !delay.is_zero() => {
                    if held.is_empty() {
                        hold_until
                            .as_mut()
                            .reset(tokio::time::Instant::now() + delay);
                    }
                    held.push(Held {
                        channel,
                        publication,
                        epoch,
                        received,
                    });
                }
                next => {
                    self.release(&mut held);
                    self.handle(next).await;
                }
            }
        }
    }

    /// Fans out the held deliveries, in the order they came.
    fn release(&mut self, held: &mut Vec<Held>) {
        for delivery in held.drain(..) {
            self.deliver(
                &delivery.channel,
                &delivery.publication,
                &delivery.epoch,
                delivery.received,
            );
        }
    }

    async fn handle(&mut self, work: Work) {
        match work {
            Work::Deliver {
                channel,
                publication,
                epoch,
                received,
            } => self.deliver(&channel, &publication, &epoch, received),
            Work::Join { request, reply } => self.join(*request, reply).await,
            Work::Listen { channel } => {
                if self.ensure_listening(&channel).await.is_err() {
                    tracing::warn!(event = "listen_failed", channel = %channel, "could not listen to a channel in the broker; its members get nothing until the link is back");
                }
            }
            Work::Unlisten { channel } => self.unlisten(&channel).await,
            Work::Check {
                channel,
                top,
                strict,
            } => self.check(&channel, &top, strict),
            Work::CheckAll { strict } => self.read_tops(strict),
        }
    }

    /// Reads the stream top of every tracked channel on a task of its own, so deliveries go
    /// on meanwhile, and sends each back to this worker as a `Check`. The read is
    /// [`Broker::keep_stream`](crate::broker::Broker::keep_stream): it keeps alive the
    /// never-published streams whose epoch this node's subscribers hold.
    fn read_tops(&self, strict: bool) {
        let Some(remote) = &self.node.remote else {
            return;
        };
        let channels: Vec<Box<str>> = self.tracked.keys().cloned().collect();
        if channels.is_empty() {
            return;
        }
        let node = Arc::clone(&self.node);
        let sender = remote.workers[self.index].clone();
        tokio::spawn(async move {
            for channel in channels {
                // Reading the top also extends a stream a subscribe here started and nobody
                // published to yet: its epoch must outlive this node's subscribers.
                let Ok(top) = node.keep_stream(&channel).await else {
                    // The broker is away: the check after the link is back is strict.
                    return;
                };
                let check = Work::Check {
                    channel,
                    top,
                    strict,
                };
                if sender.send(check).await.is_err() {
                    return;
                }
            }
        });
    }

    async fn ensure_listening(&mut self, channel: &str) -> Result<(), ClientError> {
        if self.listened.contains(channel) {
            return Ok(());
        }
        let Some(remote) = &self.node.remote else {
            return Ok(());
        };
        self.node
            .call(remote.broker.subscribe(channel))
            .await
            .map_err(|_| ClientError::Unavailable)?;
        self.listened.insert(channel.into());
        Ok(())
    }

    async fn unlisten(&mut self, channel: &str) {
        if self.node.listeners(channel) > 0 || !self.listened.remove(channel) {
            return;
        }
        self.tracked.remove(channel);
        let Some(remote) = &self.node.remote else {
            return;
        };
        if let Err(error) = self.node.call(remote.broker.unsubscribe(channel)).await {
            // Deliveries for a channel nobody here subscribes to find no hub entry; harmless.
            tracing::warn!(event = "unlisten_failed", channel, %error);
        }
    }

    fn deliver(
        &mut self,
        channel: &str,
        publication: &Arc<Publication>,
        epoch: &str,
        received: Instant,
    ) {
        let offset = publication.offset;
        if offset != 0 {
            match self.tracked.get_mut(channel) {
                None => {
                    self.tracked.insert(
                        channel.into(),
                        Tracked {
                            epoch: epoch.into(),
                            offset,
                            suspect: None,
                        },
                    );
                }
                Some(tracked) => {
                    let same_epoch = tracked.epoch.is_empty() || *tracked.epoch == *epoch;
                    if same_epoch && offset <= tracked.offset {
                        return; // already delivered (or in a joiner's reply)
                    }
                    let cause = if !same_epoch {
                        Some(Cause::Epoch)
                    } else if offset != tracked.offset + 1 {
                        Some(Cause::Gap)
                    } else {
                        None
                    };
                    tracked.epoch = epoch.into();
                    tracked.offset = offset;
                    if let Some(cause) = cause {
                        self.insufficient(channel, cause);
                    }
                }
            }
        }
        self.node.fan_out(channel, publication);
        self.node
            .metrics
            .delivery_seconds
            .observe(received.elapsed().as_secs_f64());
    }

    /// Closes the channel's recovering subscribers here with 3010: they reconnect and
    /// recover from history what this node missed. A map's subscribers always are: a missed
    /// change would leave a wrong value under its key for good.
    fn insufficient(&self, channel: &str, cause: Cause) {
        let recovering = self
            .node
            .channels
            .rules(channel)
            .is_ok_and(|rules| (rules.recover || rules.map) && rules.keeps_history());
        if !recovering {
            return;
        }
        let mut closed = 0;
        self.node.hub.for_each_subscriber(channel, |conn| {
            if conn.door == Door::Protocol {
                conn.close(CloseReason::InsufficientState);
                closed += 1;
            }
        });
        self.node
            .metrics
            .broker_gaps
            .with_label_values(&[cause.label()])
            .inc();
        tracing::warn!(
            event = "insufficient_state",
            channel,
            cause = cause.label(),
            subscribers = closed,
            "publications were missed on this node; its subscribers reconnect and recover (3010)"
        );
    }

    async fn join(&mut self, request: JoinRequest, reply: JoinReply) {
        let found = self.read_stream(&request).await;
        let since = match &found {
            Ok(StreamState {
                position: Some(position),
                ..
            }) => {
                let tracked = self
                    .tracked
                    .entry(request.channel.clone())
                    .or_insert_with(|| Tracked {
                        epoch: position.epoch.clone(),
                        offset: position.offset,
                        suspect: None,
                    });
                // The stream is in an epoch this node's deliveries have not shown yet (they are
                // still on their way, e.g. after Redis came back empty). The subscribers here
                // are behind it and are told now; the joiner, which starts in the new epoch, is
                // then not closed (3010) by those deliveries when they arrive.
                if !tracked.epoch.is_empty() && tracked.epoch != position.epoch {
                    tracked.epoch = position.epoch.clone();
                    tracked.offset = position.offset;
                    tracked.suspect = None;
                    self.insufficient(&request.channel, Cause::Epoch);
                }
                position.offset
            }
            _ => 0,
        };
        let mut ticket = super::lock(&request.ticket.0);
        if *ticket == TicketState::Abandoned {
            // The client unsubscribed or went away while the stream was read.
            drop(ticket);
            self.node.release(&request.channel);
            return;
        }
        let failed = found.is_err();
        let joined = reply(found) && !failed;
        if joined {
            self.node.hub.subscribe_filtered(
                &request.channel,
                &request.conn,
                since,
                request.filter.clone(),
                request.delta_mode(since),
            );
            self.node.joined(&request);
            *ticket = TicketState::Joined;
        } else {
            *ticket = TicketState::Failed;
            self.node.release(&request.channel);
        }
        drop(ticket);
        // `Joined` is always taken (it is not an API request); a closing connection drops it.
        let _ = request.conn.request(ServerCommand::Joined {
            channel: request.channel.clone(),
            generation: request.generation,
            joined,
        });
    }

    /// Listens to the channel, then reads its stream: what a joining connection finds.
    async fn read_stream(&mut self, request: &JoinRequest) -> Result<StreamState, ClientError> {
        self.ensure_listening(&request.channel).await?;
        if !request.rules.keeps_history() {
            return Ok(StreamState {
                position: None,
                recovery: request.recover_from.as_ref().map(|_| Err(Unrecoverable)),
            });
        }
        let Some((offset, epoch)) = &request.recover_from else {
            let position = self.node.stream_position(&request.channel).await?;
            return Ok(StreamState {
                position: Some(position),
                recovery: None,
            });
        };
        let range = HistoryRange {
            since: Some(*offset),
            limit: None,
            reverse: false,
        };
        let mut page = self.node.history(&request.channel, &range).await?;
        let recovery = recover(*offset, epoch, &page);
        if page.position.epoch.is_empty() {
            // No stream: start one, so this subscriber's epoch means something later.
            page.position = self.node.stream_position(&request.channel).await?;
        }
        Ok(StreamState {
            position: Some(page.position),
            recovery: Some(recovery),
        })
    }

    fn check(&mut self, channel: &str, top: &Position, strict: bool) {
        let Some(tracked) = self.tracked.get_mut(channel) else {
            return;
        };
        if top.epoch.is_empty() {
            // The stream is gone (expired, or the broker lost it): the next publication
            // starts a new epoch, which `deliver` reports.
            return;
        }
        if !tracked.epoch.is_empty() && tracked.epoch != top.epoch {
            tracked.epoch = top.epoch.clone();
            tracked.offset = top.offset;
            tracked.suspect = None;
            self.insufficient(channel, Cause::Epoch);
            return;
        }
        if top.offset <= tracked.offset {
            tracked.suspect = None;
            return;
        }
        let missed = strict || tracked.suspect.is_some_and(|seen| seen > tracked.offset);
        if missed {
            tracked.epoch = top.epoch.clone();
            tracked.offset = top.offset;
            tracked.suspect = None;
            self.insufficient(channel, Cause::PositionCheck);
        } else {
            // In flight, perhaps: a gap only if the next check finds it still missing.
            tracked.suspect = Some(top.offset);
        }
    }
}

/// What a recovering subscriber missed since `offset` of `epoch`, from a stream read after
/// that offset, or why it cannot be had.
pub(crate) fn recover(
    offset: u64,
    epoch: &str,
    page: &HistoryPage,
) -> Result<Vec<Arc<Publication>>, Unrecoverable> {
    let position = &page.position;
    if position.epoch.is_empty() {
        // No stream: nothing was ever missed only if nothing was ever seen.
        return if offset == 0 || epoch.is_empty() {
            Ok(Vec::new())
        } else {
            Err(Unrecoverable)
        };
    }
    if (!epoch.is_empty() && epoch != &*position.epoch) || offset > position.offset {
        return Err(Unrecoverable);
    }
    let missed = position.offset - offset;
    let contiguous = page.publications.len() as u64 == missed
        && page
            .publications
            .iter()
            .zip(offset + 1..)
            .all(|(publication, expected)| publication.offset == expected);
    if contiguous {
        Ok(page.publications.clone())
    } else {
        Err(Unrecoverable)
    }
}

/// Asks every worker to check its channels' positions against the broker.
pub(super) fn check_all(node: &Arc<Node>, strict: bool) {
    if let Some(remote) = &node.remote {
        for sender in remote.workers.iter() {
            // A full queue skips this round; the next check comes within an interval.
            let _ = sender.try_send(Work::CheckAll { strict });
        }
    }
}

/// Checks positions every `node.position_check_interval`.
pub(super) async fn position_check_loop(node: Arc<Node>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(node.settings.position_check_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        check_all(&node, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn page(epoch: &str, top: u64, kept: &[u64]) -> HistoryPage {
        HistoryPage {
            publications: kept
                .iter()
                .copied()
                .map(|offset| {
                    Arc::new(Publication::json(Bytes::from_static(b"1")).positioned(offset, None))
                })
                .collect(),
            position: Position {
                offset: top,
                epoch: epoch.into(),
            },
        }
    }

    fn offsets(found: Result<Vec<Arc<Publication>>, Unrecoverable>) -> Option<Vec<u64>> {
        found.ok().map(|all| all.iter().map(|p| p.offset).collect())
    }

    #[test]
    fn a_contiguous_read_after_the_offset_recovers() {
        assert_eq!(
            offsets(recover(2, "e", &page("e", 5, &[3, 4, 5]))),
            Some(vec![3, 4, 5])
        );
        assert_eq!(offsets(recover(5, "e", &page("e", 5, &[]))), Some(vec![]));
        assert_eq!(
            offsets(recover(2, "", &page("e", 4, &[3, 4]))),
            Some(vec![3, 4])
        );
    }

    #[test]
    fn a_hole_another_epoch_or_a_future_offset_does_not() {
        assert_eq!(
            offsets(recover(1, "e", &page("e", 5, &[3, 4, 5]))),
            None,
            "2 is gone"
        );
        assert_eq!(offsets(recover(2, "old", &page("e", 5, &[3, 4, 5]))), None);
        assert_eq!(offsets(recover(9, "e", &page("e", 5, &[]))), None);
    }

    #[test]
    fn a_lost_stream_is_recovered_only_by_one_who_saw_nothing() {
        assert_eq!(offsets(recover(0, "", &page("", 0, &[]))), Some(vec![]));
        assert_eq!(offsets(recover(3, "e", &page("", 0, &[]))), None);
    }
}
