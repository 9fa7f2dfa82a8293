//! What a member's TLS certificate says: its expiry and which names it covers.
//!
//! Expiry comes from a small DER walk to `validity.notAfter` (RFC 5280 §4.1); name coverage
//! from rustls' own subject-name check, so it follows the same rules as a TLS client would.
//! Input is a certificate a remote peer sent: every read is bounds-checked.

use rustls::pki_types::{CertificateDer, ServerName};

/// Seconds since the Unix epoch when the certificate stops being valid.
pub fn not_after(der: &[u8]) -> Option<i64> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial,
    //   signature AlgorithmIdentifier, issuer Name, validity SEQUENCE { notBefore, notAfter } ...
    let (certificate, _) = read_tlv(der, 0x30)?;
    let (tbs, _) = read_tlv(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = skip_tlv(rest)?;
    }
    rest = skip_tlv(rest)?; // serialNumber
    rest = skip_tlv(rest)?; // signature
    rest = skip_tlv(rest)?; // issuer
    let (validity, _) = read_tlv(rest, 0x30)?;
    let after_before = skip_tlv(validity)?;
    let tag = *after_before.first()?;
    let (time, _) = read_tlv(after_before, tag)?;
    parse_time(tag, time)
}

/// True when the certificate is valid for `name` per RFC 6125 rules as rustls applies them.
pub fn covers(der: &[u8], name: &str) -> bool {
    let der = CertificateDer::from(der);
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(&der) else {
        return false;
    };
    let name = name.trim_end_matches('.');
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &server_name).is_ok()
}

/// Reads one TLV with the expected tag; returns (contents, rest).
fn read_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let (len, header): (usize, usize) = match *input.get(1)? {
        short @ 0..=0x7f => (usize::from(short), 2),
        0x81 => (usize::from(*input.get(2)?), 3),
        0x82 => (
            usize::from(u16::from_be_bytes([*input.get(2)?, *input.get(3)?])),
            4,
        ),
        0x83 => {
            let b = input.get(2..5)?;
            (
                (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
                5,
            )
        }
        _ => return None,
    };
    let end = header.checked_add(len)?;
    Some((input.get(header..end)?, input.get(end..)?))
}

fn skip_tlv(input: &[u8]) -> Option<&[u8]> {
    let tag = *input.first()?;
    read_tlv(input, tag).map(|(_, rest)| rest)
}

/// UTCTime (0x17, YYMMDDHHMMSSZ) or GeneralizedTime (0x18, YYYYMMDDHHMMSSZ).
fn parse_time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let slice = text.get(range)?;
        let s = std::str::from_utf8(slice).ok()?;
        s.parse().ok()
    };
    let (year, rest) = match tag {
        0x17 => {
            let yy = digits(0..2)?;
            // RFC 5280 §4.1.2.5.1: 50..99 are 19xx, 00..49 are 20xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        0x18 => (digits(0..4)?, 4),
        _ => return None,
    };
    let month = digits(rest..rest + 2)?;
    let day = digits(rest + 2..rest + 4)?;
    let hour = digits(rest + 4..rest + 6)?;
    let minute = digits(rest + 6..rest + 8)?;
    let second = digits(rest + 8..rest + 10)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(crate::duration::days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(crate::duration::days_from_civil(1970, 1, 1), 0);
        assert_eq!(crate::duration::days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(parse_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(
            parse_time(0x18, b"20261125000000Z"),
            Some(crate::duration::days_from_civil(2026, 11, 25) * 86_400)
        );
        assert_eq!(parse_time(0x18, b"2026"), None);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(&[0x30, 0x84, 1, 2, 3, 4]), None);
        assert_eq!(not_after(&[0x30, 0x05, 0x30, 0x03, 0x02, 0x01]), None);
        assert!(!covers(b"junk", "a.example"));
    }
}
