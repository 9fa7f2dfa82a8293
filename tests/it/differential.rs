//! Differential test against NSD (issue 3).
