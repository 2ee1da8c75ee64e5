//! Measurements that are not about the wire: CPU time of the server and of the generator
//! itself (utime + stime from `/proc/PID/stat`), the server's resident memory (`VmRSS`), the
//! process' open-file limit, and the latency histogram (HdrHistogram, nanoseconds, 3
//! significant digits).

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use std::sync::OnceLock;
use std::time::Instant;

/// Clock ticks per second for `/proc/PID/stat` (`getconf CLK_TCK`, 100 if that fails).
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t: &u64| t > 0)
            .unwrap_or(100)
    })
}

/// utime + stime of `pid` (or of this process for `None`), in clock ticks.
pub fn cpu_ticks(pid: Option<u32>) -> Result<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu(&text).with_context(|| format!("parsing {path}"))
}

/// utime + stime of the calling thread alone (`/proc/thread-self/stat`), in clock ticks.
pub fn thread_cpu_ticks() -> Result<u64> {
    let path = "/proc/thread-self/stat";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu(&text).with_context(|| format!("parsing {path}"))
}

fn parse_stat_cpu(text: &str) -> Result<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3; utime is field 14, stime field 15.
    let get = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .ok_or_else(|| anyhow!("field {n} missing"))?
            .parse()
            .context("bad number")
    };
    Ok(get(14)? + get(15)?)
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            let kib = v.trim().trim_end_matches("kB").trim();
            return kib
                .parse()
                .with_context(|| format!("bad VmRSS line {line:?}"));
        }
    }
    bail!("{path} has no VmRSS line")
}

/// The soft limit on open files of this process (`None` if unlimited or unreadable).
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `--server-pid`: one pid, or a comma list of them (the nodes of a cluster and its broker),
/// whose CPU times are summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pids(pub Vec<u32>);

impl Pids {
    /// Parses `PID[,PID...]` (no duplicates, at least one).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut pids = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let pid: u32 = part
                .parse()
                .map_err(|_| format!("bad pid {part:?} in {s:?} (a comma list of process ids)"))?;
            if pids.contains(&pid) {
                return Err(format!("pid {pid} given twice in {s:?}"));
            }
            pids.push(pid);
        }
        if pids.is_empty() {
            return Err(format!("{s:?} names no process"));
        }
        Ok(Self(pids))
    }

    /// The report's `server_pid`: `null`, the pid as a number, or the comma list as a string.
    pub fn param(pids: &[u32]) -> serde_json::Value {
        match pids {
            [] => serde_json::Value::Null,
            [one] => (*one).into(),
            many => many
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
                .into(),
        }
    }
}

/// `VmRSS` of every pid, summed, in KiB (`None` for no pid).
pub fn rss_kib_sum(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut sum = 0;
    for &p in pids {
        sum += rss_kib(p)?;
    }
    Ok(Some(sum))
}

/// The command name of `pid` (`/proc/PID/comm`; `?` if unreadable).
pub fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// One server process' share of a phase's server CPU.
#[derive(Debug, Clone)]
pub struct ProcCpu {
    /// Its pid.
    pub pid: u32,
    /// Its command name.
    pub name: String,
    /// CPU seconds it used.
    pub cpu_s: f64,
}

/// CPU seconds used over a phase by the generator and (optionally) the server.
#[derive(Debug, Clone)]
pub struct CpuUse {
    /// Wall-clock seconds of the phase.
    pub wall_s: f64,
    /// CPU seconds of this process.
    pub generator_s: f64,
    /// CPU seconds of the server processes (summed), when pids were given.
    pub server_s: Option<f64>,
    /// Each server process' part of `server_s`, in `--server-pid` order.
    pub by_process: Vec<ProcCpu>,
}

/// Start readings of a phase; [`CpuMeter::stop`] turns them into a [`CpuUse`].
pub struct CpuMeter {
    server_pids: Vec<u32>,
    t0: Instant,
    self0: u64,
    server0: Vec<u64>,
}

impl CpuMeter {
    /// Takes the start readings (fails if a server pid is given but unreadable).
    pub fn start(server_pids: &[u32]) -> Result<Self> {
        let server0 = server_pids
            .iter()
            .map(|&p| cpu_ticks(Some(p)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            server_pids: server_pids.to_vec(),
            t0: Instant::now(),
            self0: cpu_ticks(None)?,
            server0,
        })
    }

