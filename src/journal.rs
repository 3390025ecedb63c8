//! The journal of active calls: what the daemon needs to end a call after a crash (the
//! dialog's identifiers, route set, remote target, CSeq, where to send; the room and
//! participant identity), on disk in the state directory (`calls.journal`).
//!
//! Format: an append-only text log, one record per line: 16 hex digits of SHA-256 of the
//! JSON, a space, the JSON (`{"op":"up",...}` when a call is up or changes, `{"op":"down",
//! "key":...}` when it ends). A crash at any moment leaves a readable file: a record is
//! one `write` of a whole line followed by `fdatasync`, and a torn or corrupted line fails
//! its checksum and is skipped (counted) on reading. The file is rewritten with only the
//! live calls (temp file, fsync, rename, fsync of the directory) when it has grown past
//! `COMPACT_BYTES` and twice the live set, so its size stays bounded. `replay` (pure) reads
//! the text; `Journal` is the shell: a thread owns the file, calls send it records over a
//! bounded channel and never wait for the disk. Tests: `journal_*`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The journal's file name in the state directory.
pub const FILE: &str = "calls.journal";
/// The file is compacted when larger than this (and than twice the live records).
const COMPACT_BYTES: u64 = 256 * 1024;
/// Records queued for the writer; beyond, a record is dropped (and counted in the log).
const QUEUE: usize = 4096;
/// Live calls kept; the daemon's own limit (`max_concurrent_calls`) is far lower.
const MAX_LIVE: usize = 100_000;

/// One call as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Call-ID and our tag: unique per dialog.
    pub key: String,
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// Our side as a header value (with our tag), the From of our BYE.
    pub local: String,
    /// The peer as a header value (with its tag), the To of our BYE.
    pub remote: String,
    pub remote_target: String,
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    pub remote_cseq: Option<u32>,
    /// `udp`, `tcp` or `tls`.
    pub transport: String,
    /// The address the dialog's messages came from / went to.
    pub remote_addr: String,
    pub room: String,
    pub identity: String,
}

impl Entry {
    fn to_json(&self) -> Value {
        json!({
            "op": "up", "key": self.key, "call_id": self.call_id,
            "local_tag": self.local_tag, "remote_tag": self.remote_tag,
            "local": self.local, "remote": self.remote, "remote_target": self.remote_target,
            "route_set": self.route_set, "local_cseq": self.local_cseq,
            "remote_cseq": self.remote_cseq, "transport": self.transport,
            "remote_addr": self.remote_addr, "room": self.room, "identity": self.identity,
        })
    }

    fn from_json(v: &Value) -> Option<Entry> {
        let s = |k: &str| v.get(k)?.as_str().map(str::to_string);
        Some(Entry {
            key: s("key")?,
            call_id: s("call_id")?,
            local_tag: s("local_tag")?,
            remote_tag: s("remote_tag")?,
            local: s("local")?,
            remote: s("remote")?,
            remote_target: s("remote_target")?,
            route_set: v
                .get("route_set")?
                .as_array()?
                .iter()
                .map(|r| r.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()?,
            local_cseq: u32::try_from(v.get("local_cseq")?.as_u64()?).ok()?,
            remote_cseq: v
                .get("remote_cseq")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok()),
            transport: s("transport")?,
            remote_addr: s("remote_addr")?,
            room: s("room")?,
            identity: s("identity")?,
        })
    }
}

/// A change to the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Up(Box<Entry>),
    Down(String),
}

/// One record as a line (with its newline).
pub fn encode(r: &Record) -> String {
    let v = match r {
        Record::Up(e) => e.to_json(),
        Record::Down(key) => json!({"op": "down", "key": key}),
    };
    let text = v.to_string();
    format!("{} {text}\n", checksum(&text))
}

fn checksum(text: &str) -> String {
    let h = Sha256::digest(text.as_bytes());
    h[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a journal's text says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// The calls up when the text ends, by key.
    pub live: BTreeMap<String, Entry>,
    /// Lines that failed their checksum or did not parse (a torn last write, corruption).
    pub bad: usize,
}

/// Reads a journal's text (pure): every good record applied in order, bad lines skipped.
pub fn replay(text: &str) -> Replay {
    let mut out = Replay::default();
    for line in text.split('\n') {
        if line.is_empty() {
            continue;
        }
        let record = line.split_once(' ').and_then(|(sum, json)| {
            if sum != checksum(json) {
                return None;
            }
            let v: Value = serde_json::from_str(json).ok()?;
            match v.get("op")?.as_str()? {
                "up" => Entry::from_json(&v).map(|e| Record::Up(Box::new(e))),
                "down" => Some(Record::Down(v.get("key")?.as_str()?.to_string())),
                _ => None,
            }
        });
        match record {
            Some(Record::Up(e)) => {
                if out.live.len() < MAX_LIVE || out.live.contains_key(&e.key) {
                    out.live.insert(e.key.clone(), *e);
                }
            }
            Some(Record::Down(key)) => {
                out.live.remove(&key);
            }
            None => out.bad += 1,
        }
    }
    out
}

/// What opening the journal found.
pub struct Opened {
    pub journal: Journal,
    /// Calls a previous run left up (its crash): to be ended.
    pub orphans: Vec<Entry>,
    /// Bad lines skipped in the old journal.
    pub bad: usize,
    /// Where an unreadable journal was moved.
    pub set_aside: Option<PathBuf>,
}

/// The handle calls write through (cheap to clone; never blocks).
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::SyncSender<Record>,
}

