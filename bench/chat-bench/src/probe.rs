//! The processes under test, read from /proc: the server nodes (`--server-pid`, one per
//! `--url`) and the Redis server they share (`--redis-pid`).
//!
//! Each is sampled before the run, at the start and end of the measured window, and after
//! the run; [`Probes::figures`] turns those four samples into the report's `server` (one
//! server, or the sum of all), `servers` (each node) and `redis`.
//!
//! Which `--url` a `--server-pid` serves matters for memory per connection, since each node
//! holds its own share of the connections. [`pair`] finds it from the ports the process
//! listens on, so the pids may be given in any order; when /proc does not show it (another
//! user's process), the pids are taken in the order of `--url`. A process seen listening on
//! the port of several `--url` (one server behind two URLs, as in the smoke tests) holds the
//! connections of all of them.

use std::collections::BTreeSet;

use crate::client::Target;
use crate::limits::thousands;
use crate::procfs::{self, ClockTicks, Pid, Usage};
use crate::report::{Cpu, RedisStats, Rss, ServerStats, ratio};

/// The processes to sample.
pub struct Probes {
    /// Every `--server-pid` with the node it serves, in the order of the nodes.
    servers: Vec<ServerProbe>,
    /// `--redis-pid`.
    redis: Option<u32>,
}

/// One `--server-pid`.
#[derive(Debug, Clone)]
struct ServerProbe {
    pid: u32,
    /// Its node: an index into `--url`.
    node: usize,
    /// Every node whose connections it holds: its own, and any other whose port /proc shows
    /// it listening on.
    holds: BTreeSet<usize>,
}

/// Every probed process's usage at one moment: the servers in the order of `--server-pid`,
/// then Redis.
#[derive(Debug, Clone)]
pub struct Sample {
    servers: Vec<Usage>,
    redis: Option<Usage>,
}

/// What a run did, which the figures are divided by.
pub struct Work {
    /// Length of the measured window in seconds.
    pub window_secs: f64,
    /// Messages delivered in the window, when the scenario chats (throughput).
    pub delivered: Option<u64>,
    /// Sessions completed, for churn.
    pub sessions: Option<u64>,
    /// Whether the connections were held idle (`connections`): only then is memory divided
    /// by connections and rooms.
    pub idle: bool,
    /// Rooms set up.
    pub rooms_ready: u64,
    /// Connections of the rooms set up, by node.
    pub connections_by_node: Vec<u64>,
    pub ticks: ClockTicks,
}

/// The report's figures of the processes under test.
pub struct Figures {
    pub server: Option<ServerStats>,
    pub servers: Vec<ServerStats>,
    pub redis: Option<RedisStats>,
    /// CPU of every process under test, each counted once, in % of a core: what the
    /// machine's figures subtract to tell what other programs used.
    pub cpu_percent: f64,
}

impl Probes {
    /// The probes of `server_pids`, paired with `targets` (one per `--url`), and of
    /// `redis_pid`; with notes for the report on how they were paired.
    pub fn new(
        server_pids: &[u32],
        redis_pid: Option<u32>,
        targets: &[Target],
    ) -> Result<(Probes, Vec<String>), String> {
        let mut notes = Vec::new();
        let ports: Vec<u16> = targets.iter().map(|target| target.addr.port()).collect();
        // One server and one URL need no pairing (and keep the report as it always was).
        let (listening, nodes) = if server_pids.len() == 1 && targets.len() == 1 {
            (vec![None], vec![0])
        } else {
            let listening: Vec<_> = server_pids
                .iter()
                .map(|&pid| procfs::listening_ports(pid))
                .collect();
            let (nodes, note) = pair(server_pids, &listening, &ports)?;
            notes.extend(note);
            (listening, nodes)
        };
        let mut seen = BTreeSet::new();
        for &pid in server_pids {
            let times = server_pids.iter().filter(|&&p| p == pid).count();
            if times > 1 && seen.insert(pid) {
                notes.push(format!(
                    "--server-pid {pid} is given {}: its figures appear under each of its nodes, \
                     and count once in the sum",
                    times_given(times)
                ));
            }
        }
        let mut servers: Vec<ServerProbe> = server_pids
            .iter()
            .zip(nodes)
            .zip(&listening)
            .map(|((&pid, node), listening)| {
                let mut holds: BTreeSet<usize> = (0..ports.len())
                    .filter(|&k| listening.as_ref().is_some_and(|on| on.contains(&ports[k])))
                    .collect();
                holds.insert(node);
                ServerProbe { pid, node, holds }
            })
            .collect();
        servers.sort_by_key(|server| server.node);
        Ok((
            Probes {
                servers,
                redis: redis_pid,
            },
            notes,
        ))
    }

