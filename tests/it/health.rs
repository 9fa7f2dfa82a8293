//! Health checks and the weighted pick of the shared name (issue 4).
