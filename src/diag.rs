//! Diagnostics: where something was written (`file:line`) and what is wrong with it.
//!
//! Config, zone and members parsers all report through these types, so one error format
//! reaches the operator whatever file it is about. A leaf: it imports nothing of the crate.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Where something was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<Path>,
    pub line: usize,
}

impl Location {
    pub fn new(file: Arc<Path>, line: usize) -> Location {
        Location { file, line }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", shown(&self.file).display(), self.line)
    }
}

/// `path` as an operator reads it in a message: `config/../zones/a.zone` (a config's
/// relative path joined to its directory) shown as `zones/a.zone`. Only for display: files
/// are opened by the path as joined, so a symlinked directory still resolves as the system
/// resolves it.
pub fn shown(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for component in path.components() {
        match (component, out.last()) {
            (Component::CurDir, Some(_)) => {}
            (Component::ParentDir, Some(Component::Normal(_))) => {
                out.pop();
            }
            _ => out.push(component),
        }
    }
    if out.is_empty() {
        return std::path::PathBuf::from(".");
    }
    out.iter().collect()
}

/// A problem found in a file, shown as `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: Arc<Path>,
    pub line: Option<usize>,
    pub message: String,
}

impl Diagnostic {
    pub fn at(location: Location, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: location.file,
            line: Some(location.line),
            message: message.into(),
        }
    }

    pub fn file(path: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: Arc::from(path),
            line: None,
            message: message.into(),
        }
    }

    /// A TOML syntax or schema error, placed on the line its span starts.
    pub fn toml(path: &Path, text: &str, error: &toml::de::Error) -> Diagnostic {
        let line = error.span().map(|span| line_of(text, span.start));
        Diagnostic {
            file: Arc::from(path),
            line,
            message: error.message().trim().to_string(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", shown(&self.file).display(), line, self.message),
            None => write!(f, "{}: {}", shown(&self.file).display(), self.message),
        }
    }
}

/// Characters of offending text an error message quotes at most: enough to find the spot,
/// too few to carry a secret out of a file that should never have been read as zone text.
pub const QUOTE_PREFIX_CHARS: usize = 16;

/// `text` quoted for an error message: at most `QUOTE_PREFIX_CHARS` characters, escaped as
/// Rust's `{:?}` does, and `…` with the full length when cut.
pub fn quoted(text: &str) -> String {
    let count = text.chars().count();
    if count <= QUOTE_PREFIX_CHARS {
        return format!("{text:?}");
    }
    let prefix: String = text.chars().take(QUOTE_PREFIX_CHARS).collect();
    format!("{prefix:?}… ({count} characters)")
}

/// Keeps the first `per_file` diagnostics of each file and replaces the rest by one line per
/// file saying how many more there were: a file of a million bad lines must not make a
/// million log lines, nor a reload report of hundreds of megabytes.
pub fn cap_per_file(diagnostics: Vec<Diagnostic>, per_file: usize) -> Vec<Diagnostic> {
    // Per file: how many, and where the first one left out is (the count is reported there).
    let mut seen: Vec<(Arc<Path>, usize, Option<usize>)> = Vec::new();
    let mut kept = Vec::with_capacity(diagnostics.len().min(per_file.saturating_mul(4)));
    for diagnostic in diagnostics {
        let index = match seen.iter().position(|(file, ..)| *file == diagnostic.file) {
            Some(index) => index,
            None => {
                seen.push((diagnostic.file.clone(), 0, None));
                seen.len() - 1
            }
        };
        let entry = &mut seen[index];
        entry.1 += 1;
        if entry.1 <= per_file {
            kept.push(diagnostic);
        } else if entry.1 == per_file + 1 {
            entry.2 = diagnostic.line;
        }
    }
    for (file, count, first_left_out) in seen {
        if count > per_file {
            kept.push(Diagnostic {
                file,
                line: first_left_out,
                message: format!(
                    "{} more errors not shown, from here on (limits.errors-per-file = {per_file})",
                    count - per_file
                ),
            });
        }
    }
    kept
}

/// The 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    LineIndex::new(text).line(offset)
}

/// Line starts of a text, so that many offsets (one per member of a 100,000-member file) map
/// to lines in O(log n) each instead of rescanning the text.
pub struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|(_, c)| *c == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// The 1-based line holding byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_paths_drop_a_directory_and_its_dot_dot() {
        let cases = [
            ("config/../zones/a.zone", "zones/a.zone"),
            ("/etc/dns/config/../zones/./a.zone", "/etc/dns/zones/a.zone"),
            ("../zones/a.zone", "../zones/a.zone"),
            ("a/../../b", "../b"),
            ("config/..", "."),
        ];
        for (path, want) in cases {
            assert_eq!(shown(Path::new(path)), Path::new(want), "{path}");
        }
    }

    #[test]
    fn quotes_only_a_prefix_of_long_text() {
        assert_eq!(quoted("short"), "\"short\"");
        let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==";
        let shown = quoted(secret);
        assert!(shown.starts_with("\"c2VjcmV0LXNlY3Jl\"…"), "{shown}");
        assert!(!shown.contains("LXNlY3JldC1zZWNyZXQt"), "{shown}");
    }

    #[test]
    fn caps_errors_per_file_with_a_count() {
        let at = |file: &str, line| Diagnostic::at(Location::new(Arc::from(Path::new(file)), line), "bad");
        let many: Vec<Diagnostic> = (1..=10).map(|l| at("a", l)).chain([at("b", 1)]).collect();
        let capped = cap_per_file(many, 3);
        let lines: Vec<String> = capped.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "a:1: bad",
                "a:2: bad",
                "a:3: bad",
                "b:1: bad",
                "a:4: 7 more errors not shown, from here on (limits.errors-per-file = 3)"
            ]
        );
    }

    #[test]
    fn offsets_map_to_lines() {
        let index = LineIndex::new("a\nbb\n\nc");
        assert_eq!(index.line(0), 1);
        assert_eq!(index.line(2), 2);
        assert_eq!(index.line(5), 3);
        assert_eq!(index.line(6), 4);
        assert_eq!(
            Diagnostic::at(Location::new(Arc::from(Path::new("z")), 4), "bad").to_string(),
            "z:4: bad"
        );
    }
}
