//! The kernel's floor: what putting frames on loopback TCP costs the sending process when no
//! gateway is involved at all. One thread writes the same bytes to N connected sockets, in
//! bursts at `--rate` per second (or back to back), `--frames-per-write` frames per `write`;
//! another thread on another core drains them with epoll, the way a load generator does.
//!
//! On loopback Linux charges the receiving side's TCP processing and the reader's wake-up to
//! the writer, so the writer's CPU per delivery here is the least any server can spend per
//! delivery in the fan-out scenarios of this machine, whatever its language: the figure to
//! hold the fan-out goals against (docs/benchmarks.md, "The kernel's floor").

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mio::{Events, Interest, Poll, Token};

use crate::report::Report;
use crate::stats;

/// What to run (the `floor` subcommand's options).
#[derive(Debug, Clone, clap::Args)]
pub struct Params {
    /// Connected socket pairs.
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Bursts per second, each writing to every socket once (default: back to back).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Frames carried by each write (a gateway's batching).
    #[arg(long, default_value_t = 1)]
    pub frames_per_write: usize,
    /// Bytes per frame (102: a 100-byte payload with its WebSocket header).
    #[arg(long = "frame-bytes", default_value_t = 102)]
    pub frame_bytes: usize,
    /// How long the writer writes.
    #[arg(long, default_value = "10s", value_parser = crate::report::parse_duration)]
    pub duration: Duration,
    /// Pin the writer thread to this core.
    #[arg(long)]
    pub writer_cpu: Option<usize>,
    /// Pin the reader thread to this core.
    #[arg(long)]
    pub reader_cpu: Option<usize>,
}

/// The reader's side of the run.
struct Drained {
    bytes: u64,
    cpu_ticks: u64,
}

fn pin(cpu: Option<usize>) -> Result<()> {
    if let Some(cpu) = cpu {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).with_context(|| format!("cpu {cpu}"))?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .with_context(|| format!("pinning a thread to cpu {cpu}"))?;
    }
    Ok(())
}

/// Drains every socket until `stop` is set and the sockets are quiet.
fn drain(sockets: Vec<TcpStream>, cpu: Option<usize>, stop: &AtomicBool) -> Result<Drained> {
    pin(cpu)?;
    let start_ticks = stats::thread_cpu_ticks()?;
    let mut poll = Poll::new()?;
    let mut streams = Vec::with_capacity(sockets.len());
    for (i, socket) in sockets.into_iter().enumerate() {
        socket.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(socket);
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)?;
        streams.push(stream);
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    let mut quiet_since: Option<Instant> = None;
    loop {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        if events.is_empty() {
            let stopping = stop.load(Ordering::Acquire);
            match quiet_since {
                Some(since) if stopping && since.elapsed() >= Duration::from_millis(200) => break,
                None if stopping => quiet_since = Some(Instant::now()),
                _ => {}
            }
            continue;
        }
        quiet_since = None;
        for event in events.iter() {
            let Some(stream) = streams.get_mut(event.token().0) else {
                continue;
            };
            // Edge-triggered: read until the socket is empty.
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => bytes += n as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("reading"),
                }
            }
        }
    }
    Ok(Drained {
        bytes,
        cpu_ticks: stats::thread_cpu_ticks()? - start_ticks,
    })
}

