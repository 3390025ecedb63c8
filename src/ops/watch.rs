//! Notices changed configuration files by polling their fingerprint (names, sizes and
//! modification times of roomline.yaml, the trunk and dialplan directories, and the files
//! the configuration names: TLS certificates, keys and CA files). A change
//! is reported once it has held still for one interval, so an editor's save in several
//! writes gives one reload.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A snapshot of what the configuration files look like on disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

impl Fingerprint {
    pub fn take(config: &Path, dirs: &[&Path], files: &[&Path]) -> Fingerprint {
        let mut entries = Vec::new();
        let mut add = |p: &Path| {
            let (len, mtime) = match std::fs::metadata(p) {
                Ok(m) => (m.len(), m.modified().ok()),
                Err(_) => (u64::MAX, None),
            };
            entries.push((p.to_path_buf(), len, mtime));
        };
        add(config);
        for f in files {
            add(f);
        }
        for dir in dirs {
            add(dir);
            if let Ok(rd) = std::fs::read_dir(dir) {
                let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                files.sort();
                for f in files {
                    add(&f);
                }
            }
        }
        Fingerprint(entries)
    }
}

/// Debounce state: feed it a fingerprint each interval; it says when to reload.
#[derive(Debug)]
pub struct Debounce {
    applied: Fingerprint,
    pending: Option<Fingerprint>,
}

impl Debounce {
    pub fn new(current: Fingerprint) -> Self {
        Debounce {
            applied: current,
            pending: None,
        }
    }

    /// True when the files changed and then stayed the same for one interval.
    pub fn observe(&mut self, now: Fingerprint) -> bool {
        if now == self.applied {
            self.pending = None;
            return false;
        }
        if self.pending.as_ref() == Some(&now) {
            self.applied = now;
            self.pending = None;
            return true;
        }
        self.pending = Some(now);
        false
    }

    /// After a SIGHUP reload, the files as they are count as applied.
    pub fn applied(&mut self, now: Fingerprint) {
        self.applied = now;
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_only_after_the_change_holds_still() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("roomline.yaml");
        let plans = dir.path().join("dialplans");
        std::fs::create_dir(&plans).unwrap();
        std::fs::write(&cfg, "a").unwrap();
        let take = || Fingerprint::take(&cfg, &[&plans], &[]);
        let mut d = Debounce::new(take());
        assert!(!d.observe(take()), "nothing changed");
        std::fs::write(plans.join("x.yaml"), "rules: []").unwrap();
        assert!(!d.observe(take()), "first sight of a change waits");
        std::fs::write(plans.join("x.yaml"), "rules: [1]").unwrap();
        assert!(!d.observe(take()), "still changing");
        assert!(d.observe(take()), "held still: reload");
        assert!(!d.observe(take()), "applied");
        std::fs::remove_file(plans.join("x.yaml")).unwrap();
        assert!(!d.observe(take()));
        assert!(d.observe(take()), "a removed file counts");
    }
}
