//! The slow scenario: a fanout run in which a share of the subscribers stops reading. The
//! stalled subscribers (`--stalled-percent` of `--subscribers`, at least one when the share is
//! not 0; stalled one k in room k % rooms, sockets with a small SO_RCVBUF set before connect)
//! join and read the warm-up message, then never read again while their sockets stay open.
//! The publications then go out exactly as in `fanout` (`--max` or `--rate`), and the report
//! holds the healthy subscribers' figures under the same keys as `fanout` (deliveries, loss,
//! latency percentiles, CPU), plus how many stalled subscribers the server closed and with
//! which close codes: after the drain each one reads what is left on its socket until a close
//! frame, EOF, a 1 s quiet period (still open) or `--stalled-read-timeout`.
//!
//! How soon a stall bites: the small receive buffer caps only the client's side. Linux still
//! autotunes the server's send buffer (up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default;
//! about 2.8 MB were seen queued per stalled socket on loopback), so a server whose limit is on
//! its own queue reaches it only once that much more is owed. `stalled_backlog_*` in the report
//! (publications still waiting for a stalled subscriber when it read again) shows how much was.
//!
//! With `--baseline` the same fanout with no stalled subscribers (all `--subscribers` healthy,
//! in other rooms) runs first on the same server, and the report adds its figures and the ratio
//! of the two healthy p99 latencies. Timings are never asserted: the run is incomplete only when
//! healthy subscribers lost messages (or a connection, a publisher, or every delivery).

use crate::fanout::{self, Outcome, Stall};
use crate::net::Nodes;
use crate::report::Report;
use anyhow::{bail, Result};
use serde_json::{Map, Value};
use std::time::Duration;

/// Pause between the baseline and the stalled run, so the baseline's connections are gone.
const SETTLE: Duration = Duration::from_millis(500);

/// Parameters of a slow run.
#[derive(Debug, Clone)]
pub struct Params {
    /// The fanout run; its `subscribers` is the total, stalled ones included.
    pub fanout: fanout::Params,
    /// Share of the subscribers that stall, in percent.
    pub stalled_percent: f64,
    /// SO_RCVBUF of the stalled subscribers' sockets (`None`: the kernel's default).
    pub stalled_rcvbuf: Option<usize>,
    /// Longest time spent reading what is left on the stalled sockets after the drain.
    pub stalled_read_timeout: Duration,
    /// Run the same fanout without stalled subscribers first.
    pub baseline: bool,
}

/// How many of `subscribers` stall at `percent` (rounded; at least one when `percent` > 0).
pub fn stalled_count(subscribers: usize, percent: f64) -> Result<usize> {
    if !(0.0..100.0).contains(&percent) {
        bail!("--stalled-percent must be at least 0 and below 100 (got {percent})");
    }
    let k = (subscribers as f64 * percent / 100.0).round() as usize;
    Ok(if percent > 0.0 { k.max(1) } else { k })
}

fn p99_us(o: &Outcome) -> Option<f64> {
    (o.hist.len() > 0).then(|| o.hist.quantile_us(0.99))
}

/// Runs the scenario against `nodes` and returns its report.
pub async fn run(
    nodes: &Nodes,
    p: &Params,
    server_pids: &[u32],
    concurrency: usize,
) -> Result<Report> {
    let total = p.fanout.subscribers;
    let k = stalled_count(total, p.stalled_percent)?;
    if total < k + p.fanout.rooms {
        bail!(
            "{total} subscribers with {k} stalled leave fewer than one healthy subscriber per room ({} rooms)",
            p.fanout.rooms
        );
    }
    let baseline = if p.baseline {
        let base = fanout::Params {
            room_prefix: format!("{}-base", p.fanout.room_prefix),
            stall: Stall::default(),
            ..p.fanout.clone()
        };
        let o = fanout::execute(nodes, &base, server_pids, concurrency).await?;
        tokio::time::sleep(SETTLE).await;
        Some(o)
    } else {
        None
    };
    let stalled = fanout::Params {
        subscribers: total - k,
        stall: Stall {
            count: k,
            rcvbuf: p.stalled_rcvbuf,
            read_timeout: p.stalled_read_timeout,
        },
        ..p.fanout.clone()
    };
    let o = fanout::execute(nodes, &stalled, server_pids, concurrency).await?;

    let mut r = Report::new("slow");
    r.param("url", nodes.describe());
    fanout::write_params(&mut r, &stalled);
    r.param("stalled_percent", p.stalled_percent);
    r.param("stalled_subscribers", k);
    r.param("healthy_subscribers", total - k);
    r.param("stalled_rcvbuf", p.stalled_rcvbuf);
    r.param("baseline", p.baseline);
    r.param("server_pid", crate::stats::Pids::param(server_pids));
    // The healthy subscribers, under fanout's keys.
    o.figures(&mut r);
    stalled_figures(&mut r, &o.stalled);
    if let Some(b) = &baseline {
        baseline_figures(&mut r, b, &o);
    }

    o.judge(&mut r, "");
    if o.loss() > 0 {
        r.fail(format!("healthy subscribers lost {} deliveries", o.loss()));
    }
    if let Some(b) = &baseline {
        b.judge(&mut r, "baseline: ");
        if b.loss() > 0 {
            r.fail(format!(
                "baseline: subscribers lost {} deliveries",
                b.loss()
            ));
        }
    } else {
        r.note("no --baseline: no run without stalled subscribers to compare the p99 with");
    }
    Ok(r)
}

