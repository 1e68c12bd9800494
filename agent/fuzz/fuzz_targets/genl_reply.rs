//! Generic netlink answers to WG_CMD_GET_DEVICE: a device over several messages.
//!
//! The checks are in `weft_agent::dataplane::fuzz::genl_reply`. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz
//! run genl_reply` from `agent/` (see README.md here).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weft_agent::dataplane::fuzz::genl_reply(data));
