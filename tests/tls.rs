//! TLS: with a certificate and key, the one port serves `wss://` and `https://`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use chat_server::Config;
use common::{PATIENCE, TestServer};

/// A self-signed certificate for `localhost`, written as PEM files in a fresh directory.
struct SelfSigned {
    dir: PathBuf,
    cert: CertificateDer<'static>,
}

impl SelfSigned {
    fn new(name: &str) -> Self {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("generate a certificate");
        let dir =
            std::env::temp_dir().join(format!("chat-server-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        std::fs::write(dir.join("cert.pem"), generated.cert.pem()).expect("write the cert");
        std::fs::write(dir.join("key.pem"), generated.signing_key.serialize_pem())
            .expect("write the key");
        SelfSigned {
            dir,
            cert: generated.cert.der().clone(),
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// Opens a TLS connection to `server` that trusts only this certificate.
    async fn connect(&self, server: &TestServer) -> TlsStream<TcpStream> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).expect("a usable certificate");
        let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(server.addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("a server name");
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("a TLS handshake")
    }
}

impl Drop for SelfSigned {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `wss://` client speaking the chat protocol, just enough of it for these tests.
struct SecureClient {
    ws: WebSocketStream<TlsStream<TcpStream>>,
}

impl SecureClient {
    async fn connect(certificate: &SelfSigned, server: &TestServer) -> Self {
        let tls = certificate.connect(server).await;
        let url = format!("wss://localhost:{}/ws", server.addr.port());
        let (ws, _) = tokio_tungstenite::client_async(url, tls)
            .await
            .expect("a WebSocket handshake over TLS");
        let mut client = SecureClient { ws };
        client.expect("connected").await;
        client
    }

    async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a message in time")
                .expect("open")
                .expect("a valid frame");
            if let Message::Text(text) = frame {
                let message: Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(message["type"], kind, "{message}");
                return message;
            }
        }
    }
}

/// Two clients chat over `wss://` with a self-signed certificate, from names to one of them
/// dropping off.
#[tokio::test]
async fn two_clients_chat_over_wss() {
    let certificate = SelfSigned::new("chat");
    let tls = chat_server::tls::server_config(&certificate.cert_path(), &certificate.key_path())
        .expect("load the certificate");
    let server = TestServer::with_config(Config {
        tls: Some(tls),
        ..Config::default()
    })
    .await;

    let mut ada = SecureClient::connect(&certificate, &server).await;
    ada.send(json!({"type": "set_username", "username": "ada"}))
        .await;
    ada.expect("username_set").await;
    ada.send(json!({"type": "create_room"})).await;
    let code = ada.expect("room_created").await["room_code"].clone();

    let mut grace = SecureClient::connect(&certificate, &server).await;
    grace
        .send(json!({"type": "set_username", "username": "grace"}))
        .await;
    grace.expect("username_set").await;
    grace
        .send(json!({"type": "join_room", "room_code": code}))
        .await;
    assert_eq!(grace.expect("room_joined").await["peer"], "ada");
    ada.expect("peer_joined").await;

    ada.send(json!({"type": "chat", "content": "over TLS"}))
        .await;
    assert_eq!(grace.expect("chat").await["content"], "over TLS");
    assert_eq!(ada.expect("chat").await["content"], "over TLS");
    drop(grace);
    assert_eq!(ada.expect("peer_disconnected").await["username"], "grace");
}

/// The same port answers `https://` requests, and refuses plain-text clients. Every answer over
/// TLS tells the browser to come back only over TLS (`Strict-Transport-Security`), so that
/// nobody on the network can later serve it a page of their own over plain HTTP.
#[tokio::test]
async fn https_is_served_and_plain_text_is_not() {
    let certificate = SelfSigned::new("https");
    let tls = chat_server::tls::server_config(&certificate.cert_path(), &certificate.key_path())
        .expect("load the certificate");
    let server = TestServer::with_config(Config {
        tls: Some(tls),
        ..Config::default()
    })
    .await;

    let mut stream = certificate.connect(&server).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send a request");
    let mut response = Vec::new();
    // The response matters, not how the TLS session ends after it.
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("a response in time");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok\n"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nstrict-transport-security: max-age=63072000\r\n"),
        "{response}"
    );

    let plain = tokio_tungstenite::connect_async(server.ws_url()).await;
    assert!(plain.is_err(), "a plain ws:// handshake must fail");
}

/// The binary refuses to start with a certificate it cannot read, saying why.
#[test]
fn the_binary_refuses_a_missing_certificate() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--bind", "127.0.0.1:0"])
        .args([
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
}

/// A connection that never starts its TLS handshake is dropped after `--handshake-timeout`, and
/// counted.
#[tokio::test]
async fn a_stalled_tls_handshake_is_dropped() {
    let certificate = SelfSigned::new("stalled");
    let tls = chat_server::tls::server_config(&certificate.cert_path(), &certificate.key_path())
        .expect("load the certificate");
    let server = TestServer::with_config(Config {
        tls: Some(tls),
        handshake_timeout: std::time::Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let mut mute = TcpStream::connect(server.addr).await.expect("connect");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, mute.read_to_end(&mut rest))
        .await
        .expect("the server drops the connection");

    // `/metrics` over TLS, like any request to this server.
    let mut stream = certificate.connect(&server).await;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send a request");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("a response in time");
    let response = String::from_utf8_lossy(&response);
    assert!(
        response
            .lines()
            .any(|l| l == r#"chat_handshakes_refused_by_limit_total{limit="handshake_timeout"} 1"#),
        "{response}"
    );
}
