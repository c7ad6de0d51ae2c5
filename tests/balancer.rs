//! deploy/'s load balancer configurations, end to end: Redis, two chat-server nodes sharing it
//! (`--redis`), nginx (deploy/nginx.conf) or HAProxy (deploy/haproxy.cfg) in front of them,
//! and two headless Chromium pages that open the balancer's address as people would.
//!
//! Needs `/usr/bin/redis-server`, `/usr/sbin/nginx`, `/usr/sbin/haproxy`, `/usr/bin/chromium`
//! and `/usr/bin/chromedriver` (Debian packages `redis-server`, `nginx`, `haproxy`, `chromium`,
//! `chromium-driver`). Without one of them a test fails when the `CI` environment variable is
//! set and otherwise prints that it skipped.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::browser::{
    ChromeDriver, LAPTOP, PHONE, Page, browser_available, closing_pages_after, eventually,
    one_browser_test_at_a_time,
};
use common::redis::{
    Node, RedisServer, TempDir, nodes, redis_available, tool_available, unclaimed_port,
};

/// The balancer's and the nodes' addresses in deploy/'s files, which the tests replace.
const DEPLOYED_BALANCER: &str = "127.0.0.1:8080";
const DEPLOYED_NODES: [&str; 2] = ["127.0.0.1:8081", "127.0.0.1:8082"];

/// Two pages open the address nginx serves: the page comes through it, each page's WebSocket
/// lands on another node (one connection on each node's `/metrics`, and still so at the end),
/// and the two people, one on each node, find each other with a room code and chat both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_spreads_two_pages_over_two_nodes_and_they_chat() {
    balanced_pages_chat(
        "nginx_spreads_two_pages_over_two_nodes_and_they_chat",
        Kind::Nginx,
    )
    .await;
}

/// The same through HAProxy with deploy/haproxy.cfg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_spreads_two_pages_over_two_nodes_and_they_chat() {
    balanced_pages_chat(
        "haproxy_spreads_two_pages_over_two_nodes_and_they_chat",
        Kind::Haproxy,
    )
    .await;
}

async fn balanced_pages_chat(test: &str, kind: Kind) {
    if !redis_available(test) || !kind.available(test) || !browser_available(test) {
        return;
    }
    let _turn = one_browser_test_at_a_time().await;
    let redis = RedisServer::start().await;
    // Behind a proxy every client has the proxy's address, as deploy/README.md says.
    let nodes = nodes(2, &redis.url(), &["--max-connections-per-ip", "0"]);
    let balancer = Balancer::start(kind, [nodes[0].http_addr(), nodes[1].http_addr()]).await;
    let driver = ChromeDriver::start().await;
    let alice = Page::open(&driver, "Alice", LAPTOP).await;
    let bob = Page::open(&driver, "Bob", PHONE).await;
    closing_pages_after(
        &[&alice, &bob],
        conversation(&balancer.url(), &nodes, &alice, &bob),
    )
    .await;
}

async fn conversation(base: &str, nodes: &[Node], alice: &Page, bob: &Page) {
    alice.goto(base).await;
    alice.choose_name().await;
    let first = eventually(
        "Alice's WebSocket is on one node",
        async || match connections(nodes).await[..] {
            [1, 0] => Some(0),
            [0, 1] => Some(1),
            _ => None,
        },
    )
    .await;

    bob.goto(base).await;
    bob.choose_name().await;
    eventually("Bob's WebSocket is on the other node", async || {
        (connections(nodes).await == [1, 1]).then_some(())
    })
    .await;

    let code = alice.create_room().await;
    bob.join_room(&code).await;
    alice
        .wait_for_text("#messages", "Bob joined", "Alice sees Bob join")
        .await;
    alice.send_message("Hello from one node").await;
    bob.wait_for_message("Alice", "Hello from one node").await;
    bob.send_message("And hello from the other").await;
    let messages = alice
        .wait_for_message("Bob", "And hello from the other")
        .await;
    let texts: Vec<_> = messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["Hello from one node", "And hello from the other"]);

    assert_eq!(
        connections(nodes).await,
        [1, 1],
        "each page kept its connection: Alice's on node {first}, Bob's on the other"
    );
}

/// `chat_connections` of each node.
async fn connections(nodes: &[Node]) -> Vec<u64> {
    let mut counts = Vec::new();
    for node in nodes {
        let count = node
            .metric("chat_connections")
            .await
            .expect("the node reports chat_connections");
        counts.push(count as u64);
    }
    counts
}

#[derive(Clone, Copy)]
enum Kind {
    Nginx,
    Haproxy,
}

