//! The limits of issue 5, each against the real server: the limit holds, the refusal is the
//! documented one, and everyone else carries on while one client misbehaves.

mod common;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use chat_server::Config;
use common::{PATIENCE, ServerProcess, TestClient, TestServer, try_connect};

/// The address the tests usually connect from.
const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Another loopback address: a second host, as far as per-address limits can tell.
const NEIGHBOUR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Over `--rate-limit`, messages are dropped with `RATE_LIMITED`; a client that keeps going
/// gets a last `RATE_LIMITED` and a close with 1008. Its peer receives exactly the accepted
/// messages and then `peer_left`, and a conversation in another room is untouched throughout.
#[tokio::test]
async fn a_flooder_is_refused_then_disconnected_and_nobody_else_notices() {
    let config = Config {
        rate_limit: 1,
        rate_burst: 10,
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let (mut ada, mut grace, _) = server.pair("ada", "grace").await;
    // From Mallory's first message on, her bucket refills one token a second.
    let started = Instant::now();
    let (mut mallory, mut victim, _) = server.pair("mallory", "victim").await;

    // Mallory sends as fast as the replies come back. `set_username` and `create_room` already
    // took two tokens of her burst of 10.
    let (mut accepted, mut refused) = (Vec::new(), 0_u64);
    let last_words = loop {
        let sent = accepted.len() as u64 + refused;
        mallory.chat(&format!("spam {sent}")).await;
        let reply = mallory.recv().await;
        match reply["type"].as_str() {
            Some("chat") => accepted.push(reply["content"].clone()),
            Some("error") => {
                assert_eq!(reply["code"], "RATE_LIMITED", "{reply}");
                refused += 1;
                if reply["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("closing"))
                {
                    break reply;
                }
            }
            _ => panic!("unexpected {reply}"),
        }
        if sent == 2 {
            // Mid-flood, the other room talks as usual.
            ada.chat("still fine?").await;
            assert_eq!(grace.expect("chat").await["content"], "still fine?");
            ada.expect("chat").await;
        }
        assert!(sent < 1000, "the flooder was never disconnected");
    };
    let refill = started.elapsed().as_secs() + 1;
    let accepted_count = accepted.len() as u64;
    assert!(
        (8..=8 + refill).contains(&accepted_count),
        "accepted {accepted_count}"
    );
    // The refusals drain a second bucket of the same size: the tenth empties it and the
    // eleventh is the last.
    assert!((11..=11 + refill).contains(&refused), "refused {refused}");
    assert_eq!(last_words["code"], "RATE_LIMITED");
    let close = mallory.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);

    for content in accepted {
        assert_eq!(victim.expect("chat").await["content"], content);
    }
    assert_eq!(
        victim.expect("peer_left").await,
        json!({"type": "peer_left", "username": "mallory", "reason": "disconnected"})
    );
    victim.chat("alone now").await;
    victim.expect("chat").await;
    grace.chat("yes").await;
    assert_eq!(ada.expect("chat").await["content"], "yes");
    assert!(
        server
            .has_metric("chat_flooders_disconnected_total 1")
            .await
    );
    let errors = format!(r#"chat_errors_sent_total{{code="RATE_LIMITED"}} {refused}"#);
    assert!(server.has_metric(&errors).await);
}

/// At the default limits, a burst far beyond any typist's (30 messages at once, typing
/// included) goes through untouched.
#[tokio::test]
async fn the_default_rate_limit_does_not_touch_a_person() {
    let server = TestServer::start().await;
    let (mut ada, mut grace, _) = server.pair("ada", "grace").await;
    for n in 0..15 {
        ada.send(json!({"type": "typing"})).await;
        ada.chat(&format!("m{n}")).await;
    }
    for n in 0..15 {
        if n == 0 {
            grace.expect("typing").await;
        }
        grace.expect("stop_typing").await;
        assert_eq!(grace.expect("chat").await["content"], format!("m{n}"));
        if n < 14 {
            grace.expect("typing").await;
        }
        assert_eq!(ada.expect("chat").await["content"], format!("m{n}"));
    }
    ada.expect_nothing_pending().await;
}

/// Past `--max-connections`, upgrades get 503 while plain HTTP is still answered; a closed
/// connection frees its place.
#[tokio::test]
async fn the_global_cap_refuses_with_503() {
    let config = Config {
        max_connections: 2,
        max_connections_per_ip: 0,
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let mut first = server.named("ada").await;
    let mut second = server.client().await;
    assert_eq!(try_connect(server.addr, HOME, None).await.err(), Some(503));
    assert_eq!(
        try_connect(server.addr, NEIGHBOUR, None).await.err(),
        Some(503)
    );
    assert_eq!(server.http_get("/healthz").await.0, 200);
    let metrics = server.metrics().await;
    for line in [
        r#"chat_handshakes_refused_by_limit_total{limit="max_connections"} 2"#,
        "chat_handshakes_refused_total 2",
        "chat_connections 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }

    // The place is given back when the connection's task ends, a moment after the close
    // handshake; there is no event a client can await for that, so retry briefly.
    second.ws.close(None).await.expect("close");
    second.expect_end().await;
    let mut third = None;
    for _ in 0..200 {
        match try_connect(server.addr, HOME, None).await {
            Ok(client) => {
                third = Some(client);
                break;
            }
            Err(503) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(status) => panic!("unexpected {status}"),
        }
    }
    let mut third = third.expect("a freed place is taken again");
    third.set_username("grace").await;
    first.set_username("ada again").await;
}

/// Past `--max-connections-per-ip`, upgrades from that address get 429; another address still
/// gets in, and so does the first once it closes a connection.
#[tokio::test]
async fn the_per_address_cap_refuses_with_429() {
    let config = Config {
        max_connections_per_ip: 2,
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let _one = try_connect(server.addr, HOME, None).await.expect("first");
    let _two = try_connect(server.addr, HOME, None).await.expect("second");
    assert_eq!(try_connect(server.addr, HOME, None).await.err(), Some(429));
    let mut neighbour = try_connect(server.addr, NEIGHBOUR, None)
        .await
        .expect("another address is not affected");
    neighbour.set_username("neighbour").await;
    assert!(
        server
            .has_metric(
                r#"chat_handshakes_refused_by_limit_total{limit="max_connections_per_ip"} 1"#
            )
            .await
    );
}

/// `0` turns both caps off: a hundred connections from one address are all accepted.
#[tokio::test]
async fn zero_turns_the_caps_off() {
    let config = Config {
        max_connections: 0,
        max_connections_per_ip: 0,
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(try_connect(server.addr, HOME, None).await.expect("no cap"));
    }
    assert!(server.has_metric("chat_connections 100").await);
}

/// By default, clients without `Origin` and pages from the server's own origin may connect;
/// pages from another origin get 403. `--allowed-origin` adds origins; `*` allows any.
#[tokio::test]
async fn the_origin_check() {
    let server = TestServer::start().await;
    let own = format!("http://{}", server.addr);
    try_connect(server.addr, HOME, None)
        .await
        .expect("no Origin");
    try_connect(server.addr, HOME, Some(&own))
        .await
        .expect("own origin");
    assert_eq!(
        try_connect(server.addr, HOME, Some("https://evil.example"))
            .await
            .err(),
        Some(403)
    );
    assert!(
        server
            .has_metric(r#"chat_handshakes_refused_by_limit_total{limit="allowed_origin"} 1"#)
            .await
    );

    let config = Config {
        allowed_origins: vec!["https://app.example".into()],
        ..Config::default()
    };
    let listed = TestServer::with_config(config).await;
    try_connect(listed.addr, HOME, Some("https://app.example"))
        .await
        .expect("a listed origin");
    let own = format!("http://{}", listed.addr);
    try_connect(listed.addr, HOME, Some(&own))
        .await
        .expect("own origin");
    assert_eq!(
        try_connect(listed.addr, HOME, Some("https://evil.example"))
            .await
            .err(),
        Some(403)
    );

    let config = Config {
        allowed_origins: vec!["*".into()],
        ..Config::default()
    };
    let open = TestServer::with_config(config).await;
    try_connect(open.addr, HOME, Some("https://evil.example"))
        .await
        .expect("any origin");
}

/// A connection that sends only part of its request (slow-loris), or nothing, is dropped once
/// `--handshake-timeout` has passed; a WebSocket that completed its handshake is not.
#[tokio::test]
async fn an_unfinished_handshake_is_dropped() {
    let timeout = Duration::from_millis(300);
    let config = Config {
        handshake_timeout: timeout,
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let mut chatting = server.named("ada").await;

    let started = Instant::now();
    let mut loris = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    loris
        .write_all(b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n")
        .await
        .expect("send part of a request");
    let mut mute = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    for stream in [&mut loris, &mut mute] {
        let mut rest = Vec::new();
        // The server closes (or resets) the connection: either ends the read.
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
            .await
            .expect("the server drops the connection");
    }
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());

    // Well past the timeout, the upgraded connection carries on.
    assert_eq!(chatting.set_username("ada").await["username"], "ada");
    let metrics = server.metrics().await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with(r#"chat_handshakes_refused_by_limit_total{limit="handshake_timeout"}"#)
            && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// A WebSocket client that has not set a username within `--username-timeout` gets
/// `USERNAME_REQUIRED` and a close with 1008; a client that named itself in time stays.
#[tokio::test]
async fn a_client_without_a_name_is_closed() {
    let timeout = Duration::from_millis(300);
    let config = Config {
        username_timeout: timeout,
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let started = Instant::now();
    let mut unnamed = server.client().await;
    let mut named = server.named("ada").await;
    unnamed.expect_error("USERNAME_REQUIRED").await;
    let close = unnamed.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());

    // Past the timeout, the named client still works, and a failed rename does not unname it.
    named
        .send(json!({"type": "set_username", "username": ""}))
        .await;
    named.expect_error("INVALID_USERNAME").await;
    named.create_room().await;
    assert!(server.has_metric("chat_username_timeouts_total 1").await);
}

/// `--max-failed-joins`: after that many codes that lead nowhere, `join_room` gets
/// `RATE_LIMITED` even for a room that exists (so the refusal reveals nothing), on that
/// connection and on any other from the same address; malformed codes are not counted, and
/// other addresses are not affected.
#[tokio::test]
async fn failed_joins_are_limited_per_connection_and_address() {
    let config = Config {
        max_failed_joins: 3,
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let mut host = try_connect(server.addr, NEIGHBOUR, None)
        .await
        .expect("host");
    host.set_username("ada").await;
    let code = host.create_room().await;

    let mut guesser = server.named("mallory").await;
    for _ in 0..5 {
        guesser
            .send(json!({"type": "join_room", "room_code": "nope"}))
            .await;
        guesser.expect_error("INVALID_ROOM_CODE").await;
    }
    let wrong = if code == "AAAAAA" { "BBBBBB" } else { "AAAAAA" };
    for _ in 0..3 {
        guesser
            .send(json!({"type": "join_room", "room_code": wrong}))
            .await;
        guesser.expect_error("ROOM_NOT_FOUND").await;
    }
    guesser
        .send(json!({"type": "join_room", "room_code": code}))
        .await;
    guesser.expect_error("RATE_LIMITED").await;

    // A new connection from the same address has no fresh allowance.
    let mut again = server.named("mallory").await;
    again
        .send(json!({"type": "join_room", "room_code": code}))
        .await;
    again.expect_error("RATE_LIMITED").await;

    // Someone elsewhere joins as usual.
    let mut friend = try_connect(server.addr, NEIGHBOUR, None)
        .await
        .expect("friend");
    friend.set_username("grace").await;
    friend.join(&code).await;
    host.expect("peer_joined").await;
}

/// At the default log level, and with the server's own debug logs on, the log shows neither
/// what people say nor their names. And nothing panics along the way, including when the
/// server closes a connection itself (an unnamed client at its username timeout).
#[tokio::test]
async fn logs_do_not_contain_message_content() {
    for log_filter in [None, Some("chat_server=debug")] {
        let mut command = ServerProcess::command();
        command
            .args(["--bind", "127.0.0.1:0", "--username-timeout", "300ms"])
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped());
        if let Some(filter) = log_filter {
            command.env("RUST_LOG", filter);
        }
        let ServerProcess {
            mut child,
            addr,
            lines,
            startup,
        } = ServerProcess::start(&mut command);
        let mut stderr = child.stderr.take().expect("piped stderr");

        let url = format!("ws://{addr}/ws");
        let mut unnamed = TestClient::connect(&url).await;
        let mut ada = TestClient::connect(&url).await;
        ada.set_username("Secret Name").await;
        let code = ada.create_room().await;
        let mut grace = TestClient::connect(&url).await;
        grace.set_username("grace").await;
        grace.join(&code).await;
        ada.expect("peer_joined").await;
        ada.chat("the launch code is 0000-SECRET").await;
        ada.expect("chat").await;
        ada.send(json!({"type": "chat", "content": "x", "extra": "SECRET-IN-EXTRA-FIELD"}))
            .await;
        ada.expect("chat").await;
        ada.send_text("{not json SECRET-IN-GARBAGE").await;
        ada.expect_error("INVALID_MESSAGE").await;
        ada.send(json!({"type": "join_room", "room_code": "SECRET-CODE"}))
            .await;
        ada.expect_error("ALREADY_IN_ROOM").await;
        unnamed.expect_error("USERNAME_REQUIRED").await;
        let close = unnamed.expect_close().await.expect("a close frame");
        assert_eq!(u16::from(close.code), 1008);
        unnamed.expect_end().await;
        drop((ada, grace));

        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let exit = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join");
        assert_eq!(exit.expect("wait").code(), Some(0));
        // The process has exited, so its stdout is closed and every line is in `lines`.
        let mut log: String = startup
            .into_iter()
            .chain(lines.iter())
            .map(|line| line + "\n")
            .collect();
        stderr.read_to_string(&mut log).expect("read stderr");
        assert!(log.contains("listening"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
        for secret in ["SECRET", "Secret Name"] {
            assert!(
                !log.contains(secret),
                "{secret:?} in the log ({log_filter:?}):\n{log}"
            );
        }
    }
}
