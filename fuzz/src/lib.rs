//! Shared pieces of the fuzz targets: an independent response check (`check`) and what one
//! input runs (`harness`). `tests/it/hostile.rs` includes both files for its stable smoke fuzz.

pub mod check;
pub mod harness;
