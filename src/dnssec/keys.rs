//! DNSSEC key pairs in BIND's file format, as `dnssec-keygen` and `ldns-keygen` write them:
//! `K<zone>.+<alg>+<tag>.key` (the DNSKEY record) and `.private` (the key, and with BIND the
//! timing metadata `dnssec-settime` sets). Only what the server signs with: ECDSAP256SHA256
//! (RFC 6605) and ED25519 (RFC 8080).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

use crate::tsig::decode_base64;
use crate::zone::name::Name;

/// RFC 8624 numbers of the algorithms we sign with.
pub const ECDSAP256SHA256: u8 = 13;
pub const ED25519: u8 = 15;
/// DNSKEY flags: Zone Key (RFC 4034 §2.1.1), and Secure Entry Point for a KSK or CSK.
pub const FLAGS_ZSK: u16 = 256;
pub const FLAGS_KSK: u16 = 257;
/// DS digest type SHA-256 (RFC 4509).
pub const DIGEST_SHA256: u8 = 2;

/// The key's role, from the SEP flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Signs the DNSKEY RRset (and everything else when the zone has no active ZSK: a CSK).
    Ksk,
    Zsk,
}

/// When a key is published, signs, stops signing and leaves the zone (unix seconds; None:
/// not set). A key without any is published and active from the start, as `ldns-keygen`
/// writes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    pub created: Option<u64>,
    pub publish: Option<u64>,
    pub activate: Option<u64>,
    pub inactive: Option<u64>,
    pub delete: Option<u64>,
}

impl Timing {
    /// In the DNSKEY RRset at `now`.
    pub fn is_published(&self, now: u64) -> bool {
        let from = self.publish.or(self.activate);
        from.is_none_or(|t| t <= now) && self.delete.is_none_or(|t| now < t)
    }

    /// Signs at `now`.
    pub fn is_active(&self, now: u64) -> bool {
        self.activate.is_none_or(|t| t <= now)
            && self.inactive.is_none_or(|t| now < t)
            && self.is_published(now)
    }

    /// The first moment after `now` at which this key's state changes.
    pub fn next_event(&self, now: u64) -> Option<u64> {
        [self.publish, self.activate, self.inactive, self.delete]
            .into_iter()
            .flatten()
            .filter(|&t| t > now)
            .min()
    }

    /// The state's name, for status and metrics.
    pub fn state(&self, now: u64) -> &'static str {
        if self.is_active(now) {
            "active"
        } else if self.is_published(now) {
            if self.inactive.is_some_and(|t| t <= now) {
                "retired"
            } else {
                "published"
            }
        } else if self.delete.is_some_and(|t| t <= now) {
            "removed"
        } else {
            "future"
        }
    }
}

/// One key pair, loaded and checked: its private half matches its DNSKEY.
pub struct ZoneKey {
    pub flags: u16,
    pub algorithm: u8,
    /// The DNSKEY's public key field.
    pub public: Vec<u8>,
    pub tag: u16,
    /// TTL written in the `.key` file, if any.
    pub ttl: Option<u32>,
    pub timing: Timing,
    /// The `.key` file, for messages.
    pub file: PathBuf,
    pair: Pair,
}

enum Pair {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for ZoneKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half.
        f.debug_struct("ZoneKey")
            .field("tag", &self.tag)
            .field("flags", &self.flags)
            .field("algorithm", &self.algorithm)
            .field("file", &self.file)
            .finish()
    }
}

impl ZoneKey {
    pub fn role(&self) -> Role {
        if self.flags & 1 == 1 { Role::Ksk } else { Role::Zsk }
    }

    /// The DNSKEY RDATA (RFC 4034 §2.1): flags, protocol 3, algorithm, public key.
    pub fn dnskey_rdata(&self) -> Vec<u8> {
        dnskey_rdata(self.flags, self.algorithm, &self.public)
    }

    /// Signs `data`; the signature in DNSSEC's form (r|s for ECDSA, RFC 6605 §4).
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        match &self.pair {
            Pair::Ecdsa(pair) => pair
                .sign(&SystemRandom::new(), data)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| format!("key {}: signing failed", self.tag)),
            Pair::Ed25519(pair) => Ok(pair.sign(data).as_ref().to_vec()),
        }
    }

    /// Signature length in octets.
    pub fn signature_len(&self) -> usize {
        64
    }
}

