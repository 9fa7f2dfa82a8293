//! DNSSEC signing of a whole zone when a snapshot is built, never on the request path
//! (RFC 4033-4035): every authoritative RRset, the NSEC chain, DNSKEY and CDS/CDNSKEY, and
//! for every shared name each member's CNAME signed once, so that a query picks a pre-signed
//! answer and copies it.
//!
//! `sign_zone` is pure given the key set, the time and the signature cache: the control plane
//! calls it after serials are chosen, and passes the result to `Snapshot::build`. A signature
//! whose RRset, key and TTL did not change and that is still far from expiry is taken from
//! the cache instead of being made again, so a one-member change signs a handful of RRsets.

pub mod keys;
mod transferred;
pub use transferred::{FromTransfer, from_transfer, verify_rrsig};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diag::{Diagnostic, Location};
use crate::wire::{self, rtype};
use crate::zone::name::Name;
use crate::zone::owners::Owners;
use crate::zone::{Record, ZoneData, carrier};
use keys::{Role, ZoneKey};

/// Signatures are valid from an hour in the past (clock skew of validators) ...
pub const INCEPTION_BACKDATE: u64 = 3600;
/// ... to 14 days ahead, plus up to a day of jitter so that re-signing spreads out ...
pub const VALIDITY: u64 = 14 * 86_400;
pub const JITTER: u64 = 86_400;
/// ... and are made again once fewer than 7 days remain.
pub const REFRESH: u64 = 7 * 86_400;

/// When CDS/CDNSKEY (RFC 7344, RFC 8078) are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CdsPolicy {
    None,
    Always,
    /// While a KSK rollover is under way (more than one KSK published).
    #[default]
    Rollover,
}

/// How a signed zone proves that a name or type does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Denial {
    /// The NSEC chain (RFC 4035 §2.3): names in canonical order.
    #[default]
    Nsec,
    /// The NSEC3 chain (RFC 5155) over hashed names, with the parameters RFC 9276 §3.1
    /// asks for: no additional iterations, an empty salt, opt-out clear. Larger iteration
    /// counts buy nothing against zone walking and make validators treat the zone as
    /// insecure (RFC 9276 §3.2), so they are not offered.
    Nsec3,
}

/// A zone's signing settings, from its `[[zone]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningConfig {
    pub keys_dir: PathBuf,
    pub cds: CdsPolicy,
    pub denial: Denial,
}

/// A zone's key pairs as read from its key directory.
#[derive(Debug)]
pub struct KeySet {
    pub dir: PathBuf,
    pub keys: Vec<ZoneKey>,
    pub cds: CdsPolicy,
    pub denial: Denial,
}

/// Reads a zone's key directory; errors name the file and the reason.
pub fn load_keys(config: &SigningConfig, origin: &Name) -> Result<KeySet, Vec<Diagnostic>> {
    let keys = keys::load_dir(&config.keys_dir, origin).map_err(|errors| {
        errors
            .into_iter()
            .map(|(file, reason)| Diagnostic::file(&file, reason))
            .collect::<Vec<_>>()
    })?;
    let set = KeySet {
        dir: config.keys_dir.clone(),
        keys,
        cds: config.cds,
        denial: config.denial,
    };
    // A key set that cannot sign now is refused at load, not at the first query.
    set.roles(wire::unix_now())
        .map_err(|reason| vec![Diagnostic::file(&config.keys_dir, reason)])?;
    Ok(set)
}

/// Which keys do what at one moment.
struct Roles<'k> {
    published: Vec<&'k ZoneKey>,
    /// Sign DNSKEY, CDS, CDNSKEY.
    key_signers: Vec<&'k ZoneKey>,
    /// Sign everything else.
    zone_signers: Vec<&'k ZoneKey>,
}

