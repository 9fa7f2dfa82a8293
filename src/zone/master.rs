//! RFC 1035 master-file parser: text to records with wire-form RDATA, each tagged file:line.
//!
//! Handles `$ORIGIN`, `$TTL`, `$INCLUDE` (relative to the including file, loops refused),
//! relative names, `@`, inherited owners, parentheses, comments, quoted strings, TTL units
//! (`1h30m`), and RFC 3597 generic RDATA (`TYPE65534 \# 2 abcd`). It must not decide what the
//! records mean for serving; that is `zone::validate` and the snapshot builder.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::name::{Name, NameError};
use super::{Diagnostic, FileLimits, Location, Record, Source, rtype};
use crate::diag;
use crate::diag::quoted;

/// Deepest `$INCLUDE` nesting accepted.
const MAX_INCLUDE_DEPTH: usize = 8;
/// Largest zone file read (a safety bound against a wrong path pointing at a huge file).
pub const MAX_ZONE_FILE_BYTES: u64 = 1 << 30;
/// Why a raw UTF-8 owner name is refused, in the zone file as in the members file: the octets
/// a resolver would have to send are not what a user types (RFC 5890 §2.3.2.1).
pub const RAW_UTF8_NAME: &str = "raw UTF-8 in a name: write an internationalised name as its A-label (xn--...), or other octets as \\DDD escapes";
/// Longest TTL accepted (RFC 2181 §8).
const MAX_TTL: u32 = 0x7fff_ffff;

/// Parses the zone file of `source` with its origin as the initial `$ORIGIN`, within its
/// limits and include roots. Returns every record, or the errors found (parsing continues
/// past a bad entry so `check` can report them all, and stops at the first limit reached).
pub fn parse_source(source: &Source) -> Result<Vec<Record>, Vec<Diagnostic>> {
    let mut parser = Parser::new(source.limits, include_roots(&source.file, &source.include_roots));
    parser.never_include = source
        .never_include
        .iter()
        .map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()))
        .collect();
    parser.parse_path(&source.file, source.origin.clone(), None);
    parser.finish()
}

/// Parses `path` with `origin` as the initial `$ORIGIN` and the default limits.
pub fn parse_file(path: &Path, origin: &Name) -> Result<Vec<Record>, Vec<Diagnostic>> {
    parse_source(&Source::new(origin.clone(), path.to_path_buf(), None))
}

/// Parses zone text held in memory (used by tests and the fuzz targets).
pub fn parse_str(text: &str, file: &Path, origin: &Name) -> Result<Vec<Record>, Vec<Diagnostic>> {
    let mut parser = Parser::new(FileLimits::default(), include_roots(file, &[]));
    parser.include_stack.push(file.to_path_buf());
    parser.parse_bytes(text.as_bytes(), Arc::from(file), origin.clone());
    parser.finish()
}

/// The directories `$INCLUDE` may read below: the zone file's own and the configured roots,
/// resolved (so `..` and symbolic links cannot step out).
fn include_roots(zone_file: &Path, extra: &[PathBuf]) -> Vec<PathBuf> {
    let own = zone_file.parent().unwrap_or(Path::new("."));
    let own = if own.as_os_str().is_empty() {
        Path::new(".")
    } else {
        own
    };
    std::iter::once(own)
        .chain(extra.iter().map(PathBuf::as_path))
        .map(|dir| dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()))
        .collect()
}

struct Parser {
    records: Vec<Record>,
    errors: Vec<Diagnostic>,
    include_stack: Vec<PathBuf>,
    default_ttl: Option<u32>,
    last_ttl: Option<u32>,
    limits: FileLimits,
    include_roots: Vec<PathBuf>,
    never_include: Vec<PathBuf>,
    /// Bytes read and `$INCLUDE`s followed so far, across every expansion.
    bytes_read: u64,
    includes_followed: usize,
    /// Errors seen (stored or not: only the first `errors_per_file` per file are kept).
    errors_seen: usize,
    /// A limit was reached: nothing more is read.
    stopped: bool,
}
#[derive(Debug)]
struct Token {
    text: Vec<u8>,
    quoted: bool,
}

