//! What one worker measures while the clients run: a clock with the measured window, event
//! counters, a latency histogram, failures by kind, and a countdown for "everyone done".
//!
//! All of it is shared by every client task of the worker behind one `Arc<Shared>`; each
//! piece is either atomic or behind a `std::sync::Mutex` held for a few nanoseconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::client::{BenchError, Closed};
use crate::refusal::Limit;

/// Everything a worker's client tasks record into.
pub struct Shared {
    /// Time since the worker started, and the measured window.
    pub clock: Clock,
    /// Event counts.
    pub counters: Counters,
    /// Send-to-receipt latencies (throughput) or session lengths (churn), in microseconds.
    pub histogram: Recorder,
    /// Failures, counted by [`BenchError::kind`], and refusals by the server's limits.
    failures: Mutex<Failures>,
    /// Connections of the rooms set up, by server node (index into `--url`).
    by_node: Vec<AtomicU64>,
}

/// What [`Shared::fail`] records, behind one lock.
#[derive(Default)]
struct Failures {
    /// Every failure, by [`BenchError::kind`].
    by_kind: BTreeMap<String, u64>,
    /// The failures that were a limit of the server refusing the load, by limit: counted apart
    /// so that the report can name the flag to change once per limit.
    refused: BTreeMap<Limit, u64>,
}

impl Shared {
    /// Fresh state for clients of `nodes` server nodes; the clock's epoch is now.
    pub fn new(nodes: usize) -> Arc<Shared> {
        Arc::new(Shared {
            clock: Clock::new(),
            counters: Counters::default(),
            histogram: Recorder::new(),
            failures: Mutex::new(Failures::default()),
            by_node: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Counts a room set up with its host on node `host` and its guest on node `guest`.
    pub fn room_ready_on(&self, host: usize, guest: usize) {
        for node in [host, guest] {
            if let Some(counter) = self.by_node.get(node) {
                bump(counter);
            }
        }
    }

    /// The connections of the rooms set up so far, by node.
    pub fn connections_by_node(&self) -> Vec<u64> {
        self.by_node
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .collect()
    }

    /// Counts one failure under its kind.
    pub fn fail(&self, error: &BenchError) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        // A poisoned lock means another client task panicked while counting; the counts are
        // still valid integers, so keep using them.
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        *failures.by_kind.entry(error.kind()).or_default() += 1;
        if let Some(limit) = Limit::of(error) {
            *failures.refused.entry(limit).or_default() += 1;
        }
    }

    /// Counts how a connection closed: [`Closed::WithoutReply`] is counted apart, an error
    /// as a failure.
    pub fn closed(&self, outcome: Result<Closed, BenchError>) {
        match outcome {
            Ok(Closed::Cleanly) => {}
            Ok(Closed::WithoutReply) => bump(&self.counters.closed_without_reply),
            Err(err) => self.fail(&err),
        }
    }

    /// The failures so far, by kind.
    pub fn failures(&self) -> BTreeMap<String, u64> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_kind
            .clone()
    }

    /// The failures so far that were the server's limits refusing the load, by limit.
    pub fn refused(&self) -> BTreeMap<Limit, u64> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused
            .clone()
    }
}

/// Nanoseconds since the worker started, and the bounds of the measured window.
///
/// Instants cannot be sent between processes, so every time a client writes into a message or
/// compares is "nanoseconds since this worker's epoch". The window bounds start at
/// `u64::MAX` (not yet) and are set when the coordinator says so.
pub struct Clock {
    /// The worker's time zero.
    epoch: Instant,
    /// Start of the measured window, or `u64::MAX` before it starts.
    window_start_ns: AtomicU64,
    /// End of the measured window, or `u64::MAX` while it lasts.
    window_end_ns: AtomicU64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
            window_start_ns: AtomicU64::new(u64::MAX),
            window_end_ns: AtomicU64::new(u64::MAX),
        }
    }

    /// Nanoseconds since the epoch (a u64 of nanoseconds lasts 584 years).
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Nanoseconds since the epoch at `instant` (0 for instants before the epoch).
    pub fn ns_at(&self, instant: Instant) -> u64 {
        instant.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Opens the measured window now.
    pub fn start_window(&self) {
        self.window_start_ns.store(self.now_ns(), Ordering::Relaxed);
    }

    /// Closes the measured window now.
    pub fn end_window(&self) {
        self.window_end_ns.store(self.now_ns(), Ordering::Relaxed);
    }

    /// Whether time `t_ns` falls inside the measured window.
    pub fn in_window(&self, t_ns: u64) -> bool {
        self.window_start_ns.load(Ordering::Relaxed) <= t_ns
            && t_ns < self.window_end_ns.load(Ordering::Relaxed)
    }
}

