//! EDNS(0) (RFC 6891): the request's OPT record, and the reply's, with its Extended DNS Error.
//!
//! An Extended DNS Error (RFC 8914) is an EDNS option, so it is only ever sent to a client
//! whose request carried an OPT record.

use super::{Rcode, be16, read_record, rtype};

/// An OPT record with no options: root owner, TYPE, CLASS, TTL, RDLENGTH (RFC 6891 §6.1.2).
pub const OPT_LEN: usize = 11;
/// The EDNS option code of an Extended DNS Error (RFC 8914 §2).
pub const EDE_OPTION: u16 = 15;
/// Octets an EDE option without EXTRA-TEXT adds: OPTION-CODE, OPTION-LENGTH, INFO-CODE.
const EDE_LEN: usize = 6;

/// The option code of EDNS Client Subnet (RFC 7871 §6).
pub const ECS_OPTION: u16 = 8;

/// EDNS(0) as sent by the client (RFC 6891 §6.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The requestor's UDP payload size (the OPT record's CLASS).
    pub udp_size: u16,
    pub version: u8,
    /// The DO bit (RFC 3225 §3).
    pub dnssec_ok: bool,
    /// The EDNS Client Subnet option, when the query carried a well-formed one.
    pub client_subnet: Option<ClientSubnet>,
}

/// An EDNS Client Subnet option (RFC 7871 §6): the client's network as the resolver gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSubnet {
    /// 1 IPv4, 2 IPv6.
    pub family: u16,
    pub source_prefix: u8,
    /// The address, zero beyond the source prefix (4 or 16 octets used).
    pub address: [u8; 16],
}

impl ClientSubnet {
    /// The client's address (its network, zero-filled).
    pub fn ip(&self) -> std::net::IpAddr {
        match self.family {
            1 => std::net::IpAddr::from([self.address[0], self.address[1], self.address[2], self.address[3]]),
            _ => std::net::IpAddr::from(self.address),
        }
    }

    /// Reads the option's data; None when RFC 7871 §7.1.2 says FORMERR: an unknown family, a
    /// source prefix longer than the address, an address longer than the prefix needs, or
    /// bits set beyond the prefix.
    fn parse(data: &[u8]) -> Option<ClientSubnet> {
        let family = be16(data.get(..2)?, 0);
        let max = match family {
            1 => 32,
            2 => 128,
            _ => return None,
        };
        let source_prefix = *data.get(2)?;
        if source_prefix > max {
            return None;
        }
        let bytes = &data[4.min(data.len())..];
        if data.len() < 4 || bytes.len() != usize::from(source_prefix).div_ceil(8) {
            return None;
        }
        if let Some(&last) = bytes.last() {
            let used = source_prefix % 8;
            if used != 0 && last & (0xff >> used) != 0 {
                return None;
            }
        }
        let mut address = [0u8; 16];
        address[..bytes.len()].copy_from_slice(bytes);
        Some(ClientSubnet {
            family,
            source_prefix,
            address,
        })
    }

    /// Octets of the option in a reply: code, length, family, prefixes, address.
    const fn reply_len(&self) -> usize {
        8 + (self.source_prefix as usize).div_ceil(8)
    }
}

/// What the additional section of a request holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Additional {
    pub edns: Option<Edns>,
    /// A TSIG record (RFC 8945): the request is signed, and so must its answer be.
    pub signed: bool,
}

/// Walks `count` records of the additional section from `pos`: at most one OPT, owned by
/// the root, with well-formed options (RFC 6891 §6.1.1); notes a TSIG (the caller checks
/// it). Other records are only bounds-checked. An error (answer FORMERR) carries the OPT
/// read so far, a duplicate's first or one with malformed options, because a FORMERR about
/// the OPT still carries an OPT (RFC 6891 §7).
pub fn parse_additional(message: &[u8], mut pos: usize, count: u16) -> Result<Additional, Option<Edns>> {
    let mut edns = None;
    let mut signed = false;
    for _ in 0..count {
        let record = read_record(message, pos).ok_or(edns)?;
        pos = record.end;
        if record.rtype == rtype::OPT {
            if edns.is_some() || !record.owner_is_root() {
                return Err(edns);
            }
            edns = Some(Edns {
                udp_size: record.class,
                version: (record.ttl >> 16) as u8,
                dnssec_ok: record.ttl & 0x8000 != 0,
                client_subnet: None,
            });
            let rdata = message.get(record.rdata..record.end).ok_or(edns)?;
            let mut o = 0;
            while o < rdata.len() {
                if o + 4 > rdata.len() {
                    return Err(edns);
                }
                let option_len = usize::from(be16(rdata, o + 2));
                if o + 4 + option_len > rdata.len() {
                    return Err(edns);
                }
                if be16(rdata, o) == ECS_OPTION {
                    let subnet = ClientSubnet::parse(&rdata[o + 4..o + 4 + option_len]);
                    // Malformed, or a second one: FORMERR (RFC 7871 §7.1.2), OPT echoed.
                    let Some(e) = edns.as_mut().filter(|e| e.client_subnet.is_none()) else {
                        return Err(edns);
                    };
                    match subnet {
                        Some(subnet) => e.client_subnet = Some(subnet),
                        None => return Err(edns),
                    }
                }
                o += 4 + option_len;
            }
        }
        signed |= record.rtype == rtype::TSIG;
    }
    Ok(Additional { edns, signed })
}