impl KeySet {
    /// The published and signing keys at `now`, or why this key set must not be used: the
    /// server never serves an RRset without a valid signature from an active key.
    fn roles(&self, now: u64) -> Result<Roles<'_>, String> {
        let dir = self.dir.display();
        if self.keys.is_empty() {
            return Err(format!(
                "no key pairs in {dir} (create one with `consortium-dns dnssec keygen`)"
            ));
        }
        let published: Vec<&ZoneKey> = self.keys.iter().filter(|k| k.timing.is_published(now)).collect();
        if let Some(k) = self.keys.iter().find(|k| {
            k.timing.activate.is_some_and(|t| t <= now)
                && k.timing.inactive.is_none_or(|t| now < t)
                && !k.timing.is_published(now)
        }) {
            return Err(format!(
                "key {} ({}) would sign while not published in the DNSKEY RRset: check its Publish and Delete times",
                k.tag,
                k.file.display()
            ));
        }
        if let Some(first) = published.first()
            && let Some(other) = published.iter().find(|k| k.algorithm != first.algorithm)
        {
            return Err(format!(
                "keys {} and {} use different algorithms: algorithm rollovers are not supported",
                first.tag, other.tag
            ));
        }
        let active = |role| {
            published
                .iter()
                .copied()
                .filter(|k| k.role() == role && k.timing.is_active(now))
                .collect::<Vec<_>>()
        };
        let key_signers = active(Role::Ksk);
        if key_signers.is_empty() {
            return Err(format!(
                "no active KSK or CSK (flags 257) in {dir} at {}: the DNSKEY RRset would be unsigned",
                keys::format_timestamp(now)
            ));
        }
        let zsks = active(Role::Zsk);
        let zone_signers = if zsks.is_empty() {
            key_signers.clone()
        } else {
            zsks
        };
        Ok(Roles {
            published,
            key_signers,
            zone_signers,
        })
    }

    /// The next moment after `now` at which a key changes state.
    pub fn next_event(&self, now: u64) -> Option<u64> {
        self.keys.iter().filter_map(|k| k.timing.next_event(now)).min()
    }

    /// What the key states at `now` contribute to the zone's content (DNSKEY, CDS, which
    /// keys sign): a change raises the serial.
    pub fn digest(&self, now: u64) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        for key in &self.keys {
            (key.tag, key.flags, &key.public, key.timing.state(now)).hash(&mut hasher);
        }
        (self.cds as u8, self.denial as u8).hash(&mut hasher);
        hasher.finish()
    }

    /// Status lines: each key with its role and state.
    pub fn report(&self, now: u64) -> Vec<KeyReport> {
        self.keys
            .iter()
            .map(|k| KeyReport {
                tag: k.tag,
                role: if k.role() == Role::Ksk { "ksk" } else { "zsk" }.into(),
                algorithm: keys::algorithm_name(k.algorithm).into(),
                state: k.timing.state(now).into(),
                file: k.file.display().to_string(),
            })
            .collect()
    }
}

/// One key as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyReport {
    pub tag: u16,
    /// "ksk" (flags 257: a KSK, or a CSK when no ZSK is active) or "zsk".
    pub role: String,
    pub algorithm: String,
    /// future | published | active | retired | removed
    pub state: String,
    pub file: String,
}

/// The RRSIG RDATAs of one RRset, one per signing key.
pub type Signatures = Vec<Arc<[u8]>>;

/// A hasher for the maps of a signing run (the keys are the zone's own data).
type FastHash = foldhash::fast::RandomState;

/// One signature: its cache digest, the RRSIG RDATA, and whether it was made now (not reused).
type OneSignature = ([u8; 32], Arc<[u8]>, bool);

/// What signing a zone produced, for `Snapshot::build`.
#[derive(Debug, Default, Clone)]
pub struct Signed {
    /// DNSKEY, CDS, CDNSKEY and NSEC records, served and transferred with the zone's own.
    pub records: Vec<Record>,
    /// RRSIG RDATAs of every signed RRset (those of `records` included), by `rrset_key`;
    /// read with `signatures_of`.
    signatures: HashMap<Box<[u8]>, Signatures, FastHash>,
    /// Per pool, per member slot: the RRSIGs of the shared name's CNAME to that member.
    pub pool_signatures: Vec<Vec<Vec<Arc<[u8]>>>>,
    /// TTL of NSEC records and of the negative-answer SOA: min(SOA TTL, MINIMUM) (RFC 9077).
    pub negative_ttl: u32,
    /// Octets of all RRSIG records as tails (for sizing the answer tables up front).
    pub signature_bytes: usize,
    pub report: SigningReport,
    /// The signatures used, for the next build's cache.
    pub cache: SignatureCache,
}