pub fn dnskey_rdata(flags: u16, algorithm: u8, public: &[u8]) -> Vec<u8> {
    let mut rdata = Vec::with_capacity(4 + public.len());
    rdata.extend_from_slice(&flags.to_be_bytes());
    rdata.push(3);
    rdata.push(algorithm);
    rdata.extend_from_slice(public);
    rdata
}

/// RFC 4034 Appendix B: the key tag of a DNSKEY RDATA.
pub fn key_tag(rdata: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for (i, &b) in rdata.iter().enumerate() {
        sum += if i & 1 == 0 {
            u32::from(b) << 8
        } else {
            u32::from(b)
        };
    }
    sum += (sum >> 16) & 0xFFFF;
    (sum & 0xFFFF) as u16
}

/// The DS RDATA (RFC 4034 §5.1.4) of a DNSKEY of zone `origin`, SHA-256.
pub fn ds_rdata(origin: &Name, dnskey: &[u8]) -> Vec<u8> {
    let mut input = origin.key().to_vec();
    input.extend_from_slice(dnskey);
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut rdata = Vec::with_capacity(4 + 32);
    rdata.extend_from_slice(&key_tag(dnskey).to_be_bytes());
    rdata.push(dnskey.get(3).copied().unwrap_or(0));
    rdata.push(DIGEST_SHA256);
    rdata.extend_from_slice(digest.as_ref());
    rdata
}

/// The algorithm's mnemonic.
pub fn algorithm_name(algorithm: u8) -> &'static str {
    match algorithm {
        ECDSAP256SHA256 => "ECDSAP256SHA256",
        ED25519 => "ED25519",
        _ => "unsupported",
    }
}

/// Reads every key pair of `origin` in `dir`: each `K<origin>.+<alg>+<tag>.key` with its
/// `.private`. Errors name the file and the reason, never key material.
pub fn load_dir(dir: &Path, origin: &Name) -> Result<Vec<ZoneKey>, Vec<(PathBuf, String)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => {
                "the key directory does not exist (create a key pair with `consortium-dns dnssec keygen`)"
                    .to_string()
            }
            _ => format!("cannot read the key directory: {e}"),
        };
        vec![(dir.to_path_buf(), reason)]
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "key")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('K'))
        })
        .collect();
    files.sort();
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match load_pair(&file, origin) {
            Ok(key) => keys.push(key),
            Err(reason) => errors.push((file, reason)),
        }
    }
    if errors.is_empty() { Ok(keys) } else { Err(errors) }
}

/// Reads one `.key` file and its `.private` beside it.
pub fn load_pair(key_file: &Path, origin: &Name) -> Result<ZoneKey, String> {
    let text = std::fs::read_to_string(key_file).map_err(|e| format!("cannot read: {e}"))?;
    let record = parse_dnskey_line(&text, origin)?;
    let private_file = key_file.with_extension("private");
    let private = std::fs::read_to_string(&private_file)
        .map_err(|e| format!("cannot read {}: {e}", private_file.display()))?;
    let fields = parse_private(&private).map_err(|reason| format!("{}: {reason}", private_file.display()))?;
    if fields.algorithm != record.algorithm {
        return Err(format!(
            "{} is for algorithm {}, the DNSKEY for {}",
            private_file.display(),
            fields.algorithm,
            record.algorithm
        ));
    }
    let mismatch = || {
        format!(
            "{} does not match the public key in the .key file",
            private_file.display()
        )
    };
    let pair = match record.algorithm {
        ECDSAP256SHA256 => {
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&record.public);
            Pair::Ecdsa(
                EcdsaKeyPair::from_private_key_and_public_key(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &fields.private_key,
                    &point,
                    &SystemRandom::new(),
                )
                .map_err(|_| mismatch())?,
            )
        }
        ED25519 => Pair::Ed25519(
            Ed25519KeyPair::from_seed_and_public_key(&fields.private_key, &record.public)
                .map_err(|_| mismatch())?,
        ),
        other => {
            return Err(format!(
                "unsupported algorithm {other} (the server signs with 13 ECDSAP256SHA256 or 15 ED25519)"
            ));
        }
    };
    if record.flags & 0x0100 == 0 {
        return Err(format!(
            "DNSKEY flags {} lack the Zone Key bit (256 or 257 expected)",
            record.flags
        ));
    }
    let rdata = dnskey_rdata(record.flags, record.algorithm, &record.public);
    Ok(ZoneKey {
        flags: record.flags,
        algorithm: record.algorithm,
        tag: key_tag(&rdata),
        public: record.public,
        ttl: record.ttl,
        timing: fields.timing,
        file: key_file.to_path_buf(),
        pair,
    })
}

