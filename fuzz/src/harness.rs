// What the fuzz targets (and the stable smoke fuzz in tests/it/hostile.rs, which includes this
// file with `#[path]`) run on one input: the example snapshot, zone and members text turned into
// a Snapshot the way `zone::load` does it, the request path with its response checked, and the
// rule that every parser error names its file and line.

use std::path::Path;
use std::sync::OnceLock;

use consortium_dns::dnssec::{self, CdsPolicy, Denial, KeySet, keys};
use consortium_dns::health::spec::HealthSettings;
use consortium_dns::peers::{TransferAcl, ZonePeers};
use consortium_dns::server::answer::{self, Outcome};
use consortium_dns::snapshot::{BuildOptions, Snapshot};
use consortium_dns::tsig::{Algorithm, TsigKey};
use consortium_dns::zone::name::Name;
use consortium_dns::zone::{self, Diagnostic, master, members};
use rand::Rng;

use super::check;

/// The repository's example consortium.
pub const EXAMPLE_ZONE: &str = include_str!("../../zones/consortium.example.zone");
pub const EXAMPLE_MEMBERS: &str = include_str!("../../zones/consortium.example.members.toml");
/// The default `limits.udp-payload`.
pub const SERVER_MAX_UDP: u16 = 1232;
/// Names the fuzzed zone text is read from (nothing is read there: a relative `$INCLUDE`
/// fails to open, which is an error like any other).
pub const ZONE_PATH: &str = "/nonexistent/fuzz/consortium.example.zone";
pub const MEMBERS_PATH: &str = "/nonexistent/fuzz/consortium.example.members.toml";

pub fn origin() -> Name {
    Name::parse("consortium.example.", None).expect("valid origin")
}

/// Parses and validates zone text (and members text) as `zone::load` does files, then builds
/// the Snapshot. `Ok(None)`: the text was rejected, with errors that name their file and, for
/// the parsers, the line. `Err`: an invariant broke.
pub fn snapshot_from_text(zone_text: &str, members_text: Option<&str>) -> Result<Option<Snapshot>, String> {
    let origin = origin();
    let zone_path = Path::new(ZONE_PATH);
    let members_path = Path::new(MEMBERS_PATH);
    let records = match master::parse_str(zone_text, zone_path, &origin) {
        Ok(records) => records,
        Err(errors) => {
            check_diagnostics(&errors, zone_path, zone_text)?;
            return Ok(None);
        }
    };
    let (members, pools) = match members_text {
        Some(text) => match members::parse(text, members_path, &origin, &HealthSettings::default()) {
            Ok(parsed) => parsed,
            Err(errors) => {
                check_diagnostics(&errors, members_path, text)?;
                return Ok(None);
            }
        },
        None => (Vec::new(), Vec::new()),
    };
    match zone::assemble(&origin, zone_path, records, members, pools) {
        Ok(data) => {
            let mut options = BuildOptions {
                identity: Some("ns1.fuzz"),
                ..BuildOptions::default()
            };
            // Signed as `dnssec = true` would: DO queries then take the DNSSEC paths, with
            // NSEC or NSEC3 denial by the input's length (each input always the same). A zone
            // signing refuses (one that brings its own RRSIG or NSEC records) is served
            // unsigned, as an unsigned zone may hold them.
            let denial = if zone_text.len() % 2 == 0 {
                Denial::Nsec
            } else {
                Denial::Nsec3
            };
            if let Ok(signed) =
                dnssec::sign_zone(&data, fuzz_keys(denial), 1_800_000_000, &Default::default())
            {
                options.signed.insert(data.origin.key(), signed);
            }
            Ok(Some(Snapshot::build(vec![data], &options)))
        }
        Err(errors) => {
            // Zone-level rules may lack a line ("no SOA at the apex"), never a file.
            if errors.is_empty() {
                return Err("assemble: an Err with no diagnostics".into());
            }
            if let Some(e) = errors
                .iter()
                .find(|e| &*e.file != zone_path && &*e.file != members_path)
            {
                return Err(format!("assemble: error in an unexpected file: {e}"));
            }
            Ok(None)
        }
    }
}

/// A P-256 CSK made once per process for each denial, signing every fuzzed zone.
fn fuzz_keys(denial: Denial) -> &'static KeySet {
    static NSEC: OnceLock<KeySet> = OnceLock::new();
    static NSEC3: OnceLock<KeySet> = OnceLock::new();
    let cell = match denial {
        Denial::Nsec => &NSEC,
        Denial::Nsec3 => &NSEC3,
    };
    cell.get_or_init(|| {
        let (key, _) = keys::generate_pair(keys::ECDSAP256SHA256, keys::Role::Ksk, 0).expect("a key");
        KeySet {
            dir: "/nonexistent/fuzz/keys".into(),
            keys: vec![key],
            cds: CdsPolicy::Always,
            denial,
        }
    })
}

