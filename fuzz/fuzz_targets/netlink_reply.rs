//! `spa_nft::fuzzing::parse_reply` on arbitrary bytes: everything the
//! firewall driver parses from the kernel (netlink message headers, error
//! and done statuses, set-element dumps and their keys, conntrack dump
//! entries) must refuse malformed input with an error, never panic, read
//! out of bounds or loop.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spa_nft::fuzzing::parse_reply(data);
});
