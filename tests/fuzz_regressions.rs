//! Replays every input the fuzzers keep: the seed corpora (`fuzz/corpus/<target>/`) and
//! every crash found so far (`fuzz/regressions/<target>/`, copied there from
//! `fuzz/artifacts/` when `scripts/fuzz` reports one), through the same functions the fuzz
//! targets call (`roomline::fuzzing`). A crash fixed stays fixed.

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let d = root.join(dir).join(target);
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_file() && p.file_name().is_none_or(|n| n != ".keep") {
                let data = std::fs::read(&p).unwrap();
                out.push((p, data));
            }
        }
    }
    out.sort();
    out
}

fn replay(target: &str, f: fn(&[u8])) {
    let all = inputs(target);
    assert!(!all.is_empty(), "no seed corpus for {target}");
    for (path, data) in all {
        // a panic names the input that caused it
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{target} panics on {}", path.display());
    }
}

#[test]
fn sip_message_inputs() {
    replay("sip_message", roomline::fuzzing::sip_message);
}

#[test]
fn digest_inputs() {
    replay("digest", roomline::fuzzing::digest);
}

#[test]
fn framing_inputs() {
    replay("framing", roomline::fuzzing::framing);
}

#[test]
fn sdp_inputs() {
    replay("sdp", roomline::fuzzing::sdp);
}

#[test]
fn sdes_inputs() {
    replay("sdes", roomline::fuzzing::sdes);
}

#[test]
fn srtp_inputs() {
    replay("srtp", roomline::fuzzing::srtp);
}
