//! `osctl` end to end: the binary run as a user would, on files in a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use basalt_machine_config::client::ClientConfig;
use basalt_machine_config::Config;

fn osctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_osctl"))
        .args(args)
        .current_dir(dir)
        .env("OSCONFIG", dir.join("client.yaml"))
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "osctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The config with every certificate, secret and random value replaced: its shape.
fn shape(path: &Path) -> String {
    let mut c = Config::parse(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .redacted();
    let crt = "<certificate>".to_string();
    if let Some(m) = &mut c.machine {
        m.ca.as_mut().unwrap().crt = crt.clone();
    }
    if let Some(cl) = &mut c.cluster {
        cl.id = "<id>".into();
        for pair in [cl.ca.as_mut(), cl.aggregator_ca.as_mut()]
            .into_iter()
            .flatten()
        {
            pair.crt = crt.clone();
        }
        if let Some(e) = cl.etcd.as_mut().and_then(|e| e.ca.as_mut()) {
            e.crt = crt.clone();
        }
    }
    c.to_yaml().unwrap()
}

fn golden(name: &str, actual: &str) {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("BASALT_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(Path::new(&path).parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    assert_eq!(
        actual,
        std::fs::read_to_string(&path).unwrap_or_default(),
        "{path}"
    );
}

#[test]
fn gen_config_writes_three_files_of_the_known_shape() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(osctl(d, &["gen", "secrets", "-o", "secrets.yaml"]));
    assert_eq!(mode(&d.join("secrets.yaml")), 0o600);
    let out = osctl(d, &["gen", "secrets", "-o", "secrets.yaml"]);
    assert!(
        !out.status.success(),
        "an existing bundle is not replaced without --force"
    );

    std::fs::write(
        d.join("mtu.yaml"),
        "kind: MachineConfig\nnetwork:\n  links:\n    - name: eth0\n      mtu: 9000\n",
    )
    .unwrap();
    ok(osctl(
        d,
        &[
            "gen", "config", "lab", "https://cp.lab.example:6443",
            "--with-secrets", "secrets.yaml",
            "--config-patch", "@mtu.yaml",
            "--config-patch-worker", "[{\"op\": \"add\", \"path\": \"/MachineConfig/nodeLabels\", \"value\": {\"tier\": \"edge\"}}]",
            "-o", "out",
        ],
    ));
    for f in ["controlplane.yaml", "worker.yaml", "osconfig"] {
        assert_eq!(mode(&d.join("out").join(f)), 0o600, "{f}");
    }
    golden(
        "controlplane.yaml",
        &shape(&d.join("out/controlplane.yaml")),
    );
    golden("worker.yaml", &shape(&d.join("out/worker.yaml")));

    // The worker holds no CA key; the control plane does.
    let worker = std::fs::read_to_string(d.join("out/worker.yaml")).unwrap();
    assert!(
        !worker.contains("PRIVATE KEY"),
        "a worker config holds a key"
    );
    let cp = std::fs::read_to_string(d.join("out/controlplane.yaml")).unwrap();
    assert!(cp.contains("PRIVATE KEY"));

    // The client config: an admin certificate from the bundle's OS CA.
    let client =
        ClientConfig::parse(&std::fs::read_to_string(d.join("out/osconfig")).unwrap()).unwrap();
    assert_eq!(client.context, "lab");
    let ctx = &client.contexts["lab"];
    assert_eq!(ctx.endpoints, ["cp.lab.example"]);
    let info = basalt_pki::verify(&ctx.crt, &ctx.ca, time::OffsetDateTime::now_utc()).unwrap();
    assert_eq!(basalt_pki::roles_of(&info), [basalt_pki::Role::Admin]);

    // Both generated configs are valid, and say so.
    let out = ok(osctl(
        d,
        &["validate", "--mode", "metal", "out/controlplane.yaml"],
    ));
    assert!(out.contains("is valid for metal mode"), "{out}");
    ok(osctl(
        d,
        &["validate", "--mode", "metal", "out/worker.yaml"],
    ));
}

