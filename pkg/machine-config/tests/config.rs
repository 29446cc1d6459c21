#![allow(clippy::unwrap_used, clippy::expect_used)]

use basalt_machine_config::{json_schema, Config, ConfigError, Mode, Patch, REDACTED};

fn testdata(name: &str) -> String {
    std::fs::read_to_string(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Compares with a golden file; `BASALT_UPDATE_GOLDEN=1` rewrites it.
fn golden(path: &str, actual: &str) {
    let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("BASALT_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual, expected,
        "{path} differs (BASALT_UPDATE_GOLDEN=1 rewrites it)"
    );
}

fn sample() -> Config {
    Config::parse(&testdata("controlplane.yaml")).unwrap()
}

#[test]
fn a_full_controlplane_config_parses_and_validates_on_metal() {
    let c = sample();
    c.validate(Mode::Metal).unwrap();
    c.validate(Mode::Cloud).unwrap();
    let m = c.machine.as_ref().unwrap();
    assert_eq!(m.network.as_ref().unwrap().links.len(), 2);
    assert_eq!(
        c.cluster.as_ref().unwrap().network.dns_domain,
        "cluster.local"
    );
    assert_eq!(c.extensions[0].name, "nut-client");
}

/// Certificates and keys are checked, not only present: each parses, each key is its
/// certificate's, and each CA certificate may issue certificates.
#[test]
fn certificates_and_keys_must_parse_match_and_be_cas() {
    use basalt_machine_config::CertKey;
    let sample = sample();
    let cluster = sample.cluster.clone().unwrap();
    let k8s_ca = cluster.ca.clone().unwrap();
    let leaf = basalt_pki::issue_server_cert(
        &basalt_pki::CertAndKey {
            crt: k8s_ca.crt.clone(),
            key: k8s_ca.key.expose().to_string(),
        },
        "leaf",
        &[],
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let leaf_crt = leaf.crt.clone();
    type Change = Box<dyn Fn(&mut Config)>;
    let cases: Vec<(Change, &str, &str)> = vec![
        (
            Box::new(|c: &mut Config| {
                let other = c.cluster.as_ref().unwrap().ca.clone().unwrap().key;
                c.machine.as_mut().unwrap().ca.as_mut().unwrap().key = other;
            }),
            "MachineConfig: ca",
            "does not belong to the certificate next to it",
        ),
        (
            Box::new(|c: &mut Config| {
                c.cluster.as_mut().unwrap().ca.as_mut().unwrap().crt = "K8S-CA-CERT".into();
            }),
            "ClusterConfig: ca",
            "the Kubernetes CA.crt",
        ),
        (
            Box::new(move |c: &mut Config| {
                let etcd = c.cluster.as_mut().unwrap().etcd.as_mut().unwrap();
                etcd.ca = Some(CertKey {
                    crt: leaf.crt.clone(),
                    key: basalt_machine_config::Secret::new(leaf.key.clone()),
                });
            }),
            "ClusterConfig: etcd.ca",
            "cannot be used as a certificate authority",
        ),
        (
            Box::new(|c: &mut Config| {
                c.cluster.as_mut().unwrap().service_account_key =
                    basalt_machine_config::Secret::new("SA-KEY");
            }),
            "ClusterConfig: serviceAccountKey",
            "the service account key: not a usable private key",
        ),
    ];
    // A worker may hold a trust bundle (a CA's rotation): every certificate is checked.
    let worker = |crt: String| {
        let mut c = sample.clone();
        let m = c.machine.as_mut().unwrap();
        m.role = basalt_machine_config::Role::Worker;
        m.ca = Some(CertKey {
            crt,
            key: Default::default(),
        });
        let cl = c.cluster.as_mut().unwrap();
        for pair in [&mut cl.ca, &mut cl.aggregator_ca] {
            pair.as_mut().unwrap().key = Default::default();
        }
        cl.etcd.as_mut().unwrap().ca.as_mut().unwrap().key = Default::default();
        cl.service_account_key = Default::default();
        c
    };
    let os_ca = sample.machine.as_ref().unwrap().ca.clone().unwrap().crt;
    worker(format!("{os_ca}{}", k8s_ca.crt))
        .validate(Mode::Cloud)
        .unwrap();
    let err = worker(format!("{os_ca}{leaf_crt}"))
        .validate(Mode::Cloud)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot be used as a certificate authority"),
        "{err}"
    );
    let err = worker(format!("{os_ca}junk"))
        .validate(Mode::Cloud)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the OS CA.crt[1]"), "{err}");

    for (change, path, reason) in cases {
        let mut c = sample.clone();
        change(&mut c);
        let err = c.validate(Mode::Cloud).unwrap_err().to_string();
        let line = err.lines().find(|l| l.contains(path)).unwrap_or_default();
        assert!(line.contains(reason), "{path}: want {reason:?} in\n{err}");
        assert_eq!(err.lines().count(), 2, "one problem only:\n{err}");
    }
}

#[test]
fn container_mode_refuses_disks_and_kernel_args() {
    let (config, source) = Config::parse_with_source(&testdata("controlplane.yaml")).unwrap();
    let err = config
        .validate_with_source(Mode::Container, Some(&source))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("install (line 21, column 1): a container has no disk to install to"),
        "{err}"
    );
    assert!(err.contains("kernelArgs (line 23, column 1)"), "{err}");
}

#[test]
fn validation_errors_name_document_path_and_position() {
    let text = testdata("invalid.yaml");
    let (config, source) = Config::parse_with_source(&text).unwrap();
    let err = config
        .validate_with_source(Mode::Metal, Some(&source))
        .unwrap_err();
    golden("testdata/invalid.expected", &format!("{err}\n"));
}

#[test]
fn parse_errors_name_document_path_line_and_column() {
    let cases = [
        (
            "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nrole: worker\nnetwork:\n  links:\n    - name: eth0\n      mttu: 1500\n",
            "MachineConfig (document 1) at line 7 column 7: network.links[0]: unknown field `mttu`",
        ),
        (
            "apiVersion: basalt.dev/v1alpha1\nkind: KubePrismConfig\nenabled: true\n---\n# second\napiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nrole: boss\n",
            "MachineConfig (document 2) at line 8 column 7: role: unknown variant `boss`",
        ),
        ("kind: MachineConfig\nrole: worker\n", "document 1 (line 1): MachineConfig: the document has no apiVersion"),
        (
            "apiVersion: basalt.dev/v1alpha2\nkind: MachineConfig\n",
            "unsupported apiVersion String(\"basalt.dev/v1alpha2\"), expected basalt.dev/v1alpha1",
        ),
        ("apiVersion: basalt.dev/v1alpha1\nkind: Nope\n", "unknown kind \"Nope\""),
        ("apiVersion: basalt.dev/v1alpha1\n", "the document has no kind"),
        ("- a\n- b\n", "not a mapping with apiVersion and kind"),
        (
            "apiVersion: basalt.dev/v1alpha1\nkind: KubePrismConfig\nenabled: true\n---\napiVersion: basalt.dev/v1alpha1\nkind: KubePrismConfig\nenabled: true\n",
            "document 2 (line 5): a second KubePrismConfig document",
        ),
        (
            "apiVersion: basalt.dev/v1alpha1\nkind: KubePrismConfig\nenabled: true\nport: 70000\n",
            "KubePrismConfig (document 1) at line 4 column 7: port: invalid value",
        ),
    ];
    for (text, expected) in cases {
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{text:?}\n  got: {err}\n want: {expected}"
        );
    }
}

