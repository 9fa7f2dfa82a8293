//! Hot reload (issue 5).
