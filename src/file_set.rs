//! The files one load read, each with the identity of what was read (device, inode, length,
//! modification time), so that a reload can tell whether it read one consistent version of an
//! operator's files (a `mv zones.new zones` swap, a git checkout, an editor writing in place)
//! and read them again when not. A leaf: it imports nothing of the crate.

use std::cell::RefCell;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    modified_ns: i128,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    /// How long ago the file was last written (zero for a time in the future).
    fn age(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Duration::from_nanos(u64::try_from(now - self.modified_ns).unwrap_or(0))
    }
}

/// One file as a load read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRead {
    pub path: PathBuf,
    pub identity: Identity,
}

thread_local! {
    /// The reads of the `track` call running on this thread, if any.
    static READS: RefCell<Option<Vec<FileRead>>> = const { RefCell::new(None) };
}

/// Runs `load` and returns what it returned with every file it read through `read` (once
/// each, in first-read order).
pub fn track<T>(load: impl FnOnce() -> T) -> (T, Vec<FileRead>) {
    let outer = READS.with(|reads| reads.borrow_mut().replace(Vec::new()));
    let value = load();
    let reads = READS.with(|reads| std::mem::replace(&mut *reads.borrow_mut(), outer));
    (value, reads.unwrap_or_default())
}

/// Reads `path` whole, at most `limit` bytes (more is an error), noting what was read for the
/// running `track`. The identity is the opened file's, so a rename after the open is seen.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let too_big = |len: u64| {
        format!(
            "{} is {len} bytes or more, above the {limit} byte limit",
            path.display()
        )
    };
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > limit {
        return Err(too_big(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(cannot)?;
    let opened = file.metadata().map_err(cannot)?;
    let mut bytes = Vec::with_capacity(usize::try_from(opened.len().min(limit)).unwrap_or(0));
    // The file may grow between the check and the read: never read past the limit.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    note(path, &opened);
    Ok(bytes)
}

fn note(path: &Path, meta: &std::fs::Metadata) {
    READS.with(|reads| {
        if let Some(reads) = reads.borrow_mut().as_mut() {
            if !reads.iter().any(|r| r.path == path) {
                reads.push(FileRead {
                    path: path.to_path_buf(),
                    identity: Identity::of(meta),
                });
            }
        }
    });
}

/// The paths of `reads` that no longer name what was read (replaced, written, removed).
pub fn changed(reads: &[FileRead]) -> Vec<PathBuf> {
    reads
        .iter()
        .filter(|r| std::fs::metadata(&r.path).ok().map(|m| Identity::of(&m)) != Some(r.identity))
        .map(|r| r.path.clone())
        .collect()
}

/// `Ok` when every path of `reads` still names what was read; else the paths that changed.
pub fn unchanged(reads: &[FileRead]) -> Result<(), Vec<PathBuf>> {
    let changed = changed(reads);
    if changed.is_empty() { Ok(()) } else { Err(changed) }
}

/// Waits until `reads` are one settled version of the files: every path still names what was
/// read, and has for at least `quiet` (a file written just before it was read may be in the
/// middle of an in-place write). Sleeps at most `quiet` once; returns the paths that changed.
pub fn settle(reads: &[FileRead], quiet: Duration) -> Result<(), Vec<PathBuf>> {
    let changed_now = changed(reads);
    if !changed_now.is_empty() {
        return Err(changed_now);
    }
    let youngest = reads.iter().map(|r| r.identity.age()).min();
    if let Some(age) = youngest.filter(|age| *age < quiet) {
        std::thread::sleep(quiet - age);
        let changed_since = changed(reads);
        if !changed_since.is_empty() {
            return Err(changed_since);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_replaced_after_it_was_read_is_changed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("z");
        std::fs::write(&path, "one").expect("write");
        let (bytes, reads) = track(|| read(&path, 100));
        assert_eq!(bytes.as_deref(), Ok(&b"one"[..]));
        assert_eq!(reads.len(), 1);
        // Just written: settled once it held still for the quiet time (waited for here).
        let started = std::time::Instant::now();
        assert_eq!(settle(&reads, Duration::from_millis(200)), Ok(()));
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        assert!(changed(&reads).is_empty());
        // Replaced by rename (a new inode): changed however long ago it was read.
        let new = dir.path().join("z.new");
        std::fs::write(&new, "two").expect("write");
        std::fs::rename(&new, &path).expect("rename");
        assert_eq!(changed(&reads), vec![path.clone()]);
        assert_eq!(settle(&reads, Duration::ZERO), Err(vec![path.clone()]));
        // Reads outside `track` are not noted anywhere.
        let (_, none) = track(|| ());
        assert!(none.is_empty());
        assert!(read(&path, 100).is_ok());
    }
}
