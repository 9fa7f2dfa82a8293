//! A signed zone as a secondary receives it: the primary's signatures served as they came,
//! each shared-name alternative checked against the zone's DNSKEYs before it is offered. A
//! secondary holds no private key and signs nothing.

use std::sync::Arc;

use super::{GENERATED, KeyReport, Signed, SigningReport, canonical_rrset, keys, rrset_key};
use crate::wire::{self, rtype};
use crate::zone::Record;
use crate::zone::members::{Member, PoolDef};
use crate::zone::name::Name;

/// DNSKEY flags bit 7 (RFC 4034 §2.1.1): a zone key, the only kind that signs RRsets.
const ZONE_KEY: u16 = 0x0100;

/// Checks one RRSIG (RDATA) over the RRset (`owner`, `t`, `rdatas`) against `dnskeys`
/// (RDATAs) at `now` (RFC 4035 §5.3).
pub fn verify_rrsig(
    rrsig: &[u8],
    owner: &Name,
    t: u16,
    rdatas: &[&[u8]],
    dnskeys: &[&[u8]],
    now: u64,
) -> Result<(), String> {
    if rrsig.len() < 18 || wire::be16(rrsig, 0) != t {
        return Err("the RRSIG covers another type".into());
    }
    let algorithm = rrsig[2];
    let original_ttl = wire::be32(rrsig, 4);
    let expiration = u64::from(wire::be32(rrsig, 8));
    let inception = u64::from(wire::be32(rrsig, 12));
    let tag = wire::be16(rrsig, 16);
    let (_, signature_at) = Name::read_uncompressed(rrsig, 18).ok_or("the RRSIG's signer name is bad")?;
    if now > expiration || now < inception {
        return Err(format!(
            "the RRSIG is valid from {inception} to {expiration}, not now ({now})"
        ));
    }
    let mut data = rrsig[..signature_at].to_vec();
    data[18..signature_at].make_ascii_lowercase();
    let mut rrset = Vec::new();
    canonical_rrset(&owner.key(), t, original_ttl, rdatas, &mut rrset);
    data.extend_from_slice(&rrset);
    let signature = &rrsig[signature_at..];
    let mut tried = false;
    for dnskey in dnskeys {
        if dnskey.len() < 4 || dnskey[3] != algorithm || wire::be16(dnskey, 0) & ZONE_KEY == 0 {
            continue;
        }
        if keys::key_tag(dnskey) != tag {
            continue;
        }
        tried = true;
        if verify_with(algorithm, &dnskey[4..], &data, signature) {
            return Ok(());
        }
    }
    Err(if tried {
        format!("the RRSIG of key {tag} does not verify")
    } else {
        format!("no DNSKEY with tag {tag} and algorithm {algorithm}")
    })
}

/// One signature check with ring: algorithms 8 (RSASHA256), 13 (ECDSAP256SHA256), 15 (Ed25519).
fn verify_with(algorithm: u8, public: &[u8], data: &[u8], signature: &[u8]) -> bool {
    use ring::signature;
    match algorithm {
        13 => {
            let mut point = Vec::with_capacity(65);
            point.push(4); // uncompressed point (RFC 6605 §4: the key is x | y)
            point.extend_from_slice(public);
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(data, signature)
                .is_ok()
        }
        15 => signature::UnparsedPublicKey::new(&signature::ED25519, public)
            .verify(data, signature)
            .is_ok(),
        8 => {
            // RFC 3110 §2: exponent length (1 octet, or 0 then 2), exponent, modulus.
            let (e_len, at) = match public.first() {
                Some(0) if public.len() > 3 => (usize::from(wire::be16(public, 1)), 3),
                Some(&n) => (usize::from(n), 1),
                None => return false,
            };
            let (Some(e), Some(n)) = (public.get(at..at + e_len), public.get(at + e_len..)) else {
                return false;
            };
            signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, data, signature)
                .is_ok()
        }
        _ => false,
    }
}

/// What `from_transfer` makes of a transferred signed zone.
#[derive(Debug)]
pub struct FromTransfer {
    pub signed: Signed,
    /// Per pool, the member slots whose alternative failed its check.
    pub refused_slots: Vec<Vec<usize>>,
    /// Why, one line each.
    pub refused: Vec<String>,
}