    /// Reads every process's usage now.
    pub fn sample(&self) -> Result<Sample, String> {
        let servers = self
            .servers
            .iter()
            .map(|server| read(server.pid, "--server-pid", "the server"))
            .collect::<Result<_, _>>()?;
        let redis = self
            .redis
            .map(|pid| read(pid, "--redis-pid", "redis-server"))
            .transpose()?;
        Ok(Sample { servers, redis })
    }

    /// A warning for each server whose open-file limit is too low for the connections its
    /// node is to hold (`per_node`, by node).
    pub fn file_limit_warnings(&self, per_node: &[u64]) -> Vec<String> {
        self.servers
            .iter()
            .filter_map(|server| {
                let sockets = per_node.get(server.node).copied().unwrap_or_default();
                let limit = procfs::open_file_limit(Pid::Other(server.pid))?;
                // The server needs a few files of its own besides the connections.
                (sockets + 32 > limit.soft).then(|| {
                    format!(
                        "the server (pid {}) may open at most {} files: {} connections will \
                         not all fit",
                        server.pid,
                        thousands(limit.soft),
                        thousands(sockets)
                    )
                })
            })
            .collect()
    }

    /// The figures of every process from its samples before the run, at the window's start
    /// and end, and after the run.
    pub fn figures(
        &self,
        urls: &[String],
        [before, start, end, after]: &[Sample; 4],
        work: &Work,
    ) -> Figures {
        let at = |i: usize| [before, start, end, after].map(|sample| sample.servers[i]);
        let servers: Vec<ServerStats> = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, probe)| {
                let connections = work.held_on(&probe.holds);
                let mut stats = work.server(Some(probe.pid), at(i), connections);
                stats.node = Some(probe.node);
                stats.url = urls.get(probe.node).cloned();
                stats.connections = Some(connections);
                stats
            })
            .collect();

        // The sum counts each process once, and divides its memory by the connections of
        // every node those processes serve.
        let mut pids = Vec::new();
        let mut nodes = BTreeSet::new();
        let mut total = [Usage {
            rss_kib: 0,
            cpu_ticks: 0,
        }; 4];
        for (i, probe) in self.servers.iter().enumerate() {
            nodes.extend(&probe.holds);
            if pids.contains(&probe.pid) {
                continue;
            }
            pids.push(probe.pid);
            for (sum, usage) in total.iter_mut().zip(at(i)) {
                sum.rss_kib += usage.rss_kib;
                sum.cpu_ticks += usage.cpu_ticks;
            }
        }
        let server = (!pids.is_empty()).then(|| {
            work.server(
                (pids.len() == 1).then(|| pids[0]),
                total,
                work.held_on(&nodes),
            )
        });

        let redis = self
            .redis
            .zip(
                before
                    .redis
                    .zip(start.redis)
                    .zip(end.redis.zip(after.redis)),
            )
            .map(|(pid, ((before, start), (end, after)))| RedisStats {
                pid,
                rss: rss(before, after),
                rss_per_room_kib: (work.idle && work.rooms_ready > 0)
                    .then(|| growth(before, after) / work.rooms_ready as f64),
                cpu: work.cpu(start, end),
            });

        let mut cpu_percent = server.as_ref().map_or(0.0, |server| server.cpu.cpu_percent);
        if let Some(redis) = &redis
            && !pids.contains(&redis.pid)
        {
            cpu_percent += redis.cpu.cpu_percent;
        }
        Figures {
            server,
            servers,
            redis,
            cpu_percent,
        }
    }
}

impl Work {
    /// The connections of the rooms set up on `nodes`.
    fn held_on(&self, nodes: &BTreeSet<usize>) -> u64 {
        nodes
            .iter()
            .filter_map(|&node| self.connections_by_node.get(node))
            .sum()
    }

    /// A server's (or a sum's) figures from its four samples, `connections` being those it
    /// holds.
    fn server(
        &self,
        pid: Option<u32>,
        [before, start, end, after]: [Usage; 4],
        connections: u64,
    ) -> ServerStats {
        ServerStats {
            pid,
            node: None,
            url: None,
            connections: None,
            rss: rss(before, after),
            // Only rooms that were set up hold their two connections through the hold; a
            // room whose guest failed has already dropped its host.
            rss_per_connection_kib: (self.idle && connections > 0)
                .then(|| growth(before, after) / connections as f64),
            cpu: self.cpu(start, end),
            clock_ticks_per_sec: self.ticks.per_second,
            clock_ticks_measured: self.ticks.measured,
        }
    }

    /// CPU figures from the samples at the window's start and end.
    fn cpu(&self, start: Usage, end: Usage) -> Cpu {
        let cpu_secs = self
            .ticks
            .seconds(end.cpu_ticks.saturating_sub(start.cpu_ticks));
        let per = |count: Option<u64>| {
            count
                .filter(|&count| count > 0)
                .map(|count| cpu_secs * 1e6 / count as f64)
        };
        Cpu {
            cpu_secs,
            cpu_percent: 100.0 * ratio(cpu_secs, self.window_secs),
            cpu_us_per_message: per(self.delivered),
            cpu_us_per_session: per(self.sessions),
        }
    }
}