struct DnskeyLine {
    flags: u16,
    algorithm: u8,
    public: Vec<u8>,
    ttl: Option<u32>,
}

/// The DNSKEY record of a `.key` file: `owner [ttl] [IN] DNSKEY flags 3 alg base64...`,
/// comments (`;`) ignored.
fn parse_dnskey_line(text: &str, origin: &Name) -> Result<DnskeyLine, String> {
    let line = text
        .lines()
        .map(|l| l.split(';').next().unwrap_or(""))
        .find(|l| !l.trim().is_empty())
        .ok_or("no DNSKEY record in the file")?;
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let owner = tokens.first().ok_or("no DNSKEY record in the file")?;
    let owner = Name::parse(owner, Some(origin)).map_err(|e| format!("owner name: {e}"))?;
    if owner.key() != origin.key() {
        return Err(format!("a key for {owner}, not for the zone {origin}"));
    }
    let at = tokens
        .iter()
        .position(|t| t.eq_ignore_ascii_case("DNSKEY"))
        .ok_or("no DNSKEY record in the file")?;
    let ttl = tokens[1..at].iter().find_map(|t| t.parse::<u32>().ok());
    let field = |i: usize, what: &str| {
        tokens
            .get(at + i)
            .ok_or_else(|| format!("DNSKEY lacks its {what}"))
    };
    let flags: u16 = field(1, "flags")?.parse().map_err(|_| "bad DNSKEY flags")?;
    let protocol: u8 = field(2, "protocol")?.parse().map_err(|_| "bad DNSKEY protocol")?;
    if protocol != 3 {
        return Err(format!("DNSKEY protocol {protocol} (RFC 4034 §2.1.2 requires 3)"));
    }
    let algorithm: u8 = field(3, "algorithm")?
        .parse()
        .map_err(|_| "bad DNSKEY algorithm")?;
    let encoded: String = tokens.get(at + 4..).unwrap_or_default().concat();
    let public = decode_base64(&encoded).ok_or("DNSKEY public key is not valid base64")?;
    let expected = match algorithm {
        ECDSAP256SHA256 => 64,
        ED25519 => 32,
        other => {
            return Err(format!(
                "unsupported algorithm {other} (the server signs with 13 ECDSAP256SHA256 or 15 ED25519)"
            ));
        }
    };
    if public.len() != expected {
        return Err(format!(
            "public key of {} octets, {expected} expected",
            public.len()
        ));
    }
    Ok(DnskeyLine {
        flags,
        algorithm,
        public,
        ttl,
    })
}

struct PrivateFields {
    algorithm: u8,
    private_key: Vec<u8>,
    timing: Timing,
}

