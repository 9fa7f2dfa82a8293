//! The members file (`zones/<zone>.members.toml`): one `[[member]]` per node, each becoming the
//! node's CNAME, and the `[[pool]]` shared names that pick among them.
//!
//! Adding a node is one `[[member]]` table in this one file. Errors carry file:line.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::name::Name;
use super::{Diagnostic, Location, Record, rtype};
use crate::config::LineIndex;
use crate::health::spec::{HealthSettings, ProbeSpec};

/// TTL of a member's CNAME when neither the member nor the file says.
pub const DEFAULT_MEMBER_TTL: u32 = 300;
/// TTL of a pool's picked CNAME when the pool does not say.
pub const DEFAULT_POOL_TTL: u32 = 30;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MembersFile {
    /// TTL of each member's CNAME unless the member sets `ttl`. Default 300.
    #[serde(default = "default_member_ttl")]
    member_ttl: u32,
    #[serde(default, rename = "pool")]
    pools: Vec<toml::Spanned<PoolSection>>,
    #[serde(default, rename = "member")]
    members: Vec<toml::Spanned<MemberSection>>,
}

fn default_member_ttl() -> u32 {
    DEFAULT_MEMBER_TTL
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PoolSection {
    /// The shared name relative to the zone, e.g. `any`.
    label: String,
    /// TTL of the picked CNAME. Default 30.
    #[serde(default)]
    ttl: Option<u32>,
    /// Labels of the members it draws from. Default: every member.
    #[serde(default)]
    members: Option<Vec<String>>,
    /// What a certificate that does not cover this name, or has expired, does: `report` (only
    /// reported) or `strict` (the member is not picked for this pool). Default `report`.
    #[serde(default)]
    cert_policy: CertPolicy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MemberSection {
    /// The node's name relative to the zone, e.g. `node1`.
    label: String,
    /// The node's own hostname, e.g. `node1.operator-a.com`.
    target: String,
    /// Relative share of the pool's picks; 0 = listed, never picked. Default 1.
    #[serde(default = "default_weight")]
    weight: u32,
    /// TTL of this member's CNAME. Default: the file's `member-ttl`.
    #[serde(default)]
    ttl: Option<u32>,
    /// Health-check settings over the config's `[health]` defaults.
    #[serde(default)]
    health: HealthSettings,
}

fn default_weight() -> u32 {
    1
}

/// How a pool treats a member whose certificate does not cover the pool's name or has expired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertPolicy {
    #[default]
    Report,
    Strict,
}

/// One member node.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The label as written (`node1`).
    pub label: String,
    /// Absolute node name (`node1.consortium.example.`).
    pub name: Name,
    /// The node's own hostname.
    pub target: Name,
    pub weight: u32,
    pub ttl: u32,
    /// Shared between members with the same settings (most of them), to keep memory per
    /// member small.
    pub probe: Arc<ProbeSpec>,
    pub location: Location,
}

impl Member {
    /// The member's own CNAME record.
    pub fn cname_record(&self) -> Record {
        Record {
            name: self.name.clone(),
            rtype: rtype::CNAME,
            ttl: self.ttl,
            rdata: self.target.wire().to_vec(),
            location: self.location.clone(),
        }
    }
}

/// A shared name picking among members.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolDef {
    pub label: String,
    pub name: Name,
    pub ttl: u32,
    /// Indexes into the zone's member list.
    pub members: Vec<usize>,
    pub cert_policy: CertPolicy,
    pub location: Location,
}

/// Reads and validates a members file for the zone `origin`.
pub fn load(
    path: &Path,
    origin: &Name,
    health_defaults: &HealthSettings,
) -> Result<(Vec<Member>, Vec<PoolDef>), Vec<Diagnostic>> {
    let bytes = super::read_file(path)
        .map_err(|reason| vec![Diagnostic::file(path, format!("members file: {reason}"))])?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // Point at the line of the first bad byte, like every other error in this file.
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&c| c == b'\n').count() + 1;
        vec![Diagnostic::at(
            Location::new(Arc::from(path), line),
            "invalid UTF-8 (a members file is UTF-8 text)",
        )]
    })?;
    parse(&text, path, origin, health_defaults)
}

