//! Member health: probe settings now; probes and their state machine land with the pick issue.

pub mod spec;
