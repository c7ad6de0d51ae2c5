//! The HTTP side of the listener: routes each request, and turns `GET /ws` upgrades into
//! WebSocket connections.
//!
//! Every TCP connection starts as HTTP/1.1, served by hyper. Most requests get a plain response;
//! a valid WebSocket upgrade on `/ws` gets `101 Switching Protocols`, after which hyper hands us
//! the raw socket and [`handler::serve`] takes over. Doing the handshake here, rather than with
//! tungstenite's own `accept`, is what lets one port serve pages and WebSockets alike.
//!
//! This is also where the limits that come before a WebSocket exists are enforced: the handshake
//! deadline (`--handshake-timeout`), the `Origin` check (`--allowed-origin`) and the connection
//! caps (`--max-connections`, `--max-connections-per-ip`). See docs/architecture.md, "Limits".

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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::config::Config;
use crate::handler;
use crate::limits::{CapReached, ConnectionLimits, OriginPolicy};
use crate::metrics::Metrics;
use crate::server::ChatServerHandle;

/// How long a connection whose handshake time is up may take to finish the request it is in
/// the middle of, before it is dropped.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// The type of every module of the script (a module runs only if served as JavaScript).
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const FAVICON_SVG: &str = include_str!("../static/favicon.svg");

/// The web client (`static/`), embedded in the binary so that the server alone is all a
/// person needs to try it: `cargo run`, then open the address in two tabs. One row per file:
/// the path it is served at, its type, and its contents. Its script is ES modules, loaded
/// straight from `static/js/` with no build step: `index.html` loads `main.js`, which imports
/// the others, so a module added there needs a row here (`tests/web_page.rs` checks that).
const WEB_FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../static/index.html"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../static/style.css"),
    ),
    (
        "/js/main.js",
        JAVASCRIPT,
        include_str!("../static/js/main.js"),
    ),
    (
        "/js/connection.js",
        JAVASCRIPT,
        include_str!("../static/js/connection.js"),
    ),
    (
        "/js/views.js",
        JAVASCRIPT,
        include_str!("../static/js/views.js"),
    ),
    (
        "/js/protocol.js",
        JAVASCRIPT,
        include_str!("../static/js/protocol.js"),
    ),
    (
        "/js/e2e.js",
        JAVASCRIPT,
        include_str!("../static/js/e2e.js"),
    ),
    (
        "/js/attention.js",
        JAVASCRIPT,
        include_str!("../static/js/attention.js"),
    ),
    (
        "/js/invite.js",
        JAVASCRIPT,
        include_str!("../static/js/invite.js"),
    ),
    // Third-party code, vendored unchanged (static/js/vendor/README.md).
    (
        "/js/vendor/qrcode-generator.js",
        JAVASCRIPT,
        include_str!("../static/js/vendor/qrcode-generator.js"),
    ),
    // What makes the page installable as an app (its icons are in `WEB_IMAGES`).
    (
        "/manifest.webmanifest",
        "application/manifest+json",
        include_str!("../static/manifest.webmanifest"),
    ),
    // The tab's icon while messages wait unread in a background tab (attention.js).
    (
        "/favicon-unread.svg",
        "image/svg+xml",
        include_str!("../static/favicon-unread.svg"),
    ),
    // Browsers ask for /favicon.ico when a page names no icon; ours names this one, and
    // both paths serve it, so that no browser shows a 404 for it.
    ("/favicon.svg", "image/svg+xml", FAVICON_SVG),
    ("/favicon.ico", "image/svg+xml", FAVICON_SVG),
];

/// The web client's binary files, the app icons the manifest names, as `WEB_FILES` has its text
/// ones. (`static/icons/*.svg` are their sources, not served.)
const WEB_IMAGES: &[(&str, &str, &[u8])] = &[
    (
        "/icons/icon-192.png",
        "image/png",
        include_bytes!("../static/icons/icon-192.png"),
    ),
    (
        "/icons/icon-512.png",
        "image/png",
        include_bytes!("../static/icons/icon-512.png"),
    ),
    (
        "/icons/icon-maskable-512.png",
        "image/png",
        include_bytes!("../static/icons/icon-maskable-512.png"),
    ),
];

/// What the page may load and connect to: its own script and stylesheet, and connections to its
/// own origin (`'self'` covers `ws:`/`wss:` to the same host), and its own web app manifest.
/// Nothing inline and no `eval`, so even if some text ever slipped into the page as markup, the
/// browser would not run it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; manifest-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

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
    /// Tracks every connection's task, so that shutdown can wait for them to finish.
    pub tasks: TaskTracker,
    /// Tracks the WebSocket connections' tasks among them, so that after a failure of the
    /// actor the server can wait for exactly those to close.
    pub websockets: TaskTracker,
    /// Cancelled if the actor stops while the server runs (a bug): `/healthz` then answers
    /// 503 and upgrades are refused, since no WebSocket could be served.
    pub actor_stopped: CancellationToken,
    /// `--max-connections` and `--max-connections-per-ip`. Only WebSocket connections count:
    /// plain HTTP requests (`/healthz`, `/metrics`, pages) are answered even when the caps are
    /// reached, so that a full server can still be watched, and those connections are short
    /// lived anyway (see the handshake deadline in [`serve_connection`]).
    pub limits: ConnectionLimits,
    /// `--allowed-origin`: which web pages may open a WebSocket here.
    pub origins: OriginPolicy,
}

