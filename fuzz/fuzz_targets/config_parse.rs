//! The config file, as a reload reads it: any text parses or fails with errors that each name
//! the config file; never a panic. (Files the config names do not exist here: each is an error
//! like any other.)
#![no_main]

use std::path::Path;

use consortium_dns::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/nonexistent/fuzz/config/consortium-dns.toml");
    if let Err(errors) = Config::parse(&text, path) {
        assert!(!errors.is_empty(), "an Err with no diagnostics");
        for e in &errors {
            assert!(
                e.file.starts_with("/nonexistent/fuzz"),
                "an error about a file outside the tree: {e}"
            );
        }
    }
});