/// Parses members-file text as if read from `path`.
pub fn parse(
    text: &str,
    path: &Path,
    origin: &Name,
    health_defaults: &HealthSettings,
) -> Result<(Vec<Member>, Vec<PoolDef>), Vec<Diagnostic>> {
    let file: MembersFile = toml::from_str(text).map_err(|e| vec![Diagnostic::toml(path, text, &e)])?;
    let file_path: Arc<Path> = Arc::from(path);
    let lines = LineIndex::new(text);
    let at = |offset: usize| Location::new(file_path.clone(), lines.line(offset));
    let mut errors = Vec::new();
    let mut members: Vec<Member> = Vec::with_capacity(file.members.len());
    let mut specs: std::collections::HashSet<Arc<ProbeSpec>> = std::collections::HashSet::new();
    // Lowercased member name -> index: duplicate checks stay O(1) at 100,000 members.
    let mut by_name: std::collections::HashMap<Box<[u8]>, usize> = std::collections::HashMap::new();

    for spanned in &file.members {
        let location = at(spanned.span().start);
        let section = spanned.get_ref();
        let mut fail = |message: String| errors.push(Diagnostic::at(location.clone(), message));
        let name = match relative_label(&section.label, origin) {
            Ok(name) => name,
            Err(reason) => {
                fail(format!("member label {:?}: {reason}", section.label));
                continue;
            }
        };
        if let Some(first) = by_name.get(&name.key()).map(|&i| &members[i]) {
            fail(format!(
                "duplicate member label {:?} (first at {})",
                section.label, first.location
            ));
            continue;
        }
        let target = match hostname(&section.target) {
            Ok(target) => target,
            Err(reason) => {
                fail(format!(
                    "member {:?}: target {:?} {reason}",
                    section.label, section.target
                ));
                continue;
            }
        };
        if target.key() == name.key() {
            fail(format!("member {:?} points at itself", section.label));
            continue;
        }
        let mut probe = match section.health.or(health_defaults).resolve() {
            Ok(probe) => probe,
            Err(reason) => {
                fail(format!("member {:?} health: {reason}", section.label));
                continue;
            }
        };
        // A relative CA path follows the members file, like every path in our files.
        if let Some(ca) = probe.ca_file.as_mut().filter(|ca| ca.is_relative()) {
            *ca = path.parent().unwrap_or(Path::new(".")).join(&*ca);
        }
        by_name.insert(name.key(), members.len());
        let probe = match specs.get(&probe) {
            Some(shared) => shared.clone(),
            None => {
                let shared = Arc::new(probe);
                specs.insert(shared.clone());
                shared
            }
        };
        members.push(Member {
            label: section.label.clone(),
            name,
            target,
            weight: section.weight,
            ttl: section.ttl.unwrap_or(file.member_ttl),
            probe,
            location,
        });
    }

    let mut pools: Vec<PoolDef> = Vec::new();
    for spanned in &file.pools {
        let location = at(spanned.span().start);
        let section = spanned.get_ref();
        let mut fail = |message: String| errors.push(Diagnostic::at(location.clone(), message));
        let name = match relative_label(&section.label, origin) {
            Ok(name) => name,
            Err(reason) => {
                fail(format!("pool label {:?}: {reason}", section.label));
                continue;
            }
        };
        if by_name.contains_key(&name.key()) {
            fail(format!("pool label {:?} is also a member label", section.label));
            continue;
        }
        if pools.iter().any(|p| p.name.key() == name.key()) {
            fail(format!("duplicate pool label {:?}", section.label));
            continue;
        }
        let indexes = match &section.members {
            None => (0..members.len()).collect(),
            Some(labels) => {
                let mut indexes = Vec::new();
                for label in labels {
                    let index = relative_label(label, origin)
                        .ok()
                        .and_then(|n| by_name.get(&n.key()).copied());
                    match index {
                        Some(i) if !indexes.contains(&i) => indexes.push(i),
                        Some(_) => fail(format!("pool {:?} lists member {label:?} twice", section.label)),
                        None => fail(format!(
                            "pool {:?} names a missing member {label:?}",
                            section.label
                        )),
                    }
                }
                indexes
            }
        };
        pools.push(PoolDef {
            label: section.label.clone(),
            name,
            ttl: section.ttl.unwrap_or(DEFAULT_POOL_TTL),
            members: indexes,
            cert_policy: section.cert_policy,
            location,
        });
    }

    if errors.is_empty() {
        Ok((members, pools))
    } else {
        Err(errors)
    }
}

