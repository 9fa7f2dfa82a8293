//! The file watcher: turns edits (editor write-rename, git checkout of several files, a whole
//! directory swapped) into one debounced reload request.
//!
//! It only asks: the reload itself is `Control::rebuild`. It never touches the snapshot.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::sync::{lock, read, write};

/// Quiet period after the last file event before reloading: long enough for a git checkout or
/// an editor's write + rename to finish, short enough to feel immediate.
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest a burst of events can postpone its reload.
const MAX_POSTPONE: Duration = Duration::from_secs(2);
/// Quiet after the first event before the reload starts reading: the events of one edit (a
/// rename, an editor's write and close) arrive together. The reload then builds while the
/// rest of `DEBOUNCE` runs, and publishes only once the files have been quiet for all of it
/// (`WatchHandle::wait_until_quiet`), so a large tree's build no longer comes after the
/// debounce but during it.
const GATHER: Duration = Duration::from_millis(25);

/// The files a config reads: itself, every zone file and members file.
fn watched_files(config: &Config) -> HashSet<PathBuf> {
    let mut files = HashSet::new();
    files.insert(absolute(&config.path));
    if let Some(geo) = &config.live.geo {
        files.insert(absolute(&geo.path));
    }
    // A secondary's copy is the server's own file, not an operator's.
    for zone in config.live.zones.iter().filter(|z| !z.is_secondary()) {
        files.insert(absolute(&zone.source.file));
        if let Some(members) = &zone.source.members {
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
    for zone in snapshot.zones().iter().filter(|z| !z.transferred) {
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
    last_event: Arc<Mutex<Option<Instant>>>,
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
    /// When the last relevant file event arrived, and when the burst it belongs to began.
    last_event: Arc<Mutex<Option<Instant>>>,
}

impl WatchHandle {
    /// Blocks until no relevant file event has arrived for `DEBOUNCE`, but no longer than
    /// `MAX_POSTPONE` in all (steady writes must not hold a reload back without bound; the
    /// files read are checked unchanged afterwards all the same).
    pub fn wait_until_quiet(&self) {
        let started = Instant::now();
        loop {
            let Some(last) = *lock(&self.last_event) else {
                return;
            };
            let quiet = last.elapsed();
            if quiet >= DEBOUNCE || started.elapsed() >= MAX_POSTPONE {
                return;
            }
            std::thread::sleep(DEBOUNCE - quiet);
        }
    }

    pub fn extend(&self, files: HashSet<PathBuf>) {
        let Some(watcher) = self.watcher.upgrade() else {
            return;
        };
        let new_dirs = write(&self.watched).add(files);
        let mut w = lock(&watcher);
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

/// What arrived while `gather` waited.
#[derive(Debug, Default)]
struct Gathered {
    any: bool,
    directory: bool,
}

/// Takes events until none has come for `quiet`, or `deadline` passes.
async fn gather(
    raw: &mut mpsc::UnboundedReceiver<Change>,
    quiet: Duration,
    deadline: tokio::time::Instant,
) -> Gathered {
    let mut seen = Gathered::default();
    loop {
        let wait = quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, raw.recv()).await {
            Ok(Some(change)) => {
                seen.any = true;
                seen.directory |= change == Change::Directory;
                if wait.is_zero() {
                    // Past the deadline: what is already queued counts, nothing more waits.
                    return seen;
                }
            }
            _ => return seen,
        }
    }
}

/// Watches every directory's path again after one of them was replaced; false once the
/// watcher is gone.
fn rearm_watches(
    watcher: &Weak<Mutex<notify::RecommendedWatcher>>,
    list: &Arc<RwLock<Watched>>,
    identities: &mut Vec<(PathBuf, Option<(u64, u64)>)>,
) -> bool {
    let Some(watcher) = watcher.upgrade() else {
        return false;
    };
    let dirs = read(list).dirs.clone();
    let mut w = lock(&watcher);
    for dir in &dirs {
        let _ = w.unwatch(dir);
        if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), "cannot watch again after it was replaced: {e}");
        }
    }
    drop(w);
    *identities = dirs.iter().map(|d| (d.clone(), directory_identity(d))).collect();
    true
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
        let dirs = write(&watched).add(files);
        let seen = watched.clone();
        let last_event: Arc<Mutex<Option<Instant>>> = Arc::default();
        let noted = last_event.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let watched = read(&seen);
            if event.paths.iter().any(|p| watched.concerns(p)) {
                *lock(&noted) = Some(Instant::now());
                let _ = events.send(Change::Files);
            }
        })?;
        let watcher = Arc::new(Mutex::new(watcher));
        {
            let mut w = lock(&watcher);
            for dir in &dirs {
                w.watch(dir, RecursiveMode::NonRecursive)?;
            }
        }
        let identities_of = |watched: &RwLock<Watched>| -> Vec<(PathBuf, Option<(u64, u64)>)> {
            let watched = read(watched);
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
        let polled = last_event.clone();
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
                if rearm {
                    *lock(&polled) = Some(Instant::now());
                }
                let deadline = tokio::time::Instant::now() + MAX_POSTPONE;
                // The events of this one edit, then the request at once: the reload reads and
                // builds while the debounce runs, and publishes once it is over.
                rearm |= gather(&mut raw, GATHER, deadline).await.directory;
                if rearm && !rearm_watches(&weak, &list, &mut identities) {
                    return;
                }
                if requests.send(()).await.is_err() {
                    return;
                }
                // Events after the request may concern a file that reload did not read (one
                // created later, after a load that failed for want of it): ask again once they
                // are quiet. A reload whose files all stand as they were read is skipped
                // (`Control::files_unchanged`).
                let later = gather(&mut raw, DEBOUNCE, deadline).await;
                if later.any {
                    if later.directory && !rearm_watches(&weak, &list, &mut identities) {
                        return;
                    }
                    if requests.send(()).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(FileWatcher {
            watcher,
            watched,
            last_event,
        })
    }

    /// A handle that adds files to this watcher.
    pub fn handle(&self) -> WatchHandle {
        WatchHandle {
            watcher: Arc::downgrade(&self.watcher),
            watched: self.watched.clone(),
            last_event: self.last_event.clone(),
        }
    }
}