/// The `Private-key-format` file: `Algorithm`, `PrivateKey`, and the timing fields.
fn parse_private(text: &str) -> Result<PrivateFields, String> {
    let mut algorithm = None;
    let mut private_key = None;
    let mut timing = Timing::default();
    let mut format_seen = false;
    for line in text.lines() {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let time = || {
            parse_timestamp(value).ok_or_else(|| format!("{field}: bad time {:.20?} (YYYYMMDDHHMMSS)", value))
        };
        match field.trim() {
            "Private-key-format" => format_seen = true,
            "Algorithm" => {
                let number = value.split_whitespace().next().unwrap_or("");
                algorithm = Some(
                    number
                        .parse::<u8>()
                        .map_err(|_| "bad Algorithm line".to_string())?,
                );
            }
            "PrivateKey" => {
                private_key = Some(decode_base64(value).ok_or("PrivateKey is not valid base64")?);
            }
            "Created" => timing.created = Some(time()?),
            "Publish" => timing.publish = Some(time()?),
            "Activate" => timing.activate = Some(time()?),
            "Inactive" => timing.inactive = Some(time()?),
            "Delete" => timing.delete = Some(time()?),
            _ => {}
        }
    }
    if !format_seen {
        return Err("not a Private-key-format file".into());
    }
    let algorithm = algorithm.ok_or("no Algorithm line")?;
    let mut private_key =
        private_key.ok_or("no PrivateKey line (only ECDSAP256SHA256 and ED25519 keys are supported)")?;
    if algorithm == ECDSAP256SHA256 && (1..32).contains(&private_key.len()) {
        // An ECDSA private key is an integer, and BIND writes it without its leading zero
        // octets (one key in 256 is 31 octets long): put them back.
        let mut padded = vec![0u8; 32 - private_key.len()];
        padded.append(&mut private_key);
        private_key = padded;
    }
    if private_key.len() != 32 {
        return Err(format!("PrivateKey of {} octets, 32 expected", private_key.len()));
    }
    Ok(PrivateFields {
        algorithm,
        private_key,
        timing,
    })
}

/// `YYYYMMDDHHMMSS` (UTC) -> unix seconds.
pub fn parse_timestamp(text: &str) -> Option<u64> {
    if text.len() < 14 || !text.as_bytes()[..14].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<u64>().ok();
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(8..10)?, number(10..12)?, number(12..14)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = crate::duration::days_from_civil(year as i64, month as i64, day as i64);
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + hour * 3600 + minute * 60 + second)
}

/// unix seconds -> `YYYYMMDDHHMMSS` (UTC).
pub fn format_timestamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rest = unix % 86_400;
    let (year, month, day) = crate::duration::civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Standard base64 with padding.
pub fn encode_base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A new key pair in memory, published and active from `now`, with its private key octets
/// (the P-256 scalar or the Ed25519 seed) for writing out.
pub fn generate_pair(algorithm: u8, role: Role, now: u64) -> Result<(ZoneKey, Vec<u8>), String> {
    let rng = SystemRandom::new();
    let failed = |_| "key generation failed".to_string();
    let (private_key, public, pair) = match algorithm {
        ECDSAP256SHA256 => {
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(failed)?;
            let pair =
                EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|_| "key generation failed")?;
            // ECPrivateKey (RFC 5915): version 1, then the 32-octet private key.
            let der = pkcs8.as_ref();
            let at = der
                .windows(5)
                .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
                .ok_or("unexpected PKCS#8 layout")?;
            let private = der
                .get(at + 5..at + 37)
                .ok_or("unexpected PKCS#8 layout")?
                .to_vec();
            let public = pair.public_key().as_ref()[1..].to_vec();
            (private, public, Pair::Ecdsa(pair))
        }
        ED25519 => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(failed)?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| "key generation failed")?;
            let der = pkcs8.as_ref();
            let at = der
                .windows(4)
                .position(|w| w == [0x04, 0x22, 0x04, 0x20])
                .ok_or("unexpected PKCS#8 layout")?;
            let seed = der
                .get(at + 4..at + 36)
                .ok_or("unexpected PKCS#8 layout")?
                .to_vec();
            let public = pair.public_key().as_ref().to_vec();
            (seed, public, Pair::Ed25519(pair))
        }
        other => return Err(format!("unsupported algorithm {other}")),
    };
    let flags = if role == Role::Ksk { FLAGS_KSK } else { FLAGS_ZSK };
    let key = ZoneKey {
        flags,
        algorithm,
        tag: key_tag(&dnskey_rdata(flags, algorithm, &public)),
        public,
        ttl: None,
        timing: Timing {
            created: Some(now),
            publish: Some(now),
            activate: Some(now),
            inactive: None,
            delete: None,
        },
        file: PathBuf::new(),
        pair,
    };
    Ok((key, private_key))
}