impl Signed {
    /// Takes one job's signatures into the report, the cache and the size count.
    fn absorb(
        &mut self,
        outcome: JobSignatures,
        earliest: &mut u64,
        dir: &Path,
    ) -> Result<Vec<Arc<[u8]>>, Vec<Diagnostic>> {
        let sigs = outcome.map_err(|reason| vec![Diagnostic::file(dir, reason)])?;
        let mut rdatas = Vec::with_capacity(sigs.len());
        for (digest, rdata, made) in sigs {
            *earliest = (*earliest).min(u64::from(wire::be32(&rdata, 8)));
            if made {
                self.report.signatures_made += 1;
            } else {
                self.report.signatures_reused += 1;
            }
            self.signature_bytes += 10 + rdata.len();
            rdatas.push(rdata.clone());
            self.cache.entries.insert(digest, rdata);
        }
        Ok(rdatas)
    }

    /// The RRSIG RDATAs of the RRset (`owner`, any case; `t`), without allocating.
    pub fn signatures_of(&self, owner: &[u8], t: u16) -> Option<&[Arc<[u8]>]> {
        let mut key = [0u8; 257];
        let len = owner.len();
        if len > 255 {
            return None;
        }
        for (k, c) in key.iter_mut().zip(owner) {
            *k = c.to_ascii_lowercase();
        }
        key[len..len + 2].copy_from_slice(&t.to_be_bytes());
        self.signatures.get(&key[..len + 2]).map(Vec::as_slice)
    }
}

/// Status and metrics of one signing run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SigningReport {
    pub signatures_made: u64,
    pub signatures_reused: u64,
    /// Earliest RRSIG expiration in the zone (unix seconds).
    pub earliest_expiry: u64,
    /// When the zone must be signed again: signatures near expiry, or a key changing state.
    pub refresh_at: u64,
    pub keys: Vec<KeyReport>,
    /// `KeySet::digest` at signing time.
    pub keys_digest: u64,
}

/// Signatures kept from one build to the next: the RRSIG RDATA by a digest of everything it
/// signs except its times (key, RRset, TTL, labels).
#[derive(Debug, Default, Clone)]
pub struct SignatureCache {
    entries: HashMap<[u8; 32], Arc<[u8]>, FastHash>,
}

/// The types the server makes itself in a signed zone; a zone file may not hold them (and a
/// secondary takes them from the transfer).
pub const GENERATED: [u16; 7] = [
    rtype::RRSIG,
    rtype::NSEC,
    rtype::DNSKEY,
    rtype::NSEC3,
    rtype::NSEC3PARAM,
    rtype::CDS,
    rtype::CDNSKEY,
];

/// One RRset to sign.
struct Job<'a> {
    owner: &'a [u8],
    rtype: u16,
    ttl: u32,
    rdatas: Vec<&'a [u8]>,
    key_rrset: bool,
}

/// Where a job's signatures go.
enum Slot<'a> {
    /// The RRset (owner as written, type).
    RRset(&'a [u8], u16),
    /// A shared name's alternative: (pool, member slot).
    Pool(usize, usize),
}

/// The key of an RRset's signatures: its lowercased owner, then its type.
fn rrset_key(owner: &[u8], t: u16) -> Box<[u8]> {
    let mut key = Vec::with_capacity(owner.len() + 2);
    key.extend(owner.iter().map(u8::to_ascii_lowercase));
    key.extend_from_slice(&t.to_be_bytes());
    key.into_boxed_slice()
}

