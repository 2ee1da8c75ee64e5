//! Where log lines go: standard error, written in batches rather than one `write(2)` a line.
//!
//! Every connection logs a line when it opens and one when it closes. Written one by one, those
//! two syscalls were about a twelfth of the server's CPU per handshake (`perf`, see
//! docs/benchmarks.md). Here lines are appended to one buffer in memory and written together:
//! when the buffer passes [`BATCH_BYTES`], every [`FLUSH_EVERY`] by a small thread, at once
//! for a line at `WARN` or `ERROR`, and on exit or panic ([`flush`]). An `INFO` line therefore
//! reaches standard error at most [`FLUSH_EVERY`] late, and a `SIGKILL` can lose that much.
//! Lines keep their order: whoever writes a batch out holds `output` while taking and writing it.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// A batch is written once it holds this much.
const BATCH_BYTES: usize = 64 * 1024;
/// The longest an `INFO` line waits in memory.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// The buffered standard error of this process (set by [`BufferedStderr::install`]).
static INSTALLED: OnceLock<Arc<Shared>> = OnceLock::new();

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Held while a batch is taken and written, so batches reach stderr in order.
    output: Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a log lock leaves bytes, not broken state; keep logging.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn new() -> Self {
        Shared {
            pending: Mutex::new(Vec::new()),
            output: Mutex::new(()),
        }
    }

    fn write_out(&self) {
        let _output = lock(&self.output);
        let batch = std::mem::take(&mut *lock(&self.pending));
        if !batch.is_empty() {
            // Nowhere to report a failed write to standard error; the line is dropped.
            let _ = io::stderr().lock().write_all(&batch);
        }
    }
}

/// A `MakeWriter` for `tracing_subscriber::fmt` that batches lines to standard error.
#[derive(Clone)]
pub struct BufferedStderr {
    shared: Arc<Shared>,
}

impl BufferedStderr {
    /// Makes the process's buffered standard error, starts its flushing thread and makes a
    /// panic write out what is buffered before the panic message.
    pub fn install() -> io::Result<Self> {
        let shared = Arc::clone(INSTALLED.get_or_init(|| Arc::new(Shared::new())));
        let flusher = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                flusher.write_out();
            })?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            flush();
            previous(info);
        }));
        Ok(BufferedStderr { shared })
    }
}

/// Writes out every buffered line now (before exit, and before printing anything else to
/// standard error).
pub fn flush() {
    if let Some(shared) = INSTALLED.get() {
        shared.write_out();
    }
}

/// One event's writer: `tracing_subscriber` writes a whole formatted line through it.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    /// A `WARN` or `ERROR` line: written out as soon as it is complete.
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut pending = lock(&self.shared.pending);
        pending.extend_from_slice(bytes);
        let full = pending.len() >= BATCH_BYTES;
        drop(pending);
        if full {
            self.shared.write_out();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if self.urgent {
            self.shared.write_out();
        }
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            // `Level` orders by verbosity: WARN and ERROR are the ones at or below WARN.
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> BufferedStderr {
        BufferedStderr {
            shared: Arc::new(Shared::new()),
        }
    }

    #[test]
    fn an_info_line_waits_in_the_buffer() {
        let stderr = shared();
        let mut writer = stderr.make_writer();
        writer.write_all(b"{\"level\":\"INFO\"}\n").unwrap();
        drop(writer);
        assert_eq!(
            &*lock(&stderr.shared.pending),
            b"{\"level\":\"INFO\"}\n".as_slice()
        );
    }

    #[test]
    fn a_warn_line_is_written_out_with_everything_before_it() {
        let stderr = shared();
        stderr.make_writer().write_all(b"first\n").unwrap();
        let mut writer = LineWriter {
            shared: &stderr.shared,
            urgent: true,
        };
        writer.write_all(b"second\n").unwrap();
        drop(writer);
        assert!(lock(&stderr.shared.pending).is_empty());
    }

    #[test]
    fn a_full_batch_is_written_out_without_waiting() {
        let stderr = shared();
        let line = vec![b'x'; BATCH_BYTES / 4];
        for _ in 0..3 {
            stderr.make_writer().write_all(&line).unwrap();
        }
        assert_eq!(lock(&stderr.shared.pending).len(), 3 * line.len());
        stderr.make_writer().write_all(&line).unwrap();
        assert!(lock(&stderr.shared.pending).is_empty());
    }

    #[test]
    fn levels_order_by_verbosity() {
        assert!(Level::ERROR <= Level::WARN);
        assert!(Level::INFO > Level::WARN);
    }
}
