//! Pool records: what a secondary needs to pick, carried in the zone itself as a private-use
//! RR type (RFC 6895 §3.1: 65280-65534), so it travels by AXFR/IXFR like any other data.
//!
//! For every pool, the RRset `_pool.<pool name>` of type `POOL_MEMBER` holds one record per
//! member: its weight, names, probe settings and, in a signed zone, the pre-signed RRSIGs of
//! the shared name's CNAME to that member. They sit below the shared name, not at it, since a
//! CNAME owner may hold no other data (RFC 1034 §3.6.2). Secondaries that do not know the
//! type store and serve it as unknown (RFC 3597) and keep serving the transfer pick.
//!
//! RDATA (version 1), all integers big-endian:
//!
//! ```text
//! u8 version = 1 | u8 flags (bit 0: cert-policy strict) | u32 weight | u32 member TTL
//! member name (uncompressed) | target name (uncompressed)
//! u16 length, probe settings as TOML text (the `[member.health]` keys, every one set)
//! u8 pool policy (0 weighted, 1 nearest, 2 region, 3 latency) | u8 nearest-k
//! u8 place flags (bit 0: location, bit 1: region) [f32 latitude, f32 longitude] [u8 length, region]
//! u8 count, then per signature: u16 length, RRSIG RDATA
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::members::{CertPolicy, Member, PickPolicy, Place, PoolDef};
use super::name::Name;
use super::probe_spec::{HealthSettings, InitialState, ProbeKind, ProbeSpec};
use super::{Location, Record};
use crate::wire;

/// The private-use type of pool records.
pub const POOL_MEMBER: u16 = 65280;

/// The label below a shared name that owns its pool records.
pub const POOL_LABEL: &[u8] = b"_pool";

const VERSION: u8 = 1;
const FLAG_STRICT: u8 = 1;

/// The owner of a pool's records: `_pool.<pool name>`.
pub fn owner(pool: &Name) -> Option<Name> {
    let mut wire = Vec::with_capacity(pool.wire().len() + POOL_LABEL.len() + 1);
    wire.push(POOL_LABEL.len() as u8);
    wire.extend_from_slice(POOL_LABEL);
    wire.extend_from_slice(pool.wire());
    (wire.len() <= 255).then(|| Name::from_wire_unchecked(&wire))
}

/// Per pool, per member slot: the RRSIG RDATAs of the shared name's CNAME to that member.
pub type AlternativeSignatures = [Vec<Vec<Arc<[u8]>>>];

/// True for a record the pool records own: type `POOL_MEMBER` at a `_pool.` name.
pub fn is_pool_record(name: &Name, rtype: u16) -> bool {
    let wire = name.wire();
    rtype == POOL_MEMBER
        && wire.first() == Some(&(POOL_LABEL.len() as u8))
        && wire
            .get(1..1 + POOL_LABEL.len())
            .is_some_and(|label| label.eq_ignore_ascii_case(POOL_LABEL))
}

/// The pool records of `pools` over `members`; `signatures[pool][slot]`, when the zone is
/// signed, holds the RRSIG RDATAs of each alternative.
pub fn records(
    members: &[Member],
    pools: &[PoolDef],
    signatures: Option<&AlternativeSignatures>,
) -> Vec<Record> {
    let location = Location::new(Arc::from(std::path::Path::new("pool records")), 0);
    let mut out = Vec::new();
    // Most members share one `ProbeSpec` (the members file's loader dedups them): its text is
    // written once per spec, not once per member (a tenth of a 100,000-member build).
    let mut probe_texts: HashMap<*const ProbeSpec, String> = HashMap::new();
    for (p, pool) in pools.iter().enumerate() {
        let Some(owner) = owner(&pool.name) else {
            continue;
        };
        for (slot, &m) in pool.members.iter().enumerate() {
            let Some(member) = members.get(m) else {
                continue;
            };
            let sigs = signatures
                .and_then(|s| s.get(p)?.get(slot))
                .map_or(&[][..], Vec::as_slice);
            let probe = probe_texts
                .entry(Arc::as_ptr(&member.probe))
                .or_insert_with(|| probe_text(&member.probe));
            out.push(Record {
                name: owner.clone(),
                rtype: POOL_MEMBER,
                ttl: pool.ttl,
                rdata: encode(member, pool, probe, sigs),
                location: location.clone(),
            });
        }
    }
    out
}