/// Signs `data` with `keys` at `now`. `previous` holds the signatures of the last build.
pub fn sign_zone(
    data: &ZoneData,
    keys: &KeySet,
    now: u64,
    previous: &SignatureCache,
) -> Result<Signed, Vec<Diagnostic>> {
    let roles = keys
        .roles(now)
        .map_err(|reason| vec![Diagnostic::file(&keys.dir, reason)])?;
    let origin = &data.origin;
    let mut errors = Vec::new();
    for r in data.records.iter().chain(&data.dynamic) {
        if GENERATED.contains(&r.rtype) {
            errors.push(Diagnostic::at(
                r.location.clone(),
                format!(
                    "{} {}: the server signs this zone itself (dnssec = true) and makes these records",
                    r.name,
                    rtype::mnemonic(r.rtype)
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let apex_soa = data
        .records
        .iter()
        .find(|r| r.rtype == rtype::SOA && r.name.key() == origin.key())
        .ok_or_else(|| vec![Diagnostic::file(&keys.dir, "the zone has no SOA to sign")])?;
    let negative_ttl = apex_soa.ttl.min(wire::soa_minimum(&apex_soa.rdata).unwrap_or(0));
    let location = Location::new(Arc::from(keys.dir.as_path()), 0);
    let record = |rtype: u16, ttl: u32, rdata: Vec<u8>| Record {
        name: origin.clone(),
        rtype,
        ttl,
        rdata,
        location: location.clone(),
    };

    // DNSKEY, and CDS/CDNSKEY for the KSKs meant to stay (no Inactive time set).
    let dnskey_ttl = roles.published.iter().find_map(|k| k.ttl).unwrap_or(apex_soa.ttl);
    let mut generated: Vec<Record> = roles
        .published
        .iter()
        .map(|k| record(rtype::DNSKEY, dnskey_ttl, k.dnskey_rdata()))
        .collect();
    let published_ksks = roles.published.iter().filter(|k| k.role() == Role::Ksk).count();
    let publish_cds = match keys.cds {
        CdsPolicy::None => false,
        CdsPolicy::Always => true,
        CdsPolicy::Rollover => published_ksks > 1,
    };
    if publish_cds {
        for k in roles.key_signers.iter().filter(|k| k.timing.inactive.is_none()) {
            generated.push(record(
                rtype::CDS,
                dnskey_ttl,
                keys::ds_rdata(origin, &k.dnskey_rdata()),
            ));
            generated.push(record(rtype::CDNSKEY, dnskey_ttl, k.dnskey_rdata()));
        }
    }

    if keys.denial == Denial::Nsec3 {
        // RFC 5155 §3.1: the parameters of the chain, at the apex, signed like the rest.
        generated.push(record(rtype::NSEC3PARAM, negative_ttl, NSEC3PARAM_RDATA.to_vec()));
    }

    // The shared names' alternatives first: their RRSIGs go into the pool records
    // (`zone::carrier`), which are then signed like any RRset.
    let mut pool_jobs: Vec<(Slot<'_>, Job<'_>)> = Vec::with_capacity(data.members.len());
    for (p, pool) in data.pools.iter().enumerate() {
        for (slot, &m) in pool.members.iter().enumerate() {
            let Some(member) = data.members.get(m) else {
                continue;
            };
            pool_jobs.push((
                Slot::Pool(p, slot),
                Job {
                    owner: pool.name.wire(),
                    rtype: rtype::CNAME,
                    ttl: pool.ttl,
                    rdatas: vec![member.target.wire()],
                    key_rrset: false,
                },
            ));
        }
    }
    let signer_name = origin.key();
    let mut signed = Signed {
        negative_ttl,
        pool_signatures: data
            .pools
            .iter()
            .map(|p| vec![Vec::new(); p.members.len()])
            .collect(),
        ..Signed::default()
    };
    let mut earliest = u64::MAX;
    let outcomes = sign_all(&pool_jobs, &roles, &signer_name, now, previous);
    for ((slot, _), outcome) in pool_jobs.into_iter().zip(outcomes) {
        let rdatas = signed.absorb(outcome, &mut earliest, &keys.dir)?;
        if let Slot::Pool(p, s) = slot {
            signed.pool_signatures[p][s] = rdatas;
        }
    }
    generated.extend(carrier::records(
        &data.members,
        &data.pools,
        Some(&signed.pool_signatures),
    ));

    let mut all: Vec<Record> = data.records.iter().chain(&data.dynamic).cloned().collect();
    all.extend(generated.iter().cloned());
    let owners = Owners::new(&all, &data.members);
    // One walk over the owners: the RRsets to sign, and the names of the denial chain with
    // their types (RFC 4035 §2.3: authoritative names and delegation points; not glue).
    let mut jobs: Vec<(Slot<'_>, Job<'_>)> = Vec::with_capacity(owners.len() * 2 + data.members.len());
    let mut chain: Vec<ChainName<'_>> = Vec::with_capacity(owners.len() + data.pools.len());
    for owner in owners.iter() {
        let name = owner.name().wire();
        if owners.cut_above(name, origin).is_some() {
            // Below a delegation: glue, not ours to sign.
            continue;
        }
        let cut = owners.is_cut(name, origin);
        let mut types = Vec::new();
        for (t, items) in owner.rrsets() {
            // At a cut only DS (and the NSEC) are the parent's (RFC 4035 §2.2).
            if cut && t != rtype::DS {
                if t == rtype::NS {
                    types.push(t);
                }
                continue;
            }
            types.push(t);
            jobs.push((
                Slot::RRset(name, t),
                Job {
                    owner: name,
                    rtype: t,
                    ttl: owner.item(items[0]).ttl,
                    rdatas: items.iter().map(|&i| owner.item(i).rdata).collect(),
                    key_rrset: matches!(t, rtype::DNSKEY | rtype::CDS | rtype::CDNSKEY),
                },
            ));
        }
        // An insecure delegation owns no signature (RFC 4035 §2.2: its NS is the child's).
        let signed = !cut || types.contains(&rtype::DS);
        chain.push(ChainName {
            name: owner.name(),
            types,
            signed,
        });
    }
    for pool in &data.pools {
        if owners.find(pool.name.wire()).is_none() {
            // A pool with nobody to offer (no member of positive weight) answers NODATA: its
            // NSEC must not claim a CNAME then, or validators would find the denial bogus.
            let offers = pool
                .members
                .iter()
                .any(|&m| data.members.get(m).is_some_and(|member| member.weight > 0));
            chain.push(ChainName {
                name: &pool.name,
                types: if offers { vec![rtype::CNAME] } else { Vec::new() },
                signed: offers,
            });
        }
    }
    let denial_type = match keys.denial {
        Denial::Nsec => rtype::NSEC,
        Denial::Nsec3 => rtype::NSEC3,
    };
    let denial_records = match keys.denial {
        Denial::Nsec => nsec_records(chain, negative_ttl, &location),
        Denial::Nsec3 => nsec3_records(origin, chain, negative_ttl, &location)
            .map_err(|reason| vec![Diagnostic::file(&keys.dir, reason)])?,
    };
    for record in &denial_records {
        jobs.push((
            Slot::RRset(record.name.wire(), denial_type),
            Job {
                owner: record.name.wire(),
                rtype: denial_type,
                ttl: record.ttl,
                rdatas: vec![&record.rdata],
                key_rrset: false,
            },
        ));
    }
    let outcomes = sign_all(&jobs, &roles, &signer_name, now, previous);
    signed.signatures.reserve(jobs.len());
    signed.cache.entries.reserve(jobs.len());
    for ((slot, _), outcome) in jobs.into_iter().zip(outcomes) {
        let rdatas = signed.absorb(outcome, &mut earliest, &keys.dir)?;
        if let Slot::RRset(owner, t) = slot {
            signed.signatures.insert(rrset_key(owner, t), rdatas);
        }
    }
    generated.extend(denial_records);
    signed.records = generated;
    signed.report.earliest_expiry = if earliest == u64::MAX { 0 } else { earliest };
    let resign_at = signed.report.earliest_expiry.saturating_sub(REFRESH);
    signed.report.refresh_at = keys.next_event(now).map_or(resign_at, |t| t.min(resign_at));
    signed.report.keys = keys.report(now);
    signed.report.keys_digest = keys.digest(now);
    Ok(signed)
}

/// The signatures of one job, one per signing key.
type JobSignatures = Result<Vec<OneSignature>, String>;

/// Signs every job on all cores; results in job order.
fn sign_all(
    jobs: &[(Slot<'_>, Job<'_>)],
    roles: &Roles<'_>,
    signer_name: &[u8],
    now: u64,
    previous: &SignatureCache,
) -> Vec<JobSignatures> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16);
    let chunk = jobs.len().div_ceil(threads).max(256);
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut scratch = Vec::new();
                    part.iter()
                        .map(|(_, job)| {
                            let signers = if job.key_rrset {
                                &roles.key_signers
                            } else {
                                &roles.zone_signers
                            };
                            signers
                                .iter()
                                .map(|key| sign_rrset(job, key, signer_name, now, previous, &mut scratch))
                                .collect()
                        })
                        .collect::<Vec<JobSignatures>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err("a signing thread failed".to_string())])
            })
            .collect()
    })
}