struct Entry {
    line: usize,
    inherits_owner: bool,
    tokens: Vec<Token>,
}

impl Parser {
    fn new(limits: FileLimits, include_roots: Vec<PathBuf>) -> Parser {
        Parser {
            records: Vec::new(),
            errors: Vec::new(),
            include_stack: Vec::new(),
            default_ttl: None,
            last_ttl: None,
            limits,
            include_roots,
            never_include: Vec::new(),
            bytes_read: 0,
            includes_followed: 0,
            errors_seen: 0,
            stopped: false,
        }
    }

    fn finish(self) -> Result<Vec<Record>, Vec<Diagnostic>> {
        if self.errors.is_empty() {
            Ok(self.records)
        } else {
            Err(diag::cap_per_file(self.errors, self.limits.errors_per_file))
        }
    }

    fn error(&mut self, diagnostic: Diagnostic) {
        // Bounded as `finish` reports them: keep a margin over the per-file cap, count the rest.
        self.errors_seen += 1;
        if self.errors.len() < self.limits.errors_per_file.saturating_mul(8).max(64) {
            self.errors.push(diagnostic);
        } else if self.errors_seen == self.errors.len() + 1 {
            self.errors.push(Diagnostic {
                message: "too many errors: reading stopped here (fix the ones above first)".into(),
                ..diagnostic
            });
            self.stopped = true;
        }
    }

    /// Reports that `limit` was reached and stops reading.
    fn stop_at_limit(&mut self, diagnostic: Diagnostic) {
        self.errors.push(diagnostic);
        self.stopped = true;
    }

    fn parse_path(&mut self, path: &Path, origin: Name, included_from: Option<Location>) {
        let error_at = |message: String| match &included_from {
            Some(loc) => Diagnostic::at(loc.clone(), message),
            None => Diagnostic::file(path, message),
        };
        if self.stopped {
            return;
        }
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if self.include_stack.contains(&canonical) {
            self.error(error_at(format!(
                "$INCLUDE loop: {} includes itself",
                path.display()
            )));
            return;
        }
        if self.include_stack.len() >= MAX_INCLUDE_DEPTH {
            self.error(error_at(format!(
                "$INCLUDE nested deeper than {MAX_INCLUDE_DEPTH} files at {}",
                path.display()
            )));
            return;
        }
        if included_from.is_some() {
            self.includes_followed += 1;
            if self.includes_followed > self.limits.zone_includes {
                let limit = self.limits.zone_includes;
                self.stop_at_limit(error_at(format!(
                    "more than {limit} $INCLUDEs followed for this zone (limits.zone-includes = {limit}): reading stopped"
                )));
                return;
            }
            if self.never_include.contains(&canonical) {
                self.error(error_at(format!(
                    "$INCLUDE of {}: that is a TSIG key file, never read as zone text",
                    path.display()
                )));
                return;
            }
            if !self.include_roots.iter().any(|root| canonical.starts_with(root)) {
                self.error(error_at(format!(
                    "$INCLUDE of {}: outside the zone file's directory (list other directories in the zone's include-roots)",
                    path.display()
                )));
                return;
            }
        }
        let bytes = match super::read_file(path) {
            Ok(bytes) => bytes,
            Err(message) => {
                self.error(error_at(message));
                return;
            }
        };
        self.bytes_read += bytes.len() as u64;
        if self.bytes_read > self.limits.zone_bytes {
            let limit = self.limits.zone_bytes;
            self.stop_at_limit(error_at(format!(
                "more than {limit} bytes read for this zone, counting every $INCLUDE (limits.zone-bytes = {limit}): reading stopped"
            )));
            return;
        }
        self.include_stack.push(canonical);
        self.parse_bytes(&bytes, Arc::from(path), origin);
        self.include_stack.pop();
    }

