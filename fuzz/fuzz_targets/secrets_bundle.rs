#![no_main]
//! Secrets bundles are read from disk and from users (`osctl gen config --from`).

use basalt_pki::SecretsBundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bundle) = SecretsBundle::from_yaml(text) {
        // A bundle that was read writes back, and reads again to itself.
        let yaml = bundle.to_yaml().expect("a checked bundle encodes");
        assert_eq!(SecretsBundle::from_yaml(&yaml).expect("round trip"), bundle);
    }
});
