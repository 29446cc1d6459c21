#![no_main]
//! Resource documents arrive from users (`osctl apply`) and from disk.

use basalt_resources::meta::builtin_registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let registry = builtin_registry().expect("built-in types register");
    if let Ok(resource) = registry.decode_yaml(text) {
        // A decoded resource encodes, and decodes again to itself.
        let yaml = resource.to_yaml().expect("a decoded resource encodes");
        assert_eq!(registry.decode_yaml(&yaml).expect("round trip"), resource);
    }
});
