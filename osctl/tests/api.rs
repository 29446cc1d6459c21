//! `osctl` against real nodes (machined's, in-process) on loopback: maintenance mode and
//! the first config, forwarding to several nodes, resources, services and power.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use apid::Limits;
use basalt_controllers::Sources;
use machined::parts::{RestartPolicy, ServiceDefinition};
use machined::{Node, NodeOptions};

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn osctl(dir: &Path, args: &[&str]) -> Run {
    osctl_with(dir, &[], args).await
}

/// osctl with these environment variables besides OSCONFIG.
async fn osctl_with(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_osctl"))
        .args(args)
        .current_dir(dir)
        .env("OSCONFIG", dir.join("osconfig"))
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

async fn ok(dir: &Path, args: &[&str]) -> String {
    let run = osctl(dir, args).await;
    assert!(
        run.ok,
        "osctl {args:?} failed:\n{}{}",
        run.stdout, run.stderr
    );
    run.stdout
}

/// A directory with a secrets bundle and the configs `osctl gen config` makes from it.
async fn cluster_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["gen", "secrets", "-o", "secrets.yaml"]).await;
    ok(
        dir.path(),
        &[
            "gen",
            "config",
            "test",
            "https://127.0.0.1:6443",
            "--with-secrets",
            "secrets.yaml",
            "--install-disk",
            "none",
        ],
    )
    .await;
    dir
}

