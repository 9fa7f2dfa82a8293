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
        write!(f, "{}:{}", self.file.display(), self.line)
    }
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
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
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
