#![no_main]
//! Patches come from users (`--config-patch`, `osctl machineconfig patch`).

use basalt_machine_config::{Config, Patch};
use libfuzzer_sys::fuzz_target;

const BASE: &str = include_str!("../../pkg/machine-config/testdata/controlplane.yaml");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(base) = Config::parse(BASE) else {
        return;
    };
    if let Ok(patch) = Patch::parse(text) {
        let _ = base.patch(&patch);
    }
});
