//! `chat-bench`: a load generator for chat protocol v1 servers.
//!
//! It speaks the wire protocol only (it does not link the `chat_server` library), so it
//! measures chat-server and the Node reference peer alike:
//!
//! ```text
//! chat-bench connections --rooms 9000 --server-pid $(pidof chat-server)
//! chat-bench throughput  --rooms 1000 --duration 20s [--in-flight 1 | --rate 5000] [--size 64]
//! chat-bench churn       --rate 50 --duration 10s
//! chat-bench --url ws://127.0.0.1:8081/ws --url ws://127.0.0.1:8082/ws \
//!            --server-pid $PID1 --server-pid $PID2 --redis-pid $(pidof redis-server) \
//!            throughput --rooms 1000     # two nodes: each room's members on different ones
//! ```
//!
//! # Layout
//!
//! - `cli`: the command line (clap).
//! - `coordinator`: runs the workers through the phases, samples the server, builds the report.
//! - `worker`: owns client sockets and runs a scenario; in-process or as a child process.
//! - `scenarios`: what the clients do: `rooms` (connections, throughput) and `churn`.
//! - `client`: one protocol client over one WebSocket (connect, set up a room, read, close).
//! - `protocol`: the wire messages, and the stamp that carries send times in chat content.
//! - `measure`: clock and window, counters, latency histogram, countdowns.
//! - `limits`: how many sockets one process can hold here, hence how many workers.
//! - `probe`: the servers (`--server-pid`, one per node) and Redis (`--redis-pid`) sampled
//!   from /proc, and their figures.
//! - `procfs`: memory and CPU time of a process from /proc.
//! - `report`: the results, as a table or as JSON.
//! - `refusal`: the server's limits refusing the load, and the flags that lift them.
//!
//! # Exit status
//!
//! - 0: the run finished and everything it asked of the server worked.
//! - 1: the run finished and its report is printed, but something failed: a connection (TCP,
//!   WebSocket handshake or upgrade refused), a room that could not be created or joined, a
//!   churn session, or any other error (an `error` reply where success was due, a lost
//!   message, a timeout). stderr says what failed and how many, and, when the server's
//!   limits refused the load (`RATE_LIMITED`, HTTP 429, HTTP 503), which flag to start it with.
//! - 2: the run could not be made or finished (a bad option or URL, more sockets than the
//!   workers can hold, /proc of --server-pid or --redis-pid unreadable, server pids that
//!   cannot be paired with the URLs, a worker that died).

mod cli;
mod client;
mod coordinator;
mod limits;
mod measure;
mod probe;
mod procfs;
mod protocol;
mod refusal;
mod report;
mod scenarios;
mod worker;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Worker = cli.command {
        return match worker::run_child().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("chat-bench worker: {message}");
                ExitCode::FAILURE
            }
        };
    }

    let json = cli.common.json;
    match coordinator::run(cli.common, cli.command).await {
        Ok(report) => {
            if json {
                match serde_json::to_string(&report) {
                    Ok(text) => println!("{text}"),
                    Err(err) => {
                        eprintln!("chat-bench: cannot encode the report: {err}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{report}");
            }
            // The run finished and its figures are printed either way; a non-zero status
            // tells scripts that some of it failed, and stderr tells whoever runs it what, even
            // when stdout goes to a file or is JSON.
            let failures = report.failures();
            if failures.is_empty() {
                return ExitCode::SUCCESS;
            }
            eprintln!("chat-bench: the run failed: {}", failures.join(", "));
            for refused in &report.errors.refused {
                eprintln!("chat-bench: {}", refused.advice);
            }
            ExitCode::from(1)
        }
        Err(message) => {
            eprintln!("chat-bench: {message}");
            ExitCode::from(2)
        }
    }
}
