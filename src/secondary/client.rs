//! Asking a primary: its SOA serial, and the zone by AXFR (RFC 5936) or IXFR (RFC 1995), over
//! TCP, signed with the zone's TSIG key when it has one (RFC 8945) and every answer checked.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tsig::{ResponseVerifier, Signer, TsigKey};
use crate::wire::{self, Rcode, rtype};
use crate::zone::name::Name;
use crate::zone::{Location, Record};

/// A transfer's records stop being read past this many octets (a primary sending without end).
pub const MAX_TRANSFER_BYTES: usize = 1 << 30;

/// Where to ask, and how to sign.
#[derive(Debug, Clone, Copy)]
pub struct Primary<'k> {
    pub address: SocketAddr,
    pub key: Option<&'k TsigKey>,
    /// For each read and for connecting.
    pub timeout: Duration,
    /// The local address to connect from; the system's choice when unset.
    pub source: Option<std::net::IpAddr>,
}

/// One step of an incremental transfer (RFC 1995 §4): the old SOA, what to delete, the new SOA,
/// what to add.
#[derive(Debug, Clone)]
pub struct Step {
    pub from: Record,
    pub deleted: Vec<Record>,
    pub to: Record,
    pub added: Vec<Record>,
}

/// What a transfer brought.
#[derive(Debug)]
pub enum Transferred {
    /// The whole zone (AXFR, or IXFR answered in AXFR form): SOA first, closing SOA dropped.
    Full(Vec<Record>),
    /// Differences from the serial we hold.
    Incremental(Vec<Step>),
    /// IXFR answered with the SOA alone: we hold the current version.
    UpToDate,
}

/// The primary's SOA serial for `origin`.
pub async fn soa_serial(primary: Primary<'_>, origin: &Name) -> Result<u32, String> {
    let records = exchange(primary, origin, rtype::SOA, None).await?;
    records
        .first()
        .filter(|r| r.rtype == rtype::SOA && r.name.key() == origin.key())
        .and_then(|r| wire::soa_serial(&r.rdata))
        .ok_or_else(|| format!("{}: the SOA answer holds no SOA for {origin}", primary.address))
}

/// Transfers `origin`: IXFR from `have` (our SOA) when given, else AXFR.
pub async fn transfer(
    primary: Primary<'_>,
    origin: &Name,
    have: Option<&Record>,
) -> Result<Transferred, String> {
    let qtype = if have.is_some() { rtype::IXFR } else { rtype::AXFR };
    let records = exchange(primary, origin, qtype, have).await?;
    let fail = |reason: &str| Err(format!("{}: {reason}", primary.address));
    let Some(first) = records.first() else {
        return fail("empty transfer");
    };
    if first.rtype != rtype::SOA || first.name.key() != origin.key() {
        return fail("the transfer does not open with the zone's SOA");
    }
    let serial = wire::soa_serial(&first.rdata).unwrap_or(0);
    if records.len() == 1 {
        return match have {
            Some(_) => Ok(Transferred::UpToDate),
            None => fail("an AXFR of one record"),
        };
    }
    if records[1].rtype != rtype::SOA || qtype == rtype::AXFR {
        let mut records = records;
        records.pop(); // the closing SOA
        if records.iter().skip(1).any(|r| r.rtype == rtype::SOA) {
            return fail("an SOA inside a full transfer");
        }
        return Ok(Transferred::Full(records));
    }
    // Incremental: [SOA new] ([SOA old] deleted* [SOA next] added*)+ [SOA new].
    let mut steps = Vec::new();
    let mut at = 1;
    let last = records.len() - 1;
    while at < last {
        let from = records[at].clone();
        at += 1;
        let mut deleted = Vec::new();
        while at < last && records[at].rtype != rtype::SOA {
            deleted.push(records[at].clone());
            at += 1;
        }
        if at >= last {
            return fail("an IXFR step without its new SOA");
        }
        let to = records[at].clone();
        at += 1;
        let mut added = Vec::new();
        while at < last && records[at].rtype != rtype::SOA {
            added.push(records[at].clone());
            at += 1;
        }
        steps.push(Step {
            from,
            deleted,
            to,
            added,
        });
    }
    if steps.last().and_then(|s| wire::soa_serial(&s.to.rdata)) != Some(serial) {
        return fail("the IXFR's last step does not reach the serial it announced");
    }
    Ok(Transferred::Incremental(steps))
}

