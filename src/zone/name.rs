//! Domain names in wire form: parsing from zone-file text, lowercased keys, display.
//!
//! A name is kept as its uncompressed wire encoding (length-prefixed labels ending in the root
//! label), case preserved. Lookups use the ASCII-lowercased encoding as the key.

use std::fmt;

/// Longest name in wire form (RFC 1035 §3.1).
pub const MAX_NAME_LEN: usize = 255;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// A domain name in uncompressed wire form, case preserved.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Box<[u8]>);

/// Why a text name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty label in name {}", crate::diag::quoted(.0))]
    EmptyLabel(String),
    #[error("label longer than 63 octets in name {}", crate::diag::quoted(.0))]
    LabelTooLong(String),
    #[error("name longer than 255 octets: {}", crate::diag::quoted(.0))]
    NameTooLong(String),
    #[error("bad escape sequence in name {}", crate::diag::quoted(.0))]
    BadEscape(String),
    #[error("relative name {} with no origin to complete it", crate::diag::quoted(.0))]
    NoOrigin(String),
}

impl Name {
    /// A zone's origin as operators type it on a command line: absolute, with or without the
    /// final dot.
    pub fn parse_origin(text: &str) -> Result<Name, NameError> {
        if text.ends_with('.') {
            Name::parse(text, None)
        } else {
            Name::parse(&format!("{text}."), None)
        }
    }

    /// The root name `.`.
    pub fn root() -> Name {
        Name(Box::new([0]))
    }

    /// Wraps wire bytes that the caller has already validated.
    pub(crate) fn from_wire_unchecked(wire: &[u8]) -> Name {
        Name(wire.into())
    }

    /// Reads an uncompressed wire name at `at` (as RDATA that must not be compressed holds
    /// it): the name and the offset past it; None for a pointer, a bad label or a name past
    /// 255 octets.
    pub fn read_uncompressed(bytes: &[u8], at: usize) -> Option<(Name, usize)> {
        let mut pos = at;
        loop {
            let len = usize::from(*bytes.get(pos)?);
            if len > MAX_LABEL_LEN {
                return None;
            }
            pos += len + 1;
            if pos - at > 255 || pos > bytes.len() {
                return None;
            }
            if len == 0 {
                return Some((Name(bytes[at..pos].into()), pos));
            }
        }
    }

    /// Parses zone-file text (RFC 1035 §5.1: `\X` and `\DDD` escapes). A name without a trailing
    /// dot is relative to `origin`; `@` is the origin itself.
    pub fn parse(text: &str, origin: Option<&Name>) -> Result<Name, NameError> {
        if text == "@" {
            return origin.cloned().ok_or_else(|| NameError::NoOrigin(text.into()));
        }
        if text == "." {
            return Ok(Name::root());
        }
        let bytes = text.as_bytes();
        let mut wire = Vec::with_capacity(bytes.len() + 2);
        let mut label = Vec::with_capacity(MAX_LABEL_LEN);
        let mut absolute = false;
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            match c {
                b'.' => {
                    if label.is_empty() {
                        return Err(NameError::EmptyLabel(text.into()));
                    }
                    push_label(&mut wire, &label, text)?;
                    label.clear();
                    if i + 1 == bytes.len() {
                        absolute = true;
                    }
                    i += 1;
                }
                b'\\' => {
                    let rest = &bytes[i + 1..];
                    if rest.len() >= 3 && rest[..3].iter().all(u8::is_ascii_digit) {
                        let value = u32::from(rest[0] - b'0') * 100
                            + u32::from(rest[1] - b'0') * 10
                            + u32::from(rest[2] - b'0');
                        let octet = u8::try_from(value).map_err(|_| NameError::BadEscape(text.into()))?;
                        label.push(octet);
                        i += 4;
                    } else if let Some(&next) = rest.first() {
                        label.push(next);
                        i += 2;
                    } else {
                        return Err(NameError::BadEscape(text.into()));
                    }
                }
                _ => {
                    label.push(c);
                    i += 1;
                }
            }
        }
        if !label.is_empty() {
            push_label(&mut wire, &label, text)?;
        }
        if absolute {
            wire.push(0);
        } else {
            let origin = origin.ok_or_else(|| NameError::NoOrigin(text.into()))?;
            wire.extend_from_slice(origin.wire());
        }
        if wire.len() > MAX_NAME_LEN {
            return Err(NameError::NameTooLong(text.into()));
        }
        Ok(Name(wire.into_boxed_slice()))
    }

    /// The uncompressed wire form.
    pub fn wire(&self) -> &[u8] {
        &self.0
    }

    /// The ASCII-lowercased wire form, the lookup key.
    pub fn key(&self) -> Box<[u8]> {
        self.0.to_ascii_lowercase().into_boxed_slice()
    }

    /// Number of labels, not counting the root.
    pub fn label_count(&self) -> usize {
        label_offsets(&self.0).count()
    }

    /// The name without its first label; `None` for the root.
    pub fn parent(&self) -> Option<Name> {
        let first = *self.0.first()? as usize;
        if first == 0 {
            return None;
        }
        Some(Name(self.0[first + 1..].into()))
    }

    /// True when `self` equals `ancestor` or lies below it (case-insensitive).
    pub fn is_subdomain_of(&self, ancestor: &Name) -> bool {
        let tail = ancestor.0.len();
        if tail > self.0.len() {
            return false;
        }
        let start = self.0.len() - tail;
        // The suffix must begin on a label boundary (or be the root label).
        let on_boundary = start == self.0.len() - 1 || label_offsets(&self.0).any(|o| o == start);
        on_boundary && self.0[start..].eq_ignore_ascii_case(&ancestor.0)
    }

    /// The first label is `*`.
    pub fn is_wildcard(&self) -> bool {
        self.0.len() >= 2 && self.0[0] == 1 && self.0[1] == b'*'
    }

    /// `*.` + self.
    pub fn wildcard_child(&self) -> Option<Name> {
        if self.0.len() + 2 > MAX_NAME_LEN {
            return None;
        }
        let mut wire = Vec::with_capacity(self.0.len() + 2);
        wire.extend_from_slice(&[1, b'*']);
        wire.extend_from_slice(&self.0);
        Some(Name(wire.into()))
    }

    /// True for a hostname per RFC 952/1123: letters, digits and inner hyphens in each label.
    pub fn is_hostname(&self) -> bool {
        let mut i = 0;
        while i < self.0.len() {
            let len = self.0[i] as usize;
            if len == 0 {
                return true;
            }
            let label = &self.0[i + 1..i + 1 + len];
            let ldh = label.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-');
            if !ldh || label[0] == b'-' || label[len - 1] == b'-' {
                return false;
            }
            i += len + 1;
        }
        true
    }
}

