//! Connection-level behaviour: HTTP routing, the heartbeat, slow consumers, shutdown and signals.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use chat_server::Config;
use common::{PATIENCE, ServerProcess, TestClient, TestServer, http_request, v1_config};

/// `GET /ws` without an upgrade is answered with a 4xx (426 Upgrade Required).
#[tokio::test]
async fn ws_without_upgrade_is_a_client_error() {
    let server = TestServer::start().await;
    let (status, head, _) = server.http_get("/ws").await;
    assert_eq!(status, 426, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
}

/// A WebSocket upgrade on any other path is 404, whether or not a page lives there: `/`,
/// `/healthz` and the web client's files answer a plain GET, never an upgrade.
#[tokio::test]
async fn an_upgrade_on_another_path_is_404() {
    let server = TestServer::start().await;
    for path in [
        "/chat",
        "/",
        "/healthz",
        "/app.js",
        "/style.css",
        "/metrics",
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: Upgrade, close\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        let (status, head, _) = http_request(server.addr, &request).await;
        assert_eq!(status, 404, "{path}: {head}");
    }
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/elsewhere", server.addr)).await;
    assert!(refused.is_err());
}

/// `/healthz` answers `ok`; unknown paths are 404.
#[tokio::test]
async fn healthz_and_not_found() {
    let server = TestServer::start().await;
    let (status, head, body) = server.http_get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    assert_eq!(server.http_get("/nothing-here").await.0, 404);
}

/// `/metrics` is Prometheus text, and its counters move as messages flow.
#[tokio::test]
async fn metrics_follow_the_traffic() {
    let server = TestServer::v1().await;
    let (mut host, mut guest, _) = server.pair("ada", "grace").await;
    host.chat("one").await;
    host.chat("two").await;
    host.expect("chat").await;
    host.expect("chat").await;
    guest.expect("chat").await;
    guest.expect("chat").await;
    guest.send(json!({"type": "create_room"})).await;
    guest.expect_error("ALREADY_IN_ROOM").await;
    server.http_get("/ws").await; // A refused handshake.

    let (status, head, body) = server.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for line in [
        "chat_connections 2",
        "chat_rooms 1",
        "chat_messages_relayed_total 2",
        r#"chat_errors_sent_total{code="ALREADY_IN_ROOM"} 1"#,
        "chat_handshakes_refused_total 1",
        "chat_slow_consumers_disconnected_total 0",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in:\n{body}"
        );
    }

    drop(guest);
    host.expect("peer_left").await;
    let (_, _, body) = server.http_get("/metrics").await;
    assert!(body.lines().any(|l| l == "chat_connections 1"), "{body}");
}

