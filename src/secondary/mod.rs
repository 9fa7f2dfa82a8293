//! A secondary zone's own side: asking a primary (`client`: SOA serial, AXFR/IXFR in with
//! TSIG), applying an incremental transfer to the copy held, the copy kept on disk (`store`),
//! and turning transferred records into zone data: pools rebuilt from the pool records
//! (`zone::carrier`), each probed from here, and for a signed zone the primary's signatures,
//! every shared-name alternative checked against the zone's DNSKEYs. A secondary signs
//! nothing and holds no private key.

pub mod client;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::dnssec::{self, Signed};
use crate::wire::{self, rtype};
use crate::zone::carrier;
use crate::zone::members::{CertPolicy, Member, PickPolicy, PoolDef};
use crate::zone::name::Name;
use crate::zone::probe_spec::{HealthSettings, ProbeKind, ProbeSpec};
use crate::zone::{self, Location, Record, ZoneData};
use client::Step;

/// A transferred zone ready to build: its data, its signatures when signed, and the
/// alternatives that failed their signature check (not offered).
#[derive(Debug, Clone)]
pub struct Assembled {
    pub data: ZoneData,
    pub signed: Option<Signed>,
    pub serial: u32,
    pub refused: Vec<String>,
}

/// This instance's own settings for the pools it rebuilds.
#[derive(Debug, Clone, Default)]
pub struct LocalProbes<'a> {
    /// Member label (lowercase) -> its probe address from here.
    pub addresses: &'a [(String, String)],
    /// The config's `[health]`, for the CA file of https probes.
    pub defaults: Option<&'a HealthSettings>,
}

/// Applies an IXFR's steps to `records` (SOA first), checking each step starts from the
/// version held and deletes only what is there (RFC 1995 §4). The old records are untouched
/// on error.
pub fn apply_steps(records: &[Record], steps: &[Step]) -> Result<Vec<Record>, String> {
    type RecordKey = (Box<[u8]>, u16, Vec<u8>);
    let key = |r: &Record| -> RecordKey { (r.name.key(), r.rtype, r.rdata.clone()) };
    let Some(soa) = records.first() else {
        return Err("no copy to apply an IXFR to".into());
    };
    let mut serial = wire::soa_serial(&soa.rdata).unwrap_or(0);
    let mut set: BTreeMap<RecordKey, Record> = records.iter().skip(1).map(|r| (key(r), r.clone())).collect();
    let mut current_soa = soa.clone();
    for step in steps {
        let from = wire::soa_serial(&step.from.rdata).unwrap_or(0);
        if from != serial {
            return Err(format!(
                "an IXFR step from serial {from} while this copy holds {serial}"
            ));
        }
        for r in &step.deleted {
            if set.remove(&key(r)).is_none() {
                return Err(format!(
                    "the IXFR deletes {} {} which this copy does not hold",
                    r.name,
                    rtype::mnemonic(r.rtype)
                ));
            }
        }
        for r in &step.added {
            set.insert(key(r), r.clone());
        }
        serial = wire::soa_serial(&step.to.rdata).unwrap_or(0);
        current_soa = step.to.clone();
    }
    let mut out = Vec::with_capacity(set.len() + 1);
    out.push(current_soa);
    out.extend(set.into_values());
    Ok(out)
}

/// Turns a transferred zone (SOA first) into data to build, with its pools and, when the
/// zone is signed, its signatures.
pub fn assemble(
    origin: &Name,
    records: &[Record],
    local: &LocalProbes<'_>,
    now: u64,
) -> Result<Assembled, String> {
    let Some(soa) = records
        .first()
        .filter(|r| r.rtype == rtype::SOA && r.name.key() == origin.key())
    else {
        return Err("the transferred zone does not start with its SOA".into());
    };
    let serial = wire::soa_serial(&soa.rdata).ok_or("the SOA is cut short")?;
    let negative_ttl = soa.ttl.min(wire::soa_minimum(&soa.rdata).unwrap_or(0));
    let mut plain = Vec::with_capacity(records.len());
    let mut signing = Vec::new();
    let mut carriers: BTreeMap<Box<[u8]>, (Name, Vec<carrier::PoolMember>)> = BTreeMap::new();
    let mut carrier_records = Vec::new();
    for r in records {
        if !r.name.is_subdomain_of(origin) {
            return Err(format!("{} is outside the zone {origin}", r.name));
        }
        if dnssec::GENERATED.contains(&r.rtype) {
            signing.push(r.clone());
        } else if carrier::is_pool_record(&r.name, r.rtype) {
            let pool = r.name.parent().ok_or("a pool record at the root")?;
            let member = carrier::parse(&r.rdata).map_err(|e| format!("{}: {e}", r.name))?;
            carriers
                .entry(pool.key())
                .or_insert_with(|| (pool, Vec::new()))
                .1
                .push(member);
            carrier_records.push(r.clone());
        } else {
            plain.push(r.clone());
        }
    }
    let (members, pools, alternatives) = pools_of(origin, carriers, local, &soa.location)?;
    // The members' and shared names' CNAMEs are made from the pools again.
    let made: std::collections::HashSet<Box<[u8]>> = members
        .iter()
        .map(|m| m.name.key())
        .chain(pools.iter().map(|p| p.name.key()))
        .collect();
    plain.retain(|r| !(r.rtype == rtype::CNAME && made.contains(&r.name.key())));
    let mut data = zone::assemble(origin, &soa.location.file, plain, members, pools).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    data.records.extend(carrier_records);
    data.transferred = true;
    data.set_serial(serial);
    let mut refused = Vec::new();
    let signed = if signing.is_empty() {
        None
    } else {
        let dnssec::FromTransfer {
            mut signed,
            refused_slots,
            refused: reasons,
        } = dnssec::from_transfer(
            origin,
            signing,
            &data.members,
            &data.pools,
            &alternatives,
            negative_ttl,
            now,
        )?;
        refused = reasons;
        for (p, slots) in refused_slots.iter().enumerate().rev() {
            for &slot in slots.iter().rev() {
                data.pools[p].members.remove(slot);
                signed.pool_signatures[p].remove(slot);
            }
        }
        Some(signed)
    };
    Ok(Assembled {
        data,
        signed,
        serial,
        refused,
    })
}