/// An Extended DNS Error INFO-CODE (RFC 8914 §4), sent without EXTRA-TEXT, as NSD does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ede(u16);

impl Ede {
    /// 14 Not Ready (RFC 8914 §4.15): a secondary zone not yet transferred, or expired.
    pub const NOT_READY: Ede = Ede(14);
    /// 18 Prohibited (RFC 8914 §4.19): the requester is not allowed this, e.g. a zone
    /// transfer that allow-transfer does not grant.
    pub const PROHIBITED: Ede = Ede(18);
    /// 20 Not Authoritative (RFC 8914 §4.21): the name is in no zone served here.
    pub const NOT_AUTHORITATIVE: Ede = Ede(20);
    /// 21 Not Supported (RFC 8914 §4.22): a class, name or operation not offered here.
    pub const NOT_SUPPORTED: Ede = Ede(21);

    pub const fn info_code(self) -> u16 {
        self.0
    }
}

/// The OPT record of a reply (RFC 6891 §6.1.2): our payload size, the DO bit copied (RFC
/// 3225 §3), and an Extended DNS Error when there is one to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptReply {
    pub udp_size: u16,
    pub dnssec_ok: bool,
    pub ede: Option<Ede>,
    /// The query's client subnet, echoed with this SCOPE PREFIX-LENGTH (RFC 7871 §7.2.1):
    /// 0 when the answer did not depend on the client.
    pub client_subnet: Option<(ClientSubnet, u8)>,
}

impl OptReply {
    /// Octets the record takes in the message (what a size limit must keep free for it).
    #[inline]
    pub const fn record_len(&self) -> usize {
        OPT_LEN
            + if self.ede.is_some() { EDE_LEN } else { 0 }
            + match &self.client_subnet {
                Some((subnet, _)) => subnet.reply_len(),
                None => 0,
            }
    }
}

/// Appends the OPT record for `opt`, with the upper bits of `rcode` and version 0 (the only
/// one we implement, also in a BADVERS answer, RFC 6891 §6.1.3). The caller counts it in
/// ARCOUNT.
pub fn put_opt(out: &mut Vec<u8>, opt: &OptReply, rcode: Rcode) {
    // Written from one stack copy: every answer to an EDNS query carries this record, and
    // one append is cheaper than one per field.
    let [size_high, size_low] = opt.udp_size.to_be_bytes();
    let flags = if opt.dnssec_ok { 0x80 } else { 0 };
    let mut record = [
        0,
        0,
        41,
        size_high,
        size_low,
        rcode.extended_bits(),
        0,
        flags,
        0,
        0,
        0,
    ];
    let rdlen = opt.record_len() - OPT_LEN;
    record[9] = (rdlen >> 8) as u8;
    record[10] = rdlen as u8;
    out.extend_from_slice(&record);
    if let Some(ede) = opt.ede {
        let [option_high, option_low] = EDE_OPTION.to_be_bytes();
        let [code_high, code_low] = ede.info_code().to_be_bytes();
        out.extend_from_slice(&[option_high, option_low, 0, 2, code_high, code_low]);
    }
    if let Some((subnet, scope)) = &opt.client_subnet {
        // RFC 7871 §7.2.1: FAMILY, SOURCE PREFIX-LENGTH and ADDRESS as the query sent them.
        let address_len = usize::from(subnet.source_prefix).div_ceil(8);
        out.extend_from_slice(&ECS_OPTION.to_be_bytes());
        out.extend_from_slice(&((4 + address_len) as u16).to_be_bytes());
        out.extend_from_slice(&subnet.family.to_be_bytes());
        out.extend_from_slice(&[subnet.source_prefix, *scope]);
        out.extend_from_slice(&subnet.address[..address_len]);
    }
}

