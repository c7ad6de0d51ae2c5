//! The actor, fed arbitrary sequences of what several clients can do, keeps its invariants and
//! never panics.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::drive_actor(data));