/// Writes a new key pair for `origin` into `dir` (created if missing), published and active
/// from `now`; returns the `.key` file. The `.private` file is readable by its owner only.
pub fn generate(dir: &Path, origin: &Name, algorithm: u8, role: Role, now: u64) -> Result<PathBuf, String> {
    let (key, private_key) = generate_pair(algorithm, role, now)?;
    let (tag, flags) = (key.tag, key.flags);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let stem = format!("K{origin}+{algorithm:03}+{tag:05}");
    let key_file = dir.join(format!("{stem}.key"));
    let private_file = dir.join(format!("{stem}.private"));
    if key_file.exists() || private_file.exists() {
        return Err(format!("{} exists already", key_file.display()));
    }
    let stamp = format_timestamp(now);
    let kind = if role == Role::Ksk {
        "key-signing"
    } else {
        "zone-signing"
    };
    let mut key_text = format!("; This is a {kind} key, keyid {tag}, for {origin}\n");
    let _ = writeln!(key_text, "; Created: {stamp}");
    let _ = writeln!(
        key_text,
        "{origin} IN DNSKEY {flags} 3 {algorithm} {}",
        encode_base64(&key.public)
    );
    let mut private_text = String::from("Private-key-format: v1.3\n");
    let _ = writeln!(
        private_text,
        "Algorithm: {algorithm} ({})",
        algorithm_name(algorithm)
    );
    let _ = writeln!(private_text, "PrivateKey: {}", encode_base64(&private_key));
    for field in ["Created", "Publish", "Activate"] {
        let _ = writeln!(private_text, "{field}: {stamp}");
    }
    write_private(&private_file, &private_text)?;
    std::fs::write(&key_file, key_text).map_err(|e| format!("cannot write {}: {e}", key_file.display()))?;
    Ok(key_file)
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ecdsa_private_key_written_without_its_leading_zero_is_read_as_32_octets() {
        let short: Vec<u8> = (1..=31).collect();
        let text = format!(
            "Private-key-format: v1.3\nAlgorithm: 13 (ECDSAP256SHA256)\nPrivateKey: {}\n",
            encode_base64(&short)
        );
        let fields = parse_private(&text).expect("a 31-octet ECDSA key is valid");
        assert_eq!(fields.private_key.len(), 32);
        assert_eq!(fields.private_key[0], 0);
        assert_eq!(fields.private_key[1..], short[..]);
        // Ed25519 keys are 32 octets by definition: a short one stays refused.
        let text = text.replace("13 (ECDSAP256SHA256)", "15 (ED25519)");
        assert!(parse_private(&text).is_err());
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(parse_timestamp("19700101000000"), Some(0));
        assert_eq!(parse_timestamp("20261202163748"), Some(1_796_229_468));
        assert_eq!(format_timestamp(1_796_229_468), "20261202163748");
        assert_eq!(parse_timestamp("2026120216374"), None);
        assert_eq!(parse_timestamp("20261302163748"), None);
    }

    #[test]
    fn base64_round_trips_through_the_tsig_decoder() {
        for data in [&b""[..], b"a", b"ab", b"abc", b"abcd", &[0xff; 64]] {
            assert_eq!(decode_base64(&encode_base64(data)).as_deref(), Some(data));
        }
    }

    #[test]
    fn generated_pairs_load_and_sign() {
        let dir = tempfile::tempdir().expect("dir");
        let origin = Name::parse("example.", None).expect("origin");
        for algorithm in [ECDSAP256SHA256, ED25519] {
            let file = generate(dir.path(), &origin, algorithm, Role::Ksk, 1_000).expect("generate");
            let key = load_pair(&file, &origin).expect("load");
            assert_eq!(key.role(), Role::Ksk);
            assert!(key.timing.is_active(1_000) && !key.timing.is_published(999));
            assert_eq!(key.sign(b"data").expect("sign").len(), 64);
            let other = Name::parse("other.", None).expect("origin");
            assert!(
                load_pair(&file, &other)
                    .expect_err("other zone")
                    .contains("not for the zone")
            );
        }
    }

    #[test]
    fn rfc_key_tag() {
        // RFC 4034 Appendix B's algorithm on a known DNSKEY (example from RFC 6605 §6.1).
        let public = decode_base64(
            "GojIhhXUN/u4v54ZQqGSnyhWJwaubCvTmeexv7bR6edbkrSqQpF64cYbcB7wNcP+e+MAnLr+Wi9xMWyQLc8NAA==",
        )
        .expect("base64");
        assert_eq!(key_tag(&dnskey_rdata(257, 13, &public)), 55648);
    }
}
