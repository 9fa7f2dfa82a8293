//! Behaviour of the authoritative core (issue 3).
