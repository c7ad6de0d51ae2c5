//! The actor's rules, driven through [`ChatServer::handle`] with plain queues and no sockets;
//! the timers with tokio's paused clock.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{ChatServer, ChatServerHandle, ServerCommand};
use crate::config::Config;
use crate::message::ClientMessage;
use crate::metrics::Metrics;
use crate::outbox::{self, Outbound};
use crate::types::ClientId;

/// The address every test client connects from.
const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A client of the actor without a socket: its id, the receiving end of its queue, and the
/// session token its `connected` gave.
struct Peer {
    id: ClientId,
    inbox: outbox::Receiver,
    token: String,
}

impl Peer {
    /// The next queued message, which must be there already.
    fn next(&mut self) -> Value {
        decode(self.inbox.try_recv().expect("a queued message"))
    }

    /// The next message, waiting for it.
    async fn wait(&mut self) -> Value {
        decode(self.inbox.recv().await.expect("the queue is open"))
    }

    fn is_idle(&mut self) -> bool {
        self.inbox.try_recv().is_err()
    }
}

/// A queued message as JSON; a close request as `{"close": code}`.
fn decode(item: Outbound) -> Value {
    match item {
        Outbound::Message(frame) => serde_json::from_str(&frame).expect("JSON"),
        Outbound::Batch(_) => panic!("a batch where one message was expected"),
        Outbound::Close(close) => serde_json::json!({ "close": close.code }),
    }
}

/// Protocol v1: no resume grace, so a lost connection is `peer_left` at once.
fn v1() -> Config {
    Config {
        resume_grace: Duration::ZERO,
        ..Config::default()
    }
}

fn actor(config: Config) -> (ChatServer, ChatServerHandle) {
    ChatServer::new(&config, Arc::new(Metrics::new()))
}

/// A new connection, greeted with `connected`.
fn connect_unnamed(server: &mut ChatServer) -> Peer {
    let (outbound, inbox) = outbox::channel(server.outbound_queue());
    let id = ClientId::new();
    server.handle(ServerCommand::Connect {
        client_id: id,
        address: LOCALHOST,
        outbound,
    });
    let mut peer = Peer {
        id,
        inbox,
        token: String::new(),
    };
    let connected = peer.next();
    assert_eq!(connected["type"], "connected");
    peer.token = connected["session_token"]
        .as_str()
        .expect("a token")
        .to_string();
    peer
}

fn connect(server: &mut ChatServer, name: &str) -> Peer {
    let mut peer = connect_unnamed(server);
    request(
        server,
        &peer,
        ClientMessage::SetUsername {
            username: name.into(),
        },
    );
    assert_eq!(peer.next()["type"], "username_set");
    peer
}

fn request(server: &mut ChatServer, peer: &Peer, request: ClientMessage) {
    server.handle(ServerCommand::Request {
        client_id: peer.id,
        request,
    });
}

/// Two clients in one room; returns (host, guest, code).
fn pair(server: &mut ChatServer) -> (Peer, Peer, String) {
    let mut host = connect(server, "ada");
    request(
        server,
        &host,
        ClientMessage::CreateRoom {
            encrypted: false,
            key_check: None,
        },
    );
    let code = host.next()["room_code"].as_str().expect("code").to_string();
    let mut guest = connect(server, "grace");
    request(
        server,
        &guest,
        ClientMessage::JoinRoom {
            room_code: code.clone(),
        },
    );
    assert_eq!(guest.next()["type"], "room_joined");
    assert_eq!(host.next()["type"], "peer_joined");
    (host, guest, code)
}

/// Rooms come and go with their members: the last one out deletes the room, and a
/// disconnect forgets the client.
// A runtime, because the actor's timers need one even when nothing awaits them.
#[tokio::test]
async fn rooms_and_clients_are_forgotten_when_empty() {
    let (mut server, _handle) = actor(v1());
    let (host, guest, _) = pair(&mut server);
    assert_eq!((server.session_count(), server.room_count()), (2, 1));
    server.handle(ServerCommand::Disconnect { client_id: host.id });
    assert_eq!((server.session_count(), server.room_count()), (1, 1));
    server.handle(ServerCommand::Disconnect {
        client_id: guest.id,
    });
    assert_eq!((server.session_count(), server.room_count()), (0, 0));
}