/// Sends one request and reads every answer message of it: for a transfer until it is whole.
async fn exchange(
    primary: Primary<'_>,
    origin: &Name,
    qtype: u16,
    have: Option<&Record>,
) -> Result<Vec<Record>, String> {
    let address = primary.address;
    let at = |reason: String| format!("{address}: {reason}");
    let id: u16 = rand::Rng::random(&mut <rand::rngs::SmallRng as rand::SeedableRng>::from_os_rng());
    let mut request = Vec::with_capacity(512);
    request.extend_from_slice(&id.to_be_bytes());
    request.extend_from_slice(&0u16.to_be_bytes()); // QUERY, no RD
    request.extend_from_slice(&1u16.to_be_bytes());
    request.extend_from_slice(&[0, 0]);
    request.extend_from_slice(&u16::from(have.is_some()).to_be_bytes());
    request.extend_from_slice(&[0, 0]);
    request.extend_from_slice(origin.wire());
    request.extend_from_slice(&qtype.to_be_bytes());
    request.extend_from_slice(&rtype::CLASS_IN.to_be_bytes());
    if let Some(soa) = have {
        // RFC 1995 §3: the version we hold, in the authority section.
        push_record(&mut request, soa);
    }
    let mut verifier = None;
    if let Some(key) = primary.key {
        let mut signer = Signer::new(key, Vec::new());
        signer.sign(&mut request, 0, &[]);
        verifier = Some(ResponseVerifier::new(key, signer.last_mac()));
    }
    let io = |e: std::io::Error| at(e.to_string());
    let mut stream = tokio::time::timeout(primary.timeout, connect_from(primary.source, address))
        .await
        .map_err(|_| at("connect timed out".into()))?
        .map_err(io)?;
    let mut framed = (request.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    stream.write_all(&framed).await.map_err(io)?;

    let mut records: Vec<Record> = Vec::new();
    let mut soas = 0usize;
    let mut total = 0usize;
    let location = Location::new(
        std::sync::Arc::from(std::path::Path::new(&format!("transfer from {address}"))),
        0,
    );
    loop {
        let mut len = [0u8; 2];
        tokio::time::timeout(primary.timeout, stream.read_exact(&mut len))
            .await
            .map_err(|_| at("timed out waiting for the answer".into()))?
            .map_err(|e| at(format!("the answer ended early: {e}")))?;
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(primary.timeout, stream.read_exact(&mut message))
            .await
            .map_err(|_| at("timed out in the middle of an answer".into()))?
            .map_err(|e| at(format!("the answer ended early: {e}")))?;
        total += message.len();
        if total > MAX_TRANSFER_BYTES {
            return Err(at("the transfer passes 1 GiB".into()));
        }
        if message.len() < 12 || wire::be16(&message, 0) != id {
            return Err(at("an answer with another ID".into()));
        }
        let flags = wire::be16(&message, 2);
        if flags & wire::QR == 0 {
            return Err(at("a message that is not an answer".into()));
        }
        let rcode = Rcode::from_flags(flags);
        let qdcount = wire::be16(&message, 4);
        let mut pos = 12;
        for _ in 0..qdcount {
            pos = wire::skip_name(&message, pos)
                .map(|p| p + 4)
                .filter(|&p| p <= message.len())
                .ok_or_else(|| at("an answer's question cannot be read".into()))?;
        }
        if let Some(verifier) = verifier.as_mut() {
            verifier.check(&message, pos, wire::unix_now()).map_err(at)?;
        }
        if rcode != Rcode::NOERROR {
            return Err(at(format!("the primary answered {}", rcode.label())));
        }
        let ancount = wire::be16(&message, 6);
        for _ in 0..ancount {
            let (record, end) = read_record(&message, pos, &location)
                .ok_or_else(|| at("an answer's records cannot be read".into()))?;
            pos = end;
            if record.rtype == rtype::SOA {
                soas += 1;
            }
            records.push(record);
        }
        let done = match qtype {
            rtype::SOA => true,
            _ => transfer_complete(&records, soas, qtype),
        };
        if done {
            if verifier.as_ref().is_some_and(|v| !v.ends_signed()) {
                return Err(at("the transfer's last message is not signed".into()));
            }
            return Ok(records);
        }
        if ancount == 0 {
            return Err(at(
                "an answer message without records before the transfer ended".into()
            ));
        }
    }
}

/// Whether the records read so far make a whole transfer.
fn transfer_complete(records: &[Record], soas: usize, qtype: u16) -> bool {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return false;
    };
    if qtype == rtype::IXFR && records.len() == 1 {
        // The SOA alone: up to date (RFC 1995 §4), when the message ends here.
        return true;
    }
    if records.len() < 2 || last.rtype != rtype::SOA {
        return false;
    }
    if qtype == rtype::AXFR || records[1].rtype != rtype::SOA {
        return true; // AXFR form: the second SOA closes it
    }
    // Incremental: the closing SOA repeats the first and ends an even count of SOAs.
    soas % 2 == 0 && wire::soa_serial(&last.rdata) == wire::soa_serial(&first.rdata)
}

