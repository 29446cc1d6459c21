#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The local node implementations against the real host: child processes, /proc, /sys,
//! /dev/kmsg, a temporary directory tree and an in-memory state.

mod supervision;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use basalt_api::machine::v1 as api;
use basalt_resources::runtime::{PowerAction, PowerRequestSpec, ServiceSpec, ServiceState};
use basalt_state::State;
use futures::StreamExt;
use machined::parts::{Files, NodeError, NodeHandles, Power, ResetOptions, Services, System};
use machined::parts::{
    LocalFiles, LocalNode, PowerRequest, ProcSystem, RestartPolicy, ServiceDefinition, ServiceSet,
    StatePower, Supervisor, SupervisorOptions,
};
use supervision::*;

fn fast_options() -> SupervisorOptions {
    SupervisorOptions {
        stop_grace: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        // Test processes run side by side in one cgroup: each keeps its services apart.
        cgroup_parent: Some(format!("basalt-services-test-{}", std::process::id())),
        ..SupervisorOptions::default()
    }
}

async fn children_of(pid: i32) -> Vec<i32> {
    let processes = ProcSystem::new().processes().await.unwrap();
    processes
        .iter()
        .filter(|p| p.ppid == pid)
        .map(|p| p.pid)
        .collect()
}

async fn text(stream: machined::parts::ByteStream) -> String {
    let chunks: Vec<_> = stream.collect().await;
    let bytes: Vec<u8> = chunks
        .into_iter()
        .flat_map(|c| c.unwrap().to_vec())
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// Reads a followed stream until what was read satisfies `done`; fails the test when no
/// new chunk comes within [`PATIENCE`].
async fn read_until(
    stream: &mut machined::parts::ByteStream,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut seen = String::new();
    while !done(&seen) {
        let chunk = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("nothing new after {seen:?}"))
            .expect("the stream ended")
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    seen
}

#[tokio::test]
async fn supervised_service_runs_logs_stops_and_restarts() {
    let state = State::new();
    let supervisor = Supervisor::new(
        state.clone(),
        vec![sh("hello", "echo hello; echo oops >&2; sleep 30")],
        fast_options(),
    )
    .unwrap();
    supervisor.start_all().await.unwrap();

    let running = wait_state(&supervisor, "hello", "Running").await;
    assert!(running.healthy);
    assert!(alive(running.pid), "pid {} is not running", running.pid);
    let published = state.get_as::<ServiceSpec>("hello").await.unwrap();
    assert_eq!(published.spec.state, ServiceState::Running);
    assert_eq!(published.spec.pid, running.pid);
    assert_eq!(published.metadata.owner, "machined.Supervisor");

    let logs = eventually("both output lines", || async {
        let logs = text(supervisor.logs("hello", false, None).await.unwrap()).await;
        (logs.contains("hello\n") && logs.contains("oops\n")).then_some(logs)
    })
    .await;
    assert_eq!(logs.lines().count(), 2, "{logs:?}");
    let last = text(supervisor.logs("hello", false, Some(1)).await.unwrap()).await;
    assert_eq!(last.lines().count(), 1, "{last:?}");

    let err = supervisor.start("hello").await.unwrap_err();
    assert!(matches!(err, NodeError::FailedPrecondition(_)), "{err}");
    assert!(err.to_string().contains("already running"), "{err}");

    // The shell's child (sleep) is in the service's process group and goes with it.
    let sleeper = eventually("the shell's child", || async {
        children_of(running.pid).await.first().copied()
    })
    .await;
    let answer = supervisor.restart("hello").await.unwrap();
    assert!(answer.contains("restarted"), "{answer}");
    let restarted = wait_state(&supervisor, "hello", "Running").await;
    assert_ne!(restarted.pid, running.pid);
    assert_eq!(restarted.restarts, 1);
    assert!(!alive(running.pid), "the old process still runs");
    // It got SIGTERM and SIGKILL with its group; it is not ours to wait for, so it may
    // take a moment to go.
    eventually("the old process's child to go", || async {
        (!alive(sleeper)).then_some(())
    })
    .await;

    let answer = supervisor.stop("hello").await.unwrap();
    assert!(answer.contains("stopped"), "{answer}");
    let stopped = service(&supervisor, "hello").await;
    assert_eq!(stopped.state, "Stopped");
    assert_eq!(stopped.pid, 0);
    assert!(!alive(restarted.pid));
    let published = state.get_as::<ServiceSpec>("hello").await.unwrap();
    assert_eq!(published.spec.state, ServiceState::Stopped);
    assert!(!published.spec.running);
    assert_eq!(published.spec.restarts, 1);

    let answer = supervisor.stop("hello").await.unwrap();
    assert!(answer.contains("not running"), "{answer}");
    supervisor.shutdown().await;
    let err = supervisor.start("hello").await.unwrap_err();
    assert!(err.to_string().contains("shut down"), "{err}");
    let err = supervisor.logs("nope", false, None).await.err().unwrap();
    assert!(matches!(err, NodeError::NotFound(_)), "{err}");
    let err = supervisor.stop("nope").await.unwrap_err();
    assert!(matches!(err, NodeError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn follow_yields_lines_written_later() {
    let supervisor = Supervisor::new(
        State::new(),
        vec![sh(
            "ticker",
            "i=0; while true; do echo $WORD $i; i=$((i+1)); sleep 0.1; done",
        )
        .env("WORD", "tick")],
        fast_options(),
    )
    .unwrap();
    supervisor.start_all().await.unwrap();
    wait_state(&supervisor, "ticker", "Running").await;

    let mut stream = supervisor.logs("ticker", true, Some(0)).await.unwrap();
    let seen = read_until(&mut stream, |seen| {
        seen.lines().filter(|l| l.starts_with("tick ")).count() >= 3
    })
    .await;
    assert!(seen.ends_with('\n'), "{seen:?}");
    drop(stream);
    supervisor.shutdown().await;
    assert_eq!(service(&supervisor, "ticker").await.state, "Stopped");
}

#[tokio::test]
async fn failing_services_report_and_restart_by_policy() {
    let state = State::new();
    let supervisor = Supervisor::new(
        state.clone(),
        vec![
            sh("once", "echo bye; exit 3").restart(RestartPolicy::Never),
            sh("retry", "exit 1").restart(RestartPolicy::OnFailure),
            sh("done", "exit 0").restart(RestartPolicy::OnFailure),
            ServiceDefinition::new("missing", &["/nonexistent/binary"])
                .restart(RestartPolicy::Never),
        ],
        fast_options(),
    )
    .unwrap();
    supervisor.start_all().await.unwrap();

    let failed = wait_state(&supervisor, "once", "Failed").await;
    assert!(failed.message.contains("exited with code 3"), "{failed:?}");
    assert!(!failed.healthy);
    let published = state.get_as::<ServiceSpec>("once").await.unwrap();
    assert_eq!(published.spec.state, ServiceState::Failed);
    assert_eq!(published.spec.message, failed.message);
    let logs = text(supervisor.logs("once", false, None).await.unwrap()).await;
    assert_eq!(logs, "bye\n");

    let finished = wait_state(&supervisor, "done", "Finished").await;
    assert_eq!(finished.restarts, 0);

    let missing = wait_state(&supervisor, "missing", "Failed").await;
    assert!(
        missing.message.contains("/nonexistent/binary"),
        "{missing:?}"
    );

    eventually("restarts with backoff", || async {
        let s = service(&supervisor, "retry").await;
        (s.restarts >= 2).then_some(())
    })
    .await;
    let retry = supervisor.stop("retry").await.unwrap();
    assert!(retry.contains("stopped"), "{retry}");
    assert_eq!(service(&supervisor, "retry").await.state, "Stopped");

    // A service that ended may be started again.
    supervisor.start("once").await.unwrap();
    let again = wait_state(&supervisor, "once", "Failed").await;
    assert_eq!(again.restarts, 1);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn stop_kills_a_service_that_ignores_sigterm() {
    let supervisor = Supervisor::new(
        State::new(),
        vec![sh(
            "stubborn",
            "trap '' TERM; echo ready; while true; do sleep 0.1; done",
        )],
        SupervisorOptions {
            stop_grace: Duration::from_millis(300),
            ..fast_options()
        },
    )
    .unwrap();
    supervisor.start_all().await.unwrap();
    let running = wait_state(&supervisor, "stubborn", "Running").await;
    // The trap is set once the shell has printed.
    eventually("the trap to be set", || async {
        let logs = text(supervisor.logs("stubborn", false, None).await.unwrap()).await;
        logs.contains("ready").then_some(())
    })
    .await;
    supervisor.stop("stubborn").await.unwrap();
    let stopped = service(&supervisor, "stubborn").await;
    assert_eq!(stopped.state, "Stopped");
    assert!(stopped.message.contains("did not exit"), "{stopped:?}");
    assert!(stopped.message.contains("signal 9"), "{stopped:?}");
    assert!(!alive(running.pid));
}

#[tokio::test]
async fn dropping_the_supervisor_stops_its_services() {
    let supervisor = Supervisor::new(
        State::new(),
        vec![sh("a", "sleep 30"), sh("b", "sleep 30; true")],
        fast_options(),
    )
    .unwrap();
    supervisor.start_all().await.unwrap();
    let a = wait_state(&supervisor, "a", "Running").await.pid;
    let b = wait_state(&supervisor, "b", "Running").await.pid;
    drop(supervisor);
    eventually("the services to be gone", || async {
        (!alive(a) && !alive(b)).then_some(())
    })
    .await;
}

#[test]
fn invalid_definitions_are_refused() {
    let empty = ServiceDefinition::new("x", &[]);
    let err = Supervisor::new(State::new(), vec![empty], SupervisorOptions::default()).unwrap_err();
    assert!(err.to_string().contains("service x"), "{err}");
    let twice = vec![sh("x", "true"), sh("x", "true")];
    let err = Supervisor::new(State::new(), twice, SupervisorOptions::default()).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[tokio::test]
async fn processes_include_this_test() {
    let processes = ProcSystem::new().processes().await.unwrap();
    let me = std::process::id() as i32;
    let this = processes.iter().find(|p| p.pid == me).expect("own pid");
    let exe = std::env::current_exe().unwrap();
    assert_eq!(Path::new(&this.executable), exe);
    let name = exe.file_name().unwrap().to_string_lossy().into_owned();
    // The kernel's command name is the executable's name cut to 15 bytes.
    assert!(
        name.starts_with(&this.command),
        "{} vs {name}",
        this.command
    );
    assert!(this.args.starts_with(&std::env::args().next().unwrap()));
    assert!(this.threads >= 1);
    assert!(this.resident_memory > 0 && this.virtual_memory >= this.resident_memory);
    assert!(this.cpu_time >= 0.0);
    assert!(processes.iter().any(|p| p.pid == 1));
}

#[tokio::test]
async fn memory_matches_meminfo() {
    let memory = ProcSystem::new().memory().await.unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(memory.total > 0);
    assert_eq!(memory.total, total_kb * 1024);
    assert!(memory.free <= memory.total && memory.available <= memory.total);
}

#[tokio::test]
async fn mounts_and_disks() {
    let system = ProcSystem::new();
    let mounts = system.mounts().await.unwrap();
    let root = mounts.iter().find(|m| m.target == "/").expect("a / mount");
    assert!(root.size > 0 && root.available <= root.size, "{root:?}");
    assert!(!root.filesystem.is_empty());
    // May be empty in a container; it must list without failing.
    let disks = system.disks().await.unwrap();
    assert!(disks
        .iter()
        .all(|d| !d.name.starts_with("loop") && !d.name.starts_with("ram")));
}

#[tokio::test]
async fn dmesg_reads_the_kernel_log_or_says_why_not() {
    let system = ProcSystem::new();
    match system.dmesg(false, Some(5)).await {
        Ok(stream) => {
            let log = text(stream).await;
            assert!(log.lines().count() <= 5, "{log}");
            assert!(log.lines().all(|l| l.starts_with('[')), "{log}");
        }
        Err(err) => {
            assert!(matches!(err, NodeError::Unavailable(_)), "{err}");
            assert!(err.to_string().contains("/dev/kmsg"), "{err}");
            return;
        }
    }
    // As root the test can write a line and see it followed; elsewhere that is skipped.
    let mut follow = system.dmesg(true, Some(0)).await.unwrap();
    let marker = format!("basalt node_local test {}", std::process::id());
    if std::fs::write("/dev/kmsg", format!("{marker}\n")).is_err() {
        return;
    }
    read_until(&mut follow, |seen| seen.contains(&marker)).await;
}

#[tokio::test]
async fn fake_proc_and_sys_trees_skip_what_they_cannot_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (proc, sys) = (tmp.path().join("proc"), tmp.path().join("sys"));
    let write = |path: PathBuf, text: &str| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    let stat = "42 (worker one) R 1 42 42 0 -1 0 0 0 0 0 300 100 0 0 20 0 5 0 9 1000 2 0";
    write(proc.join("42/stat"), stat);
    write(proc.join("42/cmdline"), "worker\0--fast\0");
    write(proc.join("43/stat"), "garbage");
    std::fs::create_dir_all(proc.join("44")).unwrap(); // vanished: no stat
    write(
        proc.join("self/mountinfo"),
        "1 0 8:1 / / rw - ext4 /dev/vda1 rw\nbroken\n",
    );
    write(proc.join("meminfo"), "MemTotal: 1000 kB\nMemFree: x kB\n");
    write(sys.join("block/vda/size"), "2048\n");
    write(sys.join("block/vda/device/model"), "QEMU HARDDISK  \n");
    write(sys.join("block/vda/wwid"), "naa.123\n");
    write(sys.join("block/vda/queue/rotational"), "1\n");
    write(sys.join("block/vda/ro"), "0\n");
    write(sys.join("block/loop0/size"), "8\n");
    write(sys.join("block/gone/model"), "no size\n");
    let system = ProcSystem::with_paths(&proc, &sys, tmp.path().join("no-kmsg"));

    let processes = system.processes().await.unwrap();
    assert_eq!(processes.len(), 1, "{processes:?}");
    let worker = &processes[0];
    assert_eq!((worker.pid, worker.ppid, worker.threads), (42, 1, 5));
    assert_eq!(worker.command, "worker one");
    assert_eq!(worker.args, "worker --fast");
    assert_eq!(worker.executable, "");
    assert!(worker.cpu_time > 0.0);

    let memory = system.memory().await.unwrap();
    assert_eq!((memory.total, memory.free), (1_024_000, 0));
    let mounts = system.mounts().await.unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].source, "/dev/vda1");

    let disks = system.disks().await.unwrap();
    assert_eq!(disks.len(), 1, "{disks:?}");
    let vda = &disks[0];
    assert_eq!((vda.name.as_str(), vda.size), ("vda", 2048 * 512));
    assert_eq!(
        (vda.model.as_str(), vda.serial.as_str()),
        ("QEMU HARDDISK", "naa.123")
    );
    assert!(vda.rotational && !vda.read_only);

    let err = system.dmesg(false, None).await.err().unwrap();
    assert!(matches!(err, NodeError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("no-kmsg"), "{err}");
}

#[tokio::test]
async fn mounts_do_not_ask_network_filesystems_their_size() {
    let tmp = tempfile::tempdir().unwrap();
    let proc = tmp.path().join("proc");
    std::fs::create_dir_all(proc.join("self")).unwrap();
    // All three on a real local directory: only the local one is asked its size, as a
    // hung server would never answer statvfs on the others.
    let target = p(tmp.path());
    let mountinfo: String = [
        ("ext4", "/dev/vda1"),
        ("nfs4", "server:/export"),
        ("fuse.sshfs", "user@host:"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (fs, source))| format!("{i} 0 0:{i} / {target} rw - {fs} {source} rw\n"))
    .collect();
    std::fs::write(proc.join("self/mountinfo"), mountinfo).unwrap();
    let system = ProcSystem::with_paths(&proc, tmp.path(), tmp.path().join("no-kmsg"));

    let mounts = system.mounts().await.unwrap();
    let size = |fs: &str| mounts.iter().find(|m| m.filesystem == fs).unwrap().size;
    assert!(size("ext4") > 0, "{mounts:?}");
    assert_eq!((size("nfs4"), size("fuse.sshfs")), (0, 0), "{mounts:?}");
}

/// Runs `test` on a runtime with a single blocking thread, failing if it does not finish
/// in time: a reader that keeps that thread for itself makes every later file or /proc
/// call wait forever.
fn with_one_blocking_thread(test: impl Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(PATIENCE, test)
            .await
            .expect("a call waited for the blocking thread a reader holds");
    });
}

#[test]
fn kernel_log_followers_hold_no_blocking_thread() {
    with_one_blocking_thread(async {
        let system = ProcSystem::new();
        let mut followers = Vec::new();
        for _ in 0..3 {
            match system.dmesg(true, Some(0)).await {
                Ok(stream) => followers.push(stream),
                // No kernel log here: nothing to show.
                Err(_) => return,
            }
        }
        assert!(system.disks().await.is_ok());
    });
}

#[test]
fn unread_listings_hold_no_blocking_thread() {
    with_one_blocking_thread(async {
        let (_tmp, root) = tree();
        // Far more entries than a listing buffers, so an unread one has to wait.
        for i in 0..500 {
            std::fs::write(root.join(format!("many-{i}")), "").unwrap();
        }
        let files = LocalFiles::new(vec![root.clone()]);
        let mut unread = Vec::new();
        for _ in 0..3 {
            unread.push(files.list(p(&root), true, 0).await.unwrap());
        }
        // Time for the walks to fill their buffers and wait for their readers.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let all = listing(&files, &root, true, 0).await;
        assert_eq!(all.len(), 9 + 500);
        assert_eq!(
            text(files.read(p(&root.join("a.txt"))).await.unwrap()).await,
            "alpha"
        );
    });
}

/// `<tmp>/root` with files, a subtree and symlinks, and `<tmp>/secret.txt` outside it.
fn tree() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("a.txt"), "alpha").unwrap();
    std::fs::write(root.join("sub/b.txt"), "beta").unwrap();
    std::fs::write(root.join("sub/deeper/c.txt"), "gamma").unwrap();
    std::fs::write(tmp.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(tmp.path(), root.join("out")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", root.join("secret-link")).unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("a-link")).unwrap();
    (tmp, root)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test]
async fn files_are_read_only_under_the_roots() {
    let (tmp, root) = tree();
    let files = LocalFiles::new(vec![root.clone()]);
    assert_eq!(
        text(files.read(p(&root.join("a.txt"))).await.unwrap()).await,
        "alpha"
    );
    assert_eq!(
        text(files.read(p(&root.join("a-link"))).await.unwrap()).await,
        "alpha"
    );
    let dotted = format!("{}/sub/../a.txt", p(&root));
    assert_eq!(text(files.read(&dotted).await.unwrap()).await, "alpha");

    let escapes = [
        format!("{}/../secret.txt", p(&root)),
        p(&tmp.path().join("secret.txt")).to_string(),
        "/etc/hostname".to_string(),
        p(&root.join("secret-link")).to_string(),
        p(&root.join("out/secret.txt")).to_string(),
        p(&tmp.path().join("does-not-exist")).to_string(),
    ];
    for path in escapes {
        let err = files.read(&path).await.err().expect(&path);
        assert!(
            matches!(err, NodeError::PermissionDenied(_)),
            "{path}: {err}"
        );
        assert!(err.to_string().contains(&path), "{err}");
        assert!(err.to_string().contains(p(&root)), "{err}");
    }
    let err = files.read(p(&root.join("sub"))).await.err().unwrap();
    assert!(matches!(err, NodeError::InvalidArgument(_)), "{err}");
    // A FIFO would block an open for reading: refused without waiting for a writer.
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let fifo = tokio::time::timeout(PATIENCE, files.read(p(&root.join("fifo"))))
        .await
        .expect("reading a FIFO hung");
    let err = fifo.err().unwrap();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let err = files.read("a.txt").await.err().unwrap();
    assert!(matches!(err, NodeError::InvalidArgument(_)), "{err}");
    let err = files.read(p(&root.join("nothing"))).await.err().unwrap();
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::NotFound, "{status}");
}

#[tokio::test]
async fn a_large_file_streams_in_chunks() {
    let (_tmp, root) = tree();
    let content: Vec<u8> = (0..5 * 1024 * 1024 + 123)
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(root.join("big"), &content).unwrap();
    let files = LocalFiles::new(vec![root.clone()]);
    let chunks: Vec<_> = files
        .read(p(&root.join("big")))
        .await
        .unwrap()
        .collect()
        .await;
    assert!(chunks.len() >= 80, "{} chunks", chunks.len());
    let mut read = Vec::new();
    for chunk in chunks {
        let chunk = chunk.unwrap();
        assert!(chunk.len() <= 64 * 1024);
        read.extend_from_slice(&chunk);
    }
    assert!(read == content, "the streamed file differs");
}

async fn listing(files: &LocalFiles, root: &Path, recurse: bool, depth: u32) -> Vec<api::FileInfo> {
    let entries: Vec<_> = files
        .list(p(root), recurse, depth)
        .await
        .unwrap()
        .collect()
        .await;
    entries.into_iter().map(|e| e.unwrap()).collect()
}

fn names(entries: &[api::FileInfo]) -> Vec<&str> {
    let mut names: Vec<_> = entries.iter().map(|e| e.relative_name.as_str()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn listing_recurses_to_a_depth_without_following_links() {
    let (_tmp, root) = tree();
    let files = LocalFiles::new(vec![root.clone()]);

    let top = listing(&files, &root, false, 0).await;
    assert_eq!(
        names(&top),
        [".", "a-link", "a.txt", "out", "secret-link", "sub"]
    );
    let a = top.iter().find(|e| e.relative_name == "a.txt").unwrap();
    assert_eq!(a.size, 5);
    assert_eq!(a.name, p(&root.join("a.txt")));
    assert!(!a.is_dir && a.modified.is_some() && a.mode & 0o170000 == 0o100000);
    let out = top.iter().find(|e| e.relative_name == "out").unwrap();
    assert!(!out.is_dir);
    assert_eq!(Path::new(&out.link), root.parent().unwrap());
    let sub = top.iter().find(|e| e.relative_name == "sub").unwrap();
    assert!(sub.is_dir && sub.error.is_empty());

    let all = listing(&files, &root, true, 0).await;
    assert_eq!(
        names(&all),
        [
            ".",
            "a-link",
            "a.txt",
            "out",
            "secret-link",
            "sub",
            "sub/b.txt",
            "sub/deeper",
            "sub/deeper/c.txt"
        ]
    );
    let two = listing(&files, &root, true, 2).await;
    assert!(names(&two).contains(&"sub/deeper"));
    assert!(!names(&two).contains(&"sub/deeper/c.txt"));
    assert_eq!(names(&listing(&files, &root, true, 1).await), names(&top));

    let single = listing(&files, &root.join("a.txt"), true, 0).await;
    assert_eq!(names(&single), ["."]);
    assert!(
        single[0].error.is_empty() && single[0].size == 5,
        "{single:?}"
    );
    let err = files
        .list(p(&root.join("out")), true, 0)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, NodeError::PermissionDenied(_)), "{err}");
}

#[tokio::test]
async fn power_records_the_request_and_refuses_a_second_one() {
    let state = State::new();
    let power = StatePower::new(state.clone());
    let mut requests = power.subscribe();
    assert!(requests.borrow().is_none());

    power.reboot(api::RebootMode::Default).await.unwrap();
    let request = state.get_as::<PowerRequestSpec>("power").await.unwrap();
    assert_eq!(request.spec.action, PowerAction::Reboot);
    assert!(request.spec.reason.contains("reboot"), "{:?}", request.spec);
    tokio::time::timeout(PATIENCE, requests.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        *requests.borrow(),
        Some(PowerRequest::Reboot {
            mode: api::RebootMode::Default
        })
    );

    let err = power.shutdown(false).await.unwrap_err();
    assert!(matches!(err, NodeError::FailedPrecondition(_)), "{err}");
    assert_eq!(err.to_string(), "the node is already rebooting");
    let err = power.reset(ResetOptions::default()).await.unwrap_err();
    assert!(matches!(err, NodeError::FailedPrecondition(_)), "{err}");
    let request = state.get_as::<PowerRequestSpec>("power").await.unwrap();
    assert_eq!(request.spec.action, PowerAction::Reboot);

    let other = StatePower::new(State::new());
    let wipe = ResetOptions {
        graceful: true,
        reboot: false,
        wipe: vec!["STATE".to_string()],
    };
    other.reset(wipe.clone()).await.unwrap();
    assert_eq!(*other.subscribe().borrow(), Some(PowerRequest::Reset(wipe)));
}

#[tokio::test]
async fn node_handles_serve_the_local_implementations() {
    let (_tmp, root) = tree();
    let state = State::new();
    let node = LocalNode::new(
        state.clone(),
        vec![sh("svc", "sleep 30")],
        vec![root.clone()],
    )
    .unwrap();
    let handles: NodeHandles = node.handles();
    assert_eq!(
        text(handles.files.read(p(&root.join("a.txt"))).await.unwrap()).await,
        "alpha"
    );
    assert_eq!(handles.services.list().await.unwrap()[0].state, "Stopped");
    handles.services.start("svc").await.unwrap();
    wait_state(&*node.services.supervisor().await, "svc", "Running").await;
    handles.power.shutdown(true).await.unwrap();
    assert_eq!(
        *node.power.subscribe().borrow(),
        Some(PowerRequest::Shutdown { force: true })
    );
    assert!(handles.system.memory().await.unwrap().total > 0);
    node.services.shutdown().await;

    let plain = NodeHandles::local(State::new(), Vec::new(), vec![root]).unwrap();
    assert!(plain.services.list().await.unwrap().is_empty());
}

/// A new set of services (the node's role changed, an extension's config changed): what
/// is unchanged runs on untouched, a changed service restarts keeping its log, and so
/// does what depends on it; the status of what is gone is removed; a set that cannot be
/// supervised is refused and the old one runs on.
#[tokio::test]
async fn a_service_set_is_replaced_keeping_what_did_not_change() {
    let state = State::new();
    let base = |version: &str| sh("base", &format!("echo base-{version}; exec sleep 30"));
    let user = || sh("user", "sleep 30").depends_on("base");
    let set = ServiceSet::new(
        state.clone(),
        vec![
            sh("old", "sleep 30"),
            sh("both", "sleep 30"),
            base("v1"),
            user(),
        ],
        fast_options(),
    )
    .unwrap();
    set.start_all().await.unwrap();
    wait_state(&*set.supervisor().await, "old", "Running").await;
    let both = wait_state(&*set.supervisor().await, "both", "Running").await;
    let first_base = wait_state(&*set.supervisor().await, "base", "Running").await;
    let first_user = wait_state(&*set.supervisor().await, "user", "Running").await;
    // Running is published at the spawn: the shell may not have echoed yet.
    eventually("base-v1 in the log of base", || async {
        let supervisor = set.supervisor().await;
        let log = text(supervisor.logs("base", false, None).await.unwrap()).await;
        log.contains("base-v1").then_some(())
    })
    .await;

    let refused = set
        .replace(vec![sh("x", "true"), sh("x", "true")])
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("x"), "{refused}");
    let old = wait_state(&*set.supervisor().await, "old", "Running").await;
    assert!(old.pid > 0, "{old:?}");

    let next = || {
        vec![
            sh("both", "sleep 30"),
            sh("new", "sleep 30"),
            base("v2"),
            user(),
        ]
    };
    let before = set.supervisor().await;
    set.replace(next()).await.unwrap();
    // A call that still holds the supervisor from before starts nothing.
    let late = before.start("old").await.unwrap_err();
    assert!(late.to_string().contains("changed meanwhile"), "{late}");
    let supervisor = set.supervisor().await;
    wait_state(&supervisor, "new", "Running").await;
    let again = wait_state(&supervisor, "both", "Running").await;
    assert_eq!(again.pid, both.pid, "an unchanged service runs on");
    assert_eq!(again.restarts, both.restarts);
    let changed = wait_state(&supervisor, "base", "Running").await;
    assert_ne!(changed.pid, first_base.pid, "a changed service restarts");
    // Its output reaches the log just after it runs.
    let log = eventually("base-v2 in the log of base", || async {
        let log = text(supervisor.logs("base", false, None).await.unwrap()).await;
        log.contains("base-v2").then_some(log)
    })
    .await;
    assert!(
        log.contains("base-v1"),
        "the log of the first run is kept: {log}"
    );
    let dependent = wait_state(&supervisor, "user", "Running").await;
    assert_ne!(dependent.pid, first_user.pid, "what depends on it restarts");
    let gone = state
        .get(&basalt_resource::ResourceKey::of::<ServiceSpec>("old"))
        .await;
    assert!(
        gone.is_err(),
        "the status of a service that is gone stays: {gone:?}"
    );
    let ids: Vec<String> = set
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["both", "new", "base", "user"]);
    assert!(!alive(old.pid), "the service that is gone was stopped");

    // The same set again changes nothing.
    set.replace(next()).await.unwrap();
    assert_eq!(
        wait_state(&*set.supervisor().await, "base", "Running")
            .await
            .pid,
        changed.pid
    );
    set.shutdown().await;
    assert!(!alive(again.pid));
}

