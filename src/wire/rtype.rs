//! Record type and class numbers, and their mnemonics.

pub const CLASS_IN: u16 = 1;
pub const CLASS_CH: u16 = 3;
pub const CLASS_ANY: u16 = 255;
/// RFC 2136 §2.4/§2.5: "delete this RR" and "RRset or name does not exist".
pub const CLASS_NONE: u16 = 254;

pub const A: u16 = 1;
pub const NS: u16 = 2;
pub const CNAME: u16 = 5;
pub const SOA: u16 = 6;
pub const PTR: u16 = 12;
pub const HINFO: u16 = 13;
pub const MX: u16 = 15;
pub const TXT: u16 = 16;
pub const AAAA: u16 = 28;
pub const SRV: u16 = 33;
pub const DNAME: u16 = 39;
pub const OPT: u16 = 41;
pub const DS: u16 = 43;
pub const RRSIG: u16 = 46;
pub const NSEC: u16 = 47;
pub const DNSKEY: u16 = 48;
pub const NSEC3: u16 = 50;
pub const NSEC3PARAM: u16 = 51;
pub const CDS: u16 = 59;
pub const CDNSKEY: u16 = 60;
pub const SPF: u16 = 99;
pub const TSIG: u16 = 250;
pub const IXFR: u16 = 251;
pub const AXFR: u16 = 252;
pub const ANY: u16 = 255;
pub const CAA: u16 = 257;

const NAMES: &[(u16, &str)] = &[
    (A, "A"),
    (NS, "NS"),
    (CNAME, "CNAME"),
    (SOA, "SOA"),
    (PTR, "PTR"),
    (HINFO, "HINFO"),
    (MX, "MX"),
    (TXT, "TXT"),
    (AAAA, "AAAA"),
    (SRV, "SRV"),
    (DNAME, "DNAME"),
    (OPT, "OPT"),
    (DS, "DS"),
    (RRSIG, "RRSIG"),
    (NSEC, "NSEC"),
    (DNSKEY, "DNSKEY"),
    (NSEC3, "NSEC3"),
    (NSEC3PARAM, "NSEC3PARAM"),
    (CDS, "CDS"),
    (CDNSKEY, "CDNSKEY"),
    (SPF, "SPF"),
    (TSIG, "TSIG"),
    (IXFR, "IXFR"),
    (AXFR, "AXFR"),
    (ANY, "ANY"),
    (CAA, "CAA"),
];

/// The type number for a mnemonic or `TYPEnnn` (RFC 3597 §5), case-insensitive.
pub fn from_mnemonic(word: &str) -> Option<u16> {
    let upper = word.to_ascii_uppercase();
    if let Some(number) = upper.strip_prefix("TYPE") {
        return number.parse().ok();
    }
    NAMES
        .iter()
        .find(|(_, name)| *name == upper)
        .map(|(code, _)| *code)
}

/// The mnemonic of a type, or `TYPEnnn`.
pub fn mnemonic(rtype: u16) -> String {
    NAMES
        .iter()
        .find(|(code, _)| *code == rtype)
        .map_or_else(|| format!("TYPE{rtype}"), |(_, name)| (*name).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnemonics_round_trip() {
        assert_eq!(from_mnemonic("aaaa"), Some(AAAA));
        assert_eq!(from_mnemonic("TYPE65534"), Some(65534));
        assert_eq!(from_mnemonic("BOGUS"), None);
        assert_eq!(mnemonic(CAA), "CAA");
        assert_eq!(mnemonic(65534), "TYPE65534");
    }
}
