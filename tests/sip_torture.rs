//! RFC 4475 torture messages (../shared/test-data/rfc4475, one test per file): the
//! receive-side syntax and validity checks accept what expected.tsv calls valid and refuse
//! what it calls invalid, with the status it lists (400 or 505); responses are never
//! answered. Answers that need the running endpoint (416, 420, 415, 406, 405/501) are
//! checked by the endpoint's own tests.

use roomline::sip::message::{self, Invalid};
use std::path::PathBuf;

fn data_dir() -> PathBuf {
    std::env::var_os("ROOMLINE_RFC4475")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/test-data/rfc4475")
        })
}

/// (kind, parse verdict, daemon response) for a file, from expected.tsv.
fn expected(name: &str) -> (String, String, String) {
    let path = data_dir().join("expected.tsv");
    let tsv = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let row = tsv
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|cols| cols[0] == name)
        .unwrap_or_else(|| panic!("{name} is not in expected.tsv"));
    (row[2].to_string(), row[3].to_string(), row[4].to_string())
}

fn check(name: &str) {
    let (kind, verdict, response) = expected(name);
    let data = std::fs::read(data_dir().join(format!("{name}.dat"))).unwrap();
    let result = message::parse(&data);
    match (verdict.as_str(), &result) {
        ("valid", Ok(m)) => assert_eq!(m.is_request(), kind == "request", "{name}: kind"),
        ("valid", Err(e)) => panic!("{name}: valid message refused: {e}"),
        ("invalid", Ok(_)) => panic!("{name}: invalid message accepted (expected {response})"),
        ("invalid", Err(e)) => {
            assert_eq!(e.is_response, kind == "response", "{name}: kind");
            let want: u16 = response[..3].parse().unwrap();
            assert_eq!(e.status(), Some(want), "{name}: {e}; expected {response}");
        }
        ("either", Ok(_)) => {}
        ("either", Err(e)) => assert_eq!(e.status(), Some(400), "{name}: {e}"),
        (v, _) => panic!("{name}: unknown verdict {v}"),
    }
    if let Err(e) = &result {
        // An answerable request always says why.
        assert!(!e.invalid.reason().is_empty());
        if e.is_response {
            assert!(
                e.status().is_none(),
                "{name}: a response must never be answered"
            );
        }
        assert!(!matches!(e.invalid, Invalid::Unanswerable(_)) || e.status().is_none());
    }
}

macro_rules! torture {
    ($($name:ident),* $(,)?) => { $( #[test] fn $name() { check(stringify!($name)); } )* };
}

torture!(
    wsinv, intmeth, esc01, escnull, longreq, dblreq, mpart01, unreason, noreason, badinv01, clerr,
    ncl, scalar02, ltgtruri, lwsruri, trws, escruri, baddate, regbadct, badaspec, badvers,
    mismatch01, badbranch, insuf, unkscm, novelsc, bext01, invut, regaut01, multi01, bcast, zeromf,
    cparam01, cparam02, sdp01, inv2543,
);

#[test]
fn every_listed_file_has_a_test() {
    let tsv = std::fs::read_to_string(data_dir().join("expected.tsv")).unwrap();
    let listed: Vec<&str> = tsv
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .collect();
    let src = include_str!("sip_torture.rs");
    for name in &listed {
        assert!(
            src.contains(&format!(" {name},")),
            "{name} from expected.tsv has no test here"
        );
    }
    assert!(listed.len() >= 36);
}

#[test]
fn dblreq_reads_only_the_first_message() {
    let data = std::fs::read(data_dir().join("dblreq.dat")).unwrap();
    let m = message::parse(&data).unwrap();
    assert_eq!(m.method(), Some("REGISTER"));
    assert!(m.body.is_empty());
    assert!(m.trailing > 0, "the second message is left unread");
}

#[test]
fn test_dat_without_version_is_refused() {
    let data = std::fs::read(data_dir().join("test.dat")).unwrap();
    assert!(message::parse(&data).is_err());
}