impl App {
    /// Everything a server needs on its HTTP side.
    pub fn new(server: ChatServerHandle, config: Config, metrics: Arc<Metrics>) -> Self {
        App {
            server,
            limits: ConnectionLimits::new(config.max_connections, config.max_connections_per_ip),
            origins: OriginPolicy::new(&config.allowed_origins),
            config,
            metrics,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            websockets: TaskTracker::new(),
            actor_stopped: CancellationToken::new(),
        }
    }
}

type Body = Full<Bytes>;

/// Serves one accepted TCP connection: first its TLS handshake when TLS is on, then HTTP.
pub async fn serve_tcp(stream: TcpStream, peer: SocketAddr, app: Arc<App>) {
    // Everything before the WebSocket exists, the TLS handshake included, must be over by then.
    let deadline = Instant::now() + app.config.handshake_timeout;
    let Some(tls) = app.config.tls.clone() else {
        return serve_connection(stream, peer, deadline, app).await;
    };
    // Runs in this connection's task, not in the accept loop: a client that is slow to
    // negotiate TLS holds up only itself.
    let handshake = tokio::select! {
        handshake = timeout_at(deadline, TlsAcceptor::from(tls).accept(stream)) => handshake,
        () = app.shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => serve_connection(stream, peer, deadline, app).await,
        Ok(Err(err)) => debug!(%peer, cause = %err, "TLS handshake failed"),
        Err(_) => {
            debug!(%peer, "connection dropped: TLS handshake timeout");
            app.metrics.refused_by_limit.handshake_timeout.increment(1);
        }
    }
}