impl Journal {
    /// Opens the journal in `dir` (created if missing): reads what a previous run left,
    /// sets aside a file that cannot be read, starts a fresh journal and its writer
    /// thread. Err only when the directory cannot be written at all.
    pub fn open(dir: &Path) -> io::Result<Opened> {
        fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let mut set_aside = None;
        let (orphans, bad) = match fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    let r = replay(&text);
                    (r.live.into_values().collect(), r.bad)
                }
                Err(_) => {
                    let aside = aside_path(&path);
                    fs::rename(&path, &aside)?;
                    set_aside = Some(aside);
                    (Vec::new(), 0)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), 0),
            Err(_) => {
                let aside = aside_path(&path);
                fs::rename(&path, &aside)?;
                set_aside = Some(aside);
                (Vec::new(), 0)
            }
        };
        // the orphans stay in the new file until their calls are ended (`ended`)
        let live: BTreeMap<String, Entry> =
            orphans.iter().map(|e| (e.key.clone(), e.clone())).collect();
        let file = rewrite(&path, &live)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let mut writer = Writer {
            path,
            file,
            live,
            size: 0,
        };
        writer.size = writer.file.metadata().map(|m| m.len()).unwrap_or(0);
        std::thread::Builder::new()
            .name("roomline-journal".into())
            .spawn(move || writer.run(rx))?;
        Ok(Opened {
            journal: Journal { tx },
            orphans,
            bad,
            set_aside,
        })
    }

    /// The call is up (or changed): written before the next record.
    pub fn up(&self, e: Entry) {
        self.send(Record::Up(Box::new(e)));
    }

    /// The call with `key` has ended.
    pub fn down(&self, key: &str) {
        self.send(Record::Down(key.to_string()));
    }

    fn send(&self, r: Record) {
        if self.tx.try_send(r).is_err() {
            tracing::warn!("call journal queue full: a record was dropped");
        }
    }
}

fn aside_path(path: &Path) -> PathBuf {
    let stamp = crate::clock::unix_secs();
    path.with_file_name(format!("{FILE}.unreadable-{stamp}"))
}