/// The server pings every heartbeat interval, and a client that answers stays connected.
#[tokio::test]
async fn the_server_pings_and_a_live_client_stays() {
    let config = Config {
        heartbeat_interval: Duration::from_millis(100),
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let mut client = server.named("ada").await;
    // Reading answers pings (tungstenite replies as it reads). Wait for several pings, which
    // spans well over two intervals, then show the connection still works.
    for _ in 0..4 {
        let frame = tokio::time::timeout(PATIENCE, client.ws.next()).await;
        let frame = frame
            .expect("a ping in time")
            .expect("open")
            .expect("valid frame");
        assert!(matches!(frame, Message::Ping(_)), "{frame:?}");
    }
    assert_eq!(
        client.set_username("still here").await["username"],
        "still here"
    );
}

/// A client that sends nothing, not even a pong, for two heartbeat intervals is disconnected,
/// and its peer gets `peer_left` with `"disconnected"`.
#[tokio::test]
async fn a_silent_client_is_disconnected() {
    let config = Config {
        heartbeat_interval: Duration::from_millis(150),
        ..v1_config()
    };
    let server = TestServer::with_config(config).await;
    let (mut host, guest, _) = server.pair("ada", "grace").await;
    // The guest never reads again, so tungstenite never answers the server's pings for it.
    let started = Instant::now();
    assert_eq!(
        host.expect("peer_left").await,
        json!({"type": "peer_left", "username": "grace", "reason": "disconnected"})
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    drop(guest);
}

/// A client that stops reading while its peer keeps talking is disconnected as a slow consumer:
/// it reads what was queued for it and then close code 1008, its peer is told, and the peer's
/// own connection carries on.
#[tokio::test]
async fn a_slow_consumer_is_disconnected() {
    // The host sends far faster than a person: rate limiting off.
    let config = Config {
        outbound_queue: 8,
        ..v1_config().unlimited()
    };
    let server = TestServer::with_config(config).await;
    let (mut host, mut guest, _) = server.pair("ada", "grace").await;
    let big = "x".repeat(4000);
    // The guest reads nothing while the host talks until the server gives up on the guest. The
    // host reads its own echoes as it goes, so only the guest falls behind.
    let mut sent = 0;
    let reason = loop {
        host.chat(&big).await;
        sent += 1;
        let message = host.recv().await;
        match message["type"].as_str() {
            Some("chat") => assert!(sent < 100_000, "the slow guest was never disconnected"),
            Some("peer_left") => break message["reason"].clone(),
            _ => panic!("unexpected {message}"),
        }
    };
    assert_eq!(reason, "disconnected");
    host.chat("still talking").await;
    host.expect("chat").await;

    // The guest finds its queue drained and then a 1008 close saying why.
    let (_, close) = guest.read_to_close().await;
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "too slow: fell too far behind");
    let (_, _, metrics) = server.http_get("/metrics").await;
    assert!(
        metrics.contains("chat_slow_consumers_disconnected_total 1"),
        "{metrics}"
    );
}

/// A client that closes the connection gets the server's close reply: the close handshake
/// completes instead of the socket just going away.
#[tokio::test]
async fn a_client_close_is_answered() {
    let server = TestServer::start().await;
    let mut client = server.named("ada").await;
    client.ws.close(None).await.expect("send a close frame");
    // `expect_close` fails on a stream that ends or errors without a close frame.
    client.expect_close().await;
}

/// A client that closes while messages are still going out to it gets the close reply too.
/// tungstenite refuses to send anything after it has read a client's Close frame, so a write task
/// in the middle of a batch at that moment must not give up: it still owes the reply. The race
/// is a matter of timing, hence the two worker threads and the many rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closing_in_the_middle_of_a_busy_conversation_is_answered() {
    let server = TestServer::start().await;
    for _ in 0..50 {
        let (mut ada, mut grace, _) = server.pair("ada", "grace").await;
        // Grace sends a burst; Ada closes as soon as the first of it reaches her, while her
        // write task is still busy with the rest.
        for n in 0..100 {
            let chat = json!({"type": "chat", "content": format!("message {n}")});
            grace
                .ws
                .feed(Message::text(chat.to_string()))
                .await
                .expect("queue a chat");
        }
        grace.ws.flush().await.expect("send the chats");
        ada.expect("chat").await;
        ada.ws.close(None).await.expect("send a close frame");
        // `expect_close` fails on a stream that ends or errors without a close frame.
        ada.expect_close().await;
    }
}

/// On shutdown every WebSocket is closed with 1001 and `run` returns.
#[tokio::test]
async fn shutdown_closes_every_connection_with_1001() {
    let server = TestServer::start().await;
    let (mut host, mut guest, _) = server.pair("ada", "grace").await;
    let mut loner = server.client().await;
    let addr = server.addr;
    let shutdown = tokio::spawn(server.shut_down());
    for client in [&mut host, &mut guest, &mut loner] {
        let frame = client.expect_close().await.expect("a close frame");
        assert_eq!(u16::from(frame.code), 1001);
    }
    shutdown.await.expect("no panic").expect("run returns Ok");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

/// The binary logs its address, and on SIGTERM (and SIGINT) closes connections with 1001 and
/// exits with status 0.
#[tokio::test]
async fn the_binary_exits_cleanly_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let ServerProcess {
            mut child, addr, ..
        } = ServerProcess::start(
            ServerProcess::command()
                .args(["--bind", "127.0.0.1:0", "--heartbeat-interval", "30s"])
                .env("RUST_LOG", "info"),
        );
        let mut client = TestClient::connect(&format!("ws://{addr}/ws")).await;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let frame = client.expect_close().await.expect("a close frame");
        assert_eq!(u16::from(frame.code), 1001);
        let _ = client.ws.close(None).await;

        let exit = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join");
        assert_eq!(exit.expect("wait for exit").code(), Some(0), "SIG{signal}");
    }
}

