//! What Linux's /proc tells about a process (its memory and CPU time) and about the limits
//! of this machine that decide how many sockets one client process can hold.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// A process's resource use at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Resident memory (`VmRSS` of /proc/PID/status) in KiB.
    pub rss_kib: u64,
    /// User plus system CPU time (fields `utime` + `stime` of /proc/PID/stat), in clock ticks.
    pub cpu_ticks: u64,
}

/// Where a process is found in /proc.
#[derive(Debug, Clone, Copy)]
pub enum Pid {
    /// The calling process (`/proc/self`).
    Current,
    /// Another process.
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::Current => "/proc/self".to_string(),
            Pid::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// Reads a process's resident memory and CPU time.
pub fn usage(pid: Pid) -> io::Result<Usage> {
    let dir = pid.dir();
    let status = fs::read_to_string(format!("{dir}/status"))?;
    let stat = fs::read_to_string(format!("{dir}/stat"))?;
    let malformed = |what| io::Error::new(io::ErrorKind::InvalidData, format!("{dir}: {what}"));
    Ok(Usage {
        rss_kib: parse_vm_rss(&status).ok_or_else(|| malformed("no VmRSS line"))?,
        cpu_ticks: parse_cpu_ticks(&stat).ok_or_else(|| malformed("unreadable stat"))?,
    })
}

/// The `VmRSS:   12345 kB` line of /proc/PID/status, in KiB.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `utime + stime` from /proc/PID/stat, in clock ticks.
///
/// The second field is the command name in parentheses and may itself contain spaces or
/// parentheses, so fields are counted from the *last* `)`: after it come field 3 (`state`)
/// onwards, which puts `utime` (field 14) and `stime` (field 15) at indexes 11 and 12.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The whole machine's CPU time since boot, in clock ticks, from the first line of /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    /// Ticks spent running anything (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    /// All ticks, idle and iowait included, summed over every core.
    pub total: u64,
}

/// Reads the machine's CPU time counters.
pub fn machine_ticks() -> io::Result<MachineTicks> {
    let stat = fs::read_to_string("/proc/stat")?;
    parse_machine_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/stat: no cpu line"))
}

fn parse_machine_ticks(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some(MachineTicks {
        busy,
        total: busy + idle + iowait,
    })
}

/// The length of a clock tick, the unit of CPU times in /proc/PID/stat.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ClockTicks {
    /// Ticks per second (`getconf CLK_TCK`; 100 on every usual Linux).
    pub per_second: u64,
    /// Whether `per_second` was read from `getconf` (true) or assumed to be 100 (false).
    pub measured: bool,
}

impl ClockTicks {
    /// Asks `getconf CLK_TCK` once; assumes 100 if that fails (and says so in reports).
    pub fn read() -> ClockTicks {
        let from_getconf = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .filter(|&ticks| ticks > 0);
        match from_getconf {
            Some(per_second) => ClockTicks {
                per_second,
                measured: true,
            },
            None => ClockTicks {
                per_second: 100,
                measured: false,
            },
        }
    }

    /// Converts a number of ticks to seconds.
    pub fn seconds(self, ticks: u64) -> f64 {
        ticks as f64 / self.per_second as f64
    }
}

/// A process's limit on open files (`Max open files` in /proc/PID/limits).
#[derive(Debug, Clone, Copy)]
pub struct FileLimit {
    /// The limit in force.
    pub soft: u64,
    /// What the soft limit could be raised to (`ulimit -n` up to this).
    pub hard: u64,
}

/// Reads the open-file limit of a process; `None` if /proc cannot be read.
pub fn open_file_limit(pid: Pid) -> Option<FileLimit> {
    let limits = fs::read_to_string(format!("{}/limits", pid.dir())).ok()?;
    parse_file_limit(&limits)
}