/// The signed form of a transferred zone: `dnssec_records` are the zone's RRSIG, NSEC,
/// DNSKEY, CDS and CDNSKEY records as transferred; `alternatives[pool][slot]` the RRSIGs the
/// pool records carry. Returns the `Signed` to build with, and one line per alternative
/// refused (its member is then not offered at that shared name: `refused[pool]` lists slots).
pub fn from_transfer(
    origin: &Name,
    dnssec_records: Vec<Record>,
    members: &[Member],
    pools: &[PoolDef],
    alternatives: &[Vec<Vec<Vec<u8>>>],
    negative_ttl: u32,
    now: u64,
) -> Result<FromTransfer, String> {
    // The request path hashes names with the RFC 9276 parameters (what a consortium-dns
    // primary signs with); a chain made with others would be proofs of the wrong names.
    let nsec3 = dnssec_records.iter().any(|r| r.rtype == rtype::NSEC3);
    let params: Vec<&[u8]> = dnssec_records
        .iter()
        .filter(|r| r.rtype == rtype::NSEC3PARAM && r.name.key() == origin.key())
        .map(|r| r.rdata.as_slice())
        .collect();
    if (nsec3 || !params.is_empty()) && params != [&super::NSEC3PARAM_RDATA[..]] {
        return Err(
            "the zone is signed with NSEC3 parameters other than RFC 9276's (SHA-1, 0 iterations, empty salt, no opt-out), which this secondary does not serve".into(),
        );
    }
    let dnskeys: Vec<Vec<u8>> = dnssec_records
        .iter()
        .filter(|r| r.rtype == rtype::DNSKEY && r.name.key() == origin.key())
        .map(|r| r.rdata.clone())
        .collect();
    if dnskeys.is_empty() {
        return Err("the zone carries signatures but no DNSKEY at its apex".into());
    }
    let key_refs: Vec<&[u8]> = dnskeys.iter().map(Vec::as_slice).collect();
    let mut signed = Signed {
        negative_ttl,
        ..Signed::default()
    };
    let mut earliest = u64::MAX;
    let pool_names: Vec<Box<[u8]>> = pools.iter().map(|p| p.name.key()).collect();
    for record in dnssec_records {
        debug_assert!(GENERATED.contains(&record.rtype));
        if record.rtype != rtype::RRSIG {
            signed.records.push(record);
            continue;
        }
        if record.rdata.len() < 18 {
            return Err(format!(
                "{}: an RRSIG of {} octets",
                record.name,
                record.rdata.len()
            ));
        }
        let covered = wire::be16(&record.rdata, 0);
        if covered == rtype::CNAME && pool_names.contains(&record.name.key()) {
            // The transfer pick's signature: the alternatives' own are served instead.
            continue;
        }
        earliest = earliest.min(u64::from(wire::be32(&record.rdata, 8)));
        signed.signature_bytes += 10 + record.rdata.len();
        signed
            .signatures
            .entry(rrset_key(record.name.wire(), covered))
            .or_default()
            .push(Arc::from(record.rdata));
    }
    let mut refused_slots = vec![Vec::new(); pools.len()];
    let mut refused = Vec::new();
    signed.pool_signatures = pools.iter().map(|p| vec![Vec::new(); p.members.len()]).collect();
    for (p, pool) in pools.iter().enumerate() {
        for (slot, &m) in pool.members.iter().enumerate() {
            let Some(member) = members.get(m) else { continue };
            let sigs = alternatives
                .get(p)
                .and_then(|a| a.get(slot))
                .map_or(&[][..], Vec::as_slice);
            let target = member.target.wire();
            let checked: Result<Vec<Arc<[u8]>>, String> = if sigs.is_empty() {
                Err("no pre-signed RRSIG".into())
            } else {
                sigs.iter()
                    .map(|sig| {
                        verify_rrsig(sig, &pool.name, rtype::CNAME, &[target], &key_refs, now)
                            .map(|()| Arc::from(sig.as_slice()))
                    })
                    .collect()
            };
            match checked {
                Ok(sigs) => {
                    for sig in &sigs {
                        earliest = earliest.min(u64::from(wire::be32(sig, 8)));
                        signed.signature_bytes += 10 + sig.len();
                    }
                    signed.pool_signatures[p][slot] = sigs;
                }
                Err(reason) => {
                    refused_slots[p].push(slot);
                    refused.push(format!("{} -> {}: {reason}", pool.name, member.target));
                }
            }
        }
    }
    signed.report = SigningReport {
        earliest_expiry: if earliest == u64::MAX { 0 } else { earliest },
        keys: dnskeys
            .iter()
            .map(|k| KeyReport {
                tag: keys::key_tag(k),
                role: if wire::be16(k, 0) & 1 == 1 { "ksk" } else { "zsk" }.into(),
                algorithm: k.get(3).map_or_else(String::new, |a| a.to_string()),
                state: "published (by the primary)".into(),
                file: String::new(),
            })
            .collect(),
        ..SigningReport::default()
    };
    Ok(FromTransfer {
        signed,
        refused_slots,
        refused,
    })
}
