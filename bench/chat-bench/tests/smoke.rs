//! Smoke tests of the `chat-bench` load generator: each scenario runs for about a second
//! against a real chat-server started in this process, through the built binary with
//! `--json`, so that the tool cannot silently rot as the server changes.
//!
//! They pin down that each scenario does real work and reports it, not performance figures:
//! those belong in BENCHMARKS.md; that a run the server's limits refused exits non-zero
//! and names the server flag to change; and that several `--url` spread each room's two
//! members over two nodes (here two URLs of one server, since servers that share nothing
//! cannot join each other's rooms: which is what the last test uses to show the spread).

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use chat_server::Config;

/// How long a test waits for the server to stop, and a third of how long for a run of the
/// tool, before calling it a failure. Only a failing test ever waits this long.
const PATIENCE: Duration = Duration::from_secs(10);

/// A chat server running in this process on 127.0.0.1 and a free port.
struct TestServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a server with `config`.
    async fn with_config(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(chat_server::run(listener, config, async {
            let _ = shutdown_rx.await;
        }));
        TestServer {
            addr,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        }
    }

    /// The WebSocket URL.
    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Asks the server to shut down and waits until `run` returns.
    async fn shut_down(mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let task = self.task.take().expect("server task");
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the server stops within the patience period")
            .expect("the server task does not panic")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A server with its per-client limits off: the scenarios send far more than a person
/// would (the default rate limit is 20 messages a second per connection).
async fn unlimited_server() -> TestServer {
    TestServer::with_config(Config::default().unlimited()).await
}

/// Runs `chat-bench` with `args` against `server` and returns its output; the run itself is
/// bounded by the scenario's own duration plus the tool's step timeouts.
async fn chat_bench(server: &TestServer, args: &[&str]) -> Output {
    chat_bench_at(&[server.ws_url()], args).await
}

/// Runs `chat-bench` with `args` against the server nodes at `urls` (one `--url` each).
async fn chat_bench_at(urls: &[String], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat-bench"));
    for url in urls {
        command.arg("--url").arg(url);
    }
    let run = command
        .args(["--quiet", "--timeout", "5s"])
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PATIENCE * 3, run)
        .await
        .expect("chat-bench finishes")
        .expect("chat-bench starts")
}

/// Runs `chat-bench ... --json` and returns its report, asserting a zero exit status.
async fn report(server: &TestServer, args: &[&str]) -> Value {
    report_at(&[server.ws_url()], args).await
}

