//! The multi-node harness: a `redis-server` of the test's own, a small Redis client for
//! checking what the store left there, chat-server nodes that share that Redis, and a link
//! between a node and Redis that a test can cut and restore.
//!
//! Needs `/usr/bin/redis-server` (Debian package `redis-server`); see [`redis_available`] for
//! what happens without it.
#![allow(dead_code)] // Every test binary compiles this module; only the multi-node tests use it.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{PATIENCE, ServerProcess, TestClient, http_request};

pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// How often a condition is checked again while waiting for it (a process to exit).
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Whether `redis-server` is installed. Missing in CI is a failure, because a test that
/// silently skips there would pass while testing nothing; elsewhere the test says it skipped.
pub fn redis_available(test: &str) -> bool {
    tool_available(
        test,
        REDIS_SERVER,
        "Debian: `apt-get install -y redis-server`",
    )
}

/// Whether the program at `path` exists; if not, fails under CI and otherwise prints that
/// `test` skipped, with `install` saying how to get it. For every external tool a test needs.
pub fn tool_available(test: &str, path: &str, install: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    let why = format!("{path} not found ({install})");
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run in CI: {why}"
    );
    // Straight to stderr: libtest hides `eprintln!` output of passing tests, and a skip
    // should not go unnoticed.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    false
}

/// Where ports for servers that cannot pick their own (`redis-server`, nginx) come from:
/// below 32768, where Linux's range for ephemeral ports begins (`ip_local_port_range`). The
/// kernel never gives one of these to a client socket or a port-0 listener, so a server can
/// be restarted on its port without something else having taken it in the meantime.
const PORT_RANGE: Range<u16> = 20_000..32_768;

/// A port from [`PORT_RANGE`] that is free now and that no other test of this process was
/// given. Another process may still take it before the server binds it: servers started on
/// it must notice "address in use" and ask again.
pub fn unclaimed_port() -> u16 {
    static CLAIMED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = rand::random_range(PORT_RANGE);
        // A poisoned lock only means another test panicked; the set is still good.
        let mut claimed = CLAIMED.lock().unwrap_or_else(|poison| poison.into_inner());
        if !claimed.insert(port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A `redis-server` on 127.0.0.1 and a port of its own, keeping nothing on disk (`--save ""`,
/// `--appendonly no`, a fresh directory). Killed when dropped, also when the test panics.
pub struct RedisServer {
    port: u16,
    /// Its `--dir`: empty, and removed with the server.
    dir: TempDir,
    /// `None` between [`RedisServer::stop`] and [`RedisServer::start_again`].
    process: Option<Child>,
}

/// Why a `redis-server` did not come up.
pub enum StartError {
    /// Another process holds the port: try another.
    PortTaken,
    /// Anything else, with what it logged.
    Failed(String),
}

impl RedisServer {
    /// Starts a server on a free port and returns once it answers `PING`.
    pub async fn start() -> Self {
        let dir = TempDir::new("chat-redis");
        for _ in 0..10 {
            let port = unclaimed_port();
            match launch(port, &dir.0).await {
                Ok(process) => {
                    let server = RedisServer {
                        port,
                        dir,
                        process: Some(process),
                    };
                    server.expect_pong().await;
                    return server;
                }
                Err(StartError::PortTaken) => continue,
                Err(StartError::Failed(log)) => panic!("redis-server did not start:\n{log}"),
            }
        }
        panic!("redis-server found no free port in ten tries");
    }

    /// `redis://127.0.0.1:PORT/`, for `--redis`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients beyond what the kernel does when a
    /// process dies) and waits until it is gone. Everything it held is lost.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            // Kill fails only if the process already exited, which is what we want anyway.
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the server again on the same port, empty, and returns once it answers `PING`.
    pub async fn start_again(&mut self) {
        assert!(self.process.is_none(), "redis-server is still running");
        match launch(self.port, &self.dir.0).await {
            Ok(process) => self.process = Some(process),
            Err(StartError::PortTaken) => {
                panic!("port {} was taken while redis-server was down", self.port)
            }
            Err(StartError::Failed(log)) => panic!("redis-server did not start again:\n{log}"),
        }
        self.expect_pong().await;
    }

    /// A Redis restart as a crash and a supervisor make it: [`stop`](Self::stop), then
    /// [`start_again`](Self::start_again) on the same port, with nothing kept but what a `SAVE`
    /// wrote (the server loads its dump when it starts).
    pub async fn restart(&mut self) {
        self.stop();
        self.start_again().await;
    }

    /// A new connection to the server.
    pub async fn client(&self) -> RedisClient {
        RedisClient::connect(self.addr())
            .await
            .unwrap_or_else(|e| panic!("connect to redis-server at {}: {e}", self.addr()))
    }

    /// Runs one command on a new connection and returns its reply.
    pub async fn command(&self, args: &[&str]) -> Reply {
        let mut client = self.client().await;
        tokio::time::timeout(PATIENCE, client.command(args))
            .await
            .unwrap_or_else(|_| panic!("redis-server answers {args:?} within {PATIENCE:?}"))
            .unwrap_or_else(|e| panic!("redis-server answers {args:?}: {e}"))
    }

    /// The keys that match `pattern` (`KEYS`), sorted.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = self.command(&["KEYS", pattern]).await.into_strings();
        keys.sort();
        keys
    }

    /// How many keys the database holds (`DBSIZE`).
    pub async fn dbsize(&self) -> i64 {
        self.command(&["DBSIZE"]).await.into_integer()
    }

    async fn expect_pong(&self) {
        assert_eq!(
            self.command(&["PING"]).await,
            Reply::Status("PONG".into()),
            "redis-server answers PING"
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `redis-server` on `port` with `dir` as its directory and waits until it says that it
/// accepts connections, or until it exits.
async fn launch(port: u16, dir: &Path) -> Result<Child, StartError> {
    launch_with(port, dir, &[]).await
}

/// [`launch`] with `extra_args` after the usual ones (the cluster's settings).
pub async fn launch_with(port: u16, dir: &Path, extra_args: &[&str]) -> Result<Child, StartError> {
    let mut process = Command::new(REDIS_SERVER)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(extra_args)
        .args(["--logfile", ""]) // stdout
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    // A thread reads the log to the end, so that redis-server never blocks on a full pipe;
    // each line comes here until the one that says it is ready.
    let stdout = process.stdout.take().expect("piped stdout");
    let (line_tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Keep draining even when nobody listens any more.
            let _ = line_tx.send(line);
        }
    });
    let mut log = String::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("Ready to accept connections") {
                    return Ok(process);
                }
            }
            // The end of its output: it exited.
            Ok(None) => {
                let _ = process.wait();
                return Err(if log.contains("Address already in use") {
                    StartError::PortTaken
                } else {
                    StartError::Failed(log)
                });
            }
            Err(_) => {
                let _ = process.kill();
                let _ = process.wait();
                return Err(StartError::Failed(format!(
                    "not ready within {PATIENCE:?}:\n{log}"
                )));
            }
        }
    }
}