#[test]
fn validate_reports_every_problem_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let invalid = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pkg/machine-config/testdata/invalid.yaml"
    );
    let out = osctl(d, &["validate", "--mode", "metal", invalid]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("network.links[0].mtu (line 21, column 7): 9999999 is not an MTU"),
        "{err}"
    );
    let out = osctl(d, &["validate", "--mode", "sideways", invalid]);
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("unknown mode \"sideways\""));
}

#[test]
fn machineconfig_patch_prints_the_patched_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pkg/machine-config/testdata/controlplane.yaml"
    );
    let out = ok(osctl(
        d,
        &[
            "machineconfig",
            "patch",
            base,
            "--patch",
            "kind: KubePrismConfig\nport: 7446",
        ],
    ));
    let patched = Config::parse(&out).unwrap();
    assert_eq!(patched.kubeprism.unwrap().port, 7446);
    let out = osctl(
        d,
        &["machineconfig", "patch", base, "--patch", "@missing.yaml"],
    );
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("cannot read missing.yaml"));
}

#[test]
fn config_contexts_merge_switch_and_edit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(osctl(
        d,
        &["gen", "config", "one", "https://10.0.0.1:6443", "-o", "one"],
    ));
    ok(osctl(
        d,
        &[
            "gen",
            "config",
            "two",
            "https://[fd00::1]:6443",
            "-o",
            "two",
            "--install-disk",
            "none",
        ],
    ));
    ok(osctl(d, &["config", "merge", "one/osconfig"]));
    ok(osctl(d, &["config", "merge", "two/osconfig"]));
    let out = ok(osctl(d, &["config", "merge", "two/osconfig"]));
    assert!(out.contains("added context two-1"), "{out}");
    ok(osctl(d, &["config", "context", "one"]));
    ok(osctl(d, &["config", "endpoint", "10.0.0.1", "10.0.0.2"]));
    ok(osctl(d, &["config", "node", "10.0.0.3"]));
    let info = ok(osctl(d, &["config", "info"]));
    assert!(
        info.contains("context:   one")
            && info.contains("10.0.0.1, 10.0.0.2")
            && info.contains("10.0.0.3"),
        "{info}"
    );
    let list = ok(osctl(d, &["config", "contexts"]));
    assert!(list.contains("two-1") && list.contains("fd00::1"), "{list}");
    assert_eq!(mode(&d.join("client.yaml")), 0o600);
    let out = osctl(d, &["config", "context", "nope"]);
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("no context named \"nope\""));
}

/// A node name that cannot go in request metadata fails the command before it connects:
/// dropped, it would have sent the reboot to the endpoint itself.
#[test]
fn a_node_that_cannot_be_sent_fails_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    for nodes in ["nöde", "10.0.0.2,nöde"] {
        let out = osctl(
            dir.path(),
            &["-e", "127.0.0.1:1", "--insecure", "-n", nodes, "reboot"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("\"nöde\""), "{stderr}");
        assert!(!stderr.contains("no endpoint answered"), "{stderr}");
    }
}

/// The bash completion script is valid bash, and completes a verb and a subcommand in a
/// scripted shell (the way bash calls it on a tab).
#[test]
fn bash_completion_is_valid_and_completes_verbs() {
    let dir = tempfile::tempdir().unwrap();
    let script = ok(osctl(dir.path(), &["completion", "bash"]));
    let path = dir.path().join("osctl.bash");
    std::fs::write(&path, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "source {}\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\n\
             _osctl osctl '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            path.display(),
            words.join(" "),
            words.len() - 1,
            words.last().unwrap(),
            words.get(words.len().saturating_sub(2)).unwrap(),
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(program)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let verbs = complete("osctl vers");
    assert_eq!(verbs.trim(), "version", "{verbs}");
    let cluster = complete("osctl cluster de");
    assert_eq!(cluster.trim(), "destroy", "{cluster}");
    for shell in ["zsh", "fish"] {
        assert!(!ok(osctl(dir.path(), &["completion", shell])).is_empty());
    }
}