fn stalled_figures(r: &mut Report, ends: &[fanout::End]) {
    let closed = ends.iter().filter(|e| e.closed_by_server()).count() as u64;
    r.int(
        "stalled_closed",
        "stalled subscribers closed by the server",
        closed,
    );
    r.int(
        "stalled_open",
        "stalled subscribers still open after the run",
        ends.iter().filter(|e| e.how == fanout::How::Open).count() as u64,
    );
    let tally = fanout::tally(ends);
    let shown = tally
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let json: Map<String, Value> = tally.into_iter().map(|(k, n)| (k, n.into())).collect();
    r.value(
        "stalled_close_codes",
        "stalled subscribers: how they ended",
        if shown.is_empty() { "-".into() } else { shown },
        Value::Object(json),
    );
    let backlog_max = ends.iter().map(|e| e.backlog).max().unwrap_or(0);
    let n = ends.len().max(1) as f64;
    r.int(
        "stalled_backlog_max",
        "publications left for a stalled subscriber (max)",
        backlog_max,
    );
    r.num(
        "stalled_backlog_mean",
        "publications left for a stalled subscriber (mean)",
        ends.iter().map(|e| e.backlog as f64).sum::<f64>() / n,
    );
    r.int(
        "stalled_bytes_read",
        "bytes read from stalled sockets after the run",
        ends.iter().map(|e| e.bytes).sum(),
    );
}

fn baseline_figures(r: &mut Report, b: &Outcome, o: &Outcome) {
    r.num(
        "baseline_deliveries_per_s",
        "baseline: deliveries/s",
        b.deliveries_per_s(),
    );
    r.int("baseline_loss", "baseline: loss", b.loss());
    r.latency("baseline_latency", "baseline: publish→delivery", &b.hist);
    let per = |o: &Outcome| {
        o.cpu()
            .server_s
            .filter(|_| o.in_window() > 0)
            .map(|s| s * 1e6 / o.in_window() as f64)
    };
    r.opt(
        "baseline_server_cpu_us_per_delivery",
        "baseline: server CPU per delivery (µs)",
        per(b),
    );
    let ratio = match (p99_us(o), p99_us(b)) {
        (Some(s), Some(base)) if base > 0.0 => Some(s / base),
        _ => None,
    };
    r.opt("p99_ratio", "healthy p99 with stall / without stall", ratio);
    if let Some(x) = ratio {
        if x > 1.10 {
            r.note(format!(
                "the healthy p99 with stalled subscribers is {x:.2}× the baseline's (the goal is at most 1.10×; not asserted)"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_counts() {
        assert_eq!(stalled_count(1000, 1.0).ok(), Some(10));
        assert_eq!(stalled_count(200, 2.0).ok(), Some(4));
        assert_eq!(stalled_count(50, 1.0).ok(), Some(1));
        assert_eq!(stalled_count(10, 0.0).ok(), Some(0));
        assert!(stalled_count(10, 100.0).is_err());
        assert!(stalled_count(10, -1.0).is_err());
        assert!(stalled_count(10, f64::NAN).is_err());
    }
}
