//! Soak: many clients behaving randomly, and ending their connections every way a connection can
//! end, against the real `chat-server` binary, in two rounds. After each round the server must
//! report no connections and no rooms, and its resident memory must come back down to near
//! where it started.
//!
//! `cargo test` runs a short version (50 clients, 2 seconds a round). The full one, a thousand
//! clients for a minute a round, is ignored by default:
//!
//! ```sh
//! cargo test --release --test soak -- --ignored --nocapture
//! SOAK_CLIENTS=2000 SOAK_SECONDS=120 cargo test --release --test soak -- --ignored --nocapture
//! ```

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use common::{PATIENCE, ServerProcess, http_request};

/// How long the server may take to hand a round's memory back: jemalloc's decay spreads it over
/// ten seconds, and its background thread wakes now and then to do it.
const MEMORY_PATIENCE: Duration = Duration::from_secs(30);

/// A small, fast, seedable generator (xorshift64*): the soak needs variety, not security, and a
/// seed per client makes a run repeatable enough to compare.
struct Dice(u64);

impl Dice {
    fn new(seed: u64) -> Self {
        Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low))
    }
}

/// What the clients saw, added up over all of them.
#[derive(Default)]
struct Tally {
    sessions: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    closed_politely: AtomicU64,
    dropped: AtomicU64,
    vanished: AtomicU64,
    /// Error codes received, by code.
    errors: Mutex<HashMap<String, u64>>,
}

