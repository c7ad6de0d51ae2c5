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
    /// The server's URL (with several `--url`, the first).
    pub url: String,
    /// Every `--url`, one per server node, in the order given.
    pub urls: Vec<String>,
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
    /// The server's memory and CPU time, given `--server-pid`; with several, their sum (each
    /// process counted once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerStats>,
    /// Each `--server-pid` with the node (`--url`) it serves, in the order of `--url`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerStats>,
    /// The Redis server's memory and CPU time, given `--redis-pid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStats>,
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
    /// Whether every chat carried a `client_msg_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_ids: Option<bool>,
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

/// A server process as /proc saw it, or the sum of several (the report's `server`).
#[derive(Debug, Serialize)]
pub struct ServerStats {
    /// The process id; absent from a sum of several processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The node this process serves: its index in `--url` (per node only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<usize>,
    /// That node's URL (per node only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Connections of the rooms set up with a member on that node (and on any other `--url`
    /// this process was seen listening on): held through the run by `connections` and
    /// `throughput`, made over the run by `churn` (per node only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    #[serde(flatten)]
    pub rss: Rss,
    /// (after − before) / connections held, two per ready room or, per node, the node's
    /// `connections` (connections scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_connection_kib: Option<f64>,
    #[serde(flatten)]
    pub cpu: Cpu,
    /// Clock ticks per second used to convert /proc/PID/stat.
    pub clock_ticks_per_sec: u64,
    /// Whether that was read from `getconf CLK_TCK` (false: assumed 100).
    pub clock_ticks_measured: bool,
}

/// The Redis server the nodes share, as /proc saw it.
#[derive(Debug, Serialize)]
pub struct RedisStats {
    pub pid: u32,
    #[serde(flatten)]
    pub rss: Rss,
    /// (after − before) / rooms set up: Redis memory per room (connections scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_room_kib: Option<f64>,
    #[serde(flatten)]
    pub cpu: Cpu,
}

/// Resident memory of a process (or a sum) before and after the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rss {
    /// Resident memory before any client connected, in KiB.
    pub rss_before_kib: u64,
    /// Resident memory at the end of the idle hold (connections) or of the run, in KiB.
    pub rss_after_kib: u64,
}

