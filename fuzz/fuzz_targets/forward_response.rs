#![no_main]
//! apid labels the answers other nodes send before merging them: those bytes are outside
//! input. Malformed ones must be an error, never a panic; well-formed ones must come out
//! with every item labelled with the node.

use basalt_api::machine::v1::VersionResponse;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut out = BytesMut::new();
    if apid::label_items(data, "node-a", &mut out).is_err() {
        return;
    }
    // Items that are not VersionResults may not decode as one; those that do carry the
    // label (the appended metadata wins over any the node sent).
    if let Ok(merged) = VersionResponse::decode(out.freeze()) {
        for item in merged.messages {
            assert_eq!(item.metadata.map(|m| m.node).as_deref(), Some("node-a"));
        }
    }
});