type Pools = (Vec<Member>, Vec<PoolDef>, Vec<Vec<Vec<Vec<u8>>>>);

/// Members and pools from the pool records, probes set up for this instance.
fn pools_of(
    origin: &Name,
    carriers: BTreeMap<Box<[u8]>, (Name, Vec<carrier::PoolMember>)>,
    local: &LocalProbes<'_>,
    location: &Location,
) -> Result<Pools, String> {
    let mut members: Vec<Member> = Vec::new();
    let mut index: HashMap<Box<[u8]>, usize> = HashMap::new();
    let mut specs: HashMap<ProbeSpec, Arc<ProbeSpec>> = HashMap::new();
    let mut pools = Vec::new();
    let mut alternatives = Vec::new();
    let origin_len = origin.wire().len();
    for (_, (pool_name, entries)) in carriers {
        let mut slots = Vec::with_capacity(entries.len());
        let mut sigs = Vec::with_capacity(entries.len());
        let strict = entries.iter().any(|e| e.strict);
        let policy = entries.first().map_or(PickPolicy::Weighted, |e| e.policy);
        let nearest_k = entries.first().map_or(1, |e| e.nearest_k.max(1));
        let ttl = entries.iter().map(|e| e.ttl).min().unwrap_or(0);
        for entry in entries {
            if !entry.name.is_subdomain_of(origin) || entry.name.key() == origin.key() {
                return Err(format!(
                    "{pool_name}: pool member {} is not a name in the zone",
                    entry.name
                ));
            }
            let m = match index.get(&entry.name.key()) {
                Some(&m) => m,
                None => {
                    let label_len = u8::try_from(entry.name.wire().len() - origin_len)
                        .map_err(|_| format!("{}: name too long", entry.name))?;
                    let mut settings = entry.probe.clone();
                    let label = relative_label(&entry.name, origin_len).to_ascii_lowercase();
                    if let Some((_, address)) = local.addresses.iter().find(|(l, _)| *l == label) {
                        settings.address = Some(address.clone());
                    }
                    if settings.kind.unwrap_or(ProbeKind::Https) == ProbeKind::Https {
                        settings.ca_file = local.defaults.and_then(|d| d.ca_file.clone());
                    }
                    let spec = settings
                        .resolve()
                        .map_err(|e| format!("{}: probe settings: {e}", entry.name))?;
                    let member = Member {
                        label_len,
                        name: entry.name.clone(),
                        target: entry.target.clone(),
                        weight: entry.weight,
                        ttl: entry.ttl,
                        probe: specs
                            .entry(spec.clone())
                            .or_insert_with(|| Arc::new(spec))
                            .clone(),
                        update_key: None,
                        place: entry.place.clone().map(Box::new),
                        location: location.clone(),
                    };
                    members.push(member);
                    index.insert(entry.name.key(), members.len() - 1);
                    members.len() - 1
                }
            };
            slots.push(m);
            sigs.push(entry.signatures);
        }
        let label = relative_label(&pool_name, origin_len);
        pools.push(PoolDef {
            label,
            name: pool_name,
            ttl,
            members: slots,
            policy,
            nearest_k,
            cert_policy: if strict {
                CertPolicy::Strict
            } else {
                CertPolicy::Report
            },
            location: location.clone(),
        });
        alternatives.push(sigs);
    }
    Ok((members, pools, alternatives))
}

/// `name` relative to a zone whose origin is `origin_len` octets long, as text (`node1`).
fn relative_label(name: &Name, origin_len: usize) -> String {
    let wire = name.wire();
    let relative = &wire[..wire.len().saturating_sub(origin_len)];
    let mut text = Name::read_uncompressed(&[relative, &[0]].concat(), 0)
        .map(|(n, _)| n.to_string())
        .unwrap_or_default();
    text.pop();
    text
}