#[test]
fn round_trip_through_yaml_is_identity() {
    let c = sample();
    let again = Config::parse(&c.to_yaml().unwrap()).unwrap();
    assert_eq!(again, c);
}

/// YAML breaks lines at CR, NEL, LS and PS too. A file's content holding one must come
/// back as it went, and a `---` after one must still separate documents (found by the
/// round-trip property test: the emitter ends a block scalar with an LS).
#[test]
fn every_yaml_line_break_round_trips_and_separates_documents() {
    for content in [
        "\n\u{2028}",
        "\n\n\u{2029}",
        "a\u{85}\n",
        "a\rb",
        "x\r\ny\n",
    ] {
        // A double-quoted YAML scalar, with YAML's escapes for the breaks.
        let quoted: String = content
            .chars()
            .map(|c| match c {
                '\n' => "\\n".to_string(),
                '\r' => "\\r".to_string(),
                '\u{85}' => "\\N".to_string(),
                '\u{2028}' => "\\L".to_string(),
                '\u{2029}' => "\\P".to_string(),
                c => c.to_string(),
            })
            .collect();
        let text = format!(
            "apiVersion: basalt.dev/v1alpha1\nkind: ExtensionServiceConfig\nname: a\n\
             configFiles:\n- mountPath: /etc/a\n  content: \"{quoted}\"\n---\n\
             apiVersion: basalt.dev/v1alpha1\nkind: ExtensionServiceConfig\nname: b\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.extensions[0].config_files[0].content, content);
        let yaml = c.to_yaml().unwrap();
        let again = Config::parse(&yaml).unwrap_or_else(|e| panic!("{content:?}: {e}\n{yaml:?}"));
        assert_eq!(again, c, "{content:?}");
    }
    // Documents separated by a `---` after each kind of line break.
    for eol in ["\r", "\r\n", "\u{85}", "\u{2028}", "\u{2029}"] {
        let text = [
            "apiVersion: basalt.dev/v1alpha1",
            "kind: ExtensionServiceConfig",
            "name: a",
            "---",
            "apiVersion: basalt.dev/v1alpha1",
            "kind: ExtensionServiceConfig",
            "name: b",
            "",
        ]
        .join(eol);
        let c = Config::parse(&text).unwrap_or_else(|e| panic!("{eol:?}: {e}"));
        assert_eq!(c.extensions.len(), 2, "{eol:?}");
    }
}

#[test]
fn strategic_merge_patch() {
    let patch = Patch::parse(&testdata("patch-merge.yaml")).unwrap();
    let patched = sample().patch(&patch).unwrap();
    patched.validate(Mode::Metal).unwrap();
    golden(
        "testdata/patch-merge.expected.yaml",
        &patched.to_yaml().unwrap(),
    );
    let links = &patched
        .machine
        .as_ref()
        .unwrap()
        .network
        .as_ref()
        .unwrap()
        .links;
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["eth0", "bond0"]);
    assert_eq!(links[0].mtu, Some(9000));
    assert_eq!(
        links[0].addresses,
        ["192.0.2.10/24"],
        "untouched fields stay"
    );
    assert_eq!(links[0].routes.len(), 2, "routes merge by network");
    assert!(
        patched.kubespan.as_ref().unwrap().enabled,
        "a new document is added"
    );
    assert!(patched.extensions.is_empty(), "a document is deleted");
}

