//! The command line: three scenarios and the options they share.
//!
//! Every option that an operator may want to set from a script also reads an environment
//! variable `CHAT_BENCH_…`, like the server's own `CHAT_…` variables.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Parsed command line of `chat-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "chat-bench",
    version,
    about = "Load generator for chat protocol v1 servers (chat-server, the Node peer, or any other)",
    long_about = "Load generator for chat protocol v1 servers.\n\n\
        Opens rooms of two clients, makes them chat, and reports connections, delivered \
        messages per second, send-to-receipt latency and, given --server-pid, the server's \
        memory and CPU time read from /proc. Targets must be loopback addresses.\n\n\
        Exit status: 0 when everything worked; 1 when the run finished but connections, rooms, \
        sessions or messages failed (stderr says what and how many, and which server flag to \
        change when the server's limits refused the load); 2 when the run could not be made."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every scenario takes; they may be written before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// WebSocket endpoint of the server under test (ws:// on a loopback address). Repeat it
    /// for several nodes of one service (sharing rooms through Redis): the two members of
    /// room r then connect to different nodes, the host to URL r mod N and the guest to URL
    /// (r + 1) mod N, and the guest joins with the code the host's node created. Write every
    /// --url on the same side of the scenario name (CHAT_BENCH_URL takes them comma-separated).
    #[arg(
        long = "url",
        value_name = "URL",
        global = true,
        env = "CHAT_BENCH_URL",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub urls: Vec<String>,

    /// Process id of the server: its resident memory (VmRSS) and CPU time are read from
    /// /proc/PID before, during and after the run. With several --url, give one per node
    /// (in the order of --url; chat-bench pairs them by their listening port when /proc shows
    /// it, so any order does then; write them all on the same side of the scenario name):
    /// each node is reported, and their sum.
    #[arg(
        long = "server-pid",
        value_name = "PID",
        global = true,
        env = "CHAT_BENCH_SERVER_PID",
        value_delimiter = ','
    )]
    pub server_pids: Vec<u32>,

    /// Process id of the Redis server the nodes share: its CPU time per delivered message (or
    /// session) and, for `connections`, its memory growth per room are reported too.
    #[arg(long, value_name = "PID", global = true, env = "CHAT_BENCH_REDIS_PID")]
    pub redis_pid: Option<u32>,

    /// Print one JSON object on stdout instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    /// Number of client processes. Default: one, or as many as the socket count needs
    /// given this machine's open-file limit and local ports per source address.
    #[arg(long, global = true, env = "CHAT_BENCH_WORKERS", value_parser = clap::value_parser!(u32).range(1..=200))]
    pub workers: Option<u32>,

    /// Time allowed for each protocol step (connect, each reply, closing).
    #[arg(long, global = true, env = "CHAT_BENCH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Rooms being set up at the same time (each is a few round trips).
    #[arg(long, global = true, env = "CHAT_BENCH_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// No progress line on stderr.
    #[arg(long, global = true)]
    pub quiet: bool,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open N rooms (2N clients, each pair joined), hold them idle, and report how many
    /// succeeded, how long it took and the server's memory per connection.
    Connections(ConnectionsArgs),

    /// Make both members of N rooms chat continuously; report delivered messages per second,
    /// send-to-receipt latency and the server's CPU time per delivered message.
    Throughput(ThroughputArgs),

    /// Start short sessions (connect, name, create or join, chat, leave) at a fixed rate;
    /// report completed sessions per second and failures.
    Churn(ChurnArgs),

    /// Internal: run as a child process of another chat-bench, reading its plan on stdin.
    #[command(hide = true)]
    Worker,
}

/// Options of `connections`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// Number of rooms; two connections each.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rooms: u64,

    /// How long to hold the connections idle once all rooms are set up; the server's
    /// memory is read at the end of this.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
}

/// Options of `throughput`.
#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    /// Number of rooms; both members of each send.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rooms: u64,

    /// Length of the measured window.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Sending before the measured window starts, so that caches, allocators and JITs settle;
    /// nothing sent or received then is counted.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Closed loop: each sender keeps up to K messages unacknowledged (a message is
    /// acknowledged when the server echoes it back to its sender). The default mode, K = 1.
    #[arg(long, conflicts_with = "rate", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub in_flight: Option<u32>,

    /// Open loop: offer R messages per second in total, spread evenly over all senders.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Length of each chat message's content in bytes (at least the ~20 bytes that carry the
    /// sequence number and send time; the protocol allows up to 4096 characters).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub size: u32,

    /// Give every chat a `client_msg_id`, as the web client does (servers that deduplicate
    /// retries then remember each sender's recent ids).
    #[arg(long)]
    pub client_msg_ids: bool,
}

/// Options of `churn`.
#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Sessions started per second (a session is one room: two clients).
    #[arg(long, value_parser = parse_rate)]
    pub rate: f64,

    /// How long new sessions are started for.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Chat messages each of the two members sends per session.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub messages: u32,

    /// Most sessions in progress at once; a start that would exceed it is skipped and
    /// reported, so that a stalled server cannot make the client open sockets without bound.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_sessions: u32,
}

/// Parses a positive, finite rate such as `5000` or `0.5`.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(format!("the rate must be a positive number, not {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The clap definition is consistent (no conflicting names, valid defaults).
    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    /// `--in-flight` and `--rate` choose between closed and open loop, so both at once is refused.
    #[test]
    fn in_flight_and_rate_conflict() {
        let parsed = Cli::try_parse_from([
            "chat-bench",
            "throughput",
            "--rooms",
            "5",
            "--in-flight",
            "2",
            "--rate",
            "100",
        ]);
        assert!(parsed.is_err());
    }

    /// Common options may follow the subcommand, as in `chat-bench throughput --rooms 5 --json`.
    #[test]
    fn common_options_after_the_subcommand() {
        let cli = Cli::try_parse_from(["chat-bench", "churn", "--rate", "5", "--json"])
            .expect("valid command line");
        assert!(cli.common.json);
    }

    /// `--url` and `--server-pid` may be repeated, one per node, before or after the
    /// subcommand (all of one flag on the same side: clap keeps a global option's values from
    /// one side only); one `--url` is the default.
    #[test]
    fn urls_and_server_pids_repeat() {
        for (before, after) in [(4, 0), (0, 4), (2, 2)] {
            let flags = [
                "--url",
                "ws://127.0.0.1:8081/ws",
                "--url",
                "ws://127.0.0.1:8082/ws",
                "--server-pid",
                "10",
                "--server-pid",
                "11",
            ];
            let args = ["chat-bench"]
                .iter()
                .chain(&flags[..2 * before])
                .chain(&["connections", "--rooms", "2", "--redis-pid", "12"])
                .chain(&flags[2 * before..2 * (before + after)])
                .copied();
            let cli = Cli::try_parse_from(args).expect("valid command line");
            assert_eq!(
                cli.common.urls,
                ["ws://127.0.0.1:8081/ws", "ws://127.0.0.1:8082/ws"]
            );
            assert_eq!(cli.common.server_pids, [10, 11]);
            assert_eq!(cli.common.redis_pid, Some(12));
        }

        let cli = Cli::try_parse_from(["chat-bench", "churn", "--rate", "5"]).expect("valid");
        assert_eq!(cli.common.urls, ["ws://127.0.0.1:8080/ws"]);
        assert!(cli.common.server_pids.is_empty());
    }

    /// Rates must be positive and finite.
    #[test]
    fn rate_must_be_positive() {
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-3").is_err());
        assert!(parse_rate("inf").is_err());
        assert_eq!(parse_rate("2.5"), Ok(2.5));
    }
}
