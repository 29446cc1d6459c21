#![allow(clippy::unwrap_used, clippy::expect_used)]

use basalt_resource::{
    AnyResource, Registry, Resource, ResourceDefinitionSpec, ResourceError, ResourceSpec,
};
use basalt_resources::meta::builtin_registry;
use basalt_resources::network::{HostnameSource, HostnameSpec};
use basalt_resources::runtime::KernelCmdlineSpec;
use prost::Message;

fn hostname() -> AnyResource {
    let mut r = Resource::new(
        HostnameSpec::ID,
        HostnameSpec::from_fqdn("n1.example.org", HostnameSource::Config).unwrap(),
    )
    .with_label("role", "controlplane");
    r.metadata.version = 3;
    r.metadata.owner = "network.HostnameController".into();
    r.metadata
        .finalizers
        .insert("k8s.NodenameController".into());
    r.into_any()
}

#[test]
fn yaml_round_trip_keeps_metadata_and_spec() {
    let registry = builtin_registry().unwrap();
    let res = hostname();
    let yaml = res.to_yaml().unwrap();
    assert!(yaml.contains("type: Hostnames.net.basalt.dev"), "{yaml}");
    assert!(yaml.contains("hostname: n1"), "{yaml}");
    let back = registry.decode_yaml(&yaml).unwrap();
    assert_eq!(back, res);
}

#[test]
fn proto_round_trip_through_bytes() {
    let registry = builtin_registry().unwrap();
    let res = hostname();
    let bytes = res.to_proto().unwrap().encode_to_vec();
    let message = basalt_resource::proto::Resource::decode(bytes.as_slice()).unwrap();
    assert_eq!(registry.decode_proto(message).unwrap(), res);
}

#[test]
fn deep_equality_ignores_version_and_time_only() {
    let a = hostname();
    let mut b = a.clone();
    b.metadata.version = 9;
    b.metadata.updated += time::Duration::seconds(5);
    assert!(a.same_content(&b));
    b.spec = std::sync::Arc::new(
        HostnameSpec::from_fqdn("n2.example.org", HostnameSource::Config).unwrap(),
    );
    assert!(!a.same_content(&b));
    let mut c = a.clone();
    c.metadata.labels.insert("x".into(), "y".into());
    assert!(!a.same_content(&c));
}

#[test]
fn typed_view_checks_the_type() {
    let any = hostname();
    let typed: Resource<HostnameSpec> = (&any).try_into().unwrap();
    assert_eq!(typed.spec.hostname, "n1");
    let err = Resource::<KernelCmdlineSpec>::try_from(&any).unwrap_err();
    assert!(matches!(err, ResourceError::TypeMismatch { .. }), "{err}");
}

#[test]
fn registry_resolves_aliases_and_rejects_duplicates() {
    let mut registry = builtin_registry().unwrap();
    for name in [
        "hostname",
        "Hostnames",
        "hostnames.net",
        "hostnames.net.basalt.dev",
    ] {
        assert_eq!(
            registry.resolve(name).unwrap().type_name,
            "Hostnames.net.basalt.dev",
            "{name}"
        );
    }
    assert_eq!(
        registry.resolve("rd").unwrap().type_name,
        <ResourceDefinitionSpec as basalt_resource::ResourceSpec>::TYPE
    );
    assert!(matches!(
        registry.register::<HostnameSpec>(),
        Err(ResourceError::DuplicateType(_))
    ));
    assert!(matches!(
        registry.resolve("nope"),
        Err(ResourceError::UnknownType(_))
    ));
    let def = registry.resolve("cmdline").unwrap();
    assert_eq!(def.display_type, "KernelCmdline");
    assert_eq!(def.print_columns[0].name, "Cmdline");
}

#[test]
fn alias_conflicts_are_rejected() {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, ResourceSpec)]
    #[resource(type = "Hostnames.other.basalt.dev", namespace = "network")]
    struct Other;
    let mut registry = builtin_registry().unwrap();
    let err = registry.register::<Other>().unwrap_err();
    assert!(
        matches!(err, ResourceError::AliasConflict { ref alias, .. } if alias == "hostnames"),
        "{err}"
    );
}

#[test]
fn decoding_bad_documents_names_the_problem() {
    let registry = Registry::new();
    let err = registry.decode_yaml("metadata: {}\n").unwrap_err();
    assert!(err.to_string().contains("missing field"), "{err}");
    let err = registry
        .decode_spec_yaml("Hostnames.net.basalt.dev", "hostname: x")
        .unwrap_err();
    assert!(matches!(err, ResourceError::UnknownType(_)), "{err}");
    let registry = builtin_registry().unwrap();
    let err = registry
        .decode_spec_yaml(
            "Hostnames.net.basalt.dev",
            "hostname: x\nbogus: 1\nsource: config",
        )
        .unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[test]
fn print_columns_extract_from_spec() {
    let registry = builtin_registry().unwrap();
    let res = hostname();
    let def = registry.definition(&res.metadata.type_name).unwrap();
    let spec = res.spec.to_json_value().unwrap();
    let row: Vec<String> = def.print_columns.iter().map(|c| c.extract(&spec)).collect();
    assert_eq!(row, ["n1", "example.org", "config"]);
}

/// The fuzz seeds are valid inputs: if the encodings change, the seeds must too.
#[test]
fn fuzz_seeds_decode() {
    let registry = builtin_registry().unwrap();
    let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds");
    for name in ["hostname.yaml", "cmdline.yaml"] {
        let text = std::fs::read_to_string(format!("{seeds}/resource_yaml/{name}")).unwrap();
        registry
            .decode_yaml(&text)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let bytes = std::fs::read(format!("{seeds}/resource_proto/hostname.bin")).unwrap();
    let message = basalt_resource::proto::Resource::decode(bytes.as_slice()).unwrap();
    let r = registry.decode_proto(message).unwrap();
    assert_eq!(r.spec_as::<HostnameSpec>().unwrap().hostname, "n1");
    assert_eq!(r.metadata.labels["role"], "controlplane");
}
