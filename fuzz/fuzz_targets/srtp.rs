//! Fuzz target: SRTP and SRTCP packets from a hostile peer, unprotected and protected.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomline::fuzzing::srtp(data));
