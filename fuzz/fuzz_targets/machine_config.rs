#![no_main]
//! Configs come from users (`osctl apply-config`), the kernel command line, platforms.

use basalt_machine_config::{Config, Mode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((config, source)) = Config::parse_with_source(text) {
        for mode in [Mode::Metal, Mode::Cloud, Mode::Container] {
            let _ = config.validate_with_source(mode, Some(&source));
        }
        // What parses, writes back and parses to the same config.
        let yaml = config.to_yaml().expect("a parsed config encodes");
        assert_eq!(Config::parse(&yaml).expect("round trip"), config);
        let _ = config.digest();
        let _ = config.redacted().diff(&config);
    }
});