/// Number of labels of an owner for RRSIG (RFC 4034 §3.1.3): root and a leading `*` not
/// counted.
fn rrsig_labels(owner: &[u8]) -> u8 {
    let mut count = 0u8;
    let mut pos = 0;
    while let Some(&len) = owner.get(pos) {
        if len == 0 {
            break;
        }
        count += 1;
        pos += usize::from(len) + 1;
    }
    if owner.starts_with(b"\x01*") {
        count - 1
    } else {
        count
    }
}

/// Signs one RRset with one key, or takes the signature from the cache.
fn sign_rrset(
    job: &Job<'_>,
    key: &ZoneKey,
    signer_name: &[u8],
    now: u64,
    previous: &SignatureCache,
    scratch: &mut Vec<u8>,
) -> Result<OneSignature, String> {
    let owner = job.owner.to_ascii_lowercase();
    canonical_rrset(&owner, job.rtype, job.ttl, &job.rdatas, scratch);
    let labels = rrsig_labels(&owner);
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(&[key.algorithm, labels]);
    context.update(&key.tag.to_be_bytes());
    context.update(&key.public);
    context.update(signer_name);
    context.update(scratch);
    let mut digest = [0u8; 32];
    digest.copy_from_slice(context.finish().as_ref());
    if let Some(rdata) = previous.entries.get(&digest) {
        let expiration = u64::from(wire::be32(rdata, 8));
        let inception = u64::from(wire::be32(rdata, 12));
        if inception <= now && expiration >= now + REFRESH + JITTER {
            return Ok((digest, rdata.clone(), false));
        }
    }
    // Jitter from the digest: the RRsets of one build expire spread over a day.
    let jitter = u64::from(u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])) % JITTER;
    let expiration = (now + VALIDITY + jitter) as u32;
    let inception = now.saturating_sub(INCEPTION_BACKDATE) as u32;
    let mut rdata = Vec::with_capacity(18 + signer_name.len() + key.signature_len());
    rdata.extend_from_slice(&job.rtype.to_be_bytes());
    rdata.push(key.algorithm);
    rdata.push(labels);
    rdata.extend_from_slice(&job.ttl.to_be_bytes());
    rdata.extend_from_slice(&expiration.to_be_bytes());
    rdata.extend_from_slice(&inception.to_be_bytes());
    rdata.extend_from_slice(&key.tag.to_be_bytes());
    rdata.extend_from_slice(signer_name);
    // RFC 4034 §3.1.8.1: signature = sign(RRSIG RDATA without the signature | RRset).
    let mut data = Vec::with_capacity(rdata.len() + scratch.len());
    data.extend_from_slice(&rdata);
    data.extend_from_slice(scratch);
    rdata.extend_from_slice(&key.sign(&data)?);
    Ok((digest, Arc::from(rdata), true))
}