/// Serves HTTP/1.1 on one connection (plain TCP, or TLS over it) until it closes or is
/// upgraded, or until `deadline` if it has not been upgraded by then.
pub async fn serve_connection<S>(stream: S, peer: SocketAddr, deadline: Instant, app: Arc<App>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let service = {
        let app = Arc::clone(&app);
        service_fn(move |request| {
            let app = Arc::clone(&app);
            async move {
                let mut response = route(request, peer, &app);
                if app.config.tls.is_some() {
                    // Served over TLS: tell browsers to come back only over TLS, so that nobody
                    // on the network can later serve them a page of their own over plain HTTP
                    // (which could read an encrypted room's key). Two years, as browsers' HSTS
                    // preload lists ask; subdomains are the operator's to decide, so not named.
                    response.headers_mut().insert(
                        header::STRICT_TRANSPORT_SECURITY,
                        HeaderValue::from_static("max-age=63072000"),
                    );
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let handshake_timeout = app.config.handshake_timeout;
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        // hyper drops a connection whose request headers take longer than this (slow-loris).
        .header_read_timeout(handshake_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    // The whole HTTP side of a connection must be over by this deadline: the request read, and
    // for `/ws` the 101 sent. An upgraded connection finishes the `connection` future right
    // after its 101, handing the socket to its WebSocket task, which the deadline does not
    // touch. A plain HTTP connection kept alive past the deadline is closed: browsers and
    // scrapers open a new one when they need it.
    let deadline = tokio::time::sleep_until(deadline);
    tokio::pin!(deadline);

    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = app.shutdown.cancelled() => {
            // Finish the request in flight, then close instead of keeping the connection alive.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = &mut deadline => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(DEADLINE_GRACE, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    // Returning drops the connection, and with it the socket.
                    debug!(%peer, "http connection dropped: handshake timeout");
                    app.metrics.refused_by_limit.handshake_timeout.increment(1);
                    return;
                }
            }
        }
    };
    if let Err(err) = result {
        if err.is_timeout() {
            app.metrics.refused_by_limit.handshake_timeout.increment(1);
        }
        debug!(%peer, cause = %err, "http connection ended with an error");
    }
}

/// Picks the response for one request.
fn route(request: Request<Incoming>, peer: SocketAddr, app: &Arc<App>) -> Response<Body> {
    let path = request.uri().path();
    if path != "/ws" && header_has_token(request.headers(), header::UPGRADE, "websocket") {
        // Only `/ws` speaks WebSocket; an upgrade anywhere else is a mistake to say so about,
        // not a page to serve.
        app.metrics.handshakes_refused.increment(1);
        return not_found();
    }
    match (request.method(), path) {
        (_, "/ws") => upgrade(request, peer, app),
        (&Method::GET | &Method::HEAD, "/healthz") => {
            if app.actor_stopped.is_cancelled() {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "the chat server has failed and is closing\n",
                )
            } else if !app.server.store_reachable() {
                // With --redis: a balancer should send new connections elsewhere until the node
                // reaches Redis again and has recorded its beat there (one cut off for long
                // enough lets its clients go, for them to resume on another node).
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "cannot reach Redis\n",
                )
            } else {
                // On a Redis Cluster, a master that does not answer costs the rooms of its
                // slots only (until its replica takes over): the node serves the others.
                let down = app.server.shards_down();
                if down.is_empty() {
                    respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")
                } else {
                    let body = format!("ok, but these shards do not answer: {}\n", down.join(" "));
                    respond(StatusCode::OK, "text/plain; charset=utf-8", body)
                }
            }
        }
        (&Method::GET | &Method::HEAD, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.render(),
        ),
        // Any other GET or HEAD: one of the web client's files, or nothing.
        (&Method::GET | &Method::HEAD, _) => {
            match WEB_FILES.iter().find(|(file_path, ..)| *file_path == path) {
                Some(&(_, content_type, body)) => web_file(content_type, body),
                None => match WEB_IMAGES.iter().find(|(file_path, ..)| *file_path == path) {
                    Some(&(_, content_type, body)) => web_file(content_type, body),
                    None => not_found(),
                },
            }
        }
        _ => not_found(),
    }
}

/// Answers a request on `/ws`: a valid upgrade within the limits gets `101` and a WebSocket
/// handler; anything else gets the 4xx or 503 that says what is wrong.
///
/// The checks run from the cheapest and most specific to the limits: a malformed request is told
/// so whatever the load (4xx), then a page from a foreign site is refused (403), and only then
/// does the request take a place under the connection caps (429 for its address, 503 for the
/// server).
fn upgrade(mut request: Request<Incoming>, peer: SocketAddr, app: &Arc<App>) -> Response<Body> {
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
    } else if app.actor_stopped.is_cancelled() {
        Some((
            StatusCode::SERVICE_UNAVAILABLE,
            "The server has failed and is restarting: try again shortly.\n",
        ))
    } else {
        None
    };
    let refusal = refusal.or_else(|| {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if app.origins.allows(origin, host) {
            return None;
        }
        debug!(%peer, "websocket refused: origin not allowed");
        app.metrics.refused_by_limit.allowed_origin.increment(1);
        Some((
            StatusCode::FORBIDDEN,
            "Pages from this origin may not connect here.\n",
        ))
    });
    // The place under the caps is taken now, before the 101, so that the count can never run
    // ahead of the limit, and handed to the connection's task, which holds it until it ends.
    let permit = match refusal {
        Some(_) => None,
        None => match app.limits.try_acquire(peer.ip()) {
            Ok(permit) => Some(permit),
            Err(cap) => {
                debug!(%peer, ?cap, "websocket refused: connection cap reached");
                let (status, text, counter) = match cap {
                    CapReached::Global => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The server is full: try again later.\n",
                        &app.metrics.refused_by_limit.max_connections,
                    ),
                    CapReached::PerIp => (
                        StatusCode::TOO_MANY_REQUESTS,
                        "Too many connections from your address.\n",
                        &app.metrics.refused_by_limit.max_connections_per_ip,
                    ),
                };
                counter.increment(1);
                return refuse(app, status, text);
            }
        },
    };
    if let Some((status, text)) = refusal {
        return refuse(app, status, text);
    }

    let accept_key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()))
        .unwrap_or_default();
    // The upgraded socket only becomes available once hyper has sent our 101 response, so the
    // WebSocket side runs in its own task, which waits for it.
    let upgrade = hyper::upgrade::on(&mut request);
    let app = Arc::clone(app);
    let tasks = app.tasks.clone();
    let websockets = app.websockets.clone();
    tasks.spawn(websockets.track_future(async move {
        // Held for as long as this task runs, however it ends: dropping it frees the place.
        let _permit = permit;
        match upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let config = Some(handler::websocket_config());
                let socket = WebSocketStream::from_raw_socket(io, Role::Server, config).await;
                let server = app.server.clone();
                handler::serve(socket, peer.ip(), server, &app.config, app.shutdown.clone()).await;
            }
            Err(err) => debug!(cause = %err, "websocket upgrade failed"),
        }
    }));

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

/// A refused upgrade: counted, and answered with `status` and a sentence.
fn refuse(app: &App, status: StatusCode, text: &'static str) -> Response<Body> {
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

/// One file of the web client, with the headers that keep the page locked down.
fn web_file(content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = respond(StatusCode::OK, content_type, body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    // Never guess a type other than the one we declare (a script must be served as one).
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Revalidate on every load, so a restarted server with a new page is picked up at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Never tell another site (or this one) which page a request came from. Browsers never put
    // a URL's fragment, where an end-to-end encrypted room's key travels, in a `Referer`; this
    // also keeps the room code of an invite link (`/?room=CODE`) to the page itself.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A page this one opens (a link in a message) gets no handle on it (`window.opener`), and
    // a page that opens this one cannot reach into it: a window of another origin shares
    // nothing with the one that holds an encrypted room's key.
    headers.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
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