/// The example consortium signed with NSEC, built once.
pub fn example_snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| example_with_denial(Denial::Nsec))
}

/// The example consortium signed with NSEC3, built once: the NSEC3 denial paths (RFC 5155
/// §7.2) of the request path.
pub fn example_nsec3_snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| example_with_denial(Denial::Nsec3))
}

/// `snapshot_from_text` picks the denial by the zone text's length: a comment line of one or
/// two characters gives the example the length that picks `denial`.
fn example_with_denial(denial: Denial) -> Snapshot {
    let mut zone = format!("{EXAMPLE_ZONE}\n;");
    if (zone.len() % 2 == 0) != (denial == Denial::Nsec) {
        zone.push(';');
    }
    match snapshot_from_text(&zone, Some(EXAMPLE_MEMBERS)) {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => panic!("the example consortium does not validate"),
        Err(e) => panic!("example: {e}"),
    }
}
/// The TSIG key the transfer snapshot allows transfers from 10.0.0.0/8 with.
pub const TRANSFER_KEY_SECRET: &[u8] = b"fuzz-transfer-key-secret-32-byte";

/// The example consortium signed, with transfers allowed from 127.0.0.0/8 unsigned and from
/// 10.0.0.0/8 with the key `xfr.` (hmac-sha256), built once: the transfer and TSIG paths.
pub fn transfer_snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    static KEYS: OnceLock<Vec<TsigKey>> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let origin = origin();
        let records = master::parse_str(EXAMPLE_ZONE, Path::new(ZONE_PATH), &origin).expect("example zone");
        let (members, pools) = members::parse(
            EXAMPLE_MEMBERS,
            Path::new(MEMBERS_PATH),
            &origin,
            &HealthSettings::default(),
        )
        .expect("example members");
        let data = zone::assemble(&origin, Path::new(ZONE_PATH), records, members, pools).expect("example");
        let key_name = Name::parse("xfr.", None).expect("key name");
        let keys = KEYS.get_or_init(|| {
            vec![TsigKey::new(
                &key_name,
                Algorithm::HmacSha256,
                TRANSFER_KEY_SECRET,
            )]
        });
        let acl = |network: [u8; 4], prefix, key: Option<Name>| TransferAcl {
            network: std::net::IpAddr::from(network),
            prefix,
            key,
        };
        let mut options = BuildOptions {
            keys,
            ..BuildOptions::default()
        };
        options.peers.insert(
            data.origin.key(),
            ZonePeers {
                allow_transfer: vec![
                    acl([127, 0, 0, 0], 8, None),
                    acl([10, 0, 0, 0], 8, Some(key_name)),
                ],
                notify: Vec::new(),
            },
        );
        let signed = dnssec::sign_zone(&data, fuzz_keys(Denial::Nsec), 1_800_000_000, &Default::default())
            .expect("signs");
        options.signed.insert(data.origin.key(), signed);
        Snapshot::build(vec![data], &options)
    })
}

/// The length-prefixed messages of a TCP byte stream (RFC 1035 §4.2.2); a cut last one is left
/// out, as the server waits for the rest of it.
pub fn tcp_frames(mut stream: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    while let [high, low, rest @ ..] = stream {
        let len = usize::from(u16::from_be_bytes([*high, *low]));
        let Some(frame) = rest.get(..len) else { break };
        frames.push(frame);
        stream = &rest[len..];
    }
    frames
}

/// Every message of a transfer answer must be a whole DNS message with QR set and the
/// request's ID, and fit a TCP frame.
pub fn check_transfer_answer(request: &[u8], messages: &[Vec<u8>]) -> Result<(), String> {
    if messages.is_empty() {
        return Err("no message at all".into());
    }
    for (i, message) in messages.iter().enumerate() {
        if message.len() > 65_535 {
            return Err(format!("message {i}: {} bytes, over a TCP frame", message.len()));
        }
        let walked = check::walk(message).map_err(|e| format!("message {i}: {e}"))?;
        if walked.flags & 0x8000 == 0 {
            return Err(format!("message {i}: QR clear"));
        }
        if request.len() >= 2 && walked.id != u16::from_be_bytes([request[0], request[1]]) {
            return Err(format!("message {i}: ID not echoed"));
        }
    }
    Ok(())
}

