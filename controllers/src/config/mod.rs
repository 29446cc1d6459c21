//! Config domain: the one place on the node that reads the machine config. It parses the
//! config in effect once and publishes what each other domain needs as typed resources;
//! every other controller reads those, never the YAML.

mod machine_config;

pub use machine_config::MachineConfigController;
