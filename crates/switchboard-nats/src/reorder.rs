//! Kept publications put back in offset order before a node sees them.
//!
//! JetStream stores a channel's publications in offset order, but its republish of two
//! messages stored at nearly the same moment (two nodes publishing to one channel) can reach
//! subscribers the other way round: with nats-server 2.9 under load every node was seen to get
//! offset n + 1 before n, at the same instant. A node takes a skipped offset for a lost one and
//! makes the channel's subscribers reconnect and recover (3010), so each channel's delivery
//! task puts the stream back in order here: a publication that arrives ahead of the next
//! offset is held until the ones before it arrive, for at most [`REORDER_WINDOW`]; then what
//! is held goes on in offset order and the node finds the gap as before (a publication the
//! server really dropped, e.g. to a slow consumer, costs that much delay and nothing else).
//! Only out-of-order arrivals wait; in-order ones pass straight through.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// How long a publication that arrived ahead of its turn waits for the ones before it.
pub const REORDER_WINDOW: Duration = Duration::from_millis(250);

/// At most this many publications are held; one more releases them all (a burst that far
/// ahead is a real gap, not a reordering).
const MAX_HELD: usize = 1024;

/// One channel's kept publications, by epoch and offset, on their way to the node.
pub struct Reorder<T> {
    /// The epoch and offset of the last one handed on.
    last: Option<(Box<str>, u64)>,
    /// Those that arrived ahead of `last + 1`, in the epoch of `last`.
    held: BTreeMap<u64, T>,
    /// When the oldest held one arrived.
    since: Option<Instant>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder {
            last: None,
            held: BTreeMap::new(),
            since: None,
        }
    }
}

impl<T> Reorder<T> {
    /// Takes `item` (offset `offset` of `epoch`, arrived at `now`) and pushes to `out`, in
    /// order, what may go on now: nothing (a duplicate, or held), it, or it and the held ones
    /// it was missing.
    pub fn accept(&mut self, epoch: &str, offset: u64, item: T, now: Instant, out: &mut Vec<T>) {
        let Some((last_epoch, last)) = &mut self.last else {
            // The first one this subscription sees: nothing to compare with.
            self.last = Some((epoch.into(), offset));
            out.push(item);
            return;
        };
        if **last_epoch != *epoch {
            // A new epoch: what was held belongs to the old one and goes first.
            self.release(out);
            self.last = Some((epoch.into(), offset));
            out.push(item);
            return;
        }
        if offset <= *last {
            return; // already handed on
        }
        if offset == *last + 1 {
            *last = offset;
            out.push(item);
            while let Some(next) = self.held.remove(&(*last + 1)) {
                *last += 1;
                out.push(next);
            }
            if self.held.is_empty() {
                self.since = None;
            } else {
                // Those still held wait for another missing one: their wait starts again.
                self.since = Some(now);
            }
            return;
        }
        self.held.insert(offset, item);
        self.since.get_or_insert(now);
        if self.held.len() > MAX_HELD {
            self.release(out);
        }
    }

    /// When the held publications stop waiting, if any are held.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + REORDER_WINDOW)
    }

    /// Hands on everything held, in offset order, missing ones or not (the window passed).
    pub fn release(&mut self, out: &mut Vec<T>) {
        let held = std::mem::take(&mut self.held);
        if let (Some((_, last)), Some(&top)) = (&mut self.last, held.keys().next_back()) {
            *last = top;
        }
        out.extend(held.into_values());
        self.since = None;
    }

    /// How many are held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(reorder: &mut Reorder<u64>, epoch: &str, offsets: &[u64]) -> Vec<u64> {
        let mut out = Vec::new();
        for &offset in offsets {
            reorder.accept(epoch, offset, offset, Instant::now(), &mut out);
        }
        out
    }

    #[test]
    fn in_order_publications_pass_straight_through() {
        let mut reorder = Reorder::default();
        assert_eq!(feed(&mut reorder, "e", &[4, 5, 6]), vec![4, 5, 6]);
        assert_eq!(reorder.deadline(), None);
    }

    #[test]
    fn one_that_arrives_early_waits_for_the_one_before_it() {
        let mut reorder = Reorder::default();
        assert_eq!(feed(&mut reorder, "e", &[1, 3]), vec![1]);
        assert_eq!(reorder.held(), 1);
        assert!(reorder.deadline().is_some());
        assert_eq!(feed(&mut reorder, "e", &[2]), vec![2, 3]);
        assert_eq!(reorder.deadline(), None);
        assert_eq!(feed(&mut reorder, "e", &[4]), vec![4]);
    }

    #[test]
    fn duplicates_and_late_copies_are_dropped() {
        let mut reorder = Reorder::default();
        assert_eq!(feed(&mut reorder, "e", &[1, 2, 2, 1, 3]), vec![1, 2, 3]);
    }

    #[test]
    fn after_the_window_what_is_held_goes_on_in_order_and_the_gap_stays() {
        let mut reorder = Reorder::default();
        assert_eq!(feed(&mut reorder, "e", &[1, 5, 3, 4]), vec![1]);
        let mut out = Vec::new();
        reorder.release(&mut out);
        assert_eq!(
            out,
            vec![3, 4, 5],
            "2 never came: the node sees 1 then 3 and finds the gap"
        );
        assert_eq!(
            feed(&mut reorder, "e", &[2, 6]),
            vec![6],
            "2 is too late now"
        );
    }

    #[test]
    fn a_new_epoch_releases_the_old_one_first() {
        let mut reorder = Reorder::default();
        assert_eq!(feed(&mut reorder, "old", &[1, 3]), vec![1]);
        assert_eq!(feed(&mut reorder, "new", &[1, 2]), vec![3, 1, 2]);
    }

    #[test]
    fn a_burst_too_far_ahead_is_not_held_without_bound() {
        let mut reorder = Reorder::default();
        let mut offsets = vec![1];
        offsets.extend(3..=(MAX_HELD as u64 + 3));
        let out = feed(&mut reorder, "e", &offsets);
        assert_eq!(out.len(), MAX_HELD + 2);
        assert_eq!(reorder.held(), 0);
    }
}