fn rss(before: Usage, after: Usage) -> Rss {
    Rss {
        rss_before_kib: before.rss_kib,
        rss_after_kib: after.rss_kib,
    }
}

/// Resident memory gained from `before` to `after`, in KiB (negative if it shrank).
fn growth(before: Usage, after: Usage) -> f64 {
    after.rss_kib as f64 - before.rss_kib as f64
}

/// Reads one process's usage; `flag` and `what` name it in the error.
fn read(pid: u32, flag: &str, what: &str) -> Result<Usage, String> {
    procfs::usage(Pid::Other(pid))
        .map_err(|err| format!("{flag} {pid}: cannot read /proc/{pid}: {err} (is {what} running?)"))
}

/// The node (index into `--url`, whose ports are `url_ports`) of each of `pids`, whose
/// listening ports are `listening` (`None`: not readable).
///
/// Each pid takes a node whose port it listens on, not already taken: the one at its own
/// place in the list if it qualifies (so that pids given in the order of `--url` keep it, and
/// one server given for two URLs of its own takes both), else the first that does. When
/// that leaves a pid without a node, and there are as many pids as URLs, they are taken in
/// the order of `--url`, with a note; otherwise no pairing is possible and the run is refused.
pub fn pair(
    pids: &[u32],
    listening: &[Option<BTreeSet<u16>>],
    url_ports: &[u16],
) -> Result<(Vec<usize>, Option<String>), String> {
    let mut taken = vec![false; url_ports.len()];
    let mut nodes = Vec::with_capacity(pids.len());
    for (i, ports) in listening.iter().enumerate() {
        let serves = |node: usize, taken: &[bool]| {
            !taken[node]
                && ports
                    .as_ref()
                    .is_some_and(|ports| ports.contains(&url_ports[node]))
        };
        let node = if i < url_ports.len() && serves(i, &taken) {
            Some(i)
        } else {
            (0..url_ports.len()).find(|&node| serves(node, &taken))
        };
        let Some(node) = node else { break };
        taken[node] = true;
        nodes.push(node);
    }
    if nodes.len() == pids.len() {
        return Ok((nodes, None));
    }
    let unpaired = pids[nodes.len()];
    if pids.len() == url_ports.len() {
        return Ok((
            (0..pids.len()).collect(),
            Some(format!(
                "/proc does not show which --url --server-pid {unpaired} serves: the server pids \
                 are taken in the order of --url"
            )),
        ));
    }
    Err(format!(
        "--server-pid is given {} for {} --url, and /proc does not show which --url pid \
         {unpaired} serves: give one --server-pid per --url, in the same order",
        times_given(pids.len()),
        url_ports.len()
    ))
}

/// "once", "twice", "3 times".
fn times_given(n: usize) -> String {
    match n {
        1 => "once".to_string(),
        2 => "twice".to_string(),
        n => format!("{n} times"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(list: &[u16]) -> Option<BTreeSet<u16>> {
        Some(list.iter().copied().collect())
    }

    /// Pids given in any order are paired with the URL of the port they listen on.
    #[test]
    fn pairs_by_listening_port() {
        let urls = [8081, 8082, 8083];
        let (nodes, note) = pair(
            &[30, 10, 20],
            &[ports(&[8083]), ports(&[8081, 9000]), ports(&[8082])],
            &urls,
        )
        .expect("paired");
        assert_eq!(nodes, [2, 0, 1]);
        assert_eq!(note, None);
    }

    /// One server behind two URLs, given twice, takes both; given once with fewer pids than
    /// URLs, it takes the first of its own.
    #[test]
    fn one_server_for_two_urls() {
        let (nodes, _) =
            pair(&[7, 7], &[ports(&[8080]), ports(&[8080])], &[8080, 8080]).expect("paired");
        assert_eq!(nodes, [0, 1]);
        let (nodes, _) = pair(&[7], &[ports(&[8082])], &[8081, 8082]).expect("paired");
        assert_eq!(nodes, [1]);
    }

    /// Unreadable listening sockets: as many pids as URLs go in order, with a note; any other
    /// number is refused.
    #[test]
    fn falls_back_to_the_order_given() {
        let (nodes, note) =
            pair(&[10, 20], &[None, ports(&[8081])], &[8081, 8082]).expect("in order");
        assert_eq!(nodes, [0, 1]);
        assert!(note.expect("a note").contains("--server-pid 10"));
        let err = pair(&[10], &[None], &[8081, 8082]).expect_err("refused");
        assert!(err.contains("given once for 2 --url"), "{err}");
        let err = pair(
            &[10, 10, 10],
            &[ports(&[8081]), ports(&[8081]), ports(&[8081])],
            &[8081, 8081],
        )
        .expect_err("refused");
        assert!(err.contains("one --server-pid per --url"), "{err}");
    }
}
