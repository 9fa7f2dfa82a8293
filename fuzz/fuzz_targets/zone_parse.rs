//! The master-file parser: any text (invalid UTF-8 replaced) must parse or fail with errors
//! that each carry file:line; never panic or hang.
#![no_main]

use std::path::Path;

use consortium_dns::zone::master;
use consortium_dns_fuzz::harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new(harness::ZONE_PATH);
    if let Err(errors) = master::parse_str(&text, path, &harness::origin()) {
        harness::check_diagnostics(&errors, path, &text).unwrap_or_else(|e| panic!("{e}"));
    }
});