/// Appends an OPT record carrying one Extended DNS Error with EXTRA-TEXT (RFC 8914 §2), for
/// answers whose reason a person reads (an UPDATE refused by policy). At most 255 octets of
/// text are sent. The caller counts the record in ARCOUNT.
pub fn put_opt_with_text(out: &mut Vec<u8>, rcode: Rcode, info_code: u16, text: &str) {
    let text = &text.as_bytes()[..text.len().min(255)];
    let option_len = 2 + text.len();
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&1232u16.to_be_bytes());
    out.extend_from_slice(&[rcode.extended_bits(), 0, 0, 0]);
    out.extend_from_slice(&((4 + option_len) as u16).to_be_bytes());
    out.extend_from_slice(&EDE_OPTION.to_be_bytes());
    out.extend_from_slice(&(option_len as u16).to_be_bytes());
    out.extend_from_slice(&info_code.to_be_bytes());
    out.extend_from_slice(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(payload: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut record = vec![0, 0, 41];
        record.extend_from_slice(&payload.to_be_bytes());
        record.extend_from_slice(&ttl.to_be_bytes());
        record.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        record.extend_from_slice(rdata);
        record
    }

    #[test]
    fn one_opt_is_read_two_are_an_error() {
        let one = opt(1232, 0x0000_8000, &[0, 10, 0, 2, 1, 2]);
        let parsed = parse_additional(&one, 0, 1).expect("well formed");
        assert_eq!(
            parsed.edns,
            Some(Edns {
                udp_size: 1232,
                version: 0,
                dnssec_ok: true,
                client_subnet: None,
            })
        );
        let mut two = one.clone();
        two.extend_from_slice(&opt(512, 0, &[]));
        assert_eq!(
            parse_additional(&two, 0, 2),
            Err(parsed.edns),
            "the first is kept"
        );
        let cut_option = opt(1232, 0, &[0, 10, 0, 9, 1]);
        assert!(parse_additional(&cut_option, 0, 1).is_err());
        assert_eq!(parse_additional(&one, 0, 2), Err(parsed.edns), "a missing record");
    }

    #[test]
    fn reply_opt_with_and_without_ede() {
        let mut out = Vec::new();
        let plain = OptReply {
            udp_size: 1232,
            dnssec_ok: true,
            ede: None,
            client_subnet: None,
        };
        put_opt(&mut out, &plain, Rcode::BADVERS);
        assert_eq!(out, [0, 0, 41, 0x04, 0xd0, 1, 0, 0x80, 0, 0, 0]);
        assert_eq!(out.len(), plain.record_len());
        out.clear();
        let with_ede = OptReply {
            ede: Some(Ede::NOT_AUTHORITATIVE),
            ..plain
        };
        put_opt(&mut out, &with_ede, Rcode::REFUSED);
        assert_eq!(out.len(), with_ede.record_len());
        assert_eq!(&out[9..], &[0, 6, 0, 15, 0, 2, 0, 20]);
        // It reads back as one well-formed OPT.
        assert!(parse_additional(&out, 0, 1).is_ok_and(|a| a.edns.is_some()));
    }

    #[test]
    fn client_subnet_is_read_echoed_with_its_scope_and_malformed_ones_refused() {
        let ecs = |family: u16, source: u8, address: &[u8]| {
            let mut data = family.to_be_bytes().to_vec();
            data.extend_from_slice(&[source, 0]);
            data.extend_from_slice(address);
            let mut option = ECS_OPTION.to_be_bytes().to_vec();
            option.extend_from_slice(&(data.len() as u16).to_be_bytes());
            option.extend_from_slice(&data);
            opt(1232, 0, &option)
        };
        let parsed = parse_additional(&ecs(1, 24, &[198, 51, 100]), 0, 1).expect("well formed");
        let subnet = parsed.edns.and_then(|e| e.client_subnet).expect("the subnet");
        assert_eq!(
            subnet.ip(),
            "198.51.100.0".parse::<std::net::IpAddr>().expect("ip")
        );
        let reply = OptReply {
            udp_size: 1232,
            dnssec_ok: false,
            ede: None,
            client_subnet: Some((subnet, 16)),
        };
        let mut out = Vec::new();
        put_opt(&mut out, &reply, Rcode::NOERROR);
        assert_eq!(out.len(), reply.record_len());
        assert_eq!(&out[9..], &[0, 11, 0, 8, 0, 7, 0, 1, 24, 16, 198, 51, 100]);
        assert!(parse_additional(&ecs(2, 56, &[0x20, 1, 0xd, 0xb8, 0, 0, 0x12]), 0, 1).is_ok());
        assert!(
            parse_additional(&ecs(1, 0, &[]), 0, 1).is_ok(),
            "source 0 is allowed"
        );
        for (what, bad) in [
            ("unknown family", ecs(3, 8, &[1])),
            ("prefix longer than the address", ecs(1, 33, &[1, 2, 3, 4, 5])),
            ("bits beyond the prefix", ecs(1, 23, &[198, 51, 101])),
            ("address longer than the prefix", ecs(1, 8, &[10, 0])),
            ("address shorter than the prefix", ecs(2, 64, &[0x20, 1])),
        ] {
            assert!(parse_additional(&bad, 0, 1).is_err(), "{what}: FORMERR");
        }
    }
}