/// Live event counters, bumped by client tasks; see [`Counts`] for what each one means.
#[derive(Default)]
pub struct Counters {
    pub connections_opened: AtomicU64,
    pub connections_failed: AtomicU64,
    pub rooms_ready: AtomicU64,
    pub rooms_failed: AtomicU64,
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub sessions_started: AtomicU64,
    pub sessions_completed: AtomicU64,
    pub sessions_failed: AtomicU64,
    pub sessions_skipped: AtomicU64,
    pub closed_without_reply: AtomicU64,
    pub errors: AtomicU64,
}

/// Adds one to a counter. Relaxed ordering: the counts are read once the tasks are done (or
/// approximately for the progress line), never used to order other memory accesses.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// A copy of the counts now.
    pub fn snapshot(&self) -> Counts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counts {
            connections_opened: get(&self.connections_opened),
            connections_failed: get(&self.connections_failed),
            rooms_ready: get(&self.rooms_ready),
            rooms_failed: get(&self.rooms_failed),
            sent: get(&self.sent),
            delivered: get(&self.delivered),
            sessions_started: get(&self.sessions_started),
            sessions_completed: get(&self.sessions_completed),
            sessions_failed: get(&self.sessions_failed),
            sessions_skipped: get(&self.sessions_skipped),
            closed_without_reply: get(&self.closed_without_reply),
            errors: get(&self.errors),
        }
    }
}

/// Counts of one worker (or, merged, of all of them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// WebSocket connections that reached the server's `connected` message.
    pub connections_opened: u64,
    /// Connection attempts that failed (TCP, handshake or no `connected`).
    pub connections_failed: u64,
    /// Rooms with both members joined.
    pub rooms_ready: u64,
    /// Rooms whose setup failed.
    pub rooms_failed: u64,
    /// Chat messages sent inside the measured window.
    pub sent: u64,
    /// Chat messages received by the sender's peer inside the measured window.
    pub delivered: u64,
    /// Churn sessions started.
    pub sessions_started: u64,
    /// Churn sessions that went through every step.
    pub sessions_completed: u64,
    /// Churn sessions that failed at some step.
    pub sessions_failed: u64,
    /// Churn sessions not started because `--max-sessions` were already in progress.
    pub sessions_skipped: u64,
    /// Connections the server closed without answering our Close frame (not an error for
    /// the scenario, but a departure from RFC 6455 worth reporting).
    pub closed_without_reply: u64,
    /// Failures of any kind (the sum of the failures-by-kind table).
    pub errors: u64,
}

impl Counts {
    /// Adds another worker's counts to these.
    pub fn merge(&mut self, other: &Counts) {
        self.connections_opened += other.connections_opened;
        self.connections_failed += other.connections_failed;
        self.rooms_ready += other.rooms_ready;
        self.rooms_failed += other.rooms_failed;
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.sessions_started += other.sessions_started;
        self.sessions_completed += other.sessions_completed;
        self.sessions_failed += other.sessions_failed;
        self.sessions_skipped += other.sessions_skipped;
        self.closed_without_reply += other.closed_without_reply;
        self.errors += other.errors;
    }
}

/// The highest value the histogram tracks exactly: 60 s in microseconds. Larger values are
/// recorded as this (and would be a failure far beyond any target anyway).
const HISTOGRAM_MAX_US: u64 = 60_000_000;

/// A latency histogram shared by a worker's client tasks.
///
/// One histogram per worker rather than per client: with 3 significant digits over
/// 1 µs..60 s a histogram is about 150 KB, which times 18,000 clients would be 2.7 GB. A
/// `std::sync::Mutex` (not tokio's) is right here: it is held only for the few nanoseconds of
/// `record`, never across an `.await`, and there are only two runtime threads to contend.
pub struct Recorder {
    histogram: Mutex<Histogram<u64>>,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            histogram: Mutex::new(new_histogram()),
        }
    }

    /// Records one value in microseconds.
    pub fn record_us(&self, value_us: u64) {
        self.histogram
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saturating_record(value_us.max(1));
    }

    /// The recorded values, in a form that can be sent to the coordinator.
    pub fn export(&self) -> HistogramData {
        let histogram = self.histogram.lock().unwrap_or_else(|e| e.into_inner());
        HistogramData {
            buckets: histogram
                .iter_recorded()
                .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
                .collect(),
        }
    }
}

