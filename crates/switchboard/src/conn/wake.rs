//! A connection task's wake flag ([`TaskWake`]), kept apart from the connection's handle
//! because it is the one piece of it on the fan-out's hot path that touches the task's waker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// Wakes a connection's task when there is something for it: a flag and the task's waker.
///
/// Every publication wakes each subscriber's task, so this is on the hot path. Unlike
/// `tokio::sync::Notify`, waiting here joins no waiter list that must be left again (under a
/// lock) each time the task's loop turns for another reason; a wake finds the flag already set
/// and costs one atomic swap when the task has not run since the last one.
#[derive(Default)]
pub(super) struct TaskWake {
    woken: AtomicBool,
    waker: AtomicWaker,
}

impl TaskWake {
    pub(super) fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Ready (and consumed) once a wake has happened since the last time it was ready.
    pub(super) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A wake between the swap and the registration found no waker; see its flag now.
        if self.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