/// Runs `chat-bench ... --json` against the nodes at `urls` and returns its report,
/// asserting a zero exit status.
async fn report_at(urls: &[String], args: &[&str]) -> Value {
    let output = chat_bench_at(urls, &[args, &["--json"]].concat()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chat-bench {args:?} failed with {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("one JSON object ({err}): {stdout}"))
}

/// A server with its per-client limits off except those `tighten` sets: a load that one of
/// them refuses.
async fn server_limited(tighten: impl FnOnce(Config) -> Config) -> TestServer {
    TestServer::with_config(tighten(Config::default().unlimited())).await
}

/// Runs `chat-bench` with `args` and returns its stdout and stderr, asserting exit status 1:
/// the run finished and reported, but some of it failed.
async fn failed_run(server: &TestServer, args: &[&str]) -> (String, String) {
    let output = chat_bench(server, args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "chat-bench {args:?} should fail its run\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

/// The number at `pointer` in `report` (e.g. `/messages/delivered`).
fn number(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {report}"))
}

/// Every connection asked for was opened and every room set up, with no error.
fn assert_rooms_all_up(report: &Value, rooms: f64) {
    assert_eq!(number(report, "/connections/requested"), 2.0 * rooms);
    assert_eq!(number(report, "/connections/opened"), 2.0 * rooms);
    assert_eq!(number(report, "/connections/failed"), 0.0);
    assert_eq!(number(report, "/connections/rooms_ready"), rooms);
    assert_eq!(number(report, "/errors/total"), 0.0, "{report}");
}

/// `connections` opens 2 clients per room, joins each pair, holds them, and reads the
/// server's memory through --server-pid (here the test process, which runs the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opens_every_room_and_reads_server_memory() {
    let server = unlimited_server().await;
    let pid = std::process::id().to_string();
    let report = report(
        &server,
        &[
            "connections",
            "--rooms",
            "5",
            "--hold",
            "1s",
            "--server-pid",
            &pid,
        ],
    )
    .await;
    assert_eq!(report["scenario"], "connections");
    assert_rooms_all_up(&report, 5.0);
    assert_eq!(report["url"], server.ws_url());
    assert!(number(&report, "/server/rss_after_kib") > 0.0);
    assert!(report["server"]["rss_per_connection_kib"].is_number());
    assert_eq!(report["server"]["pid"], std::process::id());
    // One node: `servers` has its one entry, holding all ten connections.
    assert_eq!(number(&report, "/servers/0/connections"), 10.0, "{report}");
    assert!(report["servers"].get(1).is_none(), "{report}");
    assert!(report.get("redis").is_none(), "{report}");
    server.shut_down().await.expect("clean shutdown");
}

/// `connections` with two `--url` (both of one server here) runs end to end, and with
/// `--server-pid` given once per node the report gives each node's memory and CPU and their
/// sum (the one process counted once; seen listening on both URLs' port, it holds all the
/// connections). `--redis-pid` (the test process again, standing in) adds Redis's memory per
/// room and CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_urls_report_each_node_and_redis() {
    let server = unlimited_server().await;
    let pid = std::process::id().to_string();
    let urls = [server.ws_url(), server.ws_url()];
    let report = report_at(
        &urls,
        &[
            "connections",
            "--rooms",
            "6",
            "--hold",
            "1s",
            "--server-pid",
            &pid,
            "--server-pid",
            &pid,
            "--redis-pid",
            &pid,
        ],
    )
    .await;
    assert_rooms_all_up(&report, 6.0);
    assert_eq!(report["urls"].as_array().map(Vec::len), Some(2), "{report}");
    for node in 0..2 {
        let entry = &report["servers"][node];
        assert_eq!(entry["node"], node, "{report}");
        assert_eq!(entry["pid"], std::process::id());
        assert_eq!(entry["url"], server.ws_url());
        assert_eq!(number(entry, "/connections"), 12.0, "{report}");
        assert!(number(entry, "/rss_after_kib") > 0.0);
        assert!(entry["rss_per_connection_kib"].is_number(), "{report}");
        assert!(entry["cpu_percent"].is_number(), "{report}");
    }
    assert!(report["servers"].get(2).is_none(), "{report}");
    assert_eq!(
        report["server"]["pid"],
        std::process::id(),
        "one process: {report}"
    );
    assert!(report["server"]["rss_per_connection_kib"].is_number());
    assert_eq!(report["redis"]["pid"], std::process::id());
    assert!(number(&report, "/redis/rss_after_kib") > 0.0);
    assert!(report["redis"]["rss_per_room_kib"].is_number(), "{report}");
    assert!(report["redis"]["cpu_secs"].is_number(), "{report}");
    let notes = report["notes"].to_string();
    assert!(notes.contains("is given twice"), "{notes}");
    server.shut_down().await.expect("clean shutdown");
}

/// `throughput` over two `--url` from two worker processes: the rooms numbered across the
/// workers still put every pair on both nodes, every message arrives, and each node gets its
/// CPU per delivered message, as does Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_urls_throughput_in_two_workers_reports_cpu_per_node() {
    let server = unlimited_server().await;
    let pid = std::process::id().to_string();
    let urls = [server.ws_url(), server.ws_url()];
    let report = report_at(
        &urls,
        &[
            "throughput",
            "--rooms",
            "4",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--workers",
            "2",
            "--server-pid",
            &pid,
            "--server-pid",
            &pid,
            "--redis-pid",
            &pid,
        ],
    )
    .await;
    assert_eq!(number(&report, "/workers"), 2.0);
    assert_rooms_all_up(&report, 4.0);
    assert!(number(&report, "/messages/delivered") > 0.0);
    assert_eq!(
        number(&report, "/latency_us/count"),
        number(&report, "/messages/sent"),
        "every message sent in the window is received once by the peer: {report}"
    );
    for node in 0..2 {
        let entry = &report["servers"][node];
        assert_eq!(number(entry, "/connections"), 8.0, "{report}");
        assert!(entry["cpu_us_per_message"].is_number(), "{report}");
    }
    assert!(
        report["server"]["cpu_us_per_message"].is_number(),
        "{report}"
    );
    assert!(
        report["redis"]["cpu_us_per_message"].is_number(),
        "{report}"
    );
    assert!(
        report["redis"].get("rss_per_room_kib").is_none(),
        "{report}"
    );
    server.shut_down().await.expect("clean shutdown");
}

/// `churn` over two `--url` from two worker processes completes every session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_urls_churn_completes_every_session() {
    let server = unlimited_server().await;
    let urls = [server.ws_url(), server.ws_url()];
    let report = report_at(
        &urls,
        &[
            "churn",
            "--rate",
            "20",
            "--duration",
            "1s",
            "--workers",
            "2",
        ],
    )
    .await;
    let started = number(&report, "/sessions/started");
    assert!(started > 0.0, "{report}");
    assert_eq!(number(&report, "/sessions/completed"), started);
    assert_eq!(number(&report, "/errors/total"), 0.0, "{report}");
    server.shut_down().await.expect("clean shutdown");
}