/// One member's pool record; `probe` is `probe_text(&member.probe)`.
fn encode(member: &Member, pool: &PoolDef, probe: &str, sigs: &[Arc<[u8]>]) -> Vec<u8> {
    let policy = pool.cert_policy;
    let mut rdata = Vec::with_capacity(64 + probe.len() + sigs.iter().map(|s| s.len() + 2).sum::<usize>());
    rdata.push(VERSION);
    rdata.push(if policy == CertPolicy::Strict {
        FLAG_STRICT
    } else {
        0
    });
    rdata.extend_from_slice(&member.weight.to_be_bytes());
    rdata.extend_from_slice(&member.ttl.to_be_bytes());
    rdata.extend_from_slice(member.name.wire());
    rdata.extend_from_slice(member.target.wire());
    rdata.extend_from_slice(&(probe.len() as u16).to_be_bytes());
    rdata.extend_from_slice(probe.as_bytes());
    rdata.push(match pool.policy {
        PickPolicy::Weighted => 0,
        PickPolicy::Nearest => 1,
        PickPolicy::Region => 2,
        PickPolicy::Latency => 3,
    });
    rdata.push(pool.nearest_k);
    match member.place.as_deref() {
        None => rdata.push(0),
        Some(place) => {
            let located = !place.latitude.is_nan();
            rdata.push(u8::from(located) | (u8::from(place.region.is_some()) << 1));
            if located {
                rdata.extend_from_slice(&place.latitude.to_be_bytes());
                rdata.extend_from_slice(&place.longitude.to_be_bytes());
            }
            if let Some(region) = &place.region {
                rdata.push(region.len() as u8);
                rdata.extend_from_slice(region.as_bytes());
            }
        }
    }
    rdata.push(sigs.len().min(255) as u8);
    for sig in sigs.iter().take(255) {
        rdata.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        rdata.extend_from_slice(sig);
    }
    rdata
}

/// A probe spec as `[member.health]` TOML text with every key set (the CA file is the
/// primary's own path, so it stays behind: a secondary uses its own `[health] ca-file`).
fn probe_text(spec: &ProbeSpec) -> String {
    let kind = match spec.kind {
        ProbeKind::Https => "https",
        ProbeKind::Http => "http",
        ProbeKind::Tcp => "tcp",
        ProbeKind::None => "none",
    };
    // A JSON string is a valid TOML basic string (the same escapes, and serde_json never
    // writes `\/`).
    let quote = |text: &str| serde_json::to_string(text).unwrap_or_default();
    let duration = |d: Duration| quote(&crate::duration::format(d));
    let mut text = format!("kind = {}\n", quote(kind));
    if spec.kind != ProbeKind::None {
        text += &format!("port = {}\n", spec.port);
    }
    text += &format!("path = {}\n", quote(&spec.path));
    if let Some(address) = spec.address {
        text += &format!("address = {}\n", quote(&address.to_string()));
    }
    text += &format!(
        "expect-status = {}\n",
        quote(&format!("{}-{}", spec.expect_status.0, spec.expect_status.1))
    );
    if let Some(body) = &spec.body_contains {
        text += &format!("body-contains = {}\n", quote(body));
    }
    text += &format!(
        "interval = {}\ntimeout = {}\njitter = {}\nrise = {}\nfall = {}\ninitial = {}\nslow-start = {}\n",
        duration(spec.interval),
        duration(spec.timeout),
        duration(spec.jitter),
        spec.rise,
        spec.fall,
        quote(match spec.initial {
            InitialState::Up => "up",
            InitialState::Down => "down",
        }),
        duration(spec.slow_start),
    );
    text
}

/// One pool record, read back.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolMember {
    pub strict: bool,
    pub weight: u32,
    pub ttl: u32,
    /// The member's own name in the zone (lowercase as read from the wire is not required).
    pub name: Name,
    pub target: Name,
    pub probe: HealthSettings,
    pub policy: PickPolicy,
    pub nearest_k: u8,
    pub place: Option<Place>,
    /// RRSIG RDATAs of the shared name's CNAME to `target`.
    pub signatures: Vec<Vec<u8>>,
}

