//! Fuzz target: a TCP/TLS byte stream cut into pushes at fuzzer-chosen points; the
//! framer never panics, never holds more than its limit plus one push, and every message
//! it yields is one the parser can be asked about.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomline::fuzzing::framing(data));