    fn parse_bytes(&mut self, src: &[u8], file: Arc<Path>, mut origin: Name) {
        let mut lexer = Lexer { src, pos: 0, line: 1 };
        let mut last_owner: Option<Name> = None;
        while !self.stopped {
            let entry = match lexer.next_entry() {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err((line, message))) => {
                    self.error(Diagnostic::at(Location::new(file.clone(), line), message));
                    continue;
                }
            };
            let loc = Location::new(file.clone(), entry.line);
            if let Err(message) = self.parse_entry(entry, &loc, &mut origin, &mut last_owner) {
                self.error(Diagnostic::at(loc, message));
            }
        }
    }

    fn parse_entry(
        &mut self,
        entry: Entry,
        loc: &Location,
        origin: &mut Name,
        last_owner: &mut Option<Name>,
    ) -> Result<(), String> {
        let mut tokens = entry.tokens.into_iter().peekable();
        let first = tokens.peek().ok_or("empty entry")?;
        if !entry.inherits_owner && !first.quoted && first.text.first() == Some(&b'$') {
            let directive = text_of(&tokens.next().ok_or("empty entry")?)?.to_ascii_uppercase();
            return self.parse_directive(&directive, tokens.collect(), loc, origin);
        }
        let owner = if entry.inherits_owner {
            last_owner
                .clone()
                .ok_or("record with a blank owner but no previous owner to inherit")?
        } else {
            let token = tokens.next().ok_or("empty entry")?;
            let text = text_of(&token)?;
            if !text.is_ascii() {
                return Err(RAW_UTF8_NAME.into());
            }
            Name::parse(text, Some(origin)).map_err(name_error)?
        };
        *last_owner = Some(owner.clone());

        let mut ttl = None;
        let mut class = None;
        let rtype = loop {
            let token = tokens.next().ok_or("missing record type")?;
            let word = text_of(&token)?;
            if ttl.is_none() && word.as_bytes().first().is_some_and(u8::is_ascii_digit) {
                ttl = Some(parse_ttl(word)?);
            } else if class.is_none() && parse_class(word).is_some() {
                class = parse_class(word);
            } else {
                break rtype::from_mnemonic(word).ok_or_else(|| {
                    format!(
                        "unknown record type {} (write it as TYPEnnn \\# len hex per RFC 3597)",
                        quoted(word)
                    )
                })?;
            }
        };
        let class = class.unwrap_or(rtype::CLASS_IN);
        if class != rtype::CLASS_IN {
            return Err("only class IN is served from zone files".into());
        }
        let rest: Vec<Token> = tokens.collect();
        let rdata = parse_rdata(rtype, &rest, origin)?;
        let ttl = match ttl.or(self.default_ttl).or(self.last_ttl) {
            Some(ttl) => ttl,
            // RFC 2308 §4: without $TTL, BIND takes the SOA MINIMUM; do the same for the SOA itself.
            None if rtype == rtype::SOA => soa_minimum(&rdata).unwrap_or(0),
            None => return Err("no TTL given and no $TTL in effect".into()),
        };
        self.last_ttl = Some(ttl);
        if self.records.len() >= self.limits.zone_records {
            let limit = self.limits.zone_records;
            self.stop_at_limit(Diagnostic::at(
                loc.clone(),
                format!(
                    "more than {limit} records in this zone, counting every $INCLUDE (limits.zone-records = {limit}): reading stopped"
                ),
            ));
            return Ok(());
        }
        self.records.push(Record {
            name: owner,
            rtype,
            ttl,
            rdata,
            location: loc.clone(),
        });
        Ok(())
    }

    fn parse_directive(
        &mut self,
        directive: &str,
        args: Vec<Token>,
        loc: &Location,
        origin: &mut Name,
    ) -> Result<(), String> {
        match directive {
            "$ORIGIN" => {
                let [arg] = args.as_slice() else {
                    return Err("$ORIGIN takes exactly one name".into());
                };
                *origin = Name::parse(text_of(arg)?, Some(origin)).map_err(name_error)?;
                Ok(())
            }
            "$TTL" => {
                let [arg] = args.as_slice() else {
                    return Err("$TTL takes exactly one value".into());
                };
                self.default_ttl = Some(parse_ttl(text_of(arg)?)?);
                Ok(())
            }
            "$INCLUDE" => {
                let (file, include_origin) = match args.as_slice() {
                    [file] => (text_of(file)?, origin.clone()),
                    [file, name] => (
                        text_of(file)?,
                        Name::parse(text_of(name)?, Some(origin)).map_err(name_error)?,
                    ),
                    _ => return Err("$INCLUDE takes a file name and an optional origin".into()),
                };
                let base = loc.file.parent().unwrap_or(Path::new("."));
                let path = base.join(file);
                // RFC 1035 §5.1: the included file does not change the including file's origin.
                self.parse_path(&path, include_origin, Some(loc.clone()));
                Ok(())
            }
            other => Err(format!("unknown directive {other}")),
        }
    }
}