/// Certificate SANs and kernel arguments take a patch's items besides their own (each
/// once); other lists are replaced by the patch's.
#[test]
fn strategic_merge_appends_sans_and_kernel_args_and_replaces_other_lists() {
    let base = Patch::parse(
        "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\n\
         certSans: [a.example]\nkernelArgs: [quiet]\nnetwork: {timeServers: [ntp-1]}\n\
         ---\napiVersion: basalt.dev/v1alpha1\nkind: ClusterConfig\n\
         apiServer: {certSans: [api.example]}\n",
    )
    .unwrap();
    let patch = Patch::parse(
        "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\n\
         certSans: [b.example, a.example]\nkernelArgs: [net.ifnames=0, quiet]\n\
         network: {timeServers: [ntp-2]}\n\
         ---\napiVersion: basalt.dev/v1alpha1\nkind: ClusterConfig\n\
         apiServer: {certSans: [lb.example]}\n",
    )
    .unwrap();
    let c = sample().patch(&base).unwrap().patch(&patch).unwrap();
    let m = c.machine.as_ref().unwrap();
    assert_eq!(m.cert_sans, ["a.example", "b.example"]);
    let args = &m.kernel_args;
    assert!(
        args.ends_with(&["quiet".into(), "net.ifnames=0".into()]),
        "{args:?}"
    );
    assert_eq!(args.iter().filter(|a| *a == "quiet").count(), 1, "{args:?}");
    let servers = &m.network.as_ref().unwrap().time_servers;
    assert_eq!(servers, &["ntp-2"], "replaced");
    let api = c.cluster.as_ref().unwrap().api_server.as_ref().unwrap();
    assert_eq!(api.cert_sans, ["api.example", "lb.example"]);
}

#[test]
fn json_patch() {
    let patch = Patch::parse(&testdata("patch-json.yaml")).unwrap();
    let patched = sample().patch(&patch).unwrap();
    golden(
        "testdata/patch-json.expected.yaml",
        &patched.to_yaml().unwrap(),
    );
    assert_eq!(
        patched.machine.as_ref().unwrap().hostname.as_deref(),
        Some("cp-2.lab.example")
    );
    assert!(patched.machine.as_ref().unwrap().kernel_args.is_empty());
}

#[test]
fn bad_patches_are_errors() {
    let c = sample();
    let cases = [
        (
            "kind: MachineConfig\nnetwork:\n  links:\n    - name: eth0\n      mttu: 1\n",
            "unknown field `mttu`",
        ),
        ("- op: remove\n  path: /MachineConfig/nope\n", "patch"),
        ("- op: frobnicate\n  path: /x\n", "not a JSON patch"),
        ("just a string", "a patch document is a map with a kind"),
        ("kind: Nope\nx: 1\n", "unknown document kind \"Nope\""),
    ];
    for (text, expected) in cases {
        let err = Patch::parse(text).and_then(|p| c.patch(&p)).unwrap_err();
        assert!(matches!(err, ConfigError::Patch { .. }), "{text:?}: {err}");
        assert!(
            err.to_string().contains(expected),
            "{text:?}\n  got: {err}\n want: {expected}"
        );
    }
}

