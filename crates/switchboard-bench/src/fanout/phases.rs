//! The fanout run's timeline and send side: warm-up until every member has joined, the
//! measured phase with its publisher tasks (closed-loop window or paced rate), and the drain.

use super::members::{Outlet, Shared, Slot};
use super::{Door, Mode, Params};
use crate::payload::{self, now_ns, KIND_WARMUP};
use crate::report;
use crate::stats::CpuMeter;
use crate::ws::{self, OP_TEXT};
use anyhow::{bail, Context, Result};
use std::rc::Rc;
use std::time::{Duration, Instant};

async fn publish_max(
    sh: Rc<Shared>,
    params: Rc<Params>,
    idx: usize,
    wr: Outlet,
    end: Instant,
    stall: Duration,
) -> Result<()> {
    let (kind, size) = (params.payload, params.size);
    let p = &sh.pubs[idx];
    let k = p.slots.borrow().len() as u64;
    let room_subs = u32::try_from(sh.subs_in_room[p.room])?;
    let (mut body, mut frame) = (Vec::with_capacity(size), Vec::with_capacity(size + 14));
    let base = payload::base();
    for seq in 0u64.. {
        let i = (seq % k) as usize;
        loop {
            let (busy, sent_at) = {
                let s = p.slots.borrow();
                (s[i].busy, s[i].sent_at)
            };
            if !busy {
                break;
            }
            let give_up = base + Duration::from_nanos(sent_at) + stall;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            if now >= give_up {
                p.slots.borrow_mut()[i].busy = false;
                p.stalled.set(p.stalled.get() + 1);
                break;
            }
            tokio::select! {
                _ = p.freed.notified() => {}
                _ = tokio::time::sleep_until(give_up.min(end).into()) => {}
            }
        }
        if Instant::now() >= end {
            return Ok(());
        }
        let ts = now_ns();
        kind.write(&mut body, size, ts, idx as u32, seq);
        params.encode_publication(p.room, &body, &mut frame);
        p.slots.borrow_mut()[i] = Slot {
            seq,
            remaining: room_subs,
            busy: true,
            sent_at: ts,
        };
        p.sent.set(p.sent.get() + 1);
        wr.send(&frame).await?;
    }
    Ok(())
}

async fn publish_rate(
    sh: Rc<Shared>,
    params: Rc<Params>,
    idx: usize,
    wr: Outlet,
    first: Instant,
    end: Instant,
    every: Duration,
) -> Result<()> {
    let (kind, size) = (params.payload, params.size);
    let p = &sh.pubs[idx];
    let (mut body, mut frame) = (Vec::with_capacity(size), Vec::with_capacity(size + 14));
    let mut next = first;
    for seq in 0u64.. {
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        kind.write(&mut body, size, now_ns(), idx as u32, seq);
        params.encode_publication(p.room, &body, &mut frame);
        p.sent.set(p.sent.get() + 1);
        wr.send(&frame).await?;
        next += every;
    }
    Ok(())
}

