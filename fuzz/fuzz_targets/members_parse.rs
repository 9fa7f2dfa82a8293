//! The members-file parser: any text (invalid UTF-8 replaced) must parse or fail with errors
//! that each carry file:line; never panic.
#![no_main]

use std::path::Path;

use consortium_dns::health::spec::HealthSettings;
use consortium_dns::zone::members;
use consortium_dns_fuzz::harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new(harness::MEMBERS_PATH);
    if let Err(errors) = members::parse(&text, path, &harness::origin(), &HealthSettings::default()) {
        harness::check_diagnostics(&errors, path, &text).unwrap_or_else(|e| panic!("{e}"));
    }
});
