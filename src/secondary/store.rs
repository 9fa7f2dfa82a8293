//! The secondary's copy of a transferred zone on disk, so that a restart serves at once,
//! before the primary answers. One binary file per zone, written to a temporary name and
//! renamed (never half-written); its modification time is the last contact with a primary,
//! which decides expiry across restarts.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use crate::wire;
use crate::zone::name::Name;
use crate::zone::{Location, Record};

const MAGIC: &[u8] = b"consortium-dns secondary copy 1\n";

/// Writes `records` (SOA first) to `path`.
pub fn save(path: &Path, records: &[Record]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut bytes = Vec::with_capacity(MAGIC.len() + records.len() * 64);
    bytes.extend_from_slice(MAGIC);
    for r in records {
        bytes.push(r.name.wire().len() as u8);
        bytes.extend_from_slice(r.name.wire());
        bytes.extend_from_slice(&r.rtype.to_be_bytes());
        bytes.extend_from_slice(&r.ttl.to_be_bytes());
        bytes.extend_from_slice(&(r.rdata.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&r.rdata);
    }
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary).map_err(fail)?;
    file.write_all(&bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(fail)
}

/// Marks now as the last contact with a primary.
pub fn touch(path: &Path) -> Result<(), String> {
    std::fs::File::options()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .map_err(|e| format!("cannot touch {}: {e}", path.display()))
}

/// The copy at `path` and when it was last confirmed (unix seconds); `Ok(None)` when there is
/// none yet.
pub fn load(path: &Path) -> Result<Option<(Vec<Record>, u64)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let contact = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let bad = |reason: &str| {
        format!(
            "{}: {reason} (delete it: the zone is transferred again)",
            path.display()
        )
    };
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("not a secondary copy"))?;
    let location = Location::new(std::sync::Arc::from(path), 0);
    let mut records = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let name_len = usize::from(body[at]);
        let (name, after) = Name::read_uncompressed(body, at + 1)
            .filter(|(_, after)| *after == at + 1 + name_len)
            .ok_or_else(|| bad("a bad name"))?;
        let fixed = body.get(after..after + 8).ok_or_else(|| bad("cut short"))?;
        let rdlen = usize::from(wire::be16(fixed, 6));
        let rdata = body
            .get(after + 8..after + 8 + rdlen)
            .ok_or_else(|| bad("cut short"))?;
        records.push(Record {
            name,
            rtype: wire::be16(fixed, 0),
            ttl: wire::be32(fixed, 2),
            rdata: rdata.to_vec(),
            location: location.clone(),
        });
        at = after + 8 + rdlen;
    }
    if records.first().is_none_or(|r| r.rtype != wire::rtype::SOA) {
        return Err(bad("no SOA first"));
    }
    Ok(Some((records, contact)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_the_same_records_and_refuses_a_cut_file() {
        let dir = std::env::temp_dir().join(format!("cdns-store-{}", std::process::id()));
        let path = dir.join("example.zone");
        let origin = Name::parse("example.", None).expect("name");
        let location = Location::new(std::sync::Arc::from(Path::new("t")), 0);
        let mut soa = vec![0u8, 0];
        soa.extend_from_slice(&[0; 20]);
        let records = vec![
            Record {
                name: origin.clone(),
                rtype: wire::rtype::SOA,
                ttl: 5,
                rdata: soa,
                location: location.clone(),
            },
            Record {
                name: origin,
                rtype: 65280,
                ttl: 7,
                rdata: vec![1, 2, 3],
                location,
            },
        ];
        save(&path, &records).expect("saved");
        let (back, contact) = load(&path).expect("read").expect("present");
        assert_eq!(back.len(), 2);
        assert_eq!(
            (back[1].rtype, back[1].ttl, back[1].rdata.clone()),
            (65280, 7, vec![1, 2, 3])
        );
        assert!(contact > 0);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).expect("cut");
        assert!(load(&path).is_err(), "a cut copy is refused");
        let _ = std::fs::remove_dir_all(dir);
    }
}