fn name_error(e: NameError) -> String {
    e.to_string()
}

fn text_of(token: &Token) -> Result<&str, String> {
    std::str::from_utf8(&token.text).map_err(|_| "invalid UTF-8 (use \\DDD escapes)".to_string())
}

fn parse_class(word: &str) -> Option<u16> {
    match word.to_ascii_uppercase().as_str() {
        "IN" => Some(rtype::CLASS_IN),
        "CH" => Some(3),
        "HS" => Some(4),
        "CS" => Some(2),
        w => w.strip_prefix("CLASS").and_then(|n| n.parse().ok()),
    }
}

/// A TTL in seconds or with BIND units (`1w2d3h4m5s`).
pub(crate) fn parse_ttl(word: &str) -> Result<u32, String> {
    let bad = || format!("bad TTL {}", quoted(word));
    if word.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in word.chars() {
        if let Some(d) = c.to_digit(10) {
            number = Some(number.unwrap_or(0).checked_mul(10).ok_or_else(bad)? + u64::from(d));
            if number > Some(u64::from(u32::MAX)) {
                return Err(bad());
            }
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            'w' => 604_800,
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        total += number.take().ok_or_else(bad)? * unit;
    }
    total += number.unwrap_or(0);
    if total > u64::from(MAX_TTL) {
        return Err(format!(
            "TTL {} is above the RFC 2181 limit of {MAX_TTL}",
            quoted(word)
        ));
    }
    Ok(total as u32)
}

fn soa_minimum(rdata: &[u8]) -> Option<u32> {
    let tail = rdata.get(rdata.len().checked_sub(4)?..)?;
    Some(u32::from_be_bytes(tail.try_into().ok()?))
}

fn parse_u16(token: Option<&Token>, what: &str) -> Result<u16, String> {
    let token = token.ok_or_else(|| format!("missing {what}"))?;
    text_of(token)?
        .parse()
        .map_err(|_| format!("bad {what} {}", quoted(&String::from_utf8_lossy(&token.text))))
}

fn parse_u8(token: Option<&Token>, what: &str) -> Result<u8, String> {
    let token = token.ok_or_else(|| format!("missing {what}"))?;
    text_of(token)?
        .parse()
        .map_err(|_| format!("bad {what} {}", quoted(&String::from_utf8_lossy(&token.text))))
}

fn parse_name(token: Option<&Token>, origin: &Name, what: &str) -> Result<Name, String> {
    let token = token.ok_or_else(|| format!("missing {what}"))?;
    Name::parse(text_of(token)?, Some(origin)).map_err(|e| format!("bad {what}: {e}"))
}

fn expect_count(tokens: &[Token], n: usize, rtype: u16) -> Result<(), String> {
    if tokens.len() != n {
        return Err(format!(
            "{} needs {n} fields, found {}",
            rtype::mnemonic(rtype),
            tokens.len()
        ));
    }
    Ok(())
}

/// Types whose RDATA this parser reads in text form (the arms of `parse_rdata`).
const HAS_TEXT_FORM: [u16; 11] = [
    rtype::A,
    rtype::AAAA,
    rtype::NS,
    rtype::CNAME,
    rtype::SOA,
    rtype::MX,
    rtype::TXT,
    rtype::SRV,
    rtype::CAA,
    rtype::PTR,
    rtype::DS,
];

/// Parses presentation RDATA into uncompressed wire RDATA.
fn parse_rdata(rtype: u16, tokens: &[Token], origin: &Name) -> Result<Vec<u8>, String> {
    if tokens.first().is_some_and(|t| !t.quoted && t.text == b"\\#") {
        // RFC 3597 §5 allows the generic form for known types, but their RDATA (domain names
        // the answers chase and compress) must be well-formed: a known type is written in its
        // own text form, which is checked.
        if HAS_TEXT_FORM.contains(&rtype) {
            return Err(format!(
                "write {} in its text form: the \\# form is for types without one (RFC 3597)",
                rtype::mnemonic(rtype)
            ));
        }
        return parse_generic(tokens);
    }
    let mut out = Vec::new();
    match rtype {
        rtype::A => {
            expect_count(tokens, 1, rtype)?;
            let addr: Ipv4Addr = text_of(&tokens[0])?.parse().map_err(|_| {
                format!(
                    "bad IPv4 address {}",
                    quoted(&String::from_utf8_lossy(&tokens[0].text))
                )
            })?;
            out.extend_from_slice(&addr.octets());
        }
        rtype::AAAA => {
            expect_count(tokens, 1, rtype)?;
            let addr: Ipv6Addr = text_of(&tokens[0])?.parse().map_err(|_| {
                format!(
                    "bad IPv6 address {}",
                    quoted(&String::from_utf8_lossy(&tokens[0].text))
                )
            })?;
            out.extend_from_slice(&addr.octets());
        }
        rtype::NS | rtype::CNAME | rtype::PTR | rtype::DNAME => {
            expect_count(tokens, 1, rtype)?;
            out.extend_from_slice(parse_name(tokens.first(), origin, "target name")?.wire());
        }
        rtype::MX => {
            expect_count(tokens, 2, rtype)?;
            out.extend_from_slice(&parse_u16(tokens.first(), "MX preference")?.to_be_bytes());
            out.extend_from_slice(parse_name(tokens.get(1), origin, "MX exchange")?.wire());
        }
        rtype::SRV => {
            expect_count(tokens, 4, rtype)?;
            for (i, what) in ["SRV priority", "SRV weight", "SRV port"].iter().enumerate() {
                out.extend_from_slice(&parse_u16(tokens.get(i), what)?.to_be_bytes());
            }
            out.extend_from_slice(parse_name(tokens.get(3), origin, "SRV target")?.wire());
        }
        rtype::TXT | rtype::SPF => {
            if tokens.is_empty() {
                return Err("TXT needs at least one string".into());
            }
            for token in tokens {
                let bytes = unescape(&token.text)?;
                if bytes.len() > 255 {
                    return Err("TXT string longer than 255 octets (split it into several strings)".into());
                }
                out.push(bytes.len() as u8);
                out.extend_from_slice(&bytes);
            }
        }
        rtype::CAA => {
            expect_count(tokens, 3, rtype)?;
            let flags = parse_u8(tokens.first(), "CAA flags")?;
            let tag = text_of(&tokens[1])?;
            if tag.is_empty() || tag.len() > 255 || !tag.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("bad CAA tag {}", quoted(tag)));
            }
            let value = unescape(&tokens[2].text)?;
            out.push(flags);
            out.push(tag.len() as u8);
            out.extend_from_slice(tag.as_bytes());
            out.extend_from_slice(&value);
        }
        rtype::SOA => {
            expect_count(tokens, 7, rtype)?;
            out.extend_from_slice(parse_name(tokens.first(), origin, "SOA MNAME")?.wire());
            out.extend_from_slice(parse_name(tokens.get(1), origin, "SOA RNAME")?.wire());
            let serial: u32 = text_of(&tokens[2])?.parse().map_err(|_| {
                format!(
                    "bad SOA serial {}",
                    quoted(&String::from_utf8_lossy(&tokens[2].text))
                )
            })?;
            out.extend_from_slice(&serial.to_be_bytes());
            for token in &tokens[3..] {
                out.extend_from_slice(&parse_ttl(text_of(token)?)?.to_be_bytes());
            }
        }
        rtype::DS => {
            if tokens.len() < 4 {
                return Err("DS needs key tag, algorithm, digest type and digest".into());
            }
            out.extend_from_slice(&parse_u16(tokens.first(), "DS key tag")?.to_be_bytes());
            out.push(parse_u8(tokens.get(1), "DS algorithm")?);
            out.push(parse_u8(tokens.get(2), "DS digest type")?);
            let hex: String = tokens[3..].iter().map(text_of).collect::<Result<_, _>>()?;
            out.extend_from_slice(&decode_hex(&hex)?);
        }
        _ => {
            return Err(format!(
                "type {} must be written in RFC 3597 form (\\# length hex)",
                rtype::mnemonic(rtype)
            ));
        }
    }
    if out.len() > usize::from(u16::MAX) {
        return Err("RDATA longer than 65535 octets".into());
    }
    Ok(out)
}

