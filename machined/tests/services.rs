#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The supervisor against the real host, as root: restarts with backoff, dependencies,
//! health checks, a cgroup per service with its limits, capabilities. Every test removes
//! the cgroups it made (its services' parent is named after the test process, and is
//! checked gone at the end).

mod supervision;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use basalt_resources::runtime::ServiceSpec;
use basalt_state::State;
use basalt_sys::cgroups::{current_dir, hierarchies, own_hierarchies};
use basalt_sys::exec::{Capability, User};
use futures::StreamExt;
use machined::parts::{
    HealthCheck, RestartPolicy, ServiceDefinition, Services, Supervisor, SupervisorOptions,
};
use supervision::*;
use tokio::io::AsyncWriteExt;

/// The parent of this test process's service cgroups.
fn cgroup_parent() -> String {
    format!("basalt-services-test-{}", std::process::id())
}

fn options() -> SupervisorOptions {
    SupervisorOptions {
        stop_grace: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        cgroup_parent: Some(cgroup_parent()),
        ..SupervisorOptions::default()
    }
}

async fn logs(supervisor: &Supervisor, id: &str) -> String {
    let chunks: Vec<_> = supervisor
        .logs(id, false, None)
        .await
        .unwrap()
        .collect()
        .await;
    let bytes: Vec<u8> = chunks
        .into_iter()
        .flat_map(|c| c.unwrap().to_vec())
        .collect();
    String::from_utf8(bytes).unwrap()
}

async fn wait_logs(supervisor: &Supervisor, id: &str, needle: &str) -> String {
    eventually(&format!("{needle:?} in the logs of {id}"), || async {
        let text = logs(supervisor, id).await;
        text.contains(needle).then_some(text)
    })
    .await
}

/// The directory of `pid`'s cgroup in the hierarchy with `controller`.
fn cgroup_of(pid: i32, controller: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let found = hierarchies(&mounts, &cgroups);
    let with = found
        .iter()
        .find(|h| {
            h.controllers
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c == controller))
        })
        .or_else(|| {
            found.iter().find(|h| {
                h.is_unified()
                    && std::fs::read_to_string(current_dir(h).join("cgroup.controllers"))
                        .is_ok_and(|c| c.split_whitespace().any(|c| c == controller))
            })
        })?;
    Some(current_dir(with))
}