/// The RRset in canonical form (RFC 4034 §6.2, §6.3) into `out`: owner (already lowercased),
/// RDATA with its names lowercased, records sorted by RDATA, duplicates removed.
fn canonical_rrset(owner: &[u8], t: u16, ttl: u32, rdatas: &[&[u8]], out: &mut Vec<u8>) {
    let mut rdatas: Vec<Vec<u8>> = rdatas.iter().map(|r| canonical_rdata(t, r)).collect();
    rdatas.sort();
    rdatas.dedup();
    out.clear();
    for rdata in &rdatas {
        out.extend_from_slice(owner);
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&rtype::CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(rdata);
    }
}

/// RDATA in canonical form: the embedded names of the types RFC 4034 §6.2 lists lowercased
/// (of those the zone files can hold).
fn canonical_rdata(t: u16, rdata: &[u8]) -> Vec<u8> {
    let mut out = rdata.to_vec();
    let lower_name_at = |out: &mut Vec<u8>, at: usize| -> usize {
        match wire::skip_name(out, at) {
            Some(end) => {
                out[at..end].make_ascii_lowercase();
                end
            }
            None => out.len(),
        }
    };
    match t {
        rtype::NS | rtype::CNAME | rtype::PTR | rtype::DNAME => {
            lower_name_at(&mut out, 0);
        }
        rtype::MX => {
            lower_name_at(&mut out, 2);
        }
        rtype::SRV => {
            lower_name_at(&mut out, 6);
        }
        rtype::SOA => {
            let end = lower_name_at(&mut out, 0);
            lower_name_at(&mut out, end);
        }
        _ => {}
    }
    out
}