/// RFC 3597 §5: `\# <length> <hex...>`.
fn parse_generic(tokens: &[Token]) -> Result<Vec<u8>, String> {
    let length: usize = tokens
        .get(1)
        .ok_or("\\# needs a length")
        .and_then(|t| text_of(t).map_err(|_| "bad length"))?
        .parse()
        .map_err(|_| "bad \\# length".to_string())?;
    let hex: String = tokens[2..].iter().map(text_of).collect::<Result<_, _>>()?;
    let data = decode_hex(&hex)?;
    if data.len() != length || length > usize::from(u16::MAX) {
        return Err(format!(
            "\\# length {length} does not match {} octets of data",
            data.len()
        ));
    }
    Ok(data)
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("bad hex {}", quoted(hex)))
        })
        .collect()
}

/// Resolves `\X` and `\DDD` escapes of a character-string.
fn unescape(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let rest = &raw[i + 1..];
        if rest.len() >= 3 && rest[..3].iter().all(u8::is_ascii_digit) {
            let value =
                u32::from(rest[0] - b'0') * 100 + u32::from(rest[1] - b'0') * 10 + u32::from(rest[2] - b'0');
            out.push(u8::try_from(value).map_err(|_| "escape \\DDD above 255".to_string())?);
            i += 4;
        } else if let Some(&c) = rest.first() {
            out.push(c);
            i += 2;
        } else {
            return Err("dangling backslash".into());
        }
    }
    Ok(out)
}

