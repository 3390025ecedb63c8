//! Fuzz target: a received SIP message, through everything the endpoint does with bytes
//! from the network before a call sees them: the strict parser, then the typed views of
//! the headers, the body (SDP, multipart, INFO DTMF), the 400 built from a broken request.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomline::fuzzing::sip_message(data));