/// The server binary under test, killed if the test ends early.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(heartbeat: &str) -> Self {
        let ServerProcess { child, addr, .. } = ServerProcess::start(
            ServerProcess::command()
                .args(["--bind", "127.0.0.1:0", "--heartbeat-interval", heartbeat])
                // One address for every client here, and their joins fail often by design.
                .args(["--max-connections-per-ip", "0", "--max-failed-joins", "0"])
                // Dropped members keep their seats for a second: held sessions come and go
                // during the soak too, and all have expired a second after the last client.
                .args(["--resume-grace", "1s"])
                .env("RUST_LOG", "info"),
        );
        Server {
            child,
            addr: addr.parse().expect("an address"),
        }
    }

    /// (current, peak) resident memory of the server process, in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        common::memory_kib(self.child.id())
    }

    async fn gauge(&self, name: &str) -> f64 {
        let request = "GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n";
        let (_, _, body) = http_request(self.addr, request).await;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(f64::NAN)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client for the whole run: connects, does random things for a random while, ends the
/// connection one of three ways, and starts again, until `until`.
async fn client(
    index: u64,
    url: String,
    until: Instant,
    codes: Arc<Mutex<Vec<String>>>,
    tally: Arc<Tally>,
) {
    let mut dice = Dice::new(index + 1);
    while Instant::now() < until {
        let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await else {
            tokio::time::sleep(dice.millis(10, 100)).await;
            continue;
        };
        tally.sessions.fetch_add(1, Ordering::Relaxed);
        let (mut sink, mut stream) = ws.split();
        let session_end = Instant::now() + dice.millis(200, 8000);
        let mut next_action = Instant::now() + dice.millis(50, 400);
        let mut sent = 0;
        // Half the clients read everything; the others stop reading now and then, as a
        // stalled tab would, and may be dropped as slow consumers.
        let reads_lazily = dice.below(2) == 0;
        loop {
            let now = Instant::now();
            if now >= session_end || now >= until {
                break;
            }
            let wait = next_action.min(session_end).saturating_duration_since(now);
            let paused = reads_lazily && dice.below(10) == 0;
            tokio::select! {
                frame = stream.next(), if !paused => match frame {
                    Some(Ok(Message::Text(text))) => {
                        tally.received.fetch_add(1, Ordering::Relaxed);
                        let message: Value = serde_json::from_str(&text).unwrap_or_default();
                        match message["type"].as_str() {
                            Some("room_created") => {
                                if let Some(code) = message["room_code"].as_str() {
                                    let mut codes = codes.lock().expect("codes");
                                    codes.push(code.to_string());
                                    if codes.len() > 200 {
                                        codes.remove(0);
                                    }
                                }
                            }
                            Some("error") => {
                                let code = message["code"].as_str().unwrap_or("?").to_string();
                                *tally.errors.lock().expect("errors").entry(code).or_default() += 1;
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(_)) => {}
                    // The server ended it (heartbeat, slow consumer): start a new session.
                    Some(Err(_)) | None => break,
                },
                () = tokio::time::sleep(wait) => {
                    next_action = Instant::now() + dice.millis(50, 400);
                    let request = match dice.below(12) {
                        0 => json!({"type": "set_username", "username": format!("user{}", dice.below(50))}),
                        1 => json!({"type": "create_room"}),
                        2 | 3 => {
                            let code = {
                                let codes = codes.lock().expect("codes");
                                let pick = dice.below(codes.len() as u64 + 1) as usize;
                                codes.get(pick).cloned().unwrap_or_else(|| "ZZZZZZ".into())
                            };
                            json!({"type": "join_room", "room_code": code})
                        }
                        4 => json!({"type": "typing"}),
                        5 => json!({"type": "stop_typing"}),
                        6 => json!({"type": "leave_room"}),
                        _ => json!({"type": "chat", "content": format!("message {sent} from {index}")}),
                    };
                    // Every session starts by choosing a name.
                    let request = if sent == 0 {
                        json!({"type": "set_username", "username": format!("user{index}")})
                    } else {
                        request
                    };
                    if sink.send(Message::text(request.to_string())).await.is_err() {
                        break;
                    }
                    sent += 1;
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        match dice.below(3) {
            0 => {
                // A polite close: a close frame, then the socket.
                let _ = sink.send(Message::Close(None)).await;
                tally.closed_politely.fetch_add(1, Ordering::Relaxed);
            }
            1 => {
                // The tab is closed: the socket goes without a close frame.
                tally.dropped.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                // The laptop lid shuts: the socket stays open but silent (no reads, no pongs)
                // for a while, then goes. The heartbeat may catch it first.
                tally.vanished.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(dice.millis(100, 3000)).await;
            }
        }
        drop((sink, stream));
    }
}

/// Runs `rounds` soaks one after the other against one server, and checks after each that the
/// server is back to no connections and no rooms, and that its memory came back down.
async fn soak(clients: u64, duration: Duration, heartbeat: &str, rounds: u32) {
    let server = Server::start(heartbeat);
    let url = format!("ws://{}/ws", server.addr);
    let (start_kib, _) = server.memory_kib();

    for round in 1..=rounds {
        let until = Instant::now() + duration;
        let codes = Arc::new(Mutex::new(Vec::new()));
        let tally = Arc::new(Tally::default());
        let tasks: Vec<_> = (0..clients)
            .map(|index| {
                tokio::spawn(client(
                    index,
                    url.clone(),
                    until,
                    Arc::clone(&codes),
                    Arc::clone(&tally),
                ))
            })
            .collect();
        let mut busiest = (0.0_f64, 0.0_f64);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let connections = server.gauge("chat_connections").await;
            let rooms = server.gauge("chat_rooms").await;
            busiest = (busiest.0.max(connections), busiest.1.max(rooms));
        }
        for task in tasks {
            task.await.expect("a client task does not panic");
        }
        let (_, peak_kib) = server.memory_kib();

        // Every client has let go of its socket; the server notices each at its own pace.
        // Poll until both gauges read zero.
        let settle = Instant::now();
        loop {
            let connections = server.gauge("chat_connections").await;
            let rooms = server.gauge("chat_rooms").await;
            if connections == 0.0 && rooms == 0.0 {
                break;
            }
            assert!(
                settle.elapsed() < PATIENCE,
                "still {connections} connections and {rooms} rooms"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The allocator hands freed pages back to the system over about ten seconds (jemalloc's
        // decay, run by its background thread). Poll until resident memory is back near where
        // it started: within 4 MiB plus a tenth of what the round added. That leaves room for
        // what the first clients set up once and keep (the allocator's arenas and caches for
        // each thread, tokio's slabs; about 2.5 MiB in a debug build after 50 clients) and for
        // the tables sized for the busiest moment. glibc's malloc, which kept about 16 MiB after
        // the full soak, fails it.
        let allowance_kib = 4 * 1024 + peak_kib.saturating_sub(start_kib) / 10;
        let returning = Instant::now();
        let end_kib = loop {
            let (now_kib, _) = server.memory_kib();
            if now_kib <= start_kib + allowance_kib {
                break now_kib;
            }
            assert!(
                returning.elapsed() < MEMORY_PATIENCE,
                "round {round}: server memory still {now_kib} KiB {MEMORY_PATIENCE:?} after the \
                 last client left; it started at {start_kib} KiB and peaked at {peak_kib} KiB"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let returned_after = returning.elapsed();
        let errors = tally.errors.lock().expect("errors").clone();
        println!(
            "soak round {round}: {clients} clients for {duration:?}: {} sessions ({} closed \
             politely, {} dropped, {} vanished), {} messages sent, {} received; busiest moment \
             {} connections and {} rooms; server memory (RSS) {start_kib} KiB at start, \
             {peak_kib} KiB at peak, {end_kib} KiB {returned_after:.1?} after the gauges read zero; \
             errors {errors:?}",
            tally.sessions.load(Ordering::Relaxed),
            tally.closed_politely.load(Ordering::Relaxed),
            tally.dropped.load(Ordering::Relaxed),
            tally.vanished.load(Ordering::Relaxed),
            tally.sent.load(Ordering::Relaxed),
            tally.received.load(Ordering::Relaxed),
            busiest.0,
            busiest.1,
        );
        assert!(tally.sessions.load(Ordering::Relaxed) >= clients);
        // A bug shows as INTERNAL_ERROR; clients this slow never meet the rate limit.
        assert!(!errors.contains_key("INTERNAL_ERROR"), "{errors:?}");
        assert!(!errors.contains_key("RATE_LIMITED"), "{errors:?}");
    }
}

/// A short soak, part of every test run: 50 clients for 2 seconds, twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_leaves_nothing_behind() {
    soak(50, Duration::from_secs(2), "1s", 2).await;
}

/// The full soak of issue 5: a thousand clients for a minute, twice (`SOAK_CLIENTS`,
/// `SOAK_SECONDS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes a minute; run with --ignored"]
async fn a_thousand_clients_for_a_minute_leave_nothing_behind() {
    let number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let clients = number("SOAK_CLIENTS", 1000);
    let seconds = number("SOAK_SECONDS", 60);
    soak(clients, Duration::from_secs(seconds), "5s", 2).await;
}