/// Offsets of each non-root label within a wire name.
pub(crate) fn label_offsets(wire: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let len = *wire.get(pos)? as usize;
        if len == 0 {
            return None;
        }
        let here = pos;
        pos += len + 1;
        Some(here)
    })
}

fn push_label(wire: &mut Vec<u8>, label: &[u8], text: &str) -> Result<(), NameError> {
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong(text.into()));
    }
    wire.push(label.len() as u8);
    wire.extend_from_slice(label);
    Ok(())
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_wire_name(f, &self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

/// Writes a wire name in presentation format with escapes.
pub(crate) fn write_wire_name(f: &mut impl fmt::Write, wire: &[u8]) -> fmt::Result {
    if wire.first().is_none_or(|&l| l == 0) {
        return f.write_char('.');
    }
    let mut i = 0;
    while let Some(&len) = wire.get(i) {
        if len == 0 {
            break;
        }
        let len = len as usize;
        for &c in wire.get(i + 1..i + 1 + len).unwrap_or(&[]) {
            match c {
                b'.' | b'\\' | b'"' | b';' | b'(' | b')' | b'@' | b'$' => write!(f, "\\{}", c as char)?,
                0x21..=0x7e => f.write_char(c as char)?,
                _ => write!(f, "\\{c:03}")?,
            }
        }
        f.write_char('.')?;
        i += len + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s, None).expect("valid name")
    }

    #[test]
    fn parses_relative_and_absolute() {
        let origin = n("consortium.example.");
        let rel = Name::parse("node1", Some(&origin)).expect("relative");
        assert_eq!(rel.to_string(), "node1.consortium.example.");
        assert_eq!(Name::parse("@", Some(&origin)).expect("at"), origin);
        assert!(Name::parse("node1", None).is_err());
        assert_eq!(n("a\\.b.c.").label_count(), 2);
        assert_eq!(n("\\065.").wire(), &[1, b'A', 0]);
    }

    #[test]
    fn rejects_bad_names() {
        assert!(matches!(
            Name::parse("a..b.", None),
            Err(NameError::EmptyLabel(_))
        ));
        let long_label = format!("{}.", "a".repeat(64));
        assert!(matches!(
            Name::parse(&long_label, None),
            Err(NameError::LabelTooLong(_))
        ));
        let long_name = format!("{}.", vec!["a".repeat(63); 5].join("."));
        assert!(matches!(
            Name::parse(&long_name, None),
            Err(NameError::NameTooLong(_))
        ));
        assert!(Name::parse("\\256.", None).is_err());
    }

    #[test]
    fn subdomain_checks_label_boundaries() {
        assert!(n("a.Example.").is_subdomain_of(&n("example.")));
        assert!(n("example.").is_subdomain_of(&n("EXAMPLE.")));
        assert!(!n("anexample.").is_subdomain_of(&n("example.")));
        assert!(n("a.b.").is_subdomain_of(&Name::root()));
        assert!(!n("example.").is_subdomain_of(&n("a.example.")));
    }

    #[test]
    fn hostname_rules() {
        assert!(n("node1.operator-a.com.").is_hostname());
        assert!(!n("-bad.com.").is_hostname());
        assert!(!n("bad_.com.").is_hostname());
        assert!(!n("a b.com.").is_hostname());
    }
}
