//! NFNLGRP_NFTABLES notifications, whole and split across two datagrams.
//!
//! The checks are in `weft_agent::dataplane::fuzz::nft_events`. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz
//! run nft_events` from `agent/` (see README.md here).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weft_agent::dataplane::fuzz::nft_events(data));
