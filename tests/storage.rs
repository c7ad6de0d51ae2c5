//! What rooms keep of their conversations is bounded in bytes, per room and in total
//! (`--max-stored-bytes`), however clients fill it: rule-abiding clients sending the longest
//! messages cannot grow the server until the machine kills it.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use serde_json::json;

use chat_server::Config;
use chat_server::room::Room;
use common::{ServerProcess, TestClient, TestServer, try_connect};

/// The number in the `/metrics` line of `name`.
async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = server.metrics().await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in:\n{text}"))
}

/// Ten hosts, each alone in a room, each say 100 of the longest messages (4,096 emoji) into a
/// server with an 8 MiB budget, about twice what they say. The stored bytes are never over the
/// budget after any message; the oldest messages of the largest rooms are shed and counted;
/// the rooms are cut to a common level, so every joiner still gets a recent history of about
/// the same length; and a small room that came late loses nothing.
#[tokio::test]
async fn the_stored_bytes_never_pass_the_budget() {
    let budget = 8 * 1024 * 1024;
    let server = TestServer::with_config(Config {
        max_stored_bytes: budget,
        ..Config::default().unlimited()
    })
    .await;
    let longest = "😀".repeat(4096);
    let mut hosts = Vec::new();
    for n in 0..10 {
        let mut host = server.named(&format!("host {n}")).await;
        let code = host.create_room().await;
        hosts.push((host, code));
    }
    for round in 0..100 {
        for (host, _) in &mut hosts {
            host.chat(&longest).await;
            host.expect("chat").await;
        }
        let stored = metric(&server, "chat_stored_bytes").await;
        assert!(
            stored <= budget as f64,
            "round {round}: {stored} bytes stored"
        );
    }
    assert!(metric(&server, "chat_messages_shed_total").await > 0.0);

    let mut latecomer = server.named("late").await;
    let late_code = latecomer.create_room().await;
    latecomer.chat("short and late").await;
    latecomer.expect("chat").await;

    let mut lengths = Vec::new();
    for (_, code) in &hosts {
        let mut guest = server.named("guest").await;
        let joined = guest.join(code).await;
        let history = joined["history"].as_array().expect("history").len();
        // Whatever did not fit in `room_joined` follows it as `chat` frames.
        let mut count = history;
        guest.send(json!({"type": "__sync__"})).await;
        loop {
            let message = guest.recv().await;
            match message["type"].as_str() {
                Some("chat") => count += 1,
                Some("error") => break,
                _ => panic!("unexpected {message}"),
            }
        }
        assert!(count < 100, "room {code} kept everything");
        lengths.push(count);
    }
    let (fewest, most) = (lengths.iter().min(), lengths.iter().max());
    assert!(
        most.zip(fewest)
            .is_some_and(|(most, fewest)| most - fewest <= 1),
        "rooms cut to one level: {lengths:?}"
    );
    let mut guest = server.named("guest").await;
    let joined = guest.join(&late_code).await;
    assert_eq!(joined["history"][0]["content"], "short and late");
}

/// The reading of the issue that found the problem: 200 connections (from several addresses,
/// under the default 64 per address), each alone in its own room, each sending 100 chats of
/// 4,096 emoji within the default rate limit, against the release binary with its default
/// settings. Prints the server's resident memory before, at the peak, at the end and once the
/// allocator has returned freed pages; the bound is what keeps it from growing with the rooms
/// (BENCHMARKS.md, "Memory under hostile but legal traffic"). `ROOMS` sets the number of rooms,
/// and `CHAT_SERVER_BIN` another server binary to measure (an older build, say). Run with
/// `cargo test --release --test storage -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement for BENCHMARKS.md: run it in release mode"]
async fn memory_under_hostile_but_legal_traffic() {
    let rooms: u16 = std::env::var("ROOMS")
        .ok()
        .and_then(|rooms| rooms.parse().ok())
        .unwrap_or(200);
    let mut command = match std::env::var("CHAT_SERVER_BIN") {
        Ok(binary) => std::process::Command::new(binary),
        Err(_) => ServerProcess::command(),
    };
    let server = ServerProcess::start(command.args(["--bind", "127.0.0.1:0"]));
    let pid = server.child.id();
    let addr: std::net::SocketAddr = server.addr.parse().expect("an address");
    let started = Instant::now();
    let (before, _) = common::memory_kib(pid);

    let longest = "😀".repeat(4096);
    let mut clients: Vec<TestClient> = Vec::new();
    for n in 0..rooms {
        // 50 connections an address, under the default cap of 64.
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (n / 50) as u8));
        let mut client = try_connect(addr, from, None).await.expect("connected");
        client.set_username(&format!("user {n}")).await;
        client.create_room().await;
        clients.push(client);
    }
    for _ in 0..100 {
        for client in &mut clients {
            client.chat(&longest).await;
        }
        for client in &mut clients {
            client.expect("chat").await;
        }
    }
    let stored = {
        let (_, _, metrics) = common::http_request(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        )
        .await;
        metrics
            .lines()
            .filter(|line| {
                line.starts_with("chat_stored_bytes ")
                    || line.starts_with("chat_messages_shed_total ")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (now, peak) = common::memory_kib(pid);
    // The allocator returns freed pages after about ten seconds (jemalloc's decay time): what
    // the server still holds then is what it keeps.
    tokio::time::sleep(std::time::Duration::from_secs(15)).await;
    let (settled, _) = common::memory_kib(pid);
    drop(clients);
    println!(
        "{rooms} rooms x 100 chats of 4,096 emoji in {:.1?}: RSS {before} KiB before, {now} KiB at \
         the end, {peak} KiB at the peak, {settled} KiB 15 s later; {stored}; a room keeps at most {} bytes",
        started.elapsed(),
        Room::MAX_STORED_BYTES
    );
    let mut server = server;
    let _ = server.child.kill();
    let _ = server.child.wait();
}
