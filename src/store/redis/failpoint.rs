//! Test-only: a node that dies on cue between two Redis steps of one request, so that a test can
//! check what such a death leaves behind, rather than hope that a SIGKILL lands there.
//!
//! Built with the `testing` feature, a node started with `CHAT_TEST_DIE_AT=<point>` aborts the
//! moment it reaches `<point>` (the process ends at once, as a SIGKILL would end it: no close
//! frames, no steps finished). Without the feature, [`reached`] is nothing.
//!
//! The points, each named `step:what is done`: `create:listed`, `create:seated`, `join:listed`,
//! `join:seated`, `resume:listed`, `resume:seated`, `leave:left`, `drop:held`, `drop:filed`,
//! `reap:held`.

/// The node reached `point`: with the `testing` feature, it dies there if told to.
#[cfg(feature = "testing")]
pub fn reached(point: &str) {
    use std::sync::OnceLock;
    static DIE_AT: OnceLock<Option<String>> = OnceLock::new();
    let die_at = DIE_AT.get_or_init(|| std::env::var("CHAT_TEST_DIE_AT").ok());
    if die_at.as_deref() == Some(point) {
        tracing::warn!(point, "dying on cue (CHAT_TEST_DIE_AT)");
        std::process::abort();
    }
}

/// The node reached `point`: nothing happens outside tests.
#[cfg(not(feature = "testing"))]
#[inline(always)]
pub fn reached(_point: &str) {}