/// A label (or dotted relative name) below the zone, made of hostname labels.
fn relative_label(label: &str, origin: &Name) -> Result<Name, String> {
    if label.is_empty() || label.ends_with('.') || label == "@" {
        return Err("must be a name relative to the zone, such as \"node1\"".into());
    }
    let name = Name::parse(label, Some(origin)).map_err(|e| e.to_string())?;
    if !name.is_hostname() {
        return Err("is not a valid hostname label (letters, digits, inner hyphens)".into());
    }
    Ok(name)
}

/// A target hostname; a missing trailing dot still means the absolute name.
fn hostname(text: &str) -> Result<Name, String> {
    let absolute = if text.ends_with('.') {
        text.to_string()
    } else {
        format!("{text}.")
    };
    let name = Name::parse(&absolute, None).map_err(|e| format!("is not a valid name: {e}"))?;
    if name.label_count() < 2 || !name.is_hostname() {
        return Err("is not a valid hostname".into());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_members(text: &str) -> Result<(Vec<Member>, Vec<PoolDef>), Vec<String>> {
        let origin = Name::parse("consortium.example.", None).expect("origin");
        parse(text, Path::new("m.toml"), &origin, &HealthSettings::default())
            .map_err(|errs| errs.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn parses_members_and_pool() {
        let (members, pools) = parse_members(
            "[[pool]]\nlabel = \"any\"\n\n[[member]]\nlabel = \"node1\"\ntarget = \"node1.operator-a.com\"\nweight = 3\n\
             [member.health]\nkind = \"none\"\n\n[[member]]\nlabel = \"node2\"\ntarget = \"api.operator-b.net.\"\n",
        )
        .expect("valid");
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].name.to_string(), "node1.consortium.example.");
        assert_eq!(members[0].target.to_string(), "node1.operator-a.com.");
        assert_eq!(members[0].weight, 3);
        assert_eq!(members[1].weight, 1);
        assert_eq!(members[1].ttl, DEFAULT_MEMBER_TTL);
        assert_eq!(pools[0].members, vec![0, 1]);
        assert_eq!(pools[0].ttl, DEFAULT_POOL_TTL);
        assert_eq!(members[1].location.line, 11);
    }

    #[test]
    fn reports_errors_with_lines() {
        let errs = parse_members(
            "[[member]]\nlabel = \"node1\"\ntarget = \"a.com\"\n[[member]]\nlabel = \"node1\"\ntarget = \"b.com\"\n",
        )
        .expect_err("duplicate");
        assert!(
            errs[0].starts_with("m.toml:4: duplicate member label"),
            "{errs:?}"
        );
        let errs =
            parse_members("[[member]]\nlabel = \"n\"\ntarget = \"bad_host.com\"\n").expect_err("bad target");
        assert!(errs[0].contains("not a valid hostname"), "{errs:?}");
        let errs =
            parse_members("[[member]]\nlabel = \"n\"\ntarget = \"a.com\"\nwieght = 2\n").expect_err("typo");
        assert!(errs[0].starts_with("m.toml:"), "{errs:?}");
        assert!(errs[0].contains("wieght"), "{errs:?}");
        let errs = parse_members("[[pool]]\nlabel = \"any\"\nmembers = [\"ghost\"]\n").expect_err("missing");
        assert!(errs[0].contains("missing member \"ghost\""), "{errs:?}");
        let errs = parse_members(
            "[[member]]\nlabel = \"n\"\ntarget = \"a.com\"\n[member.health]\nkind = \"smtp\"\n",
        )
        .expect_err("bad kind");
        assert!(errs[0].starts_with("m.toml:5:"), "{errs:?}");
    }
}
