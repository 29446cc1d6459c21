/// Declares the one-value type of a document's `kind` field, so that a document of one
/// kind cannot be read as another.
macro_rules! kind_tag {
    ($name:ident => $kind:literal) => {
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Default,
            serde::Serialize,
            serde::Deserialize,
            schemars::JsonSchema,
        )]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub enum $name {
            #[default]
            #[serde(rename = $kind)]
            Tag,
        }

        impl $name {
            pub const KIND: &'static str = $kind;
        }
    };
}
