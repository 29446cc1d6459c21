#![no_main]
//! The protobuf form arrives over the API and is what persistent state stores.

use basalt_resources::meta::builtin_registry;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let registry = builtin_registry().expect("built-in types register");
    if let Ok(message) = basalt_resource::proto::Resource::decode(data) {
        let _ = registry.decode_proto(message);
    }
});