/// A name of the denial chain: the types it owns, and whether any of them is signed.
struct ChainName<'a> {
    name: &'a Name,
    types: Vec<u16>,
    signed: bool,
}

/// NSEC3PARAM RDATA (RFC 5155 §4.2) with the RFC 9276 parameters: SHA-1, flags 0, no
/// additional iterations, salt length 0.
pub const NSEC3PARAM_RDATA: [u8; 5] = [1, 0, 0, 0, 0];

/// The NSEC chain (RFC 4035 §2.3) over `names` (each with the types it owns): one NSEC per
/// name in canonical order, the last pointing back to the apex, which comes first.
fn nsec_records(mut names: Vec<ChainName<'_>>, ttl: u32, location: &Location) -> Vec<Record> {
    names.sort_by_cached_key(|c| {
        let mut key = [0u8; wire::CANONICAL_KEY_MAX];
        let len = wire::canonical_key(c.name.wire(), &mut key);
        key[..len].to_vec()
    });
    names.dedup_by(|a, b| a.name.wire().eq_ignore_ascii_case(b.name.wire()));
    let count = names.len();
    (0..count)
        .map(|i| {
            let ChainName { name, types, .. } = &names[i];
            let next = names[(i + 1) % count].name;
            let mut all = types.clone();
            all.extend([rtype::RRSIG, rtype::NSEC]);
            // The next name lowercased: its canonical form either way (RFC 6840 §5.1).
            let mut rdata = next.key().to_vec();
            rdata.extend_from_slice(&type_bitmap(&mut all));
            Record {
                name: (*name).clone(),
                rtype: rtype::NSEC,
                ttl,
                rdata,
                location: location.clone(),
            }
        })
        .collect()
}

/// The NSEC3 chain (RFC 5155 §7.1) over `names` and the empty non-terminals between them and
/// the apex (which own an NSEC3 with an empty type map, §7.1 step 4), in the order of their
/// hashes, the last pointing back to the first. A name's map lists RRSIG when the name owns a
/// signed RRset; NSEC3 itself lives at the hashed owner and is in no map.
fn nsec3_records(
    origin: &Name,
    mut names: Vec<ChainName<'_>>,
    ttl: u32,
    location: &Location,
) -> Result<Vec<Record>, String> {
    let mut known: std::collections::HashSet<Box<[u8]>> = names.iter().map(|c| c.name.key()).collect();
    let mut empty_non_terminals = Vec::new();
    for chain_name in &names {
        for ancestor in crate::zone::owners::ancestors(chain_name.name.wire()) {
            if ancestor.len() <= origin.wire().len()
                || !known.insert(ancestor.to_ascii_lowercase().into_boxed_slice())
            {
                break;
            }
            empty_non_terminals.push(Name::from_wire_unchecked(ancestor));
        }
    }
    drop(known);
    let mut hashed: Vec<([u8; wire::NSEC3_HASH_LEN], Vec<u16>)> = names
        .drain(..)
        .map(|c| {
            let mut types = c.types;
            if c.signed {
                types.push(rtype::RRSIG);
            }
            (wire::nsec3_hash(&c.name.key()), types)
        })
        .chain(
            empty_non_terminals
                .iter()
                .map(|n| (wire::nsec3_hash(&n.key()), Vec::new())),
        )
        .collect();
    hashed.sort_unstable_by_key(|h| h.0);
    if let Some(pair) = hashed.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        // RFC 5155 §7.1: two names with one hash cannot be told apart by a validator.
        return Err(format!(
            "two names of the zone have the same NSEC3 hash {}; use denial = \"nsec\"",
            String::from_utf8_lossy(&wire::base32hex(&pair[0].0))
        ));
    }
    let count = hashed.len();
    (0..count)
        .map(|i| {
            let (hash, mut types) = hashed[i].clone();
            let next = hashed[(i + 1) % count].0;
            let mut owner = Vec::with_capacity(33 + origin.wire().len());
            owner.push(32);
            owner.extend_from_slice(&wire::base32hex(&hash));
            owner.extend_from_slice(&origin.key());
            if owner.len() > wire::MAX_NAME_LEN {
                return Err(format!(
                    "the zone's name is too long for NSEC3 owner names ({} octets past 255); use denial = \"nsec\"",
                    owner.len() - wire::MAX_NAME_LEN
                ));
            }
            // Hash algorithm, flags (opt-out clear), iterations, salt length, then the next
            // hashed owner and the type map (RFC 5155 §3.2).
            let mut rdata = vec![1, 0, 0, 0, 0, wire::NSEC3_HASH_LEN as u8];
            rdata.extend_from_slice(&next);
            rdata.extend_from_slice(&type_bitmap(&mut types));
            Ok(Record {
                name: Name::from_wire_unchecked(&owner),
                rtype: rtype::NSEC3,
                ttl,
                rdata,
                location: location.clone(),
            })
        })
        .collect()
}