/// Writes `what` to `--phase-file` (if any), then waits until the file is removed, at most
/// `--phase-hold`.
async fn mark_phase(p: &Params, what: &str) -> Result<()> {
    let Some(f) = &p.phase_file else {
        return Ok(());
    };
    std::fs::write(f, format!("{what}\n")).with_context(|| format!("writing {}", f.display()))?;
    let until = Instant::now() + p.phase_hold;
    while Instant::now() < until && f.exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

pub(super) type Measured = (crate::stats::CpuUse, f64, Vec<String>);

/// Warm-up, the measured phase and the drain. Returns the phase's CPU use, its wall time,
/// and what went wrong with publisher tasks (empty when every one ended cleanly).
pub(super) async fn measure(
    sh: &Rc<Shared>,
    p: &Params,
    writers: &[Outlet],
    room_of: &dyn Fn(usize) -> usize,
    server_pids: &[u32],
) -> Result<Measured> {
    // Warm-up sender per room: its first publisher if it has one, else its first subscriber
    // (never a stalled one: `writers` holds the subscribers and publishers only).
    let members = writers.len() + p.stall.count;
    let mut sender: Vec<Option<usize>> = vec![None; p.rooms];
    for i in (p.subscribers..writers.len()).chain(0..p.subscribers) {
        sender[room_of(i)].get_or_insert(i);
    }
    let mut warm = Vec::new();
    ws::encode_frame(&mut warm, OP_TEXT, &[KIND_WARMUP]);
    let join_deadline = Instant::now() + p.join_timeout;
    let pb = report::bar(members as u64, "join");
    while sh.unjoined.get() > 0 {
        if p.door == Door::Pusher {
            // A refused warm-up (a wrong secret, an unknown app) ends the run with the reason.
            if let Some(e) = sh.first_error.borrow().as_ref() {
                pb.finish_and_clear();
                bail!("a connection failed before every member joined: {e}");
            }
        }
        if Instant::now() >= join_deadline {
            pb.finish_and_clear();
            bail!(
                "{} of {members} members did not join within {:?}",
                sh.unjoined.get(),
                p.join_timeout
            );
        }
        let pending: Vec<usize> = {
            let ru = sh.room_unjoined.borrow();
            (0..p.rooms).filter(|&r| ru[r] > 0).collect()
        };
        for r in pending {
            if p.door == Door::Pusher {
                // Every warm-up through the first publisher's HTTP API connection.
                p.encode_publication(r, &[KIND_WARMUP], &mut warm);
                writers[p.subscribers].send(&warm).await?;
            } else if let Some(w) = sender[r] {
                writers[w].send(&warm).await?;
            }
        }
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            pb.set_position((members - sh.unjoined.get()) as u64);
            if sh.unjoined.get() == 0 {
                break;
            }
        }
    }
    pb.finish_and_clear();
    // Let the last warm-up messages pass before measuring.
    tokio::time::sleep(Duration::from_millis(200)).await;

    mark_phase(p, "start").await?;
    let cpu = CpuMeter::start(server_pids)?;
    let t0 = Instant::now();
    let end = t0 + p.duration;
    sh.measuring.set(true);
    sh.counting.set(true);
    let mut tasks = Vec::with_capacity(p.publishers);
    let params = Rc::new(p.clone());
    for j in 0..p.publishers {
        let wr = writers[p.subscribers + j].clone();
        let task = match p.mode {
            Mode::Max { .. } => tokio::task::spawn_local(publish_max(
                sh.clone(),
                params.clone(),
                j,
                wr,
                end,
                p.stall_timeout,
            )),
            Mode::Rate(rate) => {
                let every = Duration::try_from_secs_f64(p.publishers as f64 / rate)
                    .map_err(|e| anyhow::anyhow!("--rate {rate}: {e}"))?;
                let first = t0 + every.mul_f64(j as f64 / p.publishers as f64);
                tokio::task::spawn_local(publish_rate(
                    sh.clone(),
                    params.clone(),
                    j,
                    wr,
                    first,
                    end,
                    every,
                ))
            }
        };
        tasks.push(task);
    }
    report::measure_phase(p.duration, t0, end, "deliveries", || {
        sh.c.delivered_in_window.get()
    })
    .await;
    sh.measuring.set(false);
    let used = cpu.stop()?;
    let wall = (Instant::now() - t0).as_secs_f64();
    mark_phase(p, "end").await?;

    // Publishers stop by themselves at `end`; give them the drain time, then stop them.
    let drain_end = Instant::now() + p.drain;
    let mut problems = Vec::new();
    for (j, t) in tasks.into_iter().enumerate() {
        let abort = t.abort_handle();
        match tokio::time::timeout_at(drain_end.into(), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => problems.push(format!("publisher {j} failed: {e:#}")),
            Ok(Err(e)) => problems.push(format!("publisher {j} task failed: {e}")),
            Err(_) => {
                abort.abort();
                problems.push(format!(
                    "publisher {j} was still blocked sending after the drain time"
                ));
            }
        }
    }
    // Drain: wait for the deliveries of everything that was sent.
    let expected: u64 = sh
        .pubs
        .iter()
        .map(|x| x.sent.get() * sh.subs_in_room[x.room] as u64)
        .sum();
    while sh.c.delivered.get() < expected && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((used, wall, problems))
}
