//! The result of a run: one struct, printed as a table for people or as one JSON object
//! (`--json`) for scripts such as `bench/compare.sh`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::limits::thousands;
use crate::measure::Summary;

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `connections`, `throughput` or `churn`.
    pub scenario: &'static str,
    /// The server's URL.
    pub url: String,
    /// Client processes used (1: the clients ran inside chat-bench itself).
    pub workers: u32,
    /// What was asked for.
    pub settings: Settings,
    /// Connections and room setup.
    pub connections: ConnectionStats,
    /// Chat messages (throughput).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<MessageStats>,
    /// Send-to-receipt latency of messages sent inside the window (throughput).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Summary>,
    /// Sessions (churn).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionStats>,
    /// Failures of any kind.
    pub errors: ErrorStats,
    /// The server's memory and CPU time, given `--server-pid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerStats>,
    /// chat-bench's own use of the machine, which competes with the server's.
    pub client: ClientStats,
    /// The whole machine's CPU use inside the window: shows how much else was running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineStats>,
    /// Things the reader should know about how the figures were taken.
    pub notes: Vec<String>,
}

/// The scenario's parameters; fields that do not apply are left out of the JSON.
#[derive(Debug, Default, Serialize)]
pub struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<u64>,
    /// Idle hold after setup (connections), in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_secs: Option<f64>,
    /// Length of the measured window asked for, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_secs: Option<f64>,
    /// `closed_loop` or `fixed_rate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u32>,
    /// Messages (throughput) or sessions (churn) per second asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Chat content length in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// Chat messages per member per session (churn).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
}

/// Connections and room setup.
#[derive(Debug, Serialize)]
pub struct ConnectionStats {
    /// Connections the scenario asked for (two per room or session).
    pub requested: u64,
    /// Connections that reached the server's `connected`.
    pub opened: u64,
    /// Connection attempts that failed.
    pub failed: u64,
    /// Rooms with both members joined (for churn: sessions whose room was set up).
    pub rooms_ready: u64,
    /// Rooms whose setup failed.
    pub rooms_failed: u64,
    /// Seconds until every room was set up (the slowest worker).
    pub setup_secs: f64,
    /// Connections opened per second of setup (rooms scenarios).
    pub opened_per_sec: f64,
    /// Connections the server closed without answering chat-bench's Close frame.
    pub closed_without_reply: u64,
}

/// Chat messages of the throughput scenario.
#[derive(Debug, Serialize)]
pub struct MessageStats {
    /// Length of the measured window in seconds.
    pub window_secs: f64,
    /// Messages sent inside the window.
    pub sent: u64,
    /// Messages received by the sender's peer inside the window.
    pub delivered: u64,
    pub sent_per_sec: f64,
    /// The headline figure: deliveries per second, counted at the receiving peer.
    pub delivered_per_sec: f64,
    /// The offered load at a fixed rate (absent in closed loop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_per_sec: Option<f64>,
}

/// Sessions of the churn scenario.
#[derive(Debug, Serialize)]
pub struct SessionStats {
    /// How long new sessions were started for, in seconds.
    pub window_secs: f64,
    /// Sessions per second asked for.
    pub offered_per_sec: f64,
    pub started: u64,
    pub completed: u64,
    pub failed: u64,
    /// Not started because `--max-sessions` were in progress.
    pub skipped: u64,
    /// Started but neither completed nor failed when the run ended.
    pub unfinished: u64,
    /// Completed sessions per second of the window.
    pub completed_per_sec: f64,
    /// How long a completed session took, from its first connect to both closes.
    pub duration_us: Summary,
}

/// Failures, in total and by kind.
#[derive(Debug, Serialize)]
pub struct ErrorStats {
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
}

/// The server process as /proc saw it.
#[derive(Debug, Serialize)]
pub struct ServerStats {
    pub pid: u32,
    /// Resident memory before any client connected, in KiB.
    pub rss_before_kib: u64,
    /// Resident memory at the end of the idle hold (connections) or of the run, in KiB.
    pub rss_after_kib: u64,
    /// (after − before) / connections held, two per ready room (connections scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_connection_kib: Option<f64>,
    /// CPU time (user + system, all threads) inside the measured window, in seconds.
    pub cpu_secs: f64,
    /// `cpu_secs` as a percentage of one core over the window.
    pub cpu_percent: f64,
    /// Server CPU time per delivered message, in µs (throughput).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_message: Option<f64>,
    /// Server CPU time per completed session, in µs (churn).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_session: Option<f64>,
    /// Clock ticks per second used to convert /proc/PID/stat.
    pub clock_ticks_per_sec: u64,
    /// Whether that was read from `getconf CLK_TCK` (false: assumed 100).
    pub clock_ticks_measured: bool,
}

/// chat-bench's own use of the machine.
#[derive(Debug, Serialize)]
pub struct ClientStats {
    /// CPU time of all client processes inside the window, in seconds.
    pub cpu_secs: f64,
    /// `cpu_secs` as a percentage of one core.
    pub cpu_percent: f64,
    /// Resident memory of all client processes at the end, in KiB.
    pub rss_kib: u64,
}

/// The machine's CPU use inside the window, from /proc/stat.
#[derive(Debug, Serialize)]
pub struct MachineStats {
    /// Cores of the machine.
    pub cores: usize,
    /// CPU time of everything that ran, as a percentage of one core (at most 100 × cores).
    pub busy_percent: f64,
    /// What is left after the server (if measured) and chat-bench: other programs, the
    /// kernel's work not charged to either. High values mean noisy figures.
    pub others_percent: f64,
}

/// Divides, giving 0 rather than NaN or infinity for an empty denominator.
pub fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