#[test]
fn secrets_are_redacted_for_readers() {
    let c = sample();
    // The first line of each PEM body in the sample: five private keys (the CAs' and
    // the service account's) and the certificates.
    let text = std::fs::read_to_string("testdata/controlplane.yaml").unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let first_lines = |begin: &str| -> Vec<&str> {
        lines
            .windows(2)
            .filter(|w| w[0] == begin)
            .map(|w| w[1])
            .collect()
    };
    let keys = first_lines("-----BEGIN PRIVATE KEY-----");
    assert_eq!(keys.len(), 5, "{keys:?}");
    let certificates = first_lines("-----BEGIN CERTIFICATE-----");
    let mut secrets = vec![
        "abcdef.0123456789abcdef",
        "xyzxyz.0123456789xyzxyz",
        "HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4=",
    ];
    secrets.extend(keys);
    let raw = c.to_yaml().unwrap();
    let redacted = c.redacted().to_yaml().unwrap();
    let debug = format!("{c:?}");
    for s in secrets {
        assert!(raw.contains(s), "the config file keeps {s}");
        assert!(!redacted.contains(s), "redacted output shows {s}");
        assert!(!debug.contains(s), "Debug shows {s}");
    }
    assert!(redacted.contains(REDACTED));
    assert!(
        certificates.iter().all(|c| redacted.contains(c)),
        "certificates are not secret"
    );
}

/// Environment values and file contents are hidden too (they carry credentials), and a
/// redacted view applied back is refused where it would erase them.
#[test]
fn environment_and_file_contents_are_redacted_and_not_applied_back() {
    let patch = Patch::parse(
        "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\n\
         env: {HTTPS_PROXY: 'http://user:PROXY-PASS@proxy:3128'}\n\
         files: [{path: /var/etc/registry.json, content: REGISTRY-TOKEN}]\n\
         ---\napiVersion: basalt.dev/v1alpha1\nkind: ExtensionServiceConfig\nname: agent\n\
         environment: {API_KEY: EXT-API-KEY}\n\
         configFiles: [{mountPath: /etc/agent.conf, content: EXT-FILE-SECRET}]\n",
    )
    .unwrap();
    let c = sample().patch(&patch).unwrap();
    let raw = c.to_yaml().unwrap();
    let redacted = c.redacted();
    let shown = redacted.to_yaml().unwrap();
    let debug = format!("{c:?}");
    for secret in [
        "PROXY-PASS",
        "REGISTRY-TOKEN",
        "EXT-API-KEY",
        "EXT-FILE-SECRET",
    ] {
        assert!(raw.contains(secret), "the config file keeps {secret}");
        assert!(!shown.contains(secret), "redacted output shows {secret}");
        assert!(!debug.contains(secret), "Debug shows {secret}");
    }
    assert!(debug.contains("HTTPS_PROXY"), "{debug}");
    assert!(shown.contains("HTTPS_PROXY") && shown.contains("/var/etc/registry.json"));
    c.validate(Mode::Cloud).unwrap();
    let refused = redacted.validate(Mode::Cloud).unwrap_err().to_string();
    for path in [
        "env.HTTPS_PROXY",
        "files[0].content",
        "environment.API_KEY",
        "configFiles[0].content",
    ] {
        assert!(
            refused.contains(path) && refused.contains("redacted placeholder"),
            "{path} not refused: {refused}"
        );
    }
}

#[test]
fn digest_ignores_formatting_and_sees_changes() {
    let a = sample();
    // Same meaning, other formatting: comments, key order, flow style, document order.
    let text = testdata("controlplane.yaml");
    let docs: Vec<&str> = text.split("\n---\n").collect();
    let reordered = format!(
        "{}\n---\n{}\n---\n{}\n---\n{}",
        docs[3],
        docs[2],
        docs[1].replace(
            "podSubnets: [10.244.0.0/16]",
            "podSubnets:\n    - 10.244.0.0/16"
        ),
        docs[0].replace("# A control-plane", "# Another comment. A control-plane")
    );
    let b = Config::parse(&reordered).unwrap();
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());
    assert_eq!(a.digest().unwrap().len(), 64);
    let mut c = a.clone();
    c.kubeprism.as_mut().unwrap().port = 7446;
    assert_ne!(a.digest().unwrap(), c.digest().unwrap());
}

