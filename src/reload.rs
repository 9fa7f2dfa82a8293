//! Reloading: SOA serial policy (RFC 1982 arithmetic), what needs a restart, and the file
//! watcher that turns edits (editor write-rename, git checkout of several files) into one
//! debounced reload request.
//!
//! The reload itself (load, validate, swap) is `app::Control::reload`; this module must not
//! touch the published snapshot.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{Config, SerialPolicy};

/// Quiet period after the last file event before reloading: long enough for a git checkout or
/// an editor's write + rename to finish, short enough to feel immediate.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// RFC 1982 §3.2: `a` is greater than `b` in serial number arithmetic.
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

/// The serial to serve for a zone.
///
/// `previous` is (served serial, content digest) of the running zone, if any. The served serial
/// never goes backwards: a file serial that is not greater than the served one is replaced
/// when the content changed (per `policy`) and kept when it did not.
pub fn choose_serial(
    policy: SerialPolicy,
    previous: Option<(u32, u64)>,
    file_serial: u32,
    digest: u64,
    now: SystemTime,
) -> u32 {
    let Some((served, old_digest)) = previous else {
        return file_serial;
    };
    if serial_gt(file_serial, served) {
        return file_serial;
    }
    if digest == old_digest {
        return served;
    }
    let next = served.wrapping_add(1);
    let candidate = match policy {
        SerialPolicy::Keep => return served,
        SerialPolicy::Increment => next,
        SerialPolicy::Unixtime => now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(next, |d| d.as_secs() as u32),
        SerialPolicy::Dateserial => date_serial(now),
    };
    if serial_gt(candidate, served) {
        candidate
    } else {
        next
    }
}

/// YYYYMMDD00 for the UTC date of `now`.
fn date_serial(now: SystemTime) -> u32 {
    let days = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year * 1_000_000 + month * 10_000 + day * 100) as u32
}

/// Settings that only a restart applies, described for the operator.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    if running.listen != new.listen {
        changes.push("server.listen".to_string());
    }
    if running.http_listen != new.http_listen {
        changes.push("server.http-listen".to_string());
    }
    if running.udp_workers != new.udp_workers {
        changes.push("server.udp-workers".to_string());
    }
    if running.query_log_sample != new.query_log_sample {
        changes.push("server.query-log-sample".to_string());
    }
    if running.query_metrics != new.query_metrics {
        changes.push("server.query-metrics".to_string());
    }
    if format!("{:?}", running.limits) != format!("{:?}", new.limits) {
        changes.push("limits".to_string());
    }
    if running.rrl != new.rrl {
        changes.push("rrl".to_string());
    }
    changes
}

/// The files a config reads: itself, every zone file and members file.
fn watched_files(config: &Config) -> HashSet<PathBuf> {
    let mut files = HashSet::new();
    files.insert(absolute(&config.path));
    for zone in &config.zones {
        files.insert(absolute(&zone.file));
        if let Some(members) = &zone.members {
            files.insert(absolute(members));
        }
    }
    files
}

/// Every file a running server depends on: `watched_files` of the config, plus the files the
/// served zones were read from, `$INCLUDE`d ones too (each record knows its file), so that an
/// included file in another directory is watched as well.
pub fn files_to_watch(config: &Config, snapshot: &crate::snapshot::Snapshot) -> HashSet<PathBuf> {
    let mut files = watched_files(config);
    let mut last: Option<&Path> = None;
    for zone in snapshot.zones() {
        for record in &zone.records {
            let file: &Path = &record.location.file;
            // Records of one file come together: skip the set lookup for runs of them.
            if last != Some(file) {
                files.insert(absolute(file));
                last = Some(file);
            }
        }
    }
    files
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Watches the directories holding `files`; sends `()` once per burst of relevant changes.
/// Watching directories (not files) sees editors' write-then-rename and git's replacements.
///
/// A deploy that swaps a whole directory (`mv zones.new zones`) moves the inotify watch away
/// with the old inode, so each directory's inode is also checked every `DIRECTORY_POLL`; a
/// change re-arms the watch on the path and reloads. Polling (one `stat` per directory) is
/// used instead of watching the parents, whose unrelated traffic (a log file written next to
/// `zones/`) would wake the watcher on every write.
pub struct FileWatcher {
    watcher: Arc<Mutex<notify::RecommendedWatcher>>,
    watched: Arc<RwLock<Watched>>,
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileWatcher")
    }
}

/// What is watched: the files, and the directories holding them.
#[derive(Debug, Default)]
struct Watched {
    files: HashSet<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Watched {
    /// Adds `files`; returns the directories not watched before.
    fn add(&mut self, files: HashSet<PathBuf>) -> Vec<PathBuf> {
        let mut new_dirs = Vec::new();
        for file in files {
            if let Some(dir) = file.parent() {
                if !self.dirs.iter().any(|d| d == dir) && !new_dirs.iter().any(|d| d == dir) {
                    new_dirs.push(dir.to_path_buf());
                }
            }
            self.files.insert(file);
        }
        self.dirs.extend(new_dirs.iter().cloned());
        new_dirs
    }

    /// True when an event on `path` concerns us. Zone files may `$INCLUDE` others: any zone
    /// or TOML file in a watched directory counts.
    fn concerns(&self, path: &Path) -> bool {
        self.files.contains(path)
            || (path.parent().is_some_and(|d| self.dirs.iter().any(|w| w == d))
                && path.extension().is_some_and(|e| e == "zone" || e == "toml"))
    }
}

/// Adds files to a running `FileWatcher` (after a reload read new ones); does nothing once
/// the watcher is gone.
#[derive(Debug, Clone)]
pub struct WatchHandle {
    watcher: Weak<Mutex<notify::RecommendedWatcher>>,
    watched: Arc<RwLock<Watched>>,
}

impl WatchHandle {
    pub fn extend(&self, files: HashSet<PathBuf>) {
        let Some(watcher) = self.watcher.upgrade() else {
            return;
        };
        let new_dirs = self.watched.write().unwrap_or_else(|p| p.into_inner()).add(files);
        let mut w = watcher.lock().unwrap_or_else(|p| p.into_inner());
        for dir in new_dirs {
            match w.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => tracing::info!(dir = %dir.display(), "watching a new directory"),
                Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch: {e}; reload with SIGHUP"),
            }
        }
    }
}

