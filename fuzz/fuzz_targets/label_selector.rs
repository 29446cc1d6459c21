#![no_main]
//! Label selectors come from `osctl get -l` and API requests.

use basalt_resource::LabelQuery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(query) = LabelQuery::parse(text) {
            // What we print, we parse back to the same query.
            let again = LabelQuery::parse(&query.to_string()).expect("printed selector parses");
            assert_eq!(again, query);
        }
    }
});