/// A second `Disconnect` for the same client, or requests from a forgotten client, change
/// nothing and send nothing.
// A runtime, because the actor's timers need one even when nothing awaits them.
#[tokio::test]
async fn a_forgotten_client_is_ignored() {
    let (mut server, _handle) = actor(v1());
    let (host, mut guest, _) = pair(&mut server);
    server.handle(ServerCommand::Disconnect { client_id: host.id });
    assert_eq!(guest.next()["reason"], "disconnected");
    server.handle(ServerCommand::Disconnect { client_id: host.id });
    request(
        &mut server,
        &host,
        ClientMessage::Chat {
            content: "ghost".into(),
            client_msg_id: None,
            encrypted: false,
        },
    );
    assert!(guest.is_idle());
    assert_eq!((server.session_count(), server.room_count()), (1, 1));
}

/// A member whose queue is full is disconnected after the event that filled it, and its
/// peer is told; the peer's own messages are unaffected.
// A runtime, because the actor's timers need one even when nothing awaits them.
#[tokio::test]
async fn a_full_queue_disconnects_the_slow_member_only() {
    let (mut server, _handle) = actor(Config {
        outbound_queue: 2,
        ..v1()
    });
    let (mut host, guest, _) = pair(&mut server);
    // The guest never reads. Two messages fill its queue; the third overflows it.
    for n in 0..3 {
        request(
            &mut server,
            &host,
            ClientMessage::Chat {
                content: format!("m{n}").into(),
                client_msg_id: None,
                encrypted: false,
            },
        );
        server.disconnect_slow_consumers();
        assert_eq!(host.next()["type"], "chat");
    }
    assert_eq!(host.next()["reason"], "disconnected");
    assert_eq!((server.session_count(), server.room_count()), (1, 1));
    drop(guest);
}

/// A session resumed elsewhere closes its old connection with 4000 even when that
/// connection's queue is full, after what was queued.
#[tokio::test]
async fn a_takeover_closes_a_full_queue_with_4000() {
    let (mut server, _handle) = actor(Config {
        outbound_queue: 2,
        ..Config::default()
    });
    let (mut host, mut guest, _) = pair(&mut server);
    // The guest's old connection reads nothing: two chats fill its queue.
    for n in 0..2 {
        let content = format!("m{n}");
        let chat = ClientMessage::Chat {
            content: content.into(),
            encrypted: false,
            client_msg_id: None,
        };
        request(&mut server, &host, chat);
        assert_eq!(host.next()["type"], "chat");
    }
    let mut new_guest = connect_unnamed(&mut server);
    let resume = ClientMessage::Resume {
        session_token: guest.token.clone(),
        last_id: 0,
    };
    request(&mut server, &new_guest, resume);
    assert_eq!(new_guest.next()["type"], "resumed");
    assert_eq!(host.next()["type"], "peer_reconnected");
    assert_eq!(guest.next()["content"], "m0");
    assert_eq!(guest.next()["content"], "m1");
    assert_eq!(guest.next(), serde_json::json!({ "close": 4000 }));
    assert!(matches!(
        guest.inbox.try_recv(),
        Err(outbox::TryRecvError::Disconnected)
    ));
}

/// A member whose connection drops keeps its seat for exactly the grace period: the peer
/// hears `peer_disconnected` at once and `peer_left` when the grace ends, and the session
/// is then forgotten.
#[tokio::test(start_paused = true)]
async fn a_held_seat_is_given_up_when_the_grace_ends() {
    let grace = Duration::from_secs(30);
    let (mut server, handle) = actor(Config {
        resume_grace: grace,
        ..Config::default()
    });
    let (host, mut guest, _) = pair(&mut server);
    tokio::spawn(server.run());

    let started = Instant::now();
    let lost = ServerCommand::Disconnect { client_id: host.id };
    handle.send(lost).await.expect("actor runs");
    assert_eq!(guest.wait().await["type"], "peer_disconnected");
    let left = guest.wait().await;
    assert_eq!(
        (left["type"].as_str(), left["reason"].as_str()),
        (Some("peer_left"), Some("disconnected"))
    );
    assert_eq!(started.elapsed(), grace);
}

