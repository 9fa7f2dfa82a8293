//! Zone transfers to standard secondaries, NOTIFY and TSIG (issue 8).