/// A node on `ip` (its API on a free port, KubePrism on `ip`), with `config` in effect
/// if given.
async fn node(ip: &str, config: Option<String>, services: Vec<ServiceDefinition>) -> Node {
    let address: IpAddr = ip.parse().unwrap();
    Node::start(NodeOptions {
        listen: (address, 0).into(),
        config: machined::acquire::ConfigSources {
            embedded: config,
            ..Default::default()
        },
        validation_mode: basalt_machine_config::Mode::Cloud,
        file_roots: vec![std::env::temp_dir()],
        services,
        limits: Limits {
            forward_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
        sources: Sources {
            kubeprism_listen: address,
            ..Sources::default()
        },
        ..NodeOptions::default()
    })
    .await
    .unwrap()
}

/// A node running the control-plane config of the cluster in `dir`.
/// Lets `node` forward calls to `targets` (`host:port` of other nodes on loopback, no
/// members of a cluster) with a test's `ForwardTargets` resource; returns once it does.
async fn forward_from(dir: &Path, node: &Node, targets: &[String]) {
    use basalt_resource::Resource;
    use basalt_resources::cluster::ForwardTargetSpec;
    let spec = ForwardTargetSpec {
        targets: targets.iter().map(|t| (t.clone(), Vec::new())).collect(),
    };
    node.state()
        .put(Resource::new("test", spec).into_any(), "test")
        .await
        .unwrap();
    let (endpoint, list) = (node.local_addr().to_string(), targets.join(","));
    let deadline = Instant::now() + Duration::from_secs(5);
    while osctl(dir, &["-e", &endpoint, "-n", &list, "version"])
        .await
        .stderr
        .contains("forwardtargets")
    {
        assert!(Instant::now() < deadline, "not forwarding to {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn configured(dir: &Path, ip: &str, services: Vec<ServiceDefinition>) -> Node {
    let config = std::fs::read_to_string(dir.join("controlplane.yaml")).unwrap();
    node(ip, Some(config), services).await
}

#[tokio::test(flavor = "multi_thread")]
async fn insecure_apply_config_takes_a_node_out_of_maintenance() {
    let dir = cluster_dir().await;
    let dir = dir.path();
    let node = node("127.0.0.41", None, Vec::new()).await;
    let endpoint = node.local_addr().to_string();
    let fingerprint = node.maintenance_fingerprint().unwrap();

    let out = ok(dir, &["--insecure", "-e", &endpoint, "version"]).await;
    assert!(out.contains("Maintenance: true"), "{out}");
    // A reader's view in maintenance: non-sensitive resources only.
    let out = ok(
        dir,
        &["--insecure", "-e", &endpoint, "get", "machinestatus"],
    )
    .await;
    assert!(out.contains("maintenance"), "{out}");
    let run = osctl(dir, &["--insecure", "-e", &endpoint, "get", "mc"]).await;
    assert!(
        !run.ok && run.stderr.contains("sensitive"),
        "{}",
        run.stderr
    );

    let run = osctl(
        dir,
        &[
            "--insecure",
            "--fingerprint",
            &"00".repeat(32),
            "-e",
            &endpoint,
            "version",
        ],
    )
    .await;
    assert!(
        !run.ok && run.stderr.contains("fingerprint"),
        "{}",
        run.stderr
    );

    let out = ok(
        dir,
        &[
            "--insecure",
            "--fingerprint",
            &fingerprint,
            "-e",
            &endpoint,
            "apply-config",
            "-f",
            "controlplane.yaml",
            "--dry-run",
        ],
    )
    .await;
    assert!(out.contains("+ MachineConfig"), "{out}");
    let out = ok(
        dir,
        &[
            "--insecure",
            "--fingerprint",
            &fingerprint,
            "-e",
            &endpoint,
            "apply-config",
            "-f",
            "controlplane.yaml",
        ],
    )
    .await;
    assert!(out.contains("applied without a reboot"), "{out}");

    // mTLS from now on, in the same process.
    let run = osctl(
        dir,
        &[
            "--insecure",
            "-e",
            &endpoint,
            "apply-config",
            "-f",
            "controlplane.yaml",
        ],
    )
    .await;
    assert!(
        !run.ok,
        "a second insecure apply was accepted: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains("needs a client certificate"),
        "{}",
        run.stderr
    );
    let out = ok(dir, &["-e", &endpoint, "version"]).await;
    assert!(out.contains("Maintenance: false"), "{out}");
    let out = ok(
        dir,
        &[
            "-e",
            &endpoint,
            "get",
            "machinestatus",
            "machine",
            "-o",
            "yaml",
        ],
    )
    .await;
    assert!(out.contains("stage: running"), "{out}");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_flag_fans_out_and_reports_a_stopped_node() {
    let dir = cluster_dir().await;
    let dir = dir.path();
    let a = configured(dir, "127.0.0.31", Vec::new()).await;
    let b = configured(dir, "127.0.0.32", Vec::new()).await;
    let c = configured(dir, "127.0.0.33", Vec::new()).await;
    let nodes: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|n| n.local_addr().to_string())
        .collect();
    let endpoint = nodes[0].clone();
    let list = nodes.join(",");
    forward_from(dir, &a, &nodes).await;

    let out = ok(
        dir,
        &["-e", &endpoint, "-n", &list, "get", "machinestatuses"],
    )
    .await;
    for node in &nodes {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{node}\t")) && l.contains("running")),
            "{node} missing:\n{out}"
        );
    }
    let out = ok(dir, &["-e", &endpoint, "-n", &list, "version"]).await;
    assert_eq!(out.matches("NODE: ").count(), 3, "{out}");

    c.shutdown().await.unwrap();
    let start = Instant::now();
    let run = osctl(
        dir,
        &["-e", &endpoint, "-n", &list, "get", "machinestatuses"],
    )
    .await;
    let took = start.elapsed();
    assert!(!run.ok, "a dead node should fail the command");
    assert!(
        run.stderr.contains(&format!("{}: error", nodes[2])),
        "{}",
        run.stderr
    );
    for node in &nodes[..2] {
        assert!(
            run.stdout.contains(node.as_str()),
            "{node} missing:\n{}",
            run.stdout
        );
    }
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // patch, like every verb, goes on past a dead node and fails at the end.
    let dead_first = [nodes[2].as_str(), nodes[0].as_str(), nodes[1].as_str()].join(",");
    let patch = hostname_patch("fanned");
    let run = osctl(
        dir,
        &[
            "-e",
            &endpoint,
            "-n",
            &dead_first,
            "patch",
            "mc",
            "-p",
            &patch,
        ],
    )
    .await;
    assert!(!run.ok, "a dead node should fail the command");
    assert!(
        run.stderr.contains(&format!("{}: error", nodes[2]))
            && run.stderr.contains("1 node(s) failed"),
        "{}",
        run.stderr
    );
    for node in &nodes[..2] {
        wait_for_hostname(dir, node, "fanned").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resources_services_logs_and_power_through_osctl() {
    let dir = cluster_dir().await;
    let dir = dir.path();
    let ticker = ServiceDefinition::new(
        "ticker",
        &[
            "sh",
            "-c",
            "echo started; while true; do echo tick; sleep 0.2; done",
        ],
    )
    .restart(RestartPolicy::Always);
    let node = configured(dir, "127.0.0.42", vec![ticker]).await;
    let e = node.local_addr().to_string();

    let out = ok(dir, &["-e", &e, "get", "rd"]).await;
    assert!(out.contains("Services.runtime.basalt.dev"), "{out}");
    let out = ok(dir, &["-e", &e, "get", "machinestatus", "-o", "json"]).await;
    let doc: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(doc["spec"]["stage"], "running");

    // The service runs, its resource says so, and its output arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ok(dir, &["-e", &e, "services"]).await;
        if out.contains("ticker\tRunning") {
            break;
        }
        assert!(Instant::now() < deadline, "ticker never ran:\n{out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = ok(dir, &["-e", &e, "get", "services", "ticker"]).await;
    assert!(out.contains("Running"), "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = ok(dir, &["-e", &e, "logs", "ticker", "--tail", "2"]).await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["tick", "tick"], "{out}");

    let out = ok(dir, &["-e", &e, "service", "ticker", "stop"]).await;
    assert!(out.contains("ticker"), "{out}");
    let out = ok(dir, &["-e", &e, "services"]).await;
    assert!(out.contains("ticker\tStopped"), "{out}");

    let out = ok(dir, &["-e", &e, "memory"]).await;
    assert!(out.lines().count() == 2, "{out}");
    let out = ok(dir, &["-e", &e, "processes"]).await;
    assert!(
        out.contains(&std::process::id().to_string()),
        "the test's own pid is missing"
    );

    let out = ok(dir, &["-e", &e, "reboot"]).await;
    assert!(out.contains("reboot"), "{out}");
    let out = ok(
        dir,
        &["-e", &e, "get", "machinestatus", "machine", "-o", "yaml"],
    )
    .await;
    assert!(out.contains("stage: rebooting"), "{out}");
    let out = ok(
        dir,
        &["-e", &e, "events", "--tail", "-1", "--duration", "1s"],
    )
    .await;
    assert!(out.contains("reboot requested"), "{out}");
    assert!(out.contains("audit"), "{out}");
    node.shutdown().await.unwrap();
}

/// The node's hostname as `osctl get hostname` shows it, once it is `expected` (the
/// controllers act on a new config in the background).
async fn wait_for_hostname(dir: &Path, endpoint: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ok(
            dir,
            &[
                "-e",
                endpoint,
                "get",
                "hostname",
                "-o",
                "jsonpath={.spec.hostname}",
            ],
        )
        .await;
        if out.trim() == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the hostname is {out:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn hostname_patch(name: &str) -> String {
    format!("apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: {name}\n")
}

/// `osctl patch` and `osctl edit` change a live node's config through the apply plan:
/// the hostname changes with no reboot, --dry-run changes nothing, a scripted $EDITOR
/// applies, an invalid edit opens again with its error, and a change made from a config
/// someone replaced meanwhile is refused.
#[tokio::test(flavor = "multi_thread")]
async fn patch_and_edit_change_a_live_nodes_config_through_the_plan() {
    let cluster = cluster_dir().await;
    let dir = cluster.path();
    let node = configured(dir, "127.0.0.43", Vec::new()).await;
    let e = node.local_addr().to_string();
    let digest = async || {
        ok(
            dir,
            &[
                "-e",
                &e,
                "get",
                "mc",
                "active",
                "-o",
                "jsonpath={.spec.digest}",
            ],
        )
        .await
    };

    let before = digest().await;
    let out = ok(
        dir,
        &[
            "-e",
            &e,
            "patch",
            "mc",
            "--dry-run",
            "-p",
            &hostname_patch("dry"),
        ],
    )
    .await;
    assert!(out.contains("dry run") && out.contains("hostname"), "{out}");
    assert_eq!(digest().await, before, "--dry-run changed the config");

    let out = ok(
        dir,
        &[
            "-e",
            &e,
            "patch",
            "machineconfig",
            "-p",
            &hostname_patch("patched"),
        ],
    )
    .await;
    assert!(out.contains("applied without a reboot"), "{out}");
    wait_for_hostname(dir, &e, "patched").await;
    let stage = ok(
        dir,
        &[
            "-e",
            &e,
            "get",
            "machinestatus",
            "-o",
            "jsonpath={.spec.stage}",
        ],
    )
    .await;
    assert_eq!(stage.trim(), "running");

    // A scripted editor: the edit applies.
    let edited = [("EDITOR", "sed -i 's/^hostname: .*/hostname: edited/'")];
    let run = osctl_with(dir, &edited, &["-e", &e, "edit", "mc"]).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    wait_for_hostname(dir, &e, "edited").await;
    // Saved unchanged: nothing is applied.
    let run = osctl_with(dir, &[("EDITOR", "true")], &["-e", &e, "edit", "mc"]).await;
    assert!(
        run.ok && run.stdout.contains("no changes"),
        "{}",
        run.stdout
    );

    // An invalid edit opens again with its error; the fixed one applies.
    let state = tempfile::tempdir().unwrap();
    let script = state.path().join("editor.sh");
    std::fs::write(
        &script,
        r#"n=$(cat "$STATE/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$STATE/count"
if [ $n = 1 ]; then echo "bogusField: 1" >> "$1"
else cp "$1" "$STATE/seen"; sed -i -e '/^bogusField/d' -e 's/^hostname: .*/hostname: fixed/' "$1"; fi
"#,
    )
    .unwrap();
    let editor = format!("sh {}", script.display());
    let env = [
        ("EDITOR", editor.as_str()),
        ("STATE", state.path().to_str().unwrap()),
    ];
    let run = osctl_with(dir, &env, &["-e", &e, "edit", "mc"]).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    let seen = std::fs::read_to_string(state.path().join("seen")).unwrap();
    assert!(
        seen.contains("#| The edit was not applied") && seen.contains("bogusField"),
        "the second opening did not show the error:
{seen}"
    );
    wait_for_hostname(dir, &e, "fixed").await;

    // Two editors: another change lands while this one is open, so this one is refused.
    let script = state.path().join("racing.sh");
    std::fs::write(
        &script,
        format!(
            "{} -e {e} patch mc -p '{}' >/dev/null && sed -i 's/^hostname: .*/hostname: mine/' \"$1\"\n",
            env!("CARGO_BIN_EXE_osctl"),
            hostname_patch("theirs")
        ),
    )
    .unwrap();
    let editor = format!("sh {}", script.display());
    let run = osctl_with(
        dir,
        &[("EDITOR", editor.as_str())],
        &["-e", &e, "edit", "mc"],
    )
    .await;
    assert!(!run.ok, "{}", run.stdout);
    assert!(
        run.stderr.contains("changed since") && run.stderr.contains("kept in"),
        "{}",
        run.stderr
    );
    wait_for_hostname(dir, &e, "theirs").await;
    node.shutdown().await.unwrap();
}

/// The reader views: the controller graph renders with Graphviz, netstat shows the
/// node's own API listener and its process, time shows the sync status.
#[tokio::test(flavor = "multi_thread")]
async fn inspect_netstat_and_time_show_the_live_node() {
    let cluster = cluster_dir().await;
    let dir = cluster.path();
    let node = configured(dir, "127.0.0.44", Vec::new()).await;
    let e = node.local_addr().to_string();

    let graph = ok(dir, &["-e", &e, "inspect", "dependencies"]).await;
    assert!(
        graph.contains(
            "\"config/HostnameConfigs.config.basalt.dev\" -> \"network.HostnameController\""
        ),
        "{graph}"
    );
    let mut dot = tokio::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("graphviz's dot (hack/setup.sh installs it)");
    use tokio::io::AsyncWriteExt as _;
    let mut stdin = dot.stdin.take().unwrap();
    stdin.write_all(graph.as_bytes()).await.unwrap();
    drop(stdin);
    let svg = dot.wait_with_output().await.unwrap();
    assert!(svg.status.success());
    let svg = String::from_utf8(svg.stdout).unwrap();
    assert!(svg.contains("<svg") && svg.contains("network.HostnameController"));

    let out = ok(dir, &["-e", &e, "netstat", "-l"]).await;
    let ours = format!("\t{e}\t");
    let line = out
        .lines()
        .find(|l| l.contains(&ours))
        .unwrap_or_else(|| panic!("the API listener {e} is not in:\n{out}"));
    assert!(line.contains("LISTEN"), "{line}");
    assert!(
        line.contains(&format!("\t{}/", std::process::id())),
        "the listener's process is not this one: {line}"
    );
    let connected = ok(dir, &["-e", &e, "netstat"]).await;
    assert!(!connected.contains("LISTEN"), "{connected}");

    let out = ok(dir, &["-e", &e, "time"]).await;
    assert!(
        out.starts_with("NODE\tTIME\tOFFSET\tSYNCED\tSERVER"),
        "{out}"
    );
    node.shutdown().await.unwrap();
}

/// Each way of failing to reach a node is named as such, with what to do: nothing
/// listening, no answer in time, another cluster's CA, a configured node reached without
/// a client certificate.
#[tokio::test(flavor = "multi_thread")]
async fn each_connection_failure_says_what_it_is() {
    let dir = cluster_dir().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nothing = closed.local_addr().unwrap().to_string();
    drop(closed);
    let run = osctl(dir.path(), &["-e", &nothing, "--insecure", "version"]).await;
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains(&format!("nothing listens at {nothing}")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("maintenance"), "{}", run.stderr);

    // Accepted by the kernel, never answered: the TLS handshake times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung = silent.local_addr().unwrap().to_string();
    let run = osctl(dir.path(), &["-e", &hung, "version"]).await;
    assert!(
        run.stderr
            .contains(&format!("no answer from {hung} in time")),
        "{}",
        run.stderr
    );
    drop(silent);

    let node = configured(dir.path(), "127.0.0.73", Vec::new()).await;
    let endpoint = node.local_addr().to_string();
    let other = cluster_dir().await;
    let run = osctl(other.path(), &["-e", &endpoint, "version"]).await;
    assert!(
        run.stderr.contains("is not signed by this context's CA"),
        "{}",
        run.stderr
    );
    let run = osctl(dir.path(), &["-e", &endpoint, "--insecure", "version"]).await;
    assert!(
        run.stderr.contains("client certificate") && run.stderr.contains("drop --insecure"),
        "{}",
        run.stderr
    );
    ok(dir.path(), &["-e", &endpoint, "version"]).await;
    node.shutdown().await.unwrap();
}

/// A client certificate the node does not trust (another cluster's, with this cluster's
/// CA to check the node) is named as refused by the node, not as a broken connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_of_another_cluster_is_named_as_refused() {
    use basalt_machine_config::client::ClientConfig;
    let dir = cluster_dir().await;
    let other = cluster_dir().await;
    let node = configured(dir.path(), "127.0.0.74", Vec::new()).await;
    let endpoint = node.local_addr().to_string();
    let read = |d: &Path| {
        ClientConfig::parse(&std::fs::read_to_string(d.join("osconfig")).unwrap()).unwrap()
    };
    let mut mixed = read(dir.path());
    let theirs = read(other.path());
    let (ours_ctx, their_ctx) = (
        mixed.current_mut().unwrap(),
        theirs.contexts.values().next().unwrap(),
    );
    ours_ctx.crt = their_ctx.crt.clone();
    ours_ctx.key = their_ctx.key.clone();
    let mixed_dir = tempfile::tempdir().unwrap();
    std::fs::write(mixed_dir.path().join("osconfig"), mixed.to_yaml().unwrap()).unwrap();
    let run = osctl(mixed_dir.path(), &["-e", &endpoint, "version"]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("refused this client certificate"),
        "{}",
        run.stderr
    );
    node.shutdown().await.unwrap();
}

/// A copy of the cluster's osconfig in a new directory, its client certificate issued by
/// the cluster's OS CA for `roles`, valid from now for `validity`.
fn osconfig_with(dir: &Path, roles: &[basalt_pki::Role], validity: Duration) -> tempfile::TempDir {
    use basalt_machine_config::client::ClientConfig;
    let bundle = basalt_pki::SecretsBundle::read_from(dir.join("secrets.yaml")).unwrap();
    let cert = basalt_pki::issue_client_cert(&bundle.certs.os, "someone", roles, validity).unwrap();
    let mut client =
        ClientConfig::parse(&std::fs::read_to_string(dir.join("osconfig")).unwrap()).unwrap();
    let context = client.current_mut().unwrap();
    context.crt = cert.crt;
    context.key = basalt_machine_config::Secret::new(cert.key);
    let new = tempfile::tempdir().unwrap();
    std::fs::write(new.path().join("osconfig"), client.to_yaml().unwrap()).unwrap();
    new
}

/// A client certificate that expired is named as expired (the node refuses it; with TLS
/// 1.3 the client sees only the connection close, so osctl checks its own certificate).
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_client_certificate_is_named_as_expired() {
    let cluster = cluster_dir().await;
    let node = configured(cluster.path(), "127.0.0.75", Vec::new()).await;
    let endpoint = node.local_addr().to_string();
    let expired = osconfig_with(
        cluster.path(),
        &[basalt_pki::Role::Admin],
        Duration::from_secs(1),
    );
    // Valid for one second: expired after two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = osctl(expired.path(), &["-e", &endpoint, "version"]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("refused this client certificate") && run.stderr.contains("expired"),
        "{}",
        run.stderr
    );
    node.shutdown().await.unwrap();
}

/// A call the caller's role does not allow names the roles it needs and the caller's.
#[tokio::test(flavor = "multi_thread")]
async fn permission_denied_names_the_role_needed() {
    let cluster = cluster_dir().await;
    let node = configured(cluster.path(), "127.0.0.76", Vec::new()).await;
    let endpoint = node.local_addr().to_string();
    let reader = osconfig_with(
        cluster.path(),
        &[basalt_pki::Role::Reader],
        Duration::from_secs(3600),
    );
    ok(reader.path(), &["-e", &endpoint, "version"]).await;
    let run = osctl(reader.path(), &["-e", &endpoint, "reboot"]).await;
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains("needs one of the roles os:admin, os:operator")
            && run.stderr.contains("has os:reader"),
        "{}",
        run.stderr
    );
    node.shutdown().await.unwrap();
}

/// A node reached by a name its certificate does not carry is named as such.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_the_nodes_certificate_lacks_is_named() {
    let cluster = cluster_dir().await;
    let node = configured(cluster.path(), "127.0.0.1", Vec::new()).await;
    let port = node.local_addr().port();
    let run = osctl(
        cluster.path(),
        &["-e", &format!("localhost:{port}"), "version"],
    )
    .await;
    assert!(!run.ok);
    assert!(run.stderr.contains("does not name it"), "{}", run.stderr);
    node.shutdown().await.unwrap();
}
