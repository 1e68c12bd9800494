//! rtnetlink notifications.
//!
//! The checks are in `weft_agent::dataplane::fuzz::rtnl_events`. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz
//! run rtnl_events` from `agent/` (see README.md here).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weft_agent::dataplane::fuzz::rtnl_events(data));
