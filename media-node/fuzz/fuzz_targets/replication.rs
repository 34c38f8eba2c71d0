//! Replication messages from the active, as a standby reads them off the stream: any bytes,
//! in any number of messages, are applied whole or refused whole, never half-way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_node::replication::{Follower, FollowerStream, Journal};

fuzz_target!(|data: &[u8]| {
    let journal = Journal::default();
    let mut follower = Follower::new();
    let _ = follower.receive(&FollowerStream::open(journal.snapshot(), 1, 0).1);
    // Messages as length-prefixed chunks (one length byte each).
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (message, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        let before = follower.state().cloned();
        if follower.receive_bytes(message).is_err() {
            assert_eq!(follower.state().cloned(), before, "a refused message changed the state");
            follower.resync("fuzz");
        }
    }
});