/// How often the watched directories' identities are checked for a swap.
const DIRECTORY_POLL: Duration = Duration::from_secs(1);

/// What one file-system event asks of the watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// A watched file (or a zone/TOML file beside one) changed.
    Files,
    /// A watched directory itself appeared, moved or vanished: watch its path again.
    Directory,
}

/// The identity of a directory: (device, inode), or `None` while it does not exist.
fn directory_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

impl FileWatcher {
    pub fn start(files: HashSet<PathBuf>, requests: mpsc::Sender<()>) -> notify::Result<FileWatcher> {
        let (events, mut raw) = mpsc::unbounded_channel::<Change>();
        let watched = Arc::new(RwLock::new(Watched::default()));
        let dirs = watched.write().unwrap_or_else(|p| p.into_inner()).add(files);
        let seen = watched.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let watched = seen.read().unwrap_or_else(|p| p.into_inner());
            if event.paths.iter().any(|p| watched.concerns(p)) {
                let _ = events.send(Change::Files);
            }
        })?;
        let watcher = Arc::new(Mutex::new(watcher));
        {
            let mut w = watcher.lock().unwrap_or_else(|p| p.into_inner());
            for dir in &dirs {
                w.watch(dir, RecursiveMode::NonRecursive)?;
            }
        }
        let identities_of = |watched: &RwLock<Watched>| -> Vec<(PathBuf, Option<(u64, u64)>)> {
            let watched = watched.read().unwrap_or_else(|p| p.into_inner());
            watched
                .dirs
                .iter()
                .map(|d| (d.clone(), directory_identity(d)))
                .collect()
        };
        let mut identities = identities_of(&watched);
        // The task holds the watcher weakly: dropping the FileWatcher drops the watcher, whose
        // event sender goes with it, which ends the task.
        let weak = Arc::downgrade(&watcher);
        let list = watched.clone();
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(DIRECTORY_POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let first = tokio::select! {
                    change = raw.recv() => match change {
                        Some(change) => change,
                        None => return,
                    },
                    _ = poll.tick() => {
                        let now = identities_of(&list);
                        // A directory added since the last look is not a swap.
                        let swapped = now.iter().any(|(dir, id)| {
                            identities.iter().any(|(known, old)| known == dir && old != id)
                        });
                        identities = now;
                        if !swapped {
                            continue;
                        }
                        Change::Directory
                    }
                };
                let mut rearm = first == Change::Directory;
                // Debounce: wait until the files have been quiet for DEBOUNCE.
                while let Ok(Some(change)) = tokio::time::timeout(DEBOUNCE, raw.recv()).await {
                    rearm |= change == Change::Directory;
                }
                if rearm {
                    let Some(watcher) = weak.upgrade() else { return };
                    let dirs = list.read().unwrap_or_else(|p| p.into_inner()).dirs.clone();
                    let mut w = watcher.lock().unwrap_or_else(|p| p.into_inner());
                    for dir in &dirs {
                        let _ = w.unwatch(dir);
                        if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                            tracing::warn!(dir = %dir.display(), "cannot watch again after it was replaced: {e}");
                        }
                    }
                    drop(w);
                    identities = identities_of(&list);
                }
                if requests.send(()).await.is_err() {
                    return;
                }
            }
        });
        Ok(FileWatcher { watcher, watched })
    }

    /// A handle that adds files to this watcher.
    pub fn handle(&self) -> WatchHandle {
        WatchHandle {
            watcher: Arc::downgrade(&self.watcher),
            watched: self.watched.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(serial_gt(2, 1));
        assert!(serial_gt(0, u32::MAX));
        assert!(!serial_gt(1, 2));
        assert!(!serial_gt(5, 5));
    }

    #[test]
    fn serial_never_goes_backwards() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        // First load: the file's serial.
        assert_eq!(choose_serial(SerialPolicy::Increment, None, 7, 1, now), 7);
        // The operator raised it.
        assert_eq!(choose_serial(SerialPolicy::Increment, Some((7, 1)), 8, 2, now), 8);
        // Content changed, serial not raised.
        assert_eq!(choose_serial(SerialPolicy::Increment, Some((7, 1)), 7, 2, now), 8);
        assert_eq!(choose_serial(SerialPolicy::Keep, Some((7, 1)), 7, 2, now), 7);
        assert_eq!(
            choose_serial(SerialPolicy::Unixtime, Some((7, 1)), 7, 2, now),
            1_795_000_000
        );
        assert_eq!(
            choose_serial(SerialPolicy::Dateserial, Some((7, 1)), 7, 2, now),
            2_026_111_800
        );
        // A date serial below the served one still moves forward by one.
        assert_eq!(
            choose_serial(SerialPolicy::Dateserial, Some((2_030_010_100, 1)), 5, 2, now),
            2_030_010_101
        );
        // Unchanged content keeps the served serial even if the file's went down.
        assert_eq!(choose_serial(SerialPolicy::Increment, Some((9, 1)), 3, 1, now), 9);
        // Wrap-around.
        assert_eq!(
            choose_serial(SerialPolicy::Increment, Some((u32::MAX, 1)), u32::MAX, 2, now),
            0
        );
    }
}
