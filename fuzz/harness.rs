//! What the fuzz targets run, shared with `tests/fuzz_regressions.rs` so that every input the
//! fuzzers ever found is replayed by `cargo test`.
//!
//! `drive_actor` reads the input as a little program: each operation is two bytes, the first
//! naming a client (high nibble) and an action (low nibble), the second an argument. Actions are
//! the requests a client can make, with arguments picked from valid and invalid values, plus raw
//! frames of fuzzer bytes, so that the fuzzer reaches deep states quickly and still tries
//! garbage everywhere.
#![allow(dead_code)] // Each fuzz target uses one of the two entry points.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde_json::Value;

use chat_server::Config;
use chat_server::message::ClientMessage;
use chat_server::metrics::Metrics;
use chat_server::outbox;
use chat_server::outbox::Outbound;
use chat_server::server::{ChatServer, ServerCommand};
use chat_server::types::ClientId;

/// Decodes `data` as a client's text frame would be decoded. Must never panic.
pub fn decode(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ClientMessage::decode(text);
    }
}

/// How many clients the program juggles.
const CLIENTS: usize = 4;

/// One connected client: its id and its end of the outbound queue.
struct Connection {
    id: ClientId,
    inbox: outbox::Receiver,
}

/// Runs `data` as a program against a fresh actor, checking its invariants after every step.
pub fn drive_actor(data: &[u8]) {
    // The actor's timers need a runtime; none of them is awaited here.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let _guard = runtime.enter();

    // Small limits, so that the fuzzer reaches them.
    let config = Config {
        outbound_queue: 4,
        rate_limit: 8,
        rate_burst: 8,
        max_failed_joins: 3,
        ..Config::default()
    };
    let (mut server, _handle) = ChatServer::new(&config, Arc::new(Metrics::new()));
    let address = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut clients: Vec<Option<Connection>> = (0..CLIENTS).map(|_| None).collect();
    let mut codes: Vec<String> = Vec::new();
    let mut tokens: Vec<String> = Vec::new();

    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        let slot = usize::from(op >> 4) % CLIENTS;
        let action = op & 0x0f;
        let pick = |list: &[String], fallback: &str| {
            if list.is_empty() || arg & 0x80 != 0 {
                fallback.to_string()
            } else {
                list[usize::from(arg) % list.len()].clone()
            }
        };
        let request = match action {
            0 => {
                if clients[slot].is_none() {
                    let (outbound, inbox) = outbox::channel(config.outbound_queue);
                    let id = ClientId::new();
                    server.handle(ServerCommand::Connect {
                        client_id: id,
                        address,
                        outbound,
                    });
                    clients[slot] = Some(Connection { id, inbox });
                }
                None
            }
            1 => {
                if let Some(connection) = clients[slot].take() {
                    server.handle(ServerCommand::Disconnect {
                        client_id: connection.id,
                    });
                }
                None
            }
            2 => {
                let names = ["ada", "grace", " ada ", "", "   ", "a\u{7}b", "😀"];
                let username = names[usize::from(arg) % names.len()].to_string();
                Some(ClientMessage::SetUsername { username })
            }
            3 => {
                // Sometimes with a key check, well-formed or not, whatever the room is.
                let checks = [None, Some("AbCdEfGhIjKlMnOpQr-_09"), Some("short")];
                Some(ClientMessage::CreateRoom {
                    encrypted: arg & 1 == 1,
                    key_check: checks[usize::from(arg >> 1) % checks.len()].map(Box::from),
                })
            }
            4 => Some(ClientMessage::JoinRoom {
                room_code: pick(&codes, "abc23o"),
            }),
            5 => {
                // The last two are the smallest well-formed envelopes of an encrypted room, v2's
                // and v1's.
                let envelope = format!("v1.{}", "A".repeat(38));
                let envelope_v2 = format!("v2.{}", "A".repeat(135));
                let contents = ["hi", "", " \n", "ü", &envelope, &envelope_v2];
                let content = match arg % 7 {
                    6 => "x".repeat(4097),
                    n => contents[usize::from(n)].to_string(),
                };
                // Sometimes marked as encrypted, whatever it is and whatever the room is.
                let encrypted = arg & 0x40 != 0;
                Some(ClientMessage::Chat {
                    content: content.into(),
                    encrypted,
                    client_msg_id: None,
                })
            }
            6 => Some(ClientMessage::Typing),
            7 => Some(ClientMessage::StopTyping),
            8 => Some(ClientMessage::LeaveRoom),
            9 => Some(ClientMessage::Resume {
                session_token: pick(&tokens, "not a token"),
                last_id: u64::from(arg & 0x0f),
            }),
            10 => Some(ClientMessage::Read {
                up_to: u64::from(arg),
            }),
            11 => {
                // A raw frame: the next `arg` bytes of input, as text.
                let frame: Vec<u8> = bytes.by_ref().take(usize::from(arg)).collect();
                if let Some(connection) = &clients[slot] {
                    let text = String::from_utf8_lossy(&frame);
                    let command = match ClientMessage::decode(&text) {
                        Ok(request) => ServerCommand::Request {
                            client_id: connection.id,
                            request,
                        },
                        Err(refusal) => ServerCommand::Reject {
                            client_id: connection.id,
                            refusal,
                        },
                    };
                    server.handle(command);
                }
                None
            }
            _ => None,
        };
        if let (Some(request), Some(connection)) = (request, &clients[slot]) {
            server.handle(ServerCommand::Request {
                client_id: connection.id,
                request,
            });
        }
        if let Err(broken) = server.check_invariants() {
            panic!("after action {action} of client {slot}: {broken}");
        }

        // Clients 0 and 2 read everything at once; 1 and 3 only when told to (action 12), so
        // that they fall behind and get dropped as slow consumers.
        for (index, connection) in clients.iter_mut().enumerate() {
            let reads = index % 2 == 0 || (action == 12 && index == slot);
            if let (true, Some(connection)) = (reads, connection) {
                while let Ok(item) = connection.inbox.try_recv() {
                    let Outbound::Message(frame) = item else {
                        continue;
                    };
                    let message: Value =
                        serde_json::from_str(&frame).expect("the server sends JSON");
                    if let Some(code) = message["room_code"].as_str() {
                        codes.push(code.to_string());
                    }
                    if let Some(token) = message["session_token"].as_str() {
                        tokens.push(token.to_string());
                    }
                }
            }
        }
    }
}
