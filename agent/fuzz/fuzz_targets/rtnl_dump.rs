//! rtnetlink answers: links, addresses, routes, and the ends of answers (errors and
//! extended acks).
//!
//! The checks are in `weft_agent::dataplane::fuzz::rtnl_dump`. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz
//! run rtnl_dump` from `agent/` (see README.md here).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weft_agent::dataplane::fuzz::rtnl_dump(data));