/// Microseconds as milliseconds with three decimals.
fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

/// A rate with thousands separators and one decimal.
fn per_sec(rate: f64) -> String {
    format!(
        "{}.{}",
        thousands(rate as u64),
        ((rate.fract() * 10.0) as u64).min(9)
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        write!(f, "chat-bench {} against {}", self.scenario, self.url)?;
        if self.workers > 1 {
            write!(f, " ({} client processes)", self.workers)?;
        }
        writeln!(f)?;

        let mut setting = Vec::new();
        if let Some(rooms) = s.rooms {
            setting.push(format!("{} rooms", thousands(rooms)));
        }
        match (s.mode, s.in_flight, s.rate) {
            (Some("closed_loop"), Some(k), _) => {
                setting.push(format!("closed loop, {k} in flight per sender"))
            }
            (Some("fixed_rate"), _, Some(rate)) => {
                setting.push(format!("fixed rate {} msgs/s", per_sec(rate)))
            }
            (None, _, Some(rate)) => setting.push(format!("{} sessions/s", per_sec(rate))),
            _ => {}
        }
        if let Some(size) = s.size {
            setting.push(format!("{size}-byte messages"));
        }
        if let Some(messages) = s.messages {
            setting.push(format!("{messages} messages per member"));
        }
        if let Some(hold) = s.hold_secs {
            setting.push(format!("held idle {hold} s"));
        }
        if let Some(duration) = s.duration_secs {
            setting.push(format!("{duration} s measured"));
        }
        if let Some(warmup) = s.warmup_secs.filter(|&w| w > 0.0) {
            setting.push(format!("after {warmup} s warm-up"));
        }
        writeln!(f, "  {}", setting.join(", "))?;
        writeln!(f)?;

        let c = &self.connections;
        write!(
            f,
            "  {:<13} {} of {} opened, {} failed",
            "connections",
            thousands(c.opened),
            thousands(c.requested),
            thousands(c.failed),
        )?;
        if self.sessions.is_some() {
            // Churn connects all the time; there is no separate setup.
            writeln!(f, " ({} conn/s)", per_sec(c.opened_per_sec))?;
        } else {
            writeln!(
                f,
                "; {} rooms ready, {} failed; setup {:.2} s ({} conn/s)",
                thousands(c.rooms_ready),
                thousands(c.rooms_failed),
                c.setup_secs,
                per_sec(c.opened_per_sec),
            )?;
        }
        if c.closed_without_reply > 0 {
            writeln!(
                f,
                "  {:<13} {} connections closed by the server without answering our Close frame",
                "",
                thousands(c.closed_without_reply),
            )?;
        }
        if let Some(m) = &self.messages {
            write!(
                f,
                "  {:<13} {} msgs/s ({} in {:.2} s); sent {} msgs/s",
                "delivered",
                per_sec(m.delivered_per_sec),
                thousands(m.delivered),
                m.window_secs,
                per_sec(m.sent_per_sec),
            )?;
            if let Some(offered) = m.offered_per_sec {
                write!(f, " of {} offered", per_sec(offered))?;
            }
            writeln!(f)?;
        }
        if let Some(l) = &self.latency_us {
            writeln!(
                f,
                "  {:<13} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
                "latency",
                ms(l.p50_us),
                ms(l.p90_us),
                ms(l.p99_us),
                ms(l.p999_us),
                ms(l.max_us),
                thousands(l.count),
            )?;
        }
        if let Some(sessions) = &self.sessions {
            writeln!(
                f,
                "  {:<13} {} completed/s ({} of {} started in {:.2} s; {} failed, {} skipped, {} unfinished)",
                "sessions",
                per_sec(sessions.completed_per_sec),
                thousands(sessions.completed),
                thousands(sessions.started),
                sessions.window_secs,
                thousands(sessions.failed),
                thousands(sessions.skipped),
                thousands(sessions.unfinished),
            )?;
            let d = &sessions.duration_us;
            writeln!(
                f,
                "  {:<13} p50 {}  p99 {}  max {}",
                "session time",
                ms(d.p50_us),
                ms(d.p99_us),
                ms(d.max_us),
            )?;
        }
        writeln!(f, "  {:<13} {}", "errors", thousands(self.errors.total))?;
        for (kind, count) in &self.errors.by_kind {
            writeln!(f, "  {:<13}   {} × {kind}", "", thousands(*count))?;
        }
        if let Some(server) = &self.server {
            write!(
                f,
                "  {:<13} pid {}: CPU {:.2} s ({:.0}% of a core)",
                "server", server.pid, server.cpu_secs, server.cpu_percent,
            )?;
            if let Some(us) = server.cpu_us_per_message {
                write!(f, " = {us:.1} µs per delivered msg")?;
            }
            if let Some(us) = server.cpu_us_per_session {
                write!(f, " = {us:.0} µs per session")?;
            }
            writeln!(f)?;
            write!(
                f,
                "  {:<13} RSS {} KiB before, {} KiB after",
                "",
                thousands(server.rss_before_kib),
                thousands(server.rss_after_kib),
            )?;
            if let Some(per) = server.rss_per_connection_kib {
                write!(f, " = {per:.2} KiB per connection")?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "  {:<13} CPU {:.2} s ({:.0}% of a core), RSS {} KiB",
            "client",
            self.client.cpu_secs,
            self.client.cpu_percent,
            thousands(self.client.rss_kib),
        )?;
        if let Some(machine) = &self.machine {
            writeln!(
                f,
                "  {:<13} {:.0}% of a core busy over its {} cores; {:.0}% by other programs",
                "machine", machine.busy_percent, machine.cores, machine.others_percent,
            )?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}