/// Reads one pool record's RDATA.
pub fn parse(rdata: &[u8]) -> Result<PoolMember, String> {
    let short = || "pool record is cut short".to_string();
    let version = *rdata.first().ok_or_else(short)?;
    if version != VERSION {
        return Err(format!(
            "pool record version {version} is not known (this server reads {VERSION})"
        ));
    }
    let flags = *rdata.get(1).ok_or_else(short)?;
    let fixed = rdata.get(2..10).ok_or_else(short)?;
    let weight = wire::be32(fixed, 0);
    let ttl = wire::be32(fixed, 4);
    let name_at = |at: usize| -> Result<(Name, usize), String> {
        Name::read_uncompressed(rdata, at)
            .ok_or_else(|| "pool record holds a bad or compressed name".to_string())
    };
    let (name, at) = name_at(10)?;
    let (target, at) = name_at(at)?;
    let probe_len = usize::from(wire::be16(rdata.get(at..at + 2).ok_or_else(short)?, 0));
    let probe_bytes = rdata.get(at + 2..at + 2 + probe_len).ok_or_else(short)?;
    let probe_text = std::str::from_utf8(probe_bytes)
        .map_err(|_| "pool record probe settings are not UTF-8".to_string())?;
    let probe: HealthSettings =
        toml::from_str(probe_text).map_err(|e| format!("pool record probe settings: {}", e.message()))?;
    let mut at = at + 2 + probe_len;
    let policy = match *rdata.get(at).ok_or_else(short)? {
        0 => PickPolicy::Weighted,
        1 => PickPolicy::Nearest,
        2 => PickPolicy::Region,
        3 => PickPolicy::Latency,
        other => return Err(format!("pool record policy {other} is not known")),
    };
    let nearest_k = *rdata.get(at + 1).ok_or_else(short)?;
    let place_flags = *rdata.get(at + 2).ok_or_else(short)?;
    at += 3;
    let place = if place_flags == 0 {
        None
    } else {
        let (mut latitude, mut longitude) = (f32::NAN, f32::NAN);
        if place_flags & 1 != 0 {
            let bytes = rdata.get(at..at + 8).ok_or_else(short)?;
            latitude = f32::from_bits(wire::be32(bytes, 0));
            longitude = f32::from_bits(wire::be32(bytes, 4));
            if !(-90.0..=90.0).contains(&latitude) || !(-180.0..=180.0).contains(&longitude) {
                return Err("pool record location out of range".into());
            }
            at += 8;
        }
        let mut region = None;
        if place_flags & 2 != 0 {
            let len = usize::from(*rdata.get(at).ok_or_else(short)?);
            let text = rdata.get(at + 1..at + 1 + len).ok_or_else(short)?;
            if !(2..=3).contains(&len) || !text.iter().all(u8::is_ascii_alphabetic) {
                return Err("pool record region is not a code".into());
            }
            region = Some(
                String::from_utf8_lossy(text)
                    .to_ascii_uppercase()
                    .into_boxed_str(),
            );
            at += 1 + len;
        }
        Some(Place {
            latitude,
            longitude,
            region,
        })
    };
    let count = *rdata.get(at).ok_or_else(short)?;
    at += 1;
    let mut signatures = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = usize::from(wire::be16(rdata.get(at..at + 2).ok_or_else(short)?, 0));
        signatures.push(rdata.get(at + 2..at + 2 + len).ok_or_else(short)?.to_vec());
        at += 2 + len;
    }
    if at != rdata.len() {
        return Err("pool record has trailing data".into());
    }
    Ok(PoolMember {
        strict: flags & FLAG_STRICT != 0,
        weight,
        ttl,
        name,
        target,
        probe,
        policy,
        nearest_k,
        place,
        signatures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(spec: ProbeSpec) -> Member {
        let origin = Name::parse("consortium.example.", None).expect("origin");
        Member {
            label_len: 6,
            name: Name::parse("node1", Some(&origin)).expect("name"),
            target: Name::parse("node1.Operator-A.com.", None).expect("target"),
            weight: 7,
            ttl: 300,
            probe: Arc::new(spec),
            update_key: None,
            place: Some(Box::new(Place {
                latitude: 52.37,
                longitude: 4.9,
                region: Some("EU".into()),
            })),
            location: Location::new(Arc::from(std::path::Path::new("m")), 1),
        }
    }

    #[test]
    fn round_trips_weight_names_probe_and_signatures() {
        let spec = HealthSettings {
            kind: Some(ProbeKind::Http),
            path: Some("/health \"x\"".replace(' ', "")),
            address: Some("127.0.0.1:8080".into()),
            body_contains: Some("ok \"quoted\"".into()),
            interval: Some(Duration::from_millis(1500)),
            ..Default::default()
        }
        .resolve()
        .expect("valid");
        let sig: Arc<[u8]> = Arc::from(&[1u8, 2, 3][..]);
        let location = Location::new(Arc::from(std::path::Path::new("m")), 1);
        let pool = PoolDef {
            label: "any".into(),
            name: Name::parse("any.consortium.example.", None).expect("name"),
            ttl: 30,
            members: vec![0],
            cert_policy: CertPolicy::Strict,
            policy: PickPolicy::Nearest,
            nearest_k: 2,
            location,
        };
        let rdata = encode(&member(spec.clone()), &pool, &probe_text(&spec), &[sig]);
        let back = parse(&rdata).expect("parses");
        assert!(back.strict);
        assert_eq!((back.weight, back.ttl), (7, 300));
        assert_eq!(back.target.to_string(), "node1.Operator-A.com.");
        assert_eq!(back.probe.resolve().expect("valid"), spec);
        assert_eq!(back.signatures, vec![vec![1, 2, 3]]);
        assert_eq!((back.policy, back.nearest_k), (PickPolicy::Nearest, 2));
        let place = back.place.expect("the place");
        assert_eq!(
            (place.latitude, place.longitude, place.region.as_deref()),
            (52.37, 4.9, Some("EU"))
        );
        for cut in 0..rdata.len() {
            assert!(parse(&rdata[..cut]).is_err(), "cut at {cut}");
        }
    }
}