/// One record of a message, names uncompressed (case as sent), RDATA names of the types that
/// may be compressed (RFC 3597 §4) uncompressed too; class IN only.
fn read_record(message: &[u8], start: usize, location: &Location) -> Option<(Record, usize)> {
    let at = wire::read_record(message, start)?;
    if at.class != rtype::CLASS_IN {
        return None;
    }
    let (owner, _) = wire::read_name_as_sent(message, start)?;
    let raw = &message[at.rdata..at.end];
    let rdata = match at.rtype {
        rtype::NS | 3 | 4 | rtype::CNAME | 7 | 8 | 9 | rtype::PTR => {
            names_then(message, at.rdata, at.end, 0, 1)?
        }
        rtype::SOA => names_then(message, at.rdata, at.end, 0, 2)?,
        14 => names_then(message, at.rdata, at.end, 0, 2)?, // MINFO
        rtype::MX | 18 | 21 => names_then(message, at.rdata, at.end, 2, 1)?, // MX, AFSDB, RT
        17 => names_then(message, at.rdata, at.end, 0, 2)?, // RP
        _ => raw.to_vec(),
    };
    Some((
        Record {
            name: Name::read_uncompressed(&owner, 0)?.0,
            rtype: at.rtype,
            ttl: at.ttl,
            rdata,
            location: location.clone(),
        },
        at.end,
    ))
}

/// RDATA of `fixed` octets then `names` names (possibly compressed) then the rest as is.
fn names_then(message: &[u8], start: usize, end: usize, fixed: usize, names: usize) -> Option<Vec<u8>> {
    let mut out = message.get(start..start + fixed)?.to_vec();
    let mut pos = start + fixed;
    for _ in 0..names {
        let (name, after) = wire::read_name_as_sent(message, pos)?;
        if after > end {
            return None;
        }
        out.extend_from_slice(&name);
        pos = after;
    }
    out.extend_from_slice(message.get(pos..end)?);
    Some(out)
}

/// Appends a record (uncompressed) to a message's next section.
fn push_record(message: &mut Vec<u8>, record: &Record) {
    message.extend_from_slice(record.name.wire());
    message.extend_from_slice(&record.rtype.to_be_bytes());
    message.extend_from_slice(&rtype::CLASS_IN.to_be_bytes());
    message.extend_from_slice(&record.ttl.to_be_bytes());
    message.extend_from_slice(&(record.rdata.len() as u16).to_be_bytes());
    message.extend_from_slice(&record.rdata);
}

/// A TCP connection to `address`, from `source` when one is set.
async fn connect_from(source: Option<std::net::IpAddr>, address: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(address).await;
    };
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot send from {source}: {e}")))?;
    socket.connect(address).await
}