    /// Takes the end readings.
    pub fn stop(&self) -> Result<CpuUse> {
        let tck = clk_tck() as f64;
        let wall_s = self.t0.elapsed().as_secs_f64();
        let generator_s = cpu_ticks(None)?.saturating_sub(self.self0) as f64 / tck;
        let mut by_process = Vec::with_capacity(self.server_pids.len());
        for (&p, &s0) in self.server_pids.iter().zip(&self.server0) {
            let s1 = cpu_ticks(Some(p))
                .with_context(|| format!("server process {p} gone at the end of the phase?"))?;
            by_process.push(ProcCpu {
                pid: p,
                name: process_name(p),
                cpu_s: s1.saturating_sub(s0) as f64 / tck,
            });
        }
        let server_s = (!by_process.is_empty()).then(|| by_process.iter().map(|p| p.cpu_s).sum());
        Ok(CpuUse {
            wall_s,
            generator_s,
            server_s,
            by_process,
        })
    }
}

/// A latency histogram in nanoseconds.
pub struct Hist(Histogram<u64>);

impl Hist {
    /// An empty histogram covering 1 ns .. 1 hour at 3 significant digits.
    pub fn new() -> Result<Self> {
        Ok(Self(
            Histogram::new_with_bounds(1, 3_600_000_000_000, 3).context("histogram bounds")?,
        ))
    }

    /// Records one latency in nanoseconds (clamped to the range).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// Adds every value of `other` (values out of range are clamped, as in [`Hist::record`]).
    pub fn add(&mut self, other: &Hist) {
        for v in other.0.iter_recorded() {
            self.0
                .saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }

    /// Number of recorded values.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Value at quantile `q` (0..=1) in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    /// Largest value in microseconds.
    pub fn max_us(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }

    /// Mean in microseconds.
    pub fn mean_us(&self) -> f64 {
        self.0.mean() / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_spaces_in_name() {
        let line = "1234 (my (weird) proc) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 1 0 5 6 7";
        assert_eq!(parse_stat_cpu(line).expect("parse"), 281);
    }

    #[test]
    fn pid_lists() {
        assert_eq!(Pids::parse("12"), Ok(Pids(vec![12])));
        assert_eq!(Pids::parse("12, 13,14"), Ok(Pids(vec![12, 13, 14])));
        assert!(Pids::parse("12,x").is_err());
        assert!(Pids::parse("12,12").is_err());
        assert!(Pids::parse(",").is_err());
        assert_eq!(Pids::param(&[]), serde_json::Value::Null);
        assert_eq!(Pids::param(&[7]), serde_json::json!(7));
        assert_eq!(Pids::param(&[7, 8]), serde_json::json!("7,8"));
    }

    #[test]
    fn cpu_of_several_processes_is_summed() {
        let me = std::process::id();
        let parent = std::os::unix::process::parent_id();
        let m = CpuMeter::start(&[me, parent]).expect("start");
        // Burn a little CPU here so at least this process shows some.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 60 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let u = m.stop().expect("stop");
        assert_eq!(u.by_process.len(), 2);
        assert_eq!(u.by_process[0].pid, me);
        let sum: f64 = u.by_process.iter().map(|p| p.cpu_s).sum();
        assert_eq!(u.server_s, Some(sum));
        assert_eq!(rss_kib_sum(&[]).expect("none"), None);
        assert!(rss_kib_sum(&[me]).expect("rss").expect("some") > 0);
        let none = CpuMeter::start(&[]).expect("start").stop().expect("stop");
        assert!(none.server_s.is_none() && none.by_process.is_empty());
    }

    #[test]
    fn own_readings_work() {
        assert!(cpu_ticks(None).is_ok());
        assert!(rss_kib(std::process::id()).expect("rss") > 0);
        assert!(clk_tck() > 0);
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Hist::new().expect("hist");
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.len(), 1000);
        let p50 = h.quantile_us(0.5);
        assert!((499.0..=501.0).contains(&p50), "{p50}");
        assert!((h.max_us() - 1000.0).abs() < 1.0);
        let mut sum = Hist::new().expect("hist");
        sum.add(&h);
        sum.add(&h);
        assert_eq!(sum.len(), 2000);
        assert!((sum.quantile_us(0.5) - p50).abs() < 1.0);
    }
}