/// While a directory under the root is swapped, again and again, with a symlink to a
/// directory outside it (an atomic exchange), no listing shows a name from outside: the
/// walk descends through directory descriptors, never through a path that changed.
#[tokio::test(flavor = "multi_thread")]
async fn a_listing_racing_a_symlink_swap_never_shows_an_outside_name() {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    let tmp = tempfile::tempdir().unwrap();
    let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    for i in 0..20 {
        std::fs::write(root.join("d").join(format!("inside-{i}")), "x").unwrap();
        std::fs::write(outside.join(format!("OUTSIDE-{i}")), "x").unwrap();
    }
    std::os::unix::fs::symlink(&outside, root.join("d.swap")).unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, root) = (stop.clone(), root.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (a, b) = (root.join("d"), root.join("d.swap"));
                renameat2(AT_FDCWD, &a, AT_FDCWD, &b, RenameFlags::RENAME_EXCHANGE).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let files = LocalFiles::new(vec![root.clone()]);
    let (mut listings, mut inside_seen) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        for entry in listing(&files, &root, true, 0).await {
            assert!(
                !entry.name.contains("OUTSIDE") && !entry.relative_name.contains("OUTSIDE"),
                "listing {listings} shows an outside name: {entry:?}"
            );
            inside_seen += usize::from(entry.relative_name.contains("inside-"));
        }
        listings += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    println!("{listings} listings during {swaps} swaps; {inside_seen} inside names seen");
    assert!(
        listings > 50 && swaps > 1000,
        "{listings} listings, {swaps} swaps"
    );
    assert!(inside_seen > 0, "the walk never went into the directory");
}
