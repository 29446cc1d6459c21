#![no_main]
//! The kernel command line is set by whoever boots the node.

use basalt_resources::runtime::KernelCmdlineSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = KernelCmdlineSpec::parse(&text);
    let _ = parsed.get("basalt.hostname");
});