/// Two servers that share nothing, each one `--url`: every room's guest is sent to the other
/// server than its host, which has never heard of the room, so every join gets
/// `ROOM_NOT_FOUND`, from one worker process or two. That every single room fails so is the
/// proof that no room has both members on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_unshared_servers_refuse_every_join() {
    let first = unlimited_server().await;
    let second = unlimited_server().await;
    let urls = [first.ws_url(), second.ws_url()];
    for workers in ["1", "2"] {
        let output = chat_bench_at(
            &urls,
            &[
                "connections",
                "--rooms",
                "6",
                "--hold",
                "0s",
                "--workers",
                workers,
                "--json",
            ],
        )
        .await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{stdout}");
        let report: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|err| panic!("one JSON object ({err}): {stdout}"));
        assert_eq!(
            number(&report, "/connections/rooms_failed"),
            6.0,
            "{report}"
        );
        assert_eq!(number(&report, "/connections/opened"), 12.0, "{report}");
        assert_eq!(
            number(&report, "/errors/by_kind/server error ROOM_NOT_FOUND"),
            6.0,
            "{report}"
        );
    }
    first.shut_down().await.expect("clean shutdown");
    second.shut_down().await.expect("clean shutdown");
}

/// Closed-loop `throughput` delivers messages to the peers, in order (a lost or reordered
/// message would be an error), and records their latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_throughput_delivers_and_measures_latency() {
    let server = unlimited_server().await;
    let report = report(
        &server,
        &[
            "throughput",
            "--rooms",
            "5",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--in-flight",
            "2",
        ],
    )
    .await;
    assert_rooms_all_up(&report, 5.0);
    let delivered = number(&report, "/messages/delivered");
    assert!(delivered > 0.0, "{report}");
    assert!(number(&report, "/latency_us/count") > 0.0);
    assert!(number(&report, "/latency_us/p50_us") <= number(&report, "/latency_us/max_us"));
    assert!(number(&report, "/messages/delivered_per_sec") > 0.0);
    server.shut_down().await.expect("clean shutdown");
}

/// With `--client-msg-ids` every chat carries an id of its own: a server that drops repeats
/// (chat-server does) delivers every message sent, once, and nothing is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_msg_ids_are_distinct_per_sender() {
    let server = unlimited_server().await;
    let report = report(
        &server,
        &[
            "throughput",
            "--rooms",
            "3",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--in-flight",
            "2",
            "--client-msg-ids",
        ],
    )
    .await;
    assert_rooms_all_up(&report, 3.0);
    assert_eq!(report["settings"]["client_msg_ids"], true, "{report}");
    let sent = number(&report, "/messages/sent");
    assert!(sent > 0.0, "{report}");
    assert_eq!(
        number(&report, "/latency_us/count"),
        sent,
        "every message sent in the window is received once by the peer: {report}"
    );
    assert_eq!(number(&report, "/errors/total"), 0.0, "{report}");
    server.shut_down().await.expect("clean shutdown");
}

/// Fixed-rate `throughput` sends at the offered rate (within a tenth) and reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_throughput_keeps_the_offered_rate() {
    let server = unlimited_server().await;
    let report = report(
        &server,
        &[
            "throughput",
            "--rooms",
            "5",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--rate",
            "200",
        ],
    )
    .await;
    assert_rooms_all_up(&report, 5.0);
    assert_eq!(number(&report, "/messages/offered_per_sec"), 200.0);
    let sent = number(&report, "/messages/sent_per_sec");
    assert!(
        (180.0..=220.0).contains(&sent),
        "sent {sent}/s of 200 offered"
    );
    assert!(number(&report, "/messages/delivered") > 0.0);
    server.shut_down().await.expect("clean shutdown");
}

/// `churn` runs whole sessions (connect, name, create/join, chat, leave, close) at a rate,
/// and every session started completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_completes_every_session() {
    let server = unlimited_server().await;
    let report = report(&server, &["churn", "--rate", "20", "--duration", "1s"]).await;
    let started = number(&report, "/sessions/started");
    assert!(started > 0.0, "{report}");
    assert_eq!(number(&report, "/sessions/completed"), started);
    assert_eq!(number(&report, "/sessions/failed"), 0.0);
    assert_eq!(number(&report, "/sessions/unfinished"), 0.0);
    assert_eq!(number(&report, "/errors/total"), 0.0, "{report}");
    server.shut_down().await.expect("clean shutdown");
}

