//! Fuzz target: digest Authorization / WWW-Authenticate header values, as parsed for a
//! client answer and verified by the server side (stateless nonces, replay table).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomline::fuzzing::digest(data));
