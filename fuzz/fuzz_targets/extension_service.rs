#![no_main]
//! An extension service's description comes with an image layer, from whoever built it.

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = machined::extension_services::parse(Path::new("/system/extensions/x"), "x", &text);
});
