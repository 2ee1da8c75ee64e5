//! How results are shown: a [`Report`] collects parameters and figures once and prints them
//! twice, as a readable two-column table and as one JSON object on the last line of stdout
//! (flat keys, for scripts). Also the progress bar used for long phases (drawn on stderr only
//! when it is a terminal).

use crate::stats::{CpuUse, Hist};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value};
use std::io::IsTerminal;
use std::time::Duration;

/// Parameters and results of one run.
pub struct Report {
    rows: Vec<(String, String)>,
    json: Map<String, Value>,
    /// False when the run did not complete (the process then exits non-zero).
    pub complete: bool,
    notes: Vec<String>,
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        // Thousands separators on the integer part.
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn round(v: f64, digits: i32) -> Value {
    let m = 10f64.powi(digits);
    serde_json::Number::from_f64((v * m).round() / m).map_or(Value::Null, Value::Number)
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &str) -> Self {
        let mut r = Self {
            rows: Vec::new(),
            json: Map::new(),
            complete: true,
            notes: Vec::new(),
        };
        r.json.insert("scenario".into(), scenario.into());
        r.rows.push(("scenario".into(), scenario.into()));
        r
    }

    /// A parameter: shown as is, stored under `key`.
    pub fn param(&mut self, key: &str, value: impl Into<Value>) {
        let v: Value = value.into();
        let shown = match &v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        self.rows.push((key.replace('_', " "), shown));
        self.json.insert(key.into(), v);
    }

    /// A measured number with its label (unit) for the table.
    pub fn num(&mut self, key: &str, label: &str, v: f64) {
        self.rows.push((label.into(), fmt_num(v)));
        self.json.insert(key.into(), round(v, 3));
    }

    /// A measured count.
    pub fn int(&mut self, key: &str, label: &str, v: u64) {
        self.rows.push((label.into(), v.to_string()));
        self.json.insert(key.into(), v.into());
    }

    /// Any JSON value (e.g. an object of counts) under `key`, shown as `shown` in the table.
    pub fn value(&mut self, key: &str, label: &str, shown: String, v: Value) {
        self.rows.push((label.into(), shown));
        self.json.insert(key.into(), v);
    }

    /// An optional number (`null` in JSON, `-` in the table when absent).
    pub fn opt(&mut self, key: &str, label: &str, v: Option<f64>) {
        match v {
            Some(v) => self.num(key, label, v),
            None => {
                self.rows.push((label.into(), "-".into()));
                self.json.insert(key.into(), Value::Null);
            }
        }
    }

    /// Latency percentiles of `h` in µs under `prefix` (`prefix_p50_us`, ...).
    pub fn latency(&mut self, prefix: &str, what: &str, h: &Hist) {
        self.int(
            &format!("{prefix}_samples"),
            &format!("{what} samples"),
            h.len(),
        );
        if h.len() == 0 {
            return;
        }
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            self.num(
                &format!("{prefix}_{name}_us"),
                &format!("{what} {name} (µs)"),
                h.quantile_us(q),
            );
        }
        self.num(
            &format!("{prefix}_max_us"),
            &format!("{what} max (µs)"),
            h.max_us(),
        );
        self.num(
            &format!("{prefix}_mean_us"),
            &format!("{what} mean (µs)"),
            h.mean_us(),
        );
    }

    /// CPU figures of a phase; `work` is the amount of work done and its unit, for the
    /// µs-per-unit figures (`None` for a phase without a unit of work).
    pub fn cpu(&mut self, prefix: &str, cpu: &CpuUse, work: Option<(u64, &str)>) {
        let p = |s: &str| {
            if prefix.is_empty() {
                s.to_string()
            } else {
                format!("{prefix}_{s}")
            }
        };
        let l = |s: &str| {
            if prefix.is_empty() {
                s.to_string()
            } else {
                format!("{prefix}: {s}")
            }
        };
        let pct = |s: f64| 100.0 * s / cpu.wall_s.max(1e-9);
        self.num(&p("wall_s"), &l("wall time (s)"), cpu.wall_s);
        self.opt(&p("server_cpu_s"), &l("server CPU (s)"), cpu.server_s);
        self.opt(
            &p("server_cpu_pct"),
            &l("server CPU (% of one core)"),
            cpu.server_s.map(pct),
        );
        let per_unit = |s: f64, n: u64| {
            if n == 0 {
                None
            } else {
                Some(s * 1e6 / n as f64)
            }
        };
        if let Some((n, unit)) = work {
            self.opt(
                &p(&format!("server_cpu_us_per_{unit}")),
                &l(&format!("server CPU per {unit} (µs)")),
                cpu.server_s.and_then(|s| per_unit(s, n)),
            );
        }
        if cpu.by_process.len() > 1 {
            // Several server processes (the nodes of a cluster and its broker): each one's part.
            let mut split = Map::new();
            let mut shown = Vec::new();
            for pc in &cpu.by_process {
                let mut one = Map::new();
                one.insert("pid".into(), pc.pid.into());
                one.insert("name".into(), pc.name.clone().into());
                one.insert("cpu_s".into(), round(pc.cpu_s, 3));
                one.insert("cpu_pct".into(), round(pct(pc.cpu_s), 3));
                if let Some((n, unit)) = work {
                    one.insert(
                        format!("cpu_us_per_{unit}"),
                        per_unit(pc.cpu_s, n).map_or(Value::Null, |v| round(v, 3)),
                    );
                }
                shown.push(format!("{} {}: {}", pc.name, pc.pid, fmt_num(pc.cpu_s)));
                split.insert(format!("{}", pc.pid), Value::Object(one));
            }
            self.value(
                &p("server_cpu_by_process"),
                &l("server CPU by process (s)"),
                shown.join(", "),
                Value::Object(split),
            );
        }
        self.num(
            &p("generator_cpu_s"),
            &l("generator CPU (s)"),
            cpu.generator_s,
        );
        self.num(
            &p("generator_cpu_pct"),
            &l("generator CPU (% of one core)"),
            pct(cpu.generator_s),
        );
        if let (Some((n, _)), Some(s)) = (work, cpu.server_s) {
            if n > 1000 && s == 0.0 && cpu.wall_s > 1.0 {
                self.note(
                    "the server pid used no CPU while serving: is --server-pid the server \
                     process itself (not a wrapper script)?",
                );
            }
        }
        if let Some((n, unit)) = work {
            self.opt(
                &p(&format!("generator_cpu_us_per_{unit}")),
                &l(&format!("generator CPU per {unit} (µs)")),
                per_unit(cpu.generator_s, n),
            );
        }
    }

    /// Marks the run incomplete with a reason (shown in the table and the JSON).
    pub fn fail(&mut self, why: impl Into<String>) {
        self.complete = false;
        self.notes.push(why.into());
    }

    /// Adds a note (shown in the table and the JSON, does not fail the run).
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// A figure or parameter by its JSON key (for tests).
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key)
    }

    /// Prints the table, then the JSON line (last line of stdout).
    pub fn print(mut self) {
        self.json.insert("complete".into(), self.complete.into());
        self.json.insert("notes".into(), self.notes.clone().into());
        let width = self
            .rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let vwidth = self
            .rows
            .iter()
            .map(|(_, v)| v.chars().count())
            .max()
            .unwrap_or(0);
        let rule = format!("+-{}-+-{}-+", "-".repeat(width), "-".repeat(vwidth));
        println!("{rule}");
        for (k, v) in &self.rows {
            let kp = width - k.chars().count();
            let vp = vwidth - v.chars().count();
            println!("| {k}{} | {}{v} |", " ".repeat(kp), " ".repeat(vp));
        }
        println!("{rule}");
        for n in &self.notes {
            println!("note: {n}");
        }
        if !self.complete {
            println!("RUN INCOMPLETE");
        }
        println!("{}", Value::Object(self.json));
    }
}

