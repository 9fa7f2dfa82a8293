//! Hostile input and overload: malformed packets, TCP exhaustion, RRL, bad files (issue 7).