/// Writes `live` as a new journal: a temporary file, fsync, rename over `path`, fsync of
/// the directory; returns the file opened for appending.
fn rewrite(path: &Path, live: &BTreeMap<String, Entry>) -> io::Result<File> {
    let tmp = path.with_file_name(format!("{FILE}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        let mut text = String::new();
        for e in live.values() {
            text.push_str(&encode(&Record::Up(Box::new(e.clone()))));
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    OpenOptions::new().append(true).open(path)
}

struct Writer {
    path: PathBuf,
    file: File,
    live: BTreeMap<String, Entry>,
    size: u64,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Record>) {
        while let Ok(r) = rx.recv() {
            if let Err(e) = self.apply(r) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the call journal");
            }
        }
    }

    fn apply(&mut self, r: Record) -> io::Result<()> {
        let line = encode(&r);
        match r {
            Record::Up(e) => {
                if self.live.len() >= MAX_LIVE && !self.live.contains_key(&e.key) {
                    return Ok(());
                }
                self.live.insert(e.key.clone(), *e);
            }
            Record::Down(key) => {
                if self.live.remove(&key).is_none() {
                    return Ok(());
                }
            }
        }
        // one write of the whole line, then to the disk
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()?;
        self.size += line.len() as u64;
        let live_bytes: u64 = self
            .live
            .values()
            .map(|e| encode(&Record::Up(Box::new(e.clone()))).len() as u64)
            .sum();
        if self.size > COMPACT_BYTES && self.size > 2 * live_bytes {
            self.file = rewrite(&self.path, &self.live)?;
            self.size = live_bytes;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32) -> Entry {
        Entry {
            key: format!("call-{n};tag-{n}"),
            call_id: format!("call-{n}"),
            local_tag: format!("tag-{n}"),
            remote_tag: "rt\"x\\y".into(),
            local: format!("<sip:+15550100@192.0.2.1>;tag=tag-{n}"),
            remote: "\"Alice\" <sip:+15550111@198.51.100.7>;tag=rt".into(),
            remote_target: "sip:gw@198.51.100.7:5070".into(),
            route_set: vec!["<sip:p1.example;lr>".into(), "<sip:p2.example;lr>".into()],
            local_cseq: 3,
            remote_cseq: Some(10 + n),
            transport: "udp".into(),
            remote_addr: "198.51.100.7:5070".into(),
            room: "support-room".into(),
            identity: "sip_+15550111".into(),
        }
    }

    #[test]
    fn journal_records_round_trip() {
        let mut text = String::new();
        for n in 0..3 {
            text.push_str(&encode(&Record::Up(Box::new(entry(n)))));
        }
        text.push_str(&encode(&Record::Down(entry(1).key)));
        let r = replay(&text);
        assert_eq!(r.bad, 0);
        assert_eq!(
            r.live.values().cloned().collect::<Vec<_>>(),
            [entry(0), entry(2)]
        );
        // an update replaces the entry
        let mut e = entry(0);
        e.local_cseq = 9;
        text.push_str(&encode(&Record::Up(Box::new(e.clone()))));
        assert_eq!(replay(&text).live[&e.key].local_cseq, 9);
    }

    #[test]
    fn journal_a_torn_or_corrupt_file_is_read_up_to_what_is_good() {
        let mut text = String::new();
        for n in 0..4 {
            text.push_str(&encode(&Record::Up(Box::new(entry(n)))));
        }
        let good = replay(&text);
        // the last record cut at every length: never a panic, the others kept
        let last = encode(&Record::Down(entry(3).key));
        // (all but the newline is a whole record: applied)
        for cut in 0..last.len() - 1 {
            let torn = format!("{text}{}", &last[..cut]);
            let r = replay(&torn);
            assert_eq!(r.live, good.live, "cut at {cut}");
            assert!(r.bad <= 1);
        }
        // a flipped byte in a record: that record alone is skipped
        let mut bytes = text.clone().into_bytes();
        let second = text.find('\n').unwrap() + 30;
        bytes[second] ^= 0x20;
        let r = replay(&String::from_utf8(bytes).unwrap());
        assert_eq!(r.bad, 1);
        assert_eq!(r.live.len(), 3);
        // garbage and wrong shapes
        let junk = "zz\n0000000000000000 {}\nnot a record at all\n\u{0}\u{1}\n";
        assert_eq!(replay(junk).bad, 4);
        let wrong = r#"{"op":"up","key":"k"}"#;
        assert_eq!(replay(&format!("{} {wrong}\n", checksum(wrong))).bad, 1);
    }

    #[test]
    fn journal_file_survives_reopen_and_sets_aside_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let opened = Journal::open(dir.path()).unwrap();
        assert!(opened.orphans.is_empty());
        for n in 0..5 {
            opened.journal.up(entry(n));
        }
        opened.journal.down(&entry(2).key);
        drop(opened);
        // the writer thread drains its queue: wait for the file to show it
        let path = dir.path().join(FILE);
        let mut live = 0;
        for _ in 0..200 {
            live = replay(&fs::read_to_string(&path).unwrap()).live.len();
            if live == 4 {
                break;
            }
            std::thread::park_timeout(std::time::Duration::from_millis(10));
        }
        assert_eq!(live, 4);
        let again = Journal::open(dir.path()).unwrap();
        assert_eq!(again.orphans.len(), 4);
        assert_eq!(again.bad, 0);
        drop(again);
        // not UTF-8: moved aside, the start goes on with an empty journal
        fs::write(&path, [0xff, 0xfe, 0x00, 0x80]).unwrap();
        let third = Journal::open(dir.path()).unwrap();
        assert!(third.orphans.is_empty());
        let aside = third.set_aside.clone().expect("set aside");
        assert!(aside.exists());
        assert!(fs::read_to_string(&path).unwrap().is_empty());
    }

    #[test]
    fn journal_compaction_keeps_the_file_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let file = rewrite(&path, &BTreeMap::new()).unwrap();
        let mut w = Writer {
            path: path.clone(),
            file,
            live: BTreeMap::new(),
            size: 0,
        };
        for n in 0..1500 {
            w.apply(Record::Up(Box::new(entry(n)))).unwrap();
            if n >= 2 {
                w.apply(Record::Down(entry(n - 2).key)).unwrap();
            }
        }
        let len = fs::metadata(&path).unwrap().len();
        assert!(len <= COMPACT_BYTES + 1024, "{len} bytes");
        let r = replay(&fs::read_to_string(&path).unwrap());
        assert_eq!(r.live.len(), 2);
        assert_eq!(r.bad, 0);
    }
}