/// CPU time of a process (or a sum) inside the measured window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cpu {
    /// CPU time (user + system, all threads) inside the measured window, in seconds.
    pub cpu_secs: f64,
    /// `cpu_secs` as a percentage of one core over the window.
    pub cpu_percent: f64,
    /// CPU time per delivered message, in µs (throughput). Per node, the node's CPU over
    /// every delivered message, so that the nodes' figures add up to the sum's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_message: Option<f64>,
    /// CPU time per completed session, in µs (churn), divided the same way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_session: Option<f64>,
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
        write!(
            f,
            "chat-bench {} against {}",
            self.scenario,
            self.urls.join(", ")
        )?;
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
        if s.client_msg_ids == Some(true) {
            setting.push("each with a client_msg_id".to_owned());
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
        if self.servers.len() > 1 {
            for node in &self.servers {
                let who = format!(
                    "pid {}, {}",
                    node.pid.unwrap_or_default(),
                    node.url.as_deref().unwrap_or_default()
                );
                let per = node.rss_per_connection_kib.map(|per| {
                    format!(
                        "; {} connections = {per:.2} KiB per connection",
                        thousands(node.connections.unwrap_or_default())
                    )
                });
                let label = format!("node {}", node.node.unwrap_or_default() + 1);
                write_process(f, &label, &who, &node.cpu, &node.rss, per)?;
            }
        }
        if let Some(server) = &self.server {
            let (label, who) = match (self.servers.len(), server.pid) {
                // One node watched of several: say which.
                (1, Some(pid)) if self.urls.len() > 1 => (
                    "server",
                    format!(
                        "pid {pid}, {}",
                        self.servers[0].url.as_deref().unwrap_or_default()
                    ),
                ),
                (0 | 1, Some(pid)) => ("server", format!("pid {pid}")),
                (n, Some(pid)) => ("servers", format!("all {n} (pid {pid}, counted once)")),
                (n, None) => ("servers", format!("all {n}")),
            };
            let per = server
                .rss_per_connection_kib
                .map(|per| format!(" = {per:.2} KiB per connection"));
            write_process(f, label, &who, &server.cpu, &server.rss, per)?;
        }
        if let Some(redis) = &self.redis {
            let per = redis
                .rss_per_room_kib
                .map(|per| format!(" = {per:.2} KiB per room"));
            write_process(
                f,
                "redis-server",
                &format!("pid {}", redis.pid),
                &redis.cpu,
                &redis.rss,
                per,
            )?;
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

/// Two lines of a process's (or a sum's) figures: CPU, then memory; `per` ends the memory
/// line (memory per connection or per room).
fn write_process(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    who: &str,
    cpu: &Cpu,
    rss: &Rss,
    per: Option<String>,
) -> fmt::Result {
    write!(
        f,
        "  {label:<13} {who}: CPU {:.2} s ({:.0}% of a core)",
        cpu.cpu_secs, cpu.cpu_percent,
    )?;
    if let Some(us) = cpu.cpu_us_per_message {
        write!(f, " = {us:.1} µs per delivered msg")?;
    }
    if let Some(us) = cpu.cpu_us_per_session {
        write!(f, " = {us:.0} µs per session")?;
    }
    writeln!(f)?;
    writeln!(
        f,
        "  {:<13} RSS {} KiB before, {} KiB after{}",
        "",
        thousands(rss.rss_before_kib),
        thousands(rss.rss_after_kib),
        per.unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A churn report in which every count is zero.
    fn clean_churn() -> Report {
        Report {
            scenario: "churn",
            url: "ws://127.0.0.1:8080/ws".to_string(),
            urls: vec!["ws://127.0.0.1:8080/ws".to_string()],
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
            servers: Vec::new(),
            redis: None,
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

    /// A server's figures for the tests (a node's if `node` is given, else a sum's), with 50 KiB
    /// of growth at 5 KiB per connection.
    fn server(pid: Option<u32>, node: Option<usize>, cpu_secs: f64) -> ServerStats {
        ServerStats {
            pid,
            node,
            url: node.map(|node| format!("ws://127.0.0.1:{}/ws", 8081 + node)),
            connections: node.map(|_| 10),
            rss: Rss {
                rss_before_kib: 1000,
                rss_after_kib: 1050,
            },
            rss_per_connection_kib: Some(5.0),
            cpu: Cpu {
                cpu_secs,
                cpu_percent: 100.0 * cpu_secs,
                cpu_us_per_message: None,
                cpu_us_per_session: None,
            },
            clock_ticks_per_sec: 100,
            clock_ticks_measured: true,
        }
    }

    /// With two nodes and Redis, the table has a pair of lines for each node, their sum and
    /// Redis; the JSON keeps `server` (the sum, without a pid) and adds `servers` and `redis`.
    /// With one server the table and `server` read as they always have.
    #[test]
    fn several_nodes_and_redis_are_reported_each_and_summed() {
        let mut report = clean_churn();
        report.server = Some(server(None, None, 2.0));
        report.servers = vec![
            server(Some(10), Some(0), 1.0),
            server(Some(11), Some(1), 1.0),
        ];
        report.redis = Some(RedisStats {
            pid: 12,
            rss: Rss {
                rss_before_kib: 500,
                rss_after_kib: 520,
            },
            rss_per_room_kib: Some(4.0),
            cpu: Cpu {
                cpu_secs: 0.5,
                cpu_percent: 50.0,
                cpu_us_per_message: Some(2.5),
                cpu_us_per_session: None,
            },
        });
        let table = report.to_string();
        for line in [
            "node 1        pid 10, ws://127.0.0.1:8081/ws: CPU 1.00 s (100% of a core)",
            "node 2        pid 11, ws://127.0.0.1:8082/ws: CPU 1.00 s",
            "1,050 KiB after; 10 connections = 5.00 KiB per connection",
            "servers       all 2: CPU 2.00 s (200% of a core)",
            "redis-server  pid 12: CPU 0.50 s (50% of a core) = 2.5 µs per delivered msg",
            "520 KiB after = 4.00 KiB per room",
        ] {
            assert!(table.contains(line), "no {line:?} in\n{table}");
        }
        let json = serde_json::to_value(&report).expect("serialises");
        assert!(json["server"].get("pid").is_none(), "{json}");
        assert_eq!(json["server"]["cpu_secs"], 2.0);
        assert_eq!(json["servers"][1]["pid"], 11);
        assert_eq!(json["servers"][1]["node"], 1);
        assert_eq!(json["servers"][1]["url"], "ws://127.0.0.1:8082/ws");
        assert_eq!(json["servers"][1]["connections"], 10);
        assert_eq!(json["servers"][1]["rss_per_connection_kib"], 5.0);
        assert_eq!(json["redis"]["rss_per_room_kib"], 4.0);
        assert_eq!(json["redis"]["cpu_us_per_message"], 2.5);

        report.server = Some(server(Some(10), None, 1.0));
        report.servers = vec![server(Some(10), Some(0), 1.0)];
        report.redis = None;
        let table = report.to_string();
        assert!(
            table.contains("server        pid 10: CPU 1.00 s (100% of a core)")
                && table
                    .contains("RSS 1,000 KiB before, 1,050 KiB after = 5.00 KiB per connection")
                && !table.contains("node 1"),
            "{table}"
        );
        let json = serde_json::to_value(&report).expect("serialises");
        let server = json["server"].as_object().expect("an object");
        let keys: Vec<&str> = server.keys().map(String::as_str).collect();
        // serde_json's map is sorted by key.
        assert_eq!(
            keys,
            [
                "clock_ticks_measured",
                "clock_ticks_per_sec",
                "cpu_percent",
                "cpu_secs",
                "pid",
                "rss_after_kib",
                "rss_before_kib",
                "rss_per_connection_kib",
            ],
            "one server's `server` has the fields it always had"
        );
    }
}
