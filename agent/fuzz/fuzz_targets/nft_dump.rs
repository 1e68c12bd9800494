//! nf_tables messages as a dump or a batch carries them: tables, chains, rules and their
//! expressions, set elements, the firewall's ruleset (which re-encodes to itself).
//!
//! The checks are in `weft_agent::dataplane::fuzz::nft_dump`. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz
//! run nft_dump` from `agent/` (see README.md here).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weft_agent::dataplane::fuzz::nft_dump(data));