/// Splits the source into entries (one record or directive, possibly over several lines in
/// parentheses), keeping the line where each entry starts.
struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    line: usize,
}

impl Lexer<'_> {
    fn next_entry(&mut self) -> Option<Result<Entry, (usize, String)>> {
        loop {
            if self.pos >= self.src.len() {
                return None;
            }
            let start_line = self.line;
            let inherits_owner = matches!(self.src[self.pos], b' ' | b'\t');
            match self.read_entry_tokens() {
                Ok(tokens) if tokens.is_empty() => continue,
                Ok(tokens) => {
                    return Some(Ok(Entry {
                        line: start_line,
                        inherits_owner,
                        tokens,
                    }));
                }
                Err(message) => {
                    self.skip_line();
                    return Some(Err((start_line, message)));
                }
            }
        }
    }

    fn skip_line(&mut self) {
        while self.pos < self.src.len() {
            let c = self.src[self.pos];
            self.pos += 1;
            if c == b'\n' {
                self.line += 1;
                return;
            }
        }
    }

    fn read_entry_tokens(&mut self) -> Result<Vec<Token>, String> {
        let mut tokens = Vec::new();
        let mut depth = 0usize;
        while self.pos < self.src.len() {
            let c = self.src[self.pos];
            match c {
                b'\n' => {
                    self.pos += 1;
                    self.line += 1;
                    if depth == 0 {
                        return Ok(tokens);
                    }
                }
                b' ' | b'\t' | b'\r' => self.pos += 1,
                b';' => {
                    while self.pos < self.src.len() && self.src[self.pos] != b'\n' {
                        self.pos += 1;
                    }
                }
                b'(' => {
                    depth += 1;
                    self.pos += 1;
                }
                b')' => {
                    depth = depth.checked_sub(1).ok_or("')' without a matching '('")?;
                    self.pos += 1;
                }
                b'"' => {
                    self.pos += 1;
                    let mut text = Vec::new();
                    loop {
                        let Some(&c) = self.src.get(self.pos) else {
                            return Err("unterminated quoted string".into());
                        };
                        self.pos += 1;
                        match c {
                            b'"' => break,
                            b'\n' => {
                                // Leave the newline to `skip_line`, so the next line is read.
                                self.pos -= 1;
                                return Err("newline inside a quoted string".into());
                            }
                            b'\\' => {
                                text.push(c);
                                if let Some(&next) = self.src.get(self.pos) {
                                    if next == b'\n' {
                                        self.line += 1;
                                    }
                                    text.push(next);
                                    self.pos += 1;
                                }
                            }
                            _ => text.push(c),
                        }
                    }
                    tokens.push(Token { text, quoted: true });
                }
                _ => {
                    let mut text = Vec::new();
                    while let Some(&c) = self.src.get(self.pos) {
                        if matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b';' | b'(' | b')' | b'"') {
                            break;
                        }
                        text.push(c);
                        self.pos += 1;
                        if c == b'\\' {
                            if let Some(&next) = self.src.get(self.pos) {
                                if next == b'\n' {
                                    return Err("backslash at the end of a line".into());
                                }
                                text.push(next);
                                self.pos += 1;
                            }
                        }
                    }
                    tokens.push(Token { text, quoted: false });
                }
            }
        }
        if depth > 0 {
            return Err("unbalanced '(' at end of file".into());
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Record>, Vec<Diagnostic>> {
        let origin = Name::parse("example.", None).expect("origin");
        parse_str(text, Path::new("test.zone"), &origin)
    }

    #[test]
    fn raw_utf8_owner_names_are_refused_as_in_members_files() {
        let errors = parse("$TTL 1h\nbücher A 192.0.2.1\nxn--bcher-kva A 192.0.2.2\n").expect_err("refused");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, Some(2));
        assert!(
            errors[0].message.contains("A-label (xn--"),
            "{}",
            errors[0].message
        );
        let origin = Name::parse("example.", None).expect("origin");
        let members = "[[member]]\nlabel = \"bücher\"\ntarget = \"a.example.net\"\n";
        let errors = crate::zone::members::parse(members, Path::new("m.toml"), &origin, &Default::default())
            .expect_err("refused");
        assert!(
            errors[0].message.contains("A-label (xn--"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn parses_common_syntax() {
        let records = parse(
            "$TTL 1h\n@ IN SOA ns1 hostmaster ( 1 ; serial\n 2h 1h 1w 5m )\n  NS ns1\nns1 300 A 192.0.2.1\n\
             txt TXT \"a b\" c \"\\065\\\"\"\nsrv IN 60 SRV 1 2 443 ns1\nx TYPE65534 \\# 2 abcd\n",
        )
        .expect("parses");
        assert_eq!(records.len(), 6);
        assert_eq!(records[0].rtype, rtype::SOA);
        assert_eq!(records[0].ttl, 3600);
        assert_eq!(records[0].location.line, 2);
        assert_eq!(records[1].name.to_string(), "example.");
        assert_eq!(records[1].location.line, 4);
        assert_eq!(records[2].ttl, 300);
        assert_eq!(records[3].rdata, b"\x03a b\x01c\x02A\"");
        assert_eq!(records[4].ttl, 60);
        assert_eq!(records[5].rtype, 65534);
        assert_eq!(records[5].rdata, vec![0xab, 0xcd]);
    }

    #[test]
    fn reports_errors_with_lines_and_continues() {
        let errors = parse("$TTL 60\n@ SOA a b 1 2 3 4 5\nbad A 300.1.1.1\nok A 1.2.3.4\nq BOGUS x\n")
            .expect_err("has errors");
        let lines: Vec<usize> = errors.iter().map(|e| e.line.unwrap_or(0)).collect();
        assert_eq!(lines, vec![3, 5]);
        assert!(
            errors[0].to_string().starts_with("test.zone:3: bad IPv4 address"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("1h30m"), Ok(5400));
        assert_eq!(parse_ttl("1W"), Ok(604_800));
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("4294967295").is_err());
    }
}