#[test]
fn diff_shows_structure_and_hides_secrets() {
    let a = sample();
    let patched = a
        .patch(&Patch::parse(&testdata("patch-json.yaml")).unwrap())
        .unwrap();
    let mut b = patched.clone();
    b.cluster.as_mut().unwrap().bootstrap_token = basalt_machine_config::Secret::new("new.token");
    let text: Vec<String> = a
        .diff(&b)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    golden("testdata/diff.expected", &(text.join("\n") + "\n"));
    assert!(!text.join("\n").contains("new.token"));
    assert!(a.diff(&a).unwrap().is_empty());
}

#[test]
fn json_schema_is_current() {
    let schema = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    golden("../../docs/config.schema.json", &schema);
    assert!(schema.contains("\"MachineConfig\""));
}

#[test]
fn hostile_inputs_are_refused_quickly() {
    let started = std::time::Instant::now();
    // An alias bomb: a long string repeated through aliases.
    let long = "x".repeat(1 << 20);
    let aliases = vec!["*s"; 2000].join(",");
    let bomb = format!(
        "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: &s {long}\nkernelArgs: [{aliases}]\n"
    );
    let err = Config::parse(&bomb).unwrap_err().to_string();
    assert!(err.contains("expands to more than"), "{err}");
    let patch_bomb = format!("kind: MachineConfig\nhostname: &s {long}\nkernelArgs: [{aliases}]\n");
    assert!(Patch::parse(&patch_bomb).is_err());
    // JSON patch `copy` doubling the document.
    let mut ops = String::new();
    for i in 0..40 {
        ops.push_str(&format!(
            "- {{op: copy, from: /MachineConfig, path: /MachineConfig/k{i}}}\n"
        ));
    }
    let err = sample()
        .patch(&Patch::parse(&ops).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("larger than"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn secrets_stay_out_of_errors_and_diffs() {
    let key = "-----BEGIN PRIVATE KEY-----MC4CAQAwBQYDK2VwBCIEIPretendThisIsAKey";
    let text = format!(
        "apiVersion: basalt.dev/v1alpha1\nkind: KubePrismConfig\nenabled: true\nport: \"{key}\"\n"
    );
    let err = Config::parse(&text).unwrap_err().to_string();
    assert!(!err.contains("PretendThisIsAKey"), "{err}");
    // A whole document added: its secrets show redacted.
    let mut without = sample();
    without.cluster = None;
    let text: Vec<String> = without
        .diff(&sample())
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    let text = text.join("\n");
    assert!(text.contains("+ ClusterConfig"), "{text}");
    for secret in [
        "K8S-CA-KEY",
        "SA-KEY",
        "xyzxyz.0123456789xyzxyz",
        "ETCD-CA-KEY",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[test]
fn workers_hold_no_keys_and_placeholders_are_not_secrets() {
    let mut c = sample();
    c.machine.as_mut().unwrap().role = basalt_machine_config::Role::Worker;
    c.machine.as_mut().unwrap().ca.as_mut().unwrap().key = Default::default();
    let err = c.validate(Mode::Metal).unwrap_err().to_string();
    for path in [
        "ca.key",
        "aggregatorCa.key",
        "etcd.ca.key",
        "serviceAccountKey",
    ] {
        assert!(
            err.contains(&format!("ClusterConfig: {path}: workers must not hold")),
            "{path}: {err}"
        );
    }
    // A reader's redacted view applied back is refused, not taken as keys.
    let err = sample()
        .redacted()
        .validate(Mode::Metal)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token: holds the redacted placeholder"),
        "{err}"
    );
    assert!(err.contains("ca: holds the redacted placeholder"), "{err}");
}

#[test]
fn document_markers_and_positions() {
    // Content on the marker line; a syntax error in the second document is reported at
    // its line in the whole text.
    let text = "--- apiVersion: basalt.dev/v1alpha1\nkind: KubePrismConfig\nenabled: true\n---\napiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nrole: [worker\n";
    let err = Config::parse(text).unwrap_err().to_string();
    // (The parser notices the unclosed list at the end of the text, line 8.)
    assert!(err.starts_with("document 2 (line 8)"), "{err}");
    assert!(
        !err.contains("at line 4"),
        "positions inside the message are moved too: {err}"
    );
    let ok = Config::parse(
        "--- apiVersion: basalt.dev/v1alpha1\nkind: KubePrismConfig\nenabled: false\n",
    )
    .unwrap();
    assert!(!ok.kubeprism.unwrap().enabled);
    // Deleting what is not there is a no-op.
    let patch = Patch::parse(
        "kind: MachineConfig\nkubelet:\n  $patch: delete\nenv:\n  NOPE:\n    $patch: delete\n",
    )
    .unwrap();
    sample().patch(&patch).unwrap();
}