/// The type bit maps field (RFC 4034 §4.1.2): windows of up to 32 octets.
fn type_bitmap(types: &mut Vec<u16>) -> Vec<u8> {
    types.sort_unstable();
    types.dedup();
    let mut out = Vec::new();
    let mut window_start = 0;
    while window_start < types.len() {
        let window = (types[window_start] >> 8) as u8;
        let in_window: Vec<u16> = types[window_start..]
            .iter()
            .copied()
            .take_while(|t| (t >> 8) as u8 == window)
            .collect();
        let mut bits = [0u8; 32];
        let mut length = 0;
        for t in &in_window {
            let low = (t & 0xFF) as usize;
            bits[low / 8] |= 0x80 >> (low % 8);
            length = length.max(low / 8 + 1);
        }
        out.push(window);
        out.push(length as u8);
        out.extend_from_slice(&bits[..length]);
        window_start += in_window.len();
    }
    out
}

/// The key directory of a zone when the config names none: `keys/<origin>/` beside the zone
/// file.
pub fn default_keys_dir(zone_file: &Path, origin: &Name) -> PathBuf {
    let mut name = origin.to_string();
    if name.len() > 1 {
        name.pop();
    }
    zone_file
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("keys")
        .join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_and_labels() {
        let mut types = vec![rtype::A, rtype::MX, rtype::RRSIG, rtype::NSEC, 1234];
        // RFC 4034 §4.3's example: A MX RRSIG NSEC TYPE1234.
        let mut expected = vec![0x00, 0x06, 0x40, 0x01, 0x00, 0x00, 0x00, 0x03, 0x04, 0x1b];
        expected.extend([0; 26]);
        expected.push(0x20);
        assert_eq!(type_bitmap(&mut types), expected);
        assert_eq!(rrsig_labels(b"\x01*\x07example\x00"), 1);
        assert_eq!(rrsig_labels(b"\x01a\x07example\x00"), 2);
        assert_eq!(rrsig_labels(b"\x00"), 0);
    }

    #[test]
    fn ds_of_rfc_6605_example() {
        let public = crate::tsig::decode_base64(
            "GojIhhXUN/u4v54ZQqGSnyhWJwaubCvTmeexv7bR6edbkrSqQpF64cYbcB7wNcP+e+MAnLr+Wi9xMWyQLc8NAA==",
        )
        .expect("base64");
        let origin = Name::parse("example.net.", None).expect("origin");
        let ds = keys::ds_rdata(&origin, &keys::dnskey_rdata(257, 13, &public));
        let hex: String = ds[4..].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&ds[..4], &[0xd9, 0x60, 13, 2]);
        assert_eq!(
            hex,
            "b4c8c1fe2e7477127b27115656ad6256f424625bf5c1e2770ce6d6e37df61d17"
        );
    }
}
