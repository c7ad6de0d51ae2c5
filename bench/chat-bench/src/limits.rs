//! How many client sockets one process can hold here, and so how many worker processes a run
//! needs.
//!
//! Two limits bind on a Linux machine: the open-file limit of a process (every socket is a
//! file) and the ephemeral port range of a source address (every outgoing connection from
//! 127.0.0.1 to the server needs its own local port). Each worker process is its own process
//! and connects from its own 127.0.0.x, so it gets a fresh share of both.

use crate::procfs::{self, FileLimit, Pid};

/// Files a client process needs besides its sockets: stdio, the runtime's epoll and wakers,
/// /proc reads, the child pipes of a coordinator.
const FILE_HEADROOM: u64 = 256;

/// Ports of a source address kept free: other programs on this machine connect too.
const PORT_HEADROOM: u64 = 256;

/// The capacity of this machine for client sockets.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// This process's open-file limit (worker processes inherit it).
    pub open_files: FileLimit,
    /// Ephemeral ports per source address.
    pub ports_per_address: u64,
    /// Whether workers can each connect from their own source address: true for IPv4
    /// loopback (all of 127.0.0.0/8), false for IPv6 (only ::1).
    pub distinct_sources: bool,
}

impl Capacity {
    /// Reads the limits of this process and machine; where /proc cannot be read it assumes
    /// Linux's defaults (1,024 files, 28,232 ports) so the plan errs on the safe side.
    pub fn of_this_machine(distinct_sources: bool) -> Capacity {
        Capacity {
            open_files: procfs::open_file_limit(Pid::Current).unwrap_or(FileLimit {
                soft: 1024,
                hard: 1024,
            }),
            ports_per_address: procfs::ephemeral_ports().unwrap_or(28_232),
            distinct_sources,
        }
    }

    /// Sockets one process can hold.
    pub fn per_process(&self) -> u64 {
        let by_files = self.open_files.soft.saturating_sub(FILE_HEADROOM);
        let by_ports = self.ports_per_address.saturating_sub(PORT_HEADROOM);
        by_files.min(by_ports).max(1)
    }

    /// One sentence on where [`Capacity::per_process`] comes from.
    fn explain(&self) -> String {
        let mut text = format!(
            "one process holds at most {} sockets here: open-file limit {} less {} kept for \
             other files, {} local ports per source address",
            thousands(self.per_process()),
            thousands(self.open_files.soft),
            FILE_HEADROOM,
            thousands(self.ports_per_address),
        );
        if self.open_files.soft < self.open_files.hard {
            text.push_str(&format!(
                " (`ulimit -n {}` would raise the file limit)",
                self.open_files.hard
            ));
        }
        text
    }
}

/// How many workers a run uses, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Choice {
    /// Number of worker processes; 1 means the clients run inside the coordinator.
    pub workers: u32,
    /// Whether each worker binds its own source address 127.0.0.(k+1).
    pub bind_sources: bool,
    /// A line for the report when the number was chosen for the user.
    pub note: Option<String>,
}

/// Chooses the number of workers for `sockets` client sockets, or says clearly why the run
/// cannot be done as asked.
pub fn choose(sockets: u64, requested: Option<u32>, capacity: &Capacity) -> Result<Choice, String> {
    let per_process = capacity.per_process();
    let needed = sockets.div_ceil(per_process).max(1);
    if !capacity.distinct_sources && sockets > capacity.ports_per_address - PORT_HEADROOM {
        return Err(format!(
            "requested {} sockets, but IPv6 loopback has a single source address with {} \
             local ports: use an IPv4 URL such as ws://127.0.0.1:PORT/ws, where each worker \
             connects from its own 127.0.0.x",
            thousands(sockets),
            thousands(capacity.ports_per_address)
        ));
    }
    let workers = match requested {
        Some(requested) if u64::from(requested) < needed => {
            return Err(format!(
                "requested {} sockets: needs at least {needed} workers; pass --workers {needed} \
                 ({})",
                thousands(sockets),
                capacity.explain()
            ));
        }
        Some(requested) => requested,
        None => u32::try_from(needed).map_err(|_| {
            format!(
                "requested {} sockets: far more than this machine can hold",
                thousands(sockets)
            )
        })?,
    };
    let note = (requested.is_none() && workers > 1).then(|| {
        format!(
            "{} sockets are more than one process can hold ({}): spread over {workers} worker \
             processes, each connecting from its own 127.0.0.x",
            thousands(sockets),
            capacity.explain()
        )
    });
    Ok(Choice {
        workers,
        bind_sources: workers > 1 && capacity.distinct_sources,
        note,
    })
}

/// Formats an integer with thousands separators: 28232 → "28,232".
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits of the benchmark machine: 20,000 files, 28,232 ports.
    fn this_kind_of_machine() -> Capacity {
        Capacity {
            open_files: FileLimit {
                soft: 20_000,
                hard: 20_000,
            },
            ports_per_address: 28_232,
            distinct_sources: true,
        }
    }

    /// 18,000 sockets (9,000 rooms) fit in one process, which then binds nothing.
    #[test]
    fn issue_target_fits_one_process() {
        let choice = choose(18_000, None, &this_kind_of_machine()).expect("fits");
        assert_eq!(
            choice,
            Choice {
                workers: 1,
                bind_sources: false,
                note: None
            }
        );
    }

    /// Without --workers, a run too big for one process is spread, and the report says why.
    #[test]
    fn too_many_sockets_are_spread_automatically() {
        let choice = choose(40_000, None, &this_kind_of_machine()).expect("spread");
        assert_eq!(choice.workers, 3);
        assert!(choice.bind_sources);
        assert!(choice.note.expect("a note").contains("3 worker processes"));
    }

    /// An explicit --workers that is too small is refused with the number that would work.
    #[test]
    fn too_few_workers_is_refused_clearly() {
        let err = choose(40_000, Some(1), &this_kind_of_machine()).expect_err("refused");
        assert!(
            err.starts_with("requested 40,000 sockets: needs at least 3 workers; pass --workers 3"),
            "{err}"
        );
    }

    /// IPv6 loopback has one source address, so workers cannot multiply its ports.
    #[test]
    fn ipv6_cannot_exceed_one_port_range() {
        let capacity = Capacity {
            distinct_sources: false,
            ..this_kind_of_machine()
        };
        assert!(choose(30_000, Some(4), &capacity).is_err());
    }

    /// Thousands separators.
    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(28_232), "28,232");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