/// A progress bar for a phase of `len` steps, drawn on stderr only when it is a terminal.
/// Shows the measured phase's progress until `end` (it started at `t0`, lasts `duration`),
/// with the rate of `count()` in `unit`s per second, refreshed four times a second.
pub async fn measure_phase(
    duration: Duration,
    t0: std::time::Instant,
    end: std::time::Instant,
    unit: &str,
    count: impl Fn() -> u64,
) {
    let pb = bar(duration.as_millis() as u64, "measure");
    while std::time::Instant::now() < end {
        let tick = (std::time::Instant::now() + Duration::from_millis(250)).min(end);
        tokio::time::sleep_until(tick.into()).await;
        let secs = t0.elapsed().as_secs_f64().max(1e-3);
        pb.set_position(t0.elapsed().as_millis() as u64);
        pb.set_message(format!("{:.0} {unit}/s", count() as f64 / secs));
    }
    pb.finish_and_clear();
}

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr_with_hz(4)
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    pb
}

/// Parses a duration such as `10s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (use e.g. 10s, 500ms, 2m)"))?;
    // Every phase is bounded: refuse anything longer than a day.
    if !(0.0..=86_400.0).contains(&(v * mult)) {
        return Err(format!("bad duration {s:?} (0 to 24 h)"));
    }
    Duration::try_from_secs_f64(v * mult).map_err(|e| format!("bad duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("1e30s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn several_server_processes_are_split() {
        use crate::stats::ProcCpu;
        let cpu = CpuUse {
            wall_s: 2.0,
            generator_s: 0.5,
            server_s: Some(1.5),
            by_process: vec![
                ProcCpu {
                    pid: 10,
                    name: "switchboard".into(),
                    cpu_s: 1.0,
                },
                ProcCpu {
                    pid: 11,
                    name: "redis-server".into(),
                    cpu_s: 0.5,
                },
            ],
        };
        let mut r = Report::new("t");
        r.cpu("", &cpu, Some((1000, "delivery")));
        assert_eq!(
            r.get("server_cpu_us_per_delivery"),
            Some(&serde_json::json!(1500.0))
        );
        let split = r.get("server_cpu_by_process").expect("split");
        assert_eq!(split["11"]["name"], "redis-server");
        assert_eq!(split["11"]["cpu_us_per_delivery"], 500.0);
        assert_eq!(split["10"]["cpu_pct"], 50.0);
        // One process: no split, as before.
        let mut r = Report::new("t");
        let one = CpuUse {
            by_process: cpu.by_process[..1].to_vec(),
            server_s: Some(1.0),
            ..cpu
        };
        r.cpu("", &one, Some((1000, "delivery")));
        assert!(r.get("server_cpu_by_process").is_none());
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(103_456.7), "103,457");
        assert_eq!(fmt_num(9.512), "9.51");
        assert_eq!(fmt_num(0.5), "0.500");
    }
}