/// No service cgroup of this test process is left in any hierarchy.
fn assert_no_cgroups_left() {
    for hierarchy in own_hierarchies() {
        let dir = current_dir(&hierarchy).join(cgroup_parent());
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
}

#[tokio::test]
async fn a_crashing_service_restarts_with_growing_delays() {
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let supervisor = Supervisor::new(
        State::new(),
        vec![sh(
            "crash",
            &format!("date +%s%N >> {}; exit 1", starts.display()),
        )],
        SupervisorOptions {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(800),
            ..options()
        },
    )
    .unwrap();
    supervisor.start_all().await.unwrap();
    let crashed = wait_for(&supervisor, "crash", "failed 5 times", |s| {
        s.restarts >= 4 && s.state == "Failed"
    })
    .await;
    supervisor.shutdown().await;
    assert!(
        crashed.message.contains("exited with code 1"),
        "{crashed:?}"
    );
    let times: Vec<u128> = std::fs::read_to_string(&starts)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(times.len() >= 5, "{times:?}");
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    // Each wait is at least its backoff: 100, 200, 400, 800 ms.
    for (gap, backoff) in gaps.iter().zip([100, 200, 400, 800]) {
        assert!(*gap >= backoff, "gaps {gaps:?} ms");
    }
    assert!(gaps[3] > 2 * gaps[0], "gaps {gaps:?} ms do not grow");
    assert_no_cgroups_left();
}

#[tokio::test]
async fn a_service_that_exits_at_once_never_spins() {
    let supervisor = Supervisor::new(
        State::new(),
        vec![ServiceDefinition::new("quick", &["true"]).restart(RestartPolicy::Always)],
        SupervisorOptions {
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(400),
            ..options()
        },
    )
    .unwrap();
    supervisor.start_all().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quick = service(&supervisor, "quick").await;
    supervisor.shutdown().await;
    // 50 + 100 + 200 + 400 + 400 + ... ms: at most 8 starts in 2 s, however fast `true` is.
    assert!(
        (2..=8).contains(&quick.restarts),
        "{} restarts in 2 s",
        quick.restarts
    );
    assert_no_cgroups_left();
}

#[tokio::test]
async fn stop_kills_what_ignores_sigterm_also_outside_the_process_group() {
    let supervisor = Supervisor::new(
        State::new(),
        vec![sh(
            "stubborn",
            "trap '' TERM; setsid sh -c \"trap '' TERM; while true; do sleep 0.1; done\" & \
             echo ready; while true; do sleep 0.1; done",
        )],
        SupervisorOptions {
            stop_grace: Duration::from_millis(300),
            ..options()
        },
    )
    .unwrap();
    supervisor.start_all().await.unwrap();
    let running = wait_state(&supervisor, "stubborn", "Running").await;
    wait_logs(&supervisor, "stubborn", "ready").await;
    let dir = cgroup_of(running.pid, "pids").expect("the service's pids cgroup");
    assert!(
        dir.ends_with(format!("{}/stubborn", cgroup_parent())),
        "{dir:?}"
    );
    let procs: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(procs.len() >= 2, "{procs:?}");

    let started = Instant::now();
    supervisor.stop("stubborn").await.unwrap();
    let stopped = service(&supervisor, "stubborn").await;
    assert_eq!(stopped.state, "Stopped");
    assert!(
        stopped.message.contains("did not exit within 300ms"),
        "{stopped:?}"
    );
    assert!(stopped.message.contains("signal 9"), "{stopped:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The setsid one left the process group: the cgroup still had it.
    for pid in procs {
        assert!(!alive(pid), "{pid} survived the stop");
    }
    assert!(!dir.exists());
    assert_no_cgroups_left();
}

/// A tiny HTTP server on `port` answering etcd's `/health` until dropped.
struct HealthServer(tokio::task::JoinHandle<()>);

impl HealthServer {
    async fn start(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        HealthServer(tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut request).await;
                    let body = r#"{"health":"true","reason":""}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        }))
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_dependent_waits_until_its_dependency_is_healthy_and_health_is_reported() {
    let port = free_port().await;
    let check = HealthCheck::http(format!("http://127.0.0.1:{port}/health"))
        .expect(r#""health":"true""#)
        .timing(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::ZERO,
        );
    let state = State::new();
    let supervisor = Supervisor::new(
        state.clone(),
        vec![
            sh("app", "echo app up; sleep 300").depends_on("db"),
            sh("db", "sleep 300").health(check),
        ],
        options(),
    )
    .unwrap();
    supervisor.start_all().await.unwrap();

    // Nothing answers yet: db runs, unhealthy, and app waits for it.
    let db = wait_for(&supervisor, "db", "unhealthy", |s| {
        s.state == "Running" && s.message.contains("health check failed")
    })
    .await;
    assert!(!db.healthy);
    assert!(db.message.contains("connection refused"), "{db:?}");
    let app = service(&supervisor, "app").await;
    assert_eq!(app.state, "Waiting");
    assert_eq!(app.message, "waiting for db");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(service(&supervisor, "app").await.state, "Waiting");
    assert_eq!(logs(&supervisor, "app").await, "");

    // The check passes: db is healthy, and app starts.
    let server = HealthServer::start(port).await;
    let healthy = wait_for(&supervisor, "db", "healthy", |s| s.healthy).await;
    assert_eq!(healthy.message, "");
    let published = state.get_as::<ServiceSpec>("db").await.unwrap().spec;
    assert!(published.healthy);
    assert!(published.health_message.contains("200 OK"), "{published:?}");
    wait_state(&supervisor, "app", "Running").await;
    wait_logs(&supervisor, "app", "app up").await;

    // The server goes: db is reported unhealthy, not restarted.
    drop(server);
    let unhealthy = wait_for(&supervisor, "db", "unhealthy again", |s| !s.healthy).await;
    assert_eq!(unhealthy.state, "Running");
    assert!(
        unhealthy.message.starts_with("health check failed:"),
        "{unhealthy:?}"
    );
    assert_eq!(unhealthy.pid, db.pid);
    assert_eq!(unhealthy.restarts, 0);
    supervisor.shutdown().await;
    assert_no_cgroups_left();
}

#[tokio::test]
async fn a_tcp_check_and_a_skipped_dependency() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let supervisor = Supervisor::new(
        State::new(),
        vec![
            sh("tcp", "sleep 300").health(HealthCheck::tcp(address).timing(
                Duration::from_millis(100),
                Duration::from_secs(1),
                Duration::from_millis(200),
            )),
            sh("gpu", "sleep 300").skip("not in container mode"),
            sh("uses-gpu", "sleep 300").depends_on("gpu"),
        ],
        options(),
    )
    .unwrap();
    supervisor.start_all().await.unwrap();
    let skipped = wait_state(&supervisor, "gpu", "Skipped").await;
    assert_eq!(skipped.message, "not in container mode");
    let err = supervisor.start("gpu").await.unwrap_err();
    assert!(err.to_string().contains("skipped"), "{err}");
    let waiting = wait_state(&supervisor, "uses-gpu", "Waiting").await;
    assert_eq!(waiting.message, "waiting for gpu");
    wait_for(&supervisor, "tcp", "healthy", |s| s.healthy).await;
    drop(listener);
    wait_for(&supervisor, "tcp", "unhealthy", |s| {
        s.message == "health check failed: connection refused"
    })
    .await;
    supervisor.shutdown().await;
    assert_no_cgroups_left();
}

#[test]
fn unknown_dependencies_cycles_and_outside_health_checks_are_refused() {
    let refuse = |definitions: Vec<ServiceDefinition>| {
        Supervisor::new(State::new(), definitions, SupervisorOptions::default())
            .unwrap_err()
            .to_string()
    };
    let err = refuse(vec![sh("kubelet", "true").depends_on("etcd")]);
    assert_eq!(err, "service kubelet depends on etcd, which is not defined");
    let err = refuse(vec![
        sh("a", "true").depends_on("b"),
        sh("b", "true").depends_on("c"),
        sh("c", "true").depends_on("a"),
    ]);
    assert_eq!(
        err,
        "services depend on each other in a cycle: a -> b -> c -> a"
    );
    let err = refuse(vec![sh("self", "true").depends_on("self")]);
    assert!(err.contains("self -> self"), "{err}");
    let err = refuse(vec![
        sh("web", "true").health(HealthCheck::http("http://192.0.2.1/health"))
    ]);
    assert!(err.contains("not a loopback address"), "{err}");
    let err = refuse(vec![
        sh("web", "true").health(HealthCheck::http("https://127.0.0.1/health"))
    ]);
    assert!(err.contains("only http://"), "{err}");
}

#[tokio::test]
async fn a_service_over_its_memory_limit_is_killed_and_reported_as_such() {
    let limit: u64 = 64 << 20;
    let state = State::new();
    let supervisor = Supervisor::new(
        state.clone(),
        vec![ServiceDefinition::new(
            "hog",
            &["python3", "-c", "x = b'a' * (512 << 20); print('survived')"],
        )
        .memory_max(limit)
        .restart(RestartPolicy::Never)],
        options(),
    )
    .unwrap();
    supervisor.start_all().await.unwrap();
    let ended = wait_for(&supervisor, "hog", "ended", |s| {
        s.state == "Failed" || s.state == "Finished"
    })
    .await;
    let spec = state.get_as::<ServiceSpec>("hog").await.unwrap().spec;
    if let Some(why) = spec.limits_not_applied.first() {
        // The host has no memory controller this process can write.
        println!("skipped: {why}");
        return;
    }
    assert_eq!(ended.state, "Failed");
    assert_eq!(
        ended.message,
        format!("killed: over its memory limit of {limit} bytes (oom_kill)")
    );
    assert!(!logs(&supervisor, "hog").await.contains("survived"));
    supervisor.shutdown().await;
    assert_no_cgroups_left();
}

#[tokio::test]
async fn a_fork_bomb_stops_at_its_pids_limit() {
    let script = "\
import errno, os, time
n, err = 0, None
for _ in range(200):
    try:
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
        n += 1
    except OSError as e:
        err = errno.errorcode.get(e.errno)
        break
print('forked', n, 'then', err, flush=True)
time.sleep(300)
";
    let supervisor = Supervisor::new(
        State::new(),
        vec![ServiceDefinition::new("bomb", &["python3", "-c", script]).pids_max(20)],
        options(),
    )
    .unwrap();
    supervisor.start_all().await.unwrap();
    let running = wait_state(&supervisor, "bomb", "Running").await;
    let text = wait_logs(&supervisor, "bomb", "forked").await;
    assert!(text.contains("then EAGAIN"), "{text}");
    let dir = cgroup_of(running.pid, "pids").expect("the service's pids cgroup");
    assert_eq!(
        std::fs::read_to_string(dir.join("pids.max"))
            .unwrap()
            .trim(),
        "20"
    );
    for _ in 0..10 {
        let current: u64 = std::fs::read_to_string(dir.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!((2..=20).contains(&current), "{current} pids");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let forked: u32 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(forked, 19, "{text}");
    supervisor.shutdown().await;
    assert!(!dir.exists());
    assert_no_cgroups_left();
}

#[tokio::test]
async fn a_missing_binary_fails_alone() {
    let supervisor = Supervisor::new(
        State::new(),
        vec![
            ServiceDefinition::new("missing", &["/nonexistent/bin/etcd", "--help"])
                .restart(RestartPolicy::OnFailure),
            sh("fine", "sleep 300"),
        ],
        options(),
    )
    .unwrap();
    supervisor.start_all().await.unwrap();
    let missing = wait_for(&supervisor, "missing", "failed twice", |s| {
        s.state == "Failed" && s.restarts >= 2
    })
    .await;
    assert!(
        missing
            .message
            .starts_with("could not start /nonexistent/bin/etcd:"),
        "{missing:?}"
    );
    let fine = wait_state(&supervisor, "fine", "Running").await;
    assert!(alive(fine.pid));
    // The supervisor still answers and acts.
    supervisor.restart("fine").await.unwrap();
    let again = wait_state(&supervisor, "fine", "Running").await;
    assert_eq!(again.restarts, 1);
    supervisor.shutdown().await;
    assert_no_cgroups_left();
}

#[tokio::test]
async fn a_service_keeps_only_the_capabilities_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    // Open to the service that runs as another user (CAP_CHOWN does not let it search).
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let script = |file: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, "").unwrap();
        format!(
            "grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; \
             chown 1234 {} && echo chowned || echo refused",
            path.display()
        )
    };
    let supervisor = Supervisor::new(
        State::new(),
        vec![
            sh("none", &script("none"))
                .capabilities(vec![])
                .restart(RestartPolicy::Never),
            sh("chown", &script("chown"))
                .capabilities(vec![Capability::CAP_CHOWN])
                .restart(RestartPolicy::Never),
            sh("all", "grep -E '^CapEff' /proc/self/status").restart(RestartPolicy::Never),
            // Another user keeps the capabilities it is given across exec (ambient), and
            // has no supplementary group.
            sh("nobody", &script("nobody"))
                .user(User {
                    uid: 65534,
                    gid: 65533,
                })
                .capabilities(vec![Capability::CAP_CHOWN])
                .restart(RestartPolicy::Never),
            sh(
                "nobody-bare",
                "grep -E '^(Uid|CapEff)' /proc/self/status; id -G",
            )
            .user(User {
                uid: 65534,
                gid: 65534,
            })
            .capabilities(vec![])
            .restart(RestartPolicy::Never),
        ],
        options(),
    )
    .unwrap();
    supervisor.start_all().await.unwrap();
    for id in ["none", "chown", "all", "nobody", "nobody-bare"] {
        wait_for(&supervisor, id, "ended", |s| {
            s.state == "Finished" || s.state == "Failed"
        })
        .await;
    }
    let none = logs(&supervisor, "none").await;
    for line in [
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "refused",
    ] {
        assert!(none.contains(line), "{line:?} not in {none}");
    }
    let chown = logs(&supervisor, "chown").await;
    for line in [
        "CapEff:\t0000000000000001",
        "CapBnd:\t0000000000000001",
        "chowned",
    ] {
        assert!(chown.contains(line), "{line:?} not in {chown}");
    }
    // Without a list, a service keeps machined's (root's here).
    let all = logs(&supervisor, "all").await;
    assert!(!all.contains("CapEff:\t0000000000000000"), "{all}");
    let nobody = logs(&supervisor, "nobody").await;
    for line in [
        "CapEff:\t0000000000000001",
        "CapPrm:\t0000000000000001",
        "CapAmb:\t0000000000000001",
        "CapBnd:\t0000000000000001",
        "NoNewPrivs:\t1",
        "chowned",
    ] {
        assert!(nobody.contains(line), "{line:?} not in {nobody}");
    }
    let bare = logs(&supervisor, "nobody-bare").await;
    for line in [
        "Uid:\t65534\t65534\t65534\t65534",
        "CapEff:\t0000000000000000",
    ] {
        assert!(bare.contains(line), "{line:?} not in {bare}");
    }
    assert_eq!(bare.lines().last(), Some("65534"), "{bare}");
    supervisor.shutdown().await;
    assert_no_cgroups_left();
}

#[tokio::test]
async fn shutdown_stops_dependents_before_their_dependencies() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stopped");
    let stops = |name: &str| {
        format!(
            "trap 'echo {name} >> {}; exit 0' TERM; while true; do sleep 0.1; done",
            file.display()
        )
    };
    let supervisor = Supervisor::new(
        State::new(),
        vec![
            sh("etcd", &stops("etcd")),
            sh("kubelet", &stops("kubelet")).depends_on("apiserver"),
            sh("apiserver", &stops("apiserver")).depends_on("etcd"),
        ],
        options(),
    )
    .unwrap();
    supervisor.start_all().await.unwrap();
    for id in ["etcd", "apiserver", "kubelet"] {
        wait_state(&supervisor, id, "Running").await;
    }
    // The traps are set once the shells loop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    supervisor.shutdown().await;
    let order = std::fs::read_to_string(&file).unwrap();
    assert_eq!(order, "kubelet\napiserver\netcd\n");
    let err = supervisor.start("etcd").await.unwrap_err();
    assert!(err.to_string().contains("shut down"), "{err}");
    assert_no_cgroups_left();
}