/// Every error of a parser must name `file` and a line of `text` (or the line just after its
/// end, where an unterminated construct is noticed), and show as `file:line: message`.
pub fn check_diagnostics(errors: &[Diagnostic], file: &Path, text: &str) -> Result<(), String> {
    if errors.is_empty() {
        return Err("an Err with no diagnostics".into());
    }
    let lines = text.split('\n').count();
    for e in errors {
        if &*e.file != file {
            // An `$INCLUDE`d file names itself; only absolute paths can be read from here.
            if e.line.is_some() {
                continue;
            }
            return Err(format!("error without a line in another file: {e}"));
        }
        let Some(line) = e.line else {
            return Err(format!("error without a line: {e}"));
        };
        if line == 0 || line > lines + 1 {
            return Err(format!("line {line} outside a text of {lines} lines: {e}"));
        }
        let shown = e.to_string();
        let prefix = format!("{}:{line}: ", file.display());
        if !shown.starts_with(&prefix) || shown.len() == prefix.len() {
            return Err(format!("shown as {shown:?}, not as {prefix:?} + a message"));
        }
    }
    Ok(())
}

/// Answers `query` over UDP and over TCP and checks each response against it. A query is
/// dropped (no response) exactly when it is shorter than a header or is itself a response.
pub fn answer_and_check<R: Rng>(
    snapshot: &Snapshot,
    query: &[u8],
    out: &mut Vec<u8>,
    rng: &mut R,
) -> Result<(), String> {
    let must_drop = query.len() < 12 || query[2] & 0x80 != 0;
    for (transport, limit) in [
        (
            answer::Transport::Udp,
            check::Transport::Udp {
                server_max: SERVER_MAX_UDP,
            },
        ),
        (answer::Transport::Tcp, check::Transport::Tcp),
    ] {
        let outcome = answer::answer(snapshot, query, out, transport, SERVER_MAX_UDP, rng);
        match outcome {
            Outcome::Dropped if must_drop => {}
            Outcome::Dropped => return Err(format!("{transport:?}: dropped a query with a header")),
            Outcome::Responded { .. } if must_drop => {
                return Err(format!("{transport:?}: answered a short packet or a response"));
            }
            Outcome::Responded { rcode, truncated, .. } => {
                check::response(query, out, limit).map_err(|e| format!("{transport:?}: {e}"))?;
                let walked = check::walk(out).map_err(|e| format!("{transport:?}: {e}"))?;
                if walked.rcode() != rcode {
                    return Err(format!(
                        "{transport:?}: outcome says rcode {rcode}, response says {}",
                        walked.rcode()
                    ));
                }
                if truncated != (walked.flags & check::TC != 0) {
                    return Err(format!("{transport:?}: outcome and TC bit disagree"));
                }
            }
        }
    }
    Ok(())
}

/// Types asked at every name: the common ones, ANY, and one nobody has.
pub const PROBE_TYPES: [u16; 12] = [1, 2, 5, 6, 12, 15, 16, 28, 33, 43, 255, 65280];

/// Asks every type of `PROBE_TYPES` at the first `limit` owner names of the snapshot, at each
/// pool's shared name, and one label below each (wildcards, delegations, NXDOMAIN), checking
/// every response. Returns how many queries were asked.
pub fn query_every_name<R: Rng>(snapshot: &Snapshot, limit: usize, rng: &mut R) -> Result<usize, String> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    for zone in snapshot.zones() {
        for record in zone.all_records().iter().take(limit) {
            names.push(record.name.wire().to_vec());
        }
        for pool in &zone.pools {
            names.push(pool.def.name.wire().to_vec());
        }
    }
    let below: Vec<Vec<u8>> = names
        .iter()
        .filter(|n| n.len() + 3 <= 255)
        .map(|n| [&[2, b'z', b'Z'][..], n].concat())
        .collect();
    names.extend(below);
    let mut out = Vec::new();
    let mut asked = 0;
    for name in &names {
        for qtype in PROBE_TYPES {
            let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            query.extend_from_slice(name);
            query.extend_from_slice(&qtype.to_be_bytes());
            query.extend_from_slice(&1u16.to_be_bytes());
            answer_and_check(snapshot, &query, &mut out, rng)
                .map_err(|e| format!("{e}\nquery {}\nresponse {}", check::hex(&query), check::hex(&out)))?;
            asked += 1;
        }
    }
    Ok(asked)
}