impl Kind {
    fn program(self) -> &'static str {
        match self {
            Kind::Nginx => "/usr/sbin/nginx",
            Kind::Haproxy => "/usr/sbin/haproxy",
        }
    }

    /// deploy/'s configuration for it.
    fn config(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx.conf",
            Kind::Haproxy => "haproxy.cfg",
        }
    }

    fn available(self, test: &str) -> bool {
        let install = match self {
            Kind::Nginx => "Debian: `apt-get install -y nginx`",
            Kind::Haproxy => "Debian: `apt-get install -y haproxy`",
        };
        tool_available(test, self.program(), install)
    }

    /// Where it writes its pid once its port is bound (not before: a pid file means it
    /// listens). deploy/nginx.conf names `nginx.pid` under the prefix; HAProxy is told.
    fn pid_file(self, dir: &Path) -> PathBuf {
        match self {
            Kind::Nginx => dir.join("nginx.pid"),
            Kind::Haproxy => dir.join("haproxy.pid"),
        }
    }

    /// The command that runs it in the foreground with `config`, writing what it writes under
    /// `dir`.
    fn command(self, dir: &Path, config: &Path) -> Command {
        let mut command = Command::new(self.program());
        match self {
            Kind::Nginx => command
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(config)
                .arg("-e")
                .arg(dir.join("error.log")),
            // -W (a master process and a worker) is the mode in which HAProxy writes its pid
            // file; -db keeps it in the foreground.
            Kind::Haproxy => command
                .arg("-f")
                .arg(config)
                .args(["-W", "-db", "-p"])
                .arg(self.pid_file(dir)),
        };
        command
    }
}

/// nginx or HAProxy on 127.0.0.1 and a port of its own, with deploy/'s configuration pointed
/// at two nodes. Stopped (SIGTERM, which also stops nginx's worker) when dropped.
struct Balancer {
    process: Child,
    port: u16,
    /// Its configuration, pid file and logs.
    dir: TempDir,
}

impl Balancer {
    /// Starts `kind` in front of `nodes` and returns once it listens.
    async fn start(kind: Kind, nodes: [SocketAddr; 2]) -> Self {
        let path = deployed(kind.config());
        let template = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        for _ in 0..10 {
            let port = unclaimed_port();
            let dir = TempDir::new("chat-balancer");
            let config = dir.path().join(kind.config());
            std::fs::write(&config, fill_in_addresses(&template, port, nodes))
                .expect("write the configuration");
            let log = dir.path().join("output.log");
            let output = std::fs::File::create(&log).expect("create the log");
            let process = kind
                .command(dir.path(), &config)
                .stdout(output.try_clone().expect("the log"))
                .stderr(output)
                .spawn()
                .expect("the balancer starts");
            let pid = kind.pid_file(dir.path());
            let mut balancer = Balancer { process, port, dir };
            match balancer.listening(&pid, &log).await {
                Ok(()) => return balancer,
                Err(output) if output.contains("Address already in use") => continue,
                Err(output) => panic!("{} did not start:\n{output}", kind.program()),
            }
        }
        panic!("{} found no free port in ten tries", kind.program());
    }

    /// Waits until the pid file appears, which both write only once their port is bound;
    /// if the process exits first, returns what it wrote.
    async fn listening(&mut self, pid: &Path, log: &Path) -> Result<(), String> {
        let deadline = Instant::now() + common::PATIENCE;
        loop {
            if pid.exists() {
                return Ok(());
            }
            if self
                .process
                .try_wait()
                .expect("the balancer's status")
                .is_some()
            {
                let mut output = std::fs::read_to_string(log).unwrap_or_default();
                let error_log = self.dir.path().join("error.log");
                output += &std::fs::read_to_string(error_log).unwrap_or_default();
                return Err(output);
            }
            assert!(
                Instant::now() < deadline,
                "the balancer listens within {:?}",
                common::PATIENCE
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The page's address, through the balancer.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // Only while it runs: once reaped, its pid may belong to another process.
        if let Ok(None) = self.process.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.process.id().to_string()])
                .status();
        }
        let _ = self.process.wait();
    }
}

/// `config` with deploy/'s addresses replaced: the balancer's by `127.0.0.1:port`, the nodes'
/// by `nodes`. Each must be in it, or the configuration no longer says what the test thinks.
fn fill_in_addresses(config: &str, port: u16, nodes: [SocketAddr; 2]) -> String {
    let mut config = config.to_owned();
    let replacements = [
        (DEPLOYED_BALANCER, format!("127.0.0.1:{port}")),
        (DEPLOYED_NODES[0], nodes[0].to_string()),
        (DEPLOYED_NODES[1], nodes[1].to_string()),
    ];
    for (deployed, test) in replacements {
        assert!(
            config.contains(deployed),
            "{deployed} is in the configuration"
        );
        config = config.replace(deployed, &test);
    }
    config
}

/// Where a configuration file of deploy/ is.
fn deployed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}