/// A reply, as RESP2 (the protocol Redis speaks by default) has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, `+PONG`.
    Status(String),
    /// `-ERR …`: the command failed.
    Error(String),
    Integer(i64),
    /// A string value, or `None` for a missing one. Read as UTF-8, which is all the tests
    /// look at (keys and JSON).
    Bulk(Option<String>),
    /// Several replies, or `None` for a missing array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn into_integer(self) -> i64 {
        match self {
            Reply::Integer(n) => n,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }

    /// The strings of an array reply (such as `KEYS`); missing ones are left out.
    pub fn into_strings(self) -> Vec<String> {
        match self {
            Reply::Array(items) => items
                .unwrap_or_default()
                .into_iter()
                .filter_map(|item| match item {
                    Reply::Bulk(text) => text,
                    Reply::Status(text) => Some(text),
                    other => panic!("expected strings, got {other:?}"),
                })
                .collect(),
            other => panic!("expected an array reply, got {other:?}"),
        }
    }
}

/// A Redis client of a few lines: one connection, one command at a time, RESP2. The tests
/// only look at what the store left in Redis, so this is all they need, and it keeps the
/// harness free of the `redis` crate's API.
pub struct RedisClient {
    stream: tokio::io::BufReader<TcpStream>,
}

impl RedisClient {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        Ok(RedisClient {
            stream: tokio::io::BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply. Waits as long as it takes: wrap it in a
    /// timeout where no answer is an expected outcome.
    pub async fn command(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        self.reply().await
    }

    /// Reads one reply (or a message pushed to a subscriber); an array's items are read by
    /// calling itself, hence the box.
    pub fn reply(
        &mut self,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Reply>> + Send + '_>> {
        Box::pin(async move {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end_matches("\r\n");
            let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, line);
            let (kind, rest) = line.split_at_checked(1).ok_or_else(invalid)?;
            let number = || rest.parse::<i64>().map_err(|_| invalid());
            Ok(match kind {
                "+" => Reply::Status(rest.to_owned()),
                "-" => Reply::Error(rest.to_owned()),
                ":" => Reply::Integer(number()?),
                "$" => match usize::try_from(number()?) {
                    // -1: a missing value.
                    Err(_) => Reply::Bulk(None),
                    Ok(len) => {
                        let mut data = vec![0; len + 2]; // And its "\r\n".
                        self.stream.read_exact(&mut data).await?;
                        data.truncate(len);
                        Reply::Bulk(Some(String::from_utf8_lossy(&data).into_owned()))
                    }
                },
                "*" => match usize::try_from(number()?) {
                    Err(_) => Reply::Array(None),
                    Ok(len) => {
                        let mut items = Vec::with_capacity(len);
                        for _ in 0..len {
                            items.push(self.reply().await?);
                        }
                        Reply::Array(Some(items))
                    }
                },
                _ => return Err(invalid()),
            })
        })
    }
}

/// A `chat-server` process, started by a test on `127.0.0.1:0`. Killed when dropped.
pub struct Node {
    process: ServerProcess,
    addr: SocketAddr,
}

/// `n` nodes sharing the Redis at `redis_url`, each with `--redis URL --bind 127.0.0.1:0` and
/// `extra_args` (such as `["--resume-grace", "2s"]`).
pub fn nodes(n: usize, redis_url: &str, extra_args: &[&str]) -> Vec<Node> {
    (0..n)
        .map(|_| {
            let mut args = vec!["--redis", redis_url];
            args.extend_from_slice(extra_args);
            Node::start(&args)
        })
        .collect()
}

impl Node {
    /// Starts the binary with `--bind 127.0.0.1:0` and `args`, and waits for its startup line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Node::start`] with environment variables `env` too (such as `CHAT_TEST_DIE_AT`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let process = ServerProcess::start(
            ServerProcess::command()
                .args(["--bind", "127.0.0.1:0"])
                .args(args)
                .envs(env.iter().copied()),
        );
        let addr = process.addr.parse().expect("the node's address");
        Node { process, addr }
    }

    /// Where `/`, `/healthz`, `/metrics` and `/ws` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The node's log, a line at a time, after its startup line.
    pub fn lines(&self) -> &std::sync::mpsc::Receiver<String> {
        &self.process.lines
    }

    /// A connected client, after `connected`.
    pub async fn client(&self) -> TestClient {
        TestClient::connect(&self.ws_url()).await
    }

    /// A connected client that has set `name`.
    pub async fn named(&self, name: &str) -> TestClient {
        let mut client = self.client().await;
        client.set_username(name).await;
        client
    }

    /// The status of `GET /healthz`.
    pub async fn healthz(&self) -> u16 {
        self.http_get("/healthz").await.0
    }

    /// `/healthz`: its status and its body.
    pub async fn healthz_text(&self) -> (u16, String) {
        let (status, _, body) = self.http_get("/healthz").await;
        (status, body)
    }

    /// The `/metrics` exposition text.
    pub async fn metrics(&self) -> String {
        self.http_get("/metrics").await.2
    }

    /// The value of the metric `name` without labels (such as `chat_connections`), if
    /// `/metrics` has it.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics().await, name)
    }

    async fn http_get(&self, path: &str) -> (u16, String, String) {
        http_request(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
        )
        .await
    }

    /// Sends SIGTERM, the graceful stop a supervisor sends, unless the node has exited.
    pub fn sigterm(&mut self) {
        // Once reaped, its pid may belong to another process.
        if self
            .process
            .child
            .try_wait()
            .expect("the node's status")
            .is_some()
        {
            return;
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    /// Sends SIGKILL: the node dies on the spot, as in a crash or an out-of-memory kill.
    pub fn sigkill(&mut self) {
        // Kill fails only if the process already exited, which is what we want anyway.
        let _ = self.process.child.kill();
    }

    /// Waits until the process has exited, for at most [`PATIENCE`], and returns how.
    pub async fn exited(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.process.child.try_wait().expect("the node's status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the node (pid {}) exits within {PATIENCE:?}",
                self.pid()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
    }
}

/// The value of the unlabelled metric `name` in a Prometheus exposition `text`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// A TCP proxy between a node and Redis, standing for the network between them. [`cut`]
/// is a partition: from then on nothing passes on any connection, in either direction, with no
/// FIN and no reset, and new connections are accepted but never answered, so the node finds out
/// only by its own timeouts. [`restore`] heals it for new connections; those caught in the cut
/// stay dead, as after a real partition that lasted longer than the client waited.
///
/// [`cut`]: RedisLink::cut
/// [`restore`]: RedisLink::restore
pub struct RedisLink {
    /// Where the node connects.
    addr: SocketAddr,
    /// The current stretch of good network: cancelled by `cut`, which leaves `None` until
    /// `restore` puts a fresh one.
    network: Arc<Mutex<Option<CancellationToken>>>,
    /// Accepts connections; dropping it (with the link) closes every connection.
    task: JoinHandle<()>,
}

impl RedisLink {
    /// Starts a link to the Redis at `redis` on a free port.
    pub async fn start(redis: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        let network = Arc::new(Mutex::new(Some(CancellationToken::new())));
        let task = tokio::spawn(Self::serve(listener, redis, network.clone()));
        RedisLink {
            addr,
            network,
            task,
        }
    }

    /// `redis://127.0.0.1:PORT/` of the link, for the node's `--redis`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding on every connection, and blackholes new ones, until `restore`.
    pub fn cut(&self) {
        if let Some(network) = self.network().take() {
            network.cancel();
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.network().get_or_insert_with(CancellationToken::new);
    }

    fn network(&self) -> std::sync::MutexGuard<'_, Option<CancellationToken>> {
        // A poisoned lock only means another thread panicked; the token is still good.
        self.network
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    async fn serve(
        listener: TcpListener,
        redis: SocketAddr,
        network: Arc<Mutex<Option<CancellationToken>>>,
    ) {
        // Each connection's task; dropping the set (with this future, when the link goes)
        // aborts them and closes their sockets.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((node, _)) = listener.accept().await else {
                return;
            };
            let network = network
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone();
            connections.spawn(async move {
                let (mut node_read, mut node_write) = node.into_split();
                let Some(network) = network else {
                    // Made during a cut.
                    return Self::blackhole(node_read, node_write).await;
                };
                // Redis is down: the node's connection is closed at once, as a proxy would.
                let Ok(upstream) = TcpStream::connect(redis).await else {
                    return;
                };
                let (mut redis_read, mut redis_write) = upstream.into_split();
                tokio::select! {
                    _ = tokio::io::copy(&mut node_read, &mut redis_write) => return,
                    _ = tokio::io::copy(&mut redis_read, &mut node_write) => return,
                    () = network.cancelled() => {}
                }
                // Cut: Redis hears nothing more, and says nothing more, on this connection.
                let _held = (redis_read, redis_write);
                Self::blackhole(node_read, node_write).await;
            });
            // Forget the connections that have ended, so that the set does not grow.
            while connections.try_join_next().is_some() {}
        }
    }

    /// What the node sends goes nowhere and nothing comes back, until the node closes its end;
    /// then this connection is closed too, so a node that reconnects again and again does not
    /// pile up sockets.
    async fn blackhole(
        mut node_read: tokio::net::tcp::OwnedReadHalf,
        node_write: tokio::net::tcp::OwnedWriteHalf,
    ) {
        let _ = tokio::io::copy(&mut node_read, &mut tokio::io::sink()).await;
        drop(node_write);
    }
}

impl Drop for RedisLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        // The process id keeps test binaries apart, the counter the servers of one binary.
        static CREATED: AtomicUsize = AtomicUsize::new(0);
        let count = CREATED.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{count}", std::process::id()));
        // A leftover from a crashed run with the same pid would not be empty.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `content` as a chat with a `client_msg_id` of its own, and again while the node
/// answers `UNAVAILABLE` (it is reconnecting to Redis, or the room's shard is changing hands),
/// as the web client does, for at most three patience periods; returns the echo.
pub async fn send_until_accepted(client: &mut TestClient, content: &str) -> serde_json::Value {
    let chat = serde_json::json!({"type": "chat", "content": content, "client_msg_id": content});
    let deadline = Instant::now() + 3 * PATIENCE;
    loop {
        client.send(chat.clone()).await;
        let answer = client.recv().await;
        if answer["type"] == "chat" {
            return answer;
        }
        assert_eq!(answer["code"], "UNAVAILABLE", "{answer}");
        assert!(Instant::now() < deadline, "the room is served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