/// With --workers 2 the clients run in two child processes (each from its own 127.0.0.x)
/// and the parent merges their counts and histograms into one report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_are_merged_into_one_report() {
    let server = unlimited_server().await;
    let report = report(
        &server,
        &[
            "throughput",
            "--rooms",
            "4",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--workers",
            "2",
        ],
    )
    .await;
    assert_eq!(number(&report, "/workers"), 2.0);
    assert_rooms_all_up(&report, 4.0);
    assert!(number(&report, "/messages/delivered") > 0.0);
    assert_eq!(
        number(&report, "/latency_us/count"),
        number(&report, "/messages/sent"),
        "every message sent in the window is received once by the peer: {report}"
    );
    server.shut_down().await.expect("clean shutdown");
}

/// Asking for more sockets than the given workers can hold is refused up front, with the
/// number of workers that would do, instead of failing obscurely midway.
#[tokio::test]
async fn too_many_sockets_for_one_process_is_refused_clearly() {
    let server = unlimited_server().await;
    let output = chat_bench(
        &server,
        &["connections", "--rooms", "1000000", "--workers", "1"],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("needs at least") && stderr.contains("pass --workers"),
        "{stderr}"
    );
    server.shut_down().await.expect("clean shutdown");
}

/// `connections` against a server that takes at most 4 connections from one address: 5 rooms
/// need 10, so at least 3 rooms fail on HTTP 429. The run exits with status 1, says on stderr
/// what failed, and the report names `--max-connections-per-ip 0` once, for all the refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_cap_fails_connections_and_names_its_flag() {
    let server = server_limited(|config| Config {
        max_connections_per_ip: 4,
        ..config
    })
    .await;
    let (stdout, stderr) =
        failed_run(&server, &["connections", "--rooms", "5", "--hold", "0s"]).await;
    assert!(
        stdout.contains("HTTP 429") && stdout.contains("start it with --max-connections-per-ip 0"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("--max-connections-per-ip 0").count(),
        1,
        "the advice is given once per limit: {stdout}"
    );
    assert!(
        stderr.contains("the run failed:")
            && stderr.contains("connections failed")
            && stderr.contains("rooms could not be created or joined")
            && stderr.contains("--max-connections-per-ip 0"),
        "{stderr}"
    );
    server.shut_down().await.expect("clean shutdown");
}

/// `throughput` (in two worker processes) against a server that lets a connection send one
/// message a second: every host's `create_room` right after its `set_username` gets
/// `RATE_LIMITED`, so no room is set up. The run exits with status 1 and the JSON report
/// counts the refusals under `rate_limited`, merged from both workers, with the flags
/// `--rate-limit 0` and `--max-failed-joins 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_fails_rooms_and_names_its_flags() {
    let server = server_limited(|config| Config {
        rate_limit: 1,
        rate_burst: 1,
        ..config
    })
    .await;
    let (stdout, stderr) = failed_run(
        &server,
        &[
            "throughput",
            "--rooms",
            "4",
            "--duration",
            "1s",
            "--workers",
            "2",
            "--json",
        ],
    )
    .await;
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("one JSON object ({err}): {stdout}"));
    assert_eq!(number(&report, "/workers"), 2.0);
    assert_eq!(
        number(&report, "/connections/rooms_failed"),
        4.0,
        "{report}"
    );
    let refused = report
        .pointer("/errors/refused")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no /errors/refused list in {report}"));
    assert_eq!(refused.len(), 1, "one entry per limit: {report}");
    assert_eq!(refused[0]["limit"], "rate_limited");
    assert_eq!(
        number(&refused[0], "/count"),
        number(&report, "/errors/total"),
        "every failure was a RATE_LIMITED refusal: {report}"
    );
    assert_eq!(
        refused[0]["flags"],
        "--rate-limit 0 (and --max-failed-joins 0)"
    );
    assert!(
        stderr
            .contains("with RATE_LIMITED: start it with --rate-limit 0 (and --max-failed-joins 0)"),
        "{stderr}"
    );
    server.shut_down().await.expect("clean shutdown");
}

/// `churn` against a server that holds one connection at most: each session's guest gets
/// HTTP 503, so every session fails. The run exits with status 1, says on stderr that
/// sessions failed, and the report names `--max-connections 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_fails_churn_sessions_and_names_its_flag() {
    let server = server_limited(|config| Config {
        max_connections: 1,
        ..config
    })
    .await;
    let (stdout, stderr) =
        failed_run(&server, &["churn", "--rate", "20", "--duration", "1s"]).await;
    assert!(
        stdout.contains("HTTP 503") && stdout.contains("start it with --max-connections 0"),
        "{stdout}"
    );
    assert!(
        stderr.contains("sessions failed") && stderr.contains("--max-connections 0"),
        "{stderr}"
    );
    server.shut_down().await.expect("clean shutdown");
}