/// An empty histogram of microseconds, 1 µs to 60 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy hdrhistogram's rules (low >= 1, high >= 2 * low,
    // sigfig <= 5), so this cannot fail.
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// A histogram as (value, count) pairs of its non-empty buckets: small, JSON-friendly, and
/// merged exactly, because re-recording a bucket's value lands in the same bucket.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct HistogramData {
    /// `(value in µs, count)` for each non-empty bucket.
    pub buckets: Vec<(u64, u64)>,
}

impl HistogramData {
    /// Merges several workers' histograms and summarises them.
    pub fn summarize<'a>(parts: impl IntoIterator<Item = &'a HistogramData>) -> Summary {
        let mut histogram = new_histogram();
        for part in parts {
            for &(value, count) in &part.buckets {
                histogram.saturating_record_n(value, count);
            }
        }
        Summary {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// Percentiles of a histogram, in microseconds (all zero when nothing was recorded).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Counts down to zero and wakes one waiter when it gets there: "all rooms are set up",
/// "every sender has its messages back".
///
/// Each participant holds a [`Token`]; dropping the token counts down, so a task that ends
/// early, by an error or a panic, still counts as done and nobody waits for it forever.
pub struct Countdown {
    remaining: AtomicUsize,
    zero: Notify,
}

impl Countdown {
    /// A countdown with no participants yet.
    pub fn new() -> Arc<Countdown> {
        Arc::new(Countdown {
            remaining: AtomicUsize::new(0),
            zero: Notify::new(),
        })
    }

    /// Adds a participant.
    pub fn token(self: &Arc<Self>) -> Token {
        self.remaining.fetch_add(1, Ordering::AcqRel);
        Token(Some(Arc::clone(self)))
    }

    /// How many participants are not done yet.
    pub fn remaining(&self) -> usize {
        self.remaining.load(Ordering::Acquire)
    }

    /// Waits until every participant is done. Only one task may wait.
    pub async fn wait(&self) {
        while self.remaining() > 0 {
            // `notify_one` stores a permit when nobody is waiting yet, so a count reaching
            // zero between the check above and this await is not missed.
            self.zero.notified().await;
        }
    }
}

/// A participant's share of a [`Countdown`].
pub struct Token(Option<Arc<Countdown>>);

impl Token {
    /// Counts this participant as done (at most once; dropping the token does it too).
    pub fn done(&mut self) {
        if let Some(countdown) = self.0.take()
            && countdown.remaining.fetch_sub(1, Ordering::AcqRel) == 1
        {
            countdown.zero.notify_one();
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Histograms from several workers merge into the percentiles of all their values.
    #[test]
    fn histograms_merge_exactly() {
        let a = Recorder::new();
        let b = Recorder::new();
        for us in 1..=500 {
            a.record_us(us);
        }
        for us in 501..=1000 {
            b.record_us(us);
        }
        let summary = HistogramData::summarize([&a.export(), &b.export()]);
        assert_eq!(summary.count, 1000);
        assert_eq!(summary.p50_us, 500);
        assert_eq!(summary.max_us, 1000);
    }

    /// The window includes its start and excludes its end, and nothing is inside it before it
    /// opens.
    #[test]
    fn window_bounds() {
        let clock = Clock::new();
        assert!(!clock.in_window(0));
        clock.start_window();
        let inside = clock.now_ns();
        assert!(clock.in_window(inside));
        clock.end_window();
        assert!(!clock.in_window(clock.now_ns() + 1));
    }

    /// Waiting returns once every token is done, whether by `done()` or by being dropped.
    #[tokio::test]
    async fn countdown_reaches_zero() {
        let countdown = Countdown::new();
        let mut first = countdown.token();
        let second = countdown.token();
        first.done();
        first.done(); // idempotent
        assert_eq!(countdown.remaining(), 1);
        tokio::spawn(async move { drop(second) });
        countdown.wait().await;
        assert_eq!(countdown.remaining(), 0);
    }
}