/// `--help` describes every flag, and each flag can be set from its `CHAT_…` variable.
#[test]
fn the_command_line_documents_its_flags() {
    let help = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--help")
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--bind",
        "--typing-timeout",
        "--heartbeat-interval",
        "--rate-limit",
        "--rate-burst",
        "--max-connections",
        "--max-connections-per-ip",
        "--max-failed-joins",
        "--max-stored-bytes",
        "--resume-grace",
        "--log-format",
        "--handshake-timeout",
        "--username-timeout",
        "--allowed-origin",
        "--tls-cert",
        "--tls-key",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    for variable in [
        "CHAT_BIND",
        "CHAT_TYPING_TIMEOUT",
        "CHAT_HEARTBEAT_INTERVAL",
        "CHAT_RATE_LIMIT",
        "CHAT_RATE_BURST",
        "CHAT_MAX_CONNECTIONS",
        "CHAT_MAX_CONNECTIONS_PER_IP",
        "CHAT_MAX_FAILED_JOINS",
        "CHAT_MAX_STORED_BYTES",
        "CHAT_RESUME_GRACE",
        "CHAT_LOG_FORMAT",
        "CHAT_HANDSHAKE_TIMEOUT",
        "CHAT_USERNAME_TIMEOUT",
        "CHAT_ALLOWED_ORIGIN",
        "CHAT_TLS_CERT",
        "CHAT_TLS_KEY",
    ] {
        assert!(help.contains(variable), "{variable} missing from:\n{help}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .env("CHAT_TYPING_TIMEOUT", "soon")
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("typing-timeout"));
    let bad = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .env("CHAT_RATE_LIMIT", "lots")
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("rate-limit"));
    // The defaults shown are the library's own, written the way the flags are.
    for default in [
        "[default: 5s]",
        "[default: 20s]",
        "[default: 1m]",
        "[default: 128MiB]",
    ] {
        assert!(help.contains(default), "{default} missing from:\n{help}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--max-stored-bytes", "lots"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max-stored-bytes"));
}

/// `--log-format json` writes one JSON object a line, and the other new settings are taken
/// as written: `--username-timeout 0s` (no limit), `--max-stored-bytes 1MiB`.
#[tokio::test]
async fn the_binary_logs_json_lines_when_asked() {
    let mut server = ServerProcess::start(
        ServerProcess::command()
            .args(["--bind", "127.0.0.1:0", "--log-format", "json"])
            .args(["--username-timeout", "0s", "--max-stored-bytes", "1MiB"])
            .env("RUST_LOG", "chat_server=debug"),
    );
    let startup = server.startup.last().expect("a startup line");
    let line: serde_json::Value = serde_json::from_str(startup).expect("a JSON line");
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(
        line["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("listening")),
        "{line}"
    );
    let mut client = TestClient::connect(&format!("ws://{}/ws", server.addr)).await;
    client.set_username("ada").await;
    // Every line that follows is JSON too: the connection's debug line among them.
    let line = server
        .lines
        .recv_timeout(PATIENCE)
        .expect("a log line about the connection");
    let line: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(line["level"], "DEBUG", "{line}");
    let _ = server.child.kill();
    let _ = server.child.wait();
}

/// A write that fails is logged at debug level with its cause: here a client that stops
/// reading while its peer talks, until the server's socket takes nothing more for a heartbeat
/// interval.
#[tokio::test]
async fn a_failed_write_is_logged_with_its_cause() {
    let server = ServerProcess::start(
        ServerProcess::command()
            .args(["--bind", "127.0.0.1:0", "--heartbeat-interval", "1s"])
            .args(["--rate-limit", "0"])
            .env("RUST_LOG", "chat_server=debug"),
    );
    let url = format!("ws://{}/ws", server.addr);
    let mut ada = TestClient::connect(&url).await;
    ada.set_username("ada").await;
    let code = ada.create_room().await;
    let mut grace = TestClient::connect(&url).await;
    grace.set_username("grace").await;
    grace.join(&code).await;
    ada.expect("peer_joined").await;

    // Grace reads nothing from now on; Ada talks until the server gives up on Grace.
    let text = "x".repeat(4000);
    loop {
        ada.chat(&text).await;
        let reply = ada.recv().await;
        match reply["type"].as_str() {
            Some("chat") => continue,
            Some("peer_disconnected" | "peer_left") => break,
            _ => panic!("unexpected {reply}"),
        }
    }
    let lines = server.lines;
    let logged = tokio::task::spawn_blocking(move || {
        while let Ok(line) = lines.recv_timeout(PATIENCE) {
            if line.contains("write failed") {
                return Some(line);
            }
        }
        None
    })
    .await
    .expect("join");
    let line = logged.expect("a 'write failed' line");
    assert!(line.contains("DEBUG"), "{line}");
    assert!(line.contains("cause="), "{line}");
    assert!(line.contains("socket write stalled"), "{line}");
    drop(grace);
    let mut child = server.child;
    let _ = child.kill();
    let _ = child.wait();
}
