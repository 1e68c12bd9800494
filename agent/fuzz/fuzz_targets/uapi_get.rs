//! A get=1 reply from the userspace device, and what a wg client sends the socket the
//! agent serves.
//!
//! The checks are in `weft_agent::dataplane::fuzz::uapi_get`. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz
//! run uapi_get` from `agent/` (see README.md here).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weft_agent::dataplane::fuzz::uapi_get(data));
