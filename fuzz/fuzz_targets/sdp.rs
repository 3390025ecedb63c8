//! Fuzz target: an SDP offer (or answer) from a phone, parsed and negotiated against our
//! codecs as an inbound call and an outbound call would.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomline::fuzzing::sdp(data));