fn parse_file_limit(limits: &str) -> Option<FileLimit> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let mut values = line["Max open files".len()..].split_whitespace();
    let value = |text: &str| match text {
        "unlimited" => Some(u64::MAX),
        number => number.parse().ok(),
    };
    Some(FileLimit {
        soft: value(values.next()?)?,
        hard: value(values.next()?)?,
    })
}

/// The number of ephemeral ports one source address can use for outgoing connections
/// (from /proc/sys/net/ipv4/ip_local_port_range); `None` if it cannot be read.
pub fn ephemeral_ports() -> Option<u64> {
    let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = range.split_whitespace().map(|n| n.parse::<u64>().ok());
    let (low, high) = (bounds.next()??, bounds.next()??);
    high.checked_sub(low).map(|span| span + 1)
}

/// The TCP ports process `pid` listens on: the listening sockets of /proc/net/tcp and
/// /proc/net/tcp6 whose inode is one of the process's open files. `None` when its open files
/// cannot be read (another user's process) or it listens on nothing.
pub fn listening_ports(pid: u32) -> Option<BTreeSet<u16>> {
    let sockets: HashSet<u64> = fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|entry| socket_inode(&fs::read_link(entry.ok()?.path()).ok()?))
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(table) {
            ports.extend(
                parse_listeners(&text)
                    .filter(|(_, inode)| sockets.contains(inode))
                    .map(|(port, _)| port),
            );
        }
    }
    (!ports.is_empty()).then_some(ports)
}

/// The inode of an open file that is a socket: its /proc/PID/fd link reads `socket:[INODE]`.
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// `(local port, inode)` of every listening socket (state `0A`) of a /proc/net/tcp table.
fn parse_listeners(table: &str) -> impl Iterator<Item = (u16, u64)> + '_ {
    table.lines().skip(1).filter_map(|line| {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let fields: Vec<&str> = line.split_whitespace().collect();
        if *fields.get(3)? != "0A" {
            return None;
        }
        let port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
        Some((port, fields.get(9)?.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VmRSS is read in KiB from its line of /proc/PID/status.
    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tnode\nVmPeak:\t  900 kB\nVmRSS:\t   81234 kB\nThreads:\t7\n";
        assert_eq!(parse_vm_rss(status), Some(81234));
    }

    /// utime and stime are found even when the command name contains spaces and parentheses.
    #[test]
    fn reads_cpu_ticks_after_an_awkward_name() {
        let stat = "1234 (my (odd) server) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 3 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    /// The open-file limit line of /proc/PID/limits gives soft and hard limits.
    #[test]
    fn reads_open_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            20000                20000                files     \n";
        let limit = parse_file_limit(limits).expect("limit line present");
        assert_eq!((limit.soft, limit.hard), (20000, 20000));
    }

    /// The machine's busy and total ticks are read from the aggregate `cpu` line.
    #[test]
    fn reads_machine_ticks() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        let ticks = parse_machine_ticks(stat).expect("cpu line");
        assert_eq!(ticks.busy, 100 + 5 + 50 + 3 + 2 + 1);
        assert_eq!(ticks.total, ticks.busy + 1000 + 20);
    }

    /// Listening sockets are told from connections by their state, with their port in hex.
    #[test]
    fn reads_listeners() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0\n   \
            1: 0100007F:1F91 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0 20 4 30 10 -1\n";
        assert_eq!(parse_listeners(table).collect::<Vec<_>>(), [(8081, 4242)]);
        assert_eq!(socket_inode(Path::new("socket:[4242]")), Some(4242));
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    /// A socket this process listens on is found among its listening ports.
    #[test]
    fn finds_own_listening_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let ports = listening_ports(std::process::id()).expect("own /proc readable");
        assert!(ports.contains(&port), "{ports:?} lacks {port}");
    }

    /// This process can read its own usage (the same code reads the server's).
    #[test]
    fn reads_own_usage() {
        let usage = usage(Pid::Current).expect("/proc/self is readable");
        assert!(usage.rss_kib > 0);
    }
}
