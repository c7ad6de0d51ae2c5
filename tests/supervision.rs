//! The actor is supervised: if it stops while the server runs (a bug made it panic), the
//! server does not go on accepting connections that would die silently. `/healthz` says 503,
//! upgrades are refused, every open connection is closed with 1011, and `run` returns an error,
//! so that the process exits with a failure and its supervisor restarts it.

mod common;

use chat_server::Config;
use common::{PATIENCE, TestServer, try_connect};

/// When the actor panics, the members of a room and a client outside any room each read close
/// code 1011; meanwhile `/healthz` answers 503 and a new WebSocket gets HTTP 503; then `run`
/// returns an error.
#[tokio::test]
async fn a_stopped_actor_fails_the_server_loudly() {
    let (server, stop_actor) = TestServer::with_actor_stop(Config::default()).await;
    let (mut ada, mut grace, _) = server.pair("ada", "grace").await;
    let mut loner = server.client().await;
    assert_eq!(server.http_get("/healthz").await.0, 200);

    stop_actor.send(()).expect("the actor is running");
    // Nothing to await on the outside but the answer changing: ask until it does. The open
    // connections keep the server up meanwhile (none of them has read its close yet).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.http_get("/healthz").await.0 != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz never said 503"
        );
        tokio::task::yield_now().await;
    }
    let (status, _, body) = server.http_get("/healthz").await;
    assert_eq!(status, 503, "{body}");
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
    assert_eq!(
        try_connect(server.addr, localhost, None).await.err(),
        Some(503)
    );

    for client in [&mut ada, &mut grace, &mut loner] {
        let (_, close) = client.read_to_close().await;
        assert_eq!(u16::from(close.code), 1011);
    }
    let result = server.finished().await;
    assert!(result.is_err(), "run must fail, not return {result:?}");
}
