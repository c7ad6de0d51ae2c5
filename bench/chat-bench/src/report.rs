//! The result of a run: one struct, printed as a table for people or as one JSON object
//! (`--json`) for scripts such as `bench/compare.sh`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::limits::thousands;
use crate::measure::Summary;
use crate::refusal::Limit;

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
    /// Those of the failures that were the server's limits refusing the load, one entry per
    /// limit, each with the flag that lifts it (empty when no limit refused anything).
    pub refused: Vec<Refused>,
}

/// How often one of the server's limits refused the load, and what to do about it.
#[derive(Debug, Serialize)]
pub struct Refused {
    /// `rate_limited`, `per_address` (HTTP 429) or `server_full` (HTTP 503).
    pub limit: Limit,
    /// Failures it caused.
    pub count: u64,
    /// The chat-server flags that turn it off.
    pub flags: &'static str,
    /// The sentence the report prints, count and flags included.
    pub advice: String,
}

impl Refused {
    /// The entry for `count` refusals by `limit`.
    pub fn new(limit: Limit, count: u64) -> Refused {
        Refused {
            limit,
            count,
            flags: limit.flags(),
            advice: limit.advice(count),
        }
    }
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

impl Report {
    /// What failed, one phrase per kind of failure with its count ("3 connections failed");
    /// empty when everything the scenario asked for worked. chat-bench exits with status 1
    /// exactly when this is not empty, so that a script cannot take a run that lost
    /// connections, rooms or sessions for a clean measurement.
    ///
    /// Every failure counted by a scenario is also one of the errors, but the connection,
    /// room and session counts are checked on their own too: a failure is a failure whether
    /// or not it reached the error list. Skipped churn sessions (chat-bench's own
    /// `--max-sessions` cap) and connections closed without a Close reply are reported but
    /// are not failures: nothing the scenario asked of the server went wrong.
    pub fn failures(&self) -> Vec<String> {
        let c = &self.connections;
        let mut failed = Vec::new();
        if c.failed > 0 {
            failed.push(format!("{} failed", count(c.failed, "connection")));
        }
        if c.rooms_failed > 0 {
            failed.push(format!(
                "{} could not be created or joined",
                count(c.rooms_failed, "room")
            ));
        }
        if let Some(sessions) = &self.sessions {
            if sessions.failed > 0 {
                failed.push(format!("{} failed", count(sessions.failed, "session")));
            }
            if sessions.unfinished > 0 {
                failed.push(format!(
                    "{} did not finish",
                    count(sessions.unfinished, "session")
                ));
            }
        }
        if self.errors.total > 0 {
            failed.push(format!(
                "{} in all (listed by kind in the report)",
                count(self.errors.total, "error")
            ));
        }
        failed
    }
}

/// `n` and the noun, in the plural unless `n` is 1: "1 room", "3 rooms".
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{} {noun}s", thousands(n))
    }
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
        for (i, refused) in self.errors.refused.iter().enumerate() {
            let label = if i == 0 { "server limits" } else { "" };
            writeln!(f, "  {label:<13} {}", refused.advice)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A churn report in which every count is zero.
    fn clean_churn() -> Report {
        Report {
            scenario: "churn",
            url: "ws://127.0.0.1:8080/ws".to_string(),
            workers: 1,
            settings: Settings::default(),
            connections: ConnectionStats {
                requested: 4,
                opened: 4,
                failed: 0,
                rooms_ready: 2,
                rooms_failed: 0,
                setup_secs: 0.0,
                opened_per_sec: 4.0,
                closed_without_reply: 0,
            },
            messages: None,
            latency_us: None,
            sessions: Some(SessionStats {
                window_secs: 1.0,
                offered_per_sec: 2.0,
                started: 2,
                completed: 2,
                failed: 0,
                skipped: 0,
                unfinished: 0,
                completed_per_sec: 2.0,
                duration_us: Summary::default(),
            }),
            errors: ErrorStats {
                total: 0,
                by_kind: BTreeMap::new(),
                refused: Vec::new(),
            },
            server: None,
            client: ClientStats {
                cpu_secs: 0.0,
                cpu_percent: 0.0,
                rss_kib: 0,
            },
            machine: None,
            notes: Vec::new(),
        }
    }

    /// Connections closed without a Close reply and sessions chat-bench itself skipped are
    /// reported, but the run did everything it asked of the server: no failure.
    #[test]
    fn a_clean_run_has_no_failures() {
        let mut report = clean_churn();
        report.connections.closed_without_reply = 4;
        if let Some(sessions) = &mut report.sessions {
            sessions.skipped = 3;
        }
        assert_eq!(report.failures(), Vec::<String>::new());
    }

    /// Each count of failed connections, rooms and sessions is named with its number, even
    /// if no error was recorded for it.
    #[test]
    fn every_failed_count_is_a_failure() {
        let mut report = clean_churn();
        report.connections.failed = 1;
        report.connections.rooms_failed = 2;
        if let Some(sessions) = &mut report.sessions {
            sessions.failed = 2;
            sessions.unfinished = 1;
        }
        assert_eq!(
            report.failures(),
            [
                "1 connection failed",
                "2 rooms could not be created or joined",
                "2 sessions failed",
                "1 session did not finish",
            ]
        );

        let mut report = clean_churn();
        report.errors.total = 3;
        assert_eq!(
            report.failures(),
            ["3 errors in all (listed by kind in the report)"]
        );
    }

    /// The table gives each limit's advice on its own line, once, after the errors.
    #[test]
    fn the_table_gives_each_limits_advice_once() {
        let mut report = clean_churn();
        report.errors.total = 7;
        report.errors.refused = vec![
            Refused::new(Limit::RateLimited, 5),
            Refused::new(Limit::PerAddress, 2),
        ];
        let table = report.to_string();
        assert_eq!(table.matches("--rate-limit 0").count(), 1, "{table}");
        assert_eq!(
            table.matches("--max-connections-per-ip 0").count(),
            1,
            "{table}"
        );
        assert!(
            table.contains("server limits the server refused 5 requests with RATE_LIMITED"),
            "{table}"
        );
    }
}
