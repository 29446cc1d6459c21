#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bundles come from disk and from users: reading one never panics, whatever it holds.

use std::sync::OnceLock;

use basalt_pki::SecretsBundle;
use proptest::prelude::*;

fn valid_yaml() -> &'static str {
    static YAML: OnceLock<String> = OnceLock::new();
    YAML.get_or_init(|| SecretsBundle::generate().unwrap().to_yaml().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = SecretsBundle::from_yaml(&text);
    }

    #[test]
    fn yaml_shaped_text_never_panics(text in "(cluster|certs|os|k8s|crt|key|id|secret|bootstrapToken|[:{}\\[\\]|>&*!-]| |\n|-----BEGIN CERTIFICATE-----|[A-Za-z0-9+/=]){0,200}") {
        let _ = SecretsBundle::from_yaml(&text);
    }

    /// A real bundle with one byte replaced is refused or read, never a panic; when it
    /// is read, it encodes back to YAML that reads again.
    #[test]
    fn mutated_bundles_never_panic(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = valid_yaml().as_bytes().to_vec();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Ok(bundle) = SecretsBundle::from_yaml(text) {
                let again = SecretsBundle::from_yaml(&bundle.to_yaml().unwrap()).unwrap();
                prop_assert_eq!(again, bundle);
            }
        }
    }
}