/// Runs the floor measurement and reports the writer's CPU per delivery and per write.
pub fn run(p: &Params) -> Result<Report> {
    if p.sockets == 0 || p.frames_per_write == 0 || p.frame_bytes == 0 {
        bail!("--sockets, --frames-per-write and --frame-bytes must be at least 1");
    }
    if p.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--rate must be above 0");
    }
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let addr = listener.local_addr()?;
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for _ in 0..p.sockets {
        readers.push(TcpStream::connect(addr).context("connecting (is ulimit -n high enough?)")?);
        let (writer, _) = listener.accept()?;
        // As a gateway's client sockets are: every write goes out at once.
        writer.set_nodelay(true)?;
        writers.push(writer);
    }
    drop(listener);

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        let cpu = p.reader_cpu;
        std::thread::Builder::new()
            .name("floor-reader".into())
            .spawn(move || drain(readers, cpu, &stop))?
    };

    let burst = vec![b'x'; p.frame_bytes * p.frames_per_write];
    let written = (|| -> Result<(u64, u64, Duration)> {
        pin(p.writer_cpu)?;
        let start_ticks = stats::thread_cpu_ticks()?;
        let start = Instant::now();
        let period = p.rate.map(|r| Duration::from_secs_f64(1.0 / r));
        let mut writes = 0u64;
        let mut bursts = 0u32;
        while start.elapsed() < p.duration {
            for socket in &mut writers {
                socket.write_all(&burst).context("writing")?;
                writes += 1;
            }
            bursts += 1;
            if let Some(period) = period {
                let next = start + period * bursts;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
        let ticks = stats::thread_cpu_ticks()? - start_ticks;
        Ok((writes, ticks, start.elapsed()))
    })();
    stop.store(true, Ordering::Release);
    let drained = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    let (writes, writer_ticks, wall) = written?;
    let drained = drained?;
    drop(writers);

    let deliveries = writes * p.frames_per_write as u64;
    let tck = stats::clk_tck() as f64;
    let writer_s = writer_ticks as f64 / tck;
    let reader_s = drained.cpu_ticks as f64 / tck;
    let wall_s = wall.as_secs_f64();
    let mut r = Report::new("floor");
    r.param("sockets", p.sockets as u64);
    r.param(
        "rate",
        p.rate
            .map_or(serde_json::Value::Null, serde_json::Value::from),
    );
    r.param("frames_per_write", p.frames_per_write as u64);
    r.param("frame_bytes", p.frame_bytes as u64);
    r.param("duration_s", p.duration.as_secs_f64());
    r.int("deliveries", "frames delivered", deliveries);
    r.int("writes", "writes", writes);
    r.num(
        "deliveries_per_s",
        "deliveries/s",
        deliveries as f64 / wall_s,
    );
    r.num("wall_s", "wall time (s)", wall_s);
    r.num("writer_cpu_s", "writer CPU (s)", writer_s);
    r.num(
        "writer_cpu_pct",
        "writer CPU (% of one core)",
        100.0 * writer_s / wall_s,
    );
    r.num(
        "writer_cpu_us_per_delivery",
        "writer CPU per delivery (µs): the floor",
        writer_s * 1e6 / deliveries.max(1) as f64,
    );
    r.num(
        "writer_cpu_us_per_write",
        "writer CPU per write (µs)",
        writer_s * 1e6 / writes.max(1) as f64,
    );
    r.num(
        "reader_cpu_pct",
        "reader CPU (% of one core)",
        100.0 * reader_s / wall_s,
    );
    let expected = deliveries * p.frame_bytes as u64;
    r.int("bytes_read", "bytes the reader drained", drained.bytes);
    if drained.bytes != expected {
        r.fail(format!(
            "the reader drained {} bytes of the {expected} written",
            drained.bytes
        ));
    }
    if wall_s < 2.0 {
        r.note("CPU time comes in 1/100 s ticks: runs under a few seconds give rough figures");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_written_is_drained_and_counted() {
        let p = Params {
            sockets: 20,
            rate: Some(50.0),
            frames_per_write: 3,
            frame_bytes: 102,
            duration: Duration::from_millis(300),
            writer_cpu: None,
            reader_cpu: None,
        };
        let report = run(&p).expect("the floor run");
        assert!(report.complete, "the reader missed bytes");
        let deliveries = report
            .get("deliveries")
            .and_then(|v| v.as_u64())
            .expect("deliveries");
        let writes = report
            .get("writes")
            .and_then(|v| v.as_u64())
            .expect("writes");
        assert_eq!(deliveries, 3 * writes);
        assert_eq!(writes % 20, 0, "each burst writes to every socket once");
        assert_eq!(
            report.get("bytes_read").and_then(|v| v.as_u64()),
            Some(deliveries * 102)
        );
    }

    #[test]
    fn a_zero_size_is_refused() {
        let p = Params {
            sockets: 0,
            rate: None,
            frames_per_write: 1,
            frame_bytes: 102,
            duration: Duration::from_millis(10),
            writer_cpu: None,
            reader_cpu: None,
        };
        assert!(run(&p).is_err());
    }
}
