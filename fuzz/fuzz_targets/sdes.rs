//! Fuzz target: the `a=crypto` lines of an SDP media section (SDES, RFC 4568), parsed,
//! answered, and read as an answer to our offer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomline::fuzzing::sdes(data));