/// `--username-timeout 0s` turns the limit off: a client may stay unnamed for as long as it
/// likes, and names itself whenever it wants.
#[tokio::test(start_paused = true)]
async fn a_zero_username_timeout_is_no_limit() {
    let (mut server, handle) = actor(Config {
        username_timeout: Duration::ZERO,
        ..Config::default()
    });
    let mut idle = connect_unnamed(&mut server);
    tokio::spawn(server.run());
    tokio::time::sleep(Duration::from_secs(24 * 60 * 60)).await;
    let name = ClientMessage::SetUsername {
        username: "ada".into(),
    };
    let request = ServerCommand::Request {
        client_id: idle.id,
        request: name,
    };
    handle.send(request).await.expect("actor runs");
    assert_eq!(idle.wait().await["type"], "username_set");
}

/// A typing member produces `stop_typing` for the peer exactly one typing timeout after its
/// last `typing`; a repeated `typing` pushes the deadline back.
#[tokio::test(start_paused = true)]
async fn typing_expires_one_timeout_after_the_last_typing() {
    let timeout = Duration::from_secs(5);
    let (mut server, handle) = actor(Config {
        typing_timeout: timeout,
        ..Config::default()
    });
    let (host, mut guest, _) = pair(&mut server);
    tokio::spawn(server.run());

    let started = Instant::now();
    let typing = |id| ServerCommand::Request {
        client_id: id,
        request: ClientMessage::Typing,
    };
    handle.send(typing(host.id)).await.expect("actor runs");
    assert_eq!(guest.wait().await["type"], "typing");
    tokio::time::sleep(Duration::from_secs(4)).await;
    handle.send(typing(host.id)).await.expect("actor runs");

    // Time is paused: it jumps straight to the next timer, which must be the renewed one.
    assert_eq!(guest.wait().await["type"], "stop_typing");
    assert_eq!(started.elapsed(), Duration::from_secs(9));
}

/// The rate limit refills with time: once the burst is spent a message is refused with
/// `RATE_LIMITED`, and one token later the next is handled again.
#[tokio::test(start_paused = true)]
async fn the_rate_limit_refills_with_time() {
    let (mut server, _handle) = actor(Config {
        rate_limit: 2,
        rate_burst: 2,
        ..Config::default()
    });
    // `set_username` takes the first token.
    let mut ada = connect(&mut server, "ada");
    request(&mut server, &ada, ClientMessage::Typing);
    assert_eq!(ada.next()["code"], "NOT_IN_ROOM");
    request(&mut server, &ada, ClientMessage::Typing);
    assert_eq!(ada.next()["code"], "RATE_LIMITED");
    tokio::time::advance(Duration::from_millis(499)).await;
    request(&mut server, &ada, ClientMessage::Typing);
    assert_eq!(ada.next()["code"], "RATE_LIMITED");
    tokio::time::advance(Duration::from_millis(1)).await;
    request(&mut server, &ada, ClientMessage::Typing);
    assert_eq!(ada.next()["code"], "NOT_IN_ROOM");
    assert!(ada.is_idle());
}

/// Failed joins are allowed at `max_failed_joins` a minute: the allowance comes back a
/// little at a time, not all at once at the end of the minute.
#[tokio::test(start_paused = true)]
async fn failed_joins_come_back_over_a_minute() {
    let (mut server, _handle) = actor(Config {
        max_failed_joins: 2,
        ..Config::default().unlimited()
    });
    let mut ada = connect(&mut server, "ada");
    let mut join = |ada: &mut Peer| {
        request(
            &mut server,
            ada,
            ClientMessage::JoinRoom {
                room_code: "ABCDEF".into(),
            },
        );
        ada.next()["code"].clone()
    };
    assert_eq!(join(&mut ada), "ROOM_NOT_FOUND");
    assert_eq!(join(&mut ada), "ROOM_NOT_FOUND");
    assert_eq!(join(&mut ada), "RATE_LIMITED");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(join(&mut ada), "ROOM_NOT_FOUND");
    assert_eq!(join(&mut ada), "RATE_LIMITED");
}
