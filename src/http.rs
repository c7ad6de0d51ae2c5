//! The HTTP side of the listener: routes each request, and turns `GET /ws` upgrades into
//! WebSocket connections.
//!
//! Every TCP connection starts as HTTP/1.1, served by hyper. Most requests get a plain response;
//! a valid WebSocket upgrade on `/ws` gets `101 Switching Protocols`, after which hyper hands us
//! the raw socket and [`handler::serve`] takes over. Doing the handshake here, rather than with
//! tungstenite's own `accept`, is what lets one port serve pages and WebSockets alike.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::config::Config;
use crate::handler;
use crate::metrics::Metrics;
use crate::server::ChatServerHandle;

/// How long a client may take to send its request headers before the connection is dropped, so
/// that half-open connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection task needs, shared behind one `Arc`.
#[derive(Debug)]
pub struct App {
    /// The way to the actor; cloned into each WebSocket handler.
    pub server: ChatServerHandle,
    /// Settings for the handlers.
    pub config: Config,
    /// Counters, moved by the actor and by the routes below, rendered on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server shuts down: WebSocket handlers close with 1001, and plain HTTP
    /// connections finish their current request and close.
    pub shutdown: CancellationToken,
    /// Tracks the WebSocket handler tasks so that shutdown can wait for them to finish.
    pub tasks: TaskTracker,
}

type Body = Full<Bytes>;

/// Serves HTTP/1.1 on one accepted TCP connection until it closes or is upgraded.
pub async fn serve_connection(stream: TcpStream, peer: SocketAddr, app: Arc<App>) {
    let io = TokioIo::new(stream);
    let service = {
        let app = Arc::clone(&app);
        service_fn(move |request| {
            let app = Arc::clone(&app);
            async move { Ok::<_, Infallible>(route(request, &app)) }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);

    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = app.shutdown.cancelled() => {
            // Finish the request in flight, then close instead of keeping the connection alive.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        debug!(%peer, cause = %err, "http connection ended with an error");
    }
}

/// Picks the response for one request.
fn route(request: Request<Incoming>, app: &Arc<App>) -> Response<Body> {
    let wants_websocket = header_has_token(request.headers(), header::UPGRADE, "websocket");
    match (request.method(), request.uri().path()) {
        (_, "/ws") => upgrade(request, app),
        (&Method::GET | &Method::HEAD, "/healthz") => {
            respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")
        }
        (&Method::GET | &Method::HEAD, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.render(),
        ),
        _ => {
            if wants_websocket {
                app.metrics.handshakes_refused.increment(1);
            }
            not_found()
        }
    }
}

/// Answers a request on `/ws`: a valid upgrade gets `101` and a WebSocket handler; anything
/// else gets the 4xx that says what is missing.
fn upgrade(mut request: Request<Incoming>, app: &Arc<App>) -> Response<Body> {
    let headers = request.headers();
    let refusal = if request.method() != Method::GET {
        Some((
            StatusCode::METHOD_NOT_ALLOWED,
            "The WebSocket endpoint only takes GET.\n",
        ))
    } else if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        Some((
            StatusCode::UPGRADE_REQUIRED,
            "This is a WebSocket endpoint: upgrade to websocket.\n",
        ))
    } else if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        Some((
            StatusCode::UPGRADE_REQUIRED,
            "Only WebSocket version 13 is supported.\n",
        ))
    } else if headers.get(header::SEC_WEBSOCKET_KEY).is_none() {
        Some((StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing.\n"))
    } else {
        None
    };
    if let Some((status, text)) = refusal {
        app.metrics.handshakes_refused.increment(1);
        let mut response = respond(status, "text/plain; charset=utf-8", text);
        if status == StatusCode::UPGRADE_REQUIRED {
            let response_headers = response.headers_mut();
            response_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            response_headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        return response;
    }

    let accept_key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()))
        .unwrap_or_default();
    // The upgraded socket only becomes available once hyper has sent our 101 response, so the
    // WebSocket side runs in its own task, which waits for it.
    let upgrade = hyper::upgrade::on(&mut request);
    let app = Arc::clone(app);
    app.tasks.clone().spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let config = Some(handler::websocket_config());
                let socket = WebSocketStream::from_raw_socket(io, Role::Server, config).await;
                let server = app.server.clone();
                handler::serve(socket, server, &app.config, app.shutdown.clone()).await;
            }
            Err(err) => debug!(cause = %err, "websocket upgrade failed"),
        }
    });

    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // The accept key is base64, which is always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&accept_key) {
        response_headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// Whether a comma-separated header (`Connection: keep-alive, Upgrade`) holds `token`, ignoring
/// case as HTTP requires.
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

fn not_found() -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        "Not found.\n",
    )
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
