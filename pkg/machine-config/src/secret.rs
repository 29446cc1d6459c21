use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a redacted secret reads as.
pub const REDACTED: &str = "******";

/// A secret value in a config document (a key, a token). It is written to config files
/// as it is, but `Debug` never shows it, and [`crate::Config::redacted`] replaces it for
/// any display meant for readers.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(transparent)]
pub struct Secret(#[cfg_attr(test, proptest(strategy = "crate::arbitrary::text()"))] String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: only for writing it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces a set secret with [`REDACTED`]; an empty one stays empty.
    pub fn redact(&mut self) {
        if !self.0.is_empty() {
            self.0 = REDACTED.to_string();
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(\"\")")
        } else {
            f.write_str("Secret(<redacted>)")
        }
    }
}

/// A PEM certificate and (where this node needs it) its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertKey {
    #[cfg_attr(test, proptest(strategy = "crate::arbitrary::text()"))]
    pub crt: String,
    #[serde(default, skip_serializing_if = "Secret::is_empty")]
    pub key: Secret,
}
