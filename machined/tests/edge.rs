//! apid in its own process, as on a node: machined starts it under its own uid with no
//! capabilities, and it reaches the node only over machined's unix socket. Needs root
//! (to start a process under another uid), as CI has.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const APID_UID: u32 = 50_123;
const NODE_IP: &str = "127.0.0.61";

fn osctl() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_machined")).with_file_name("osctl")
}

/// The status fields of a process (`Uid`, `CapEff`, ...).
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap()
        .trim()
        .to_string()
}

/// The children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        all.extend(text.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
    }
    all
}

/// Waits for machined's apid child (a new one, not `not`).
async fn apid_pid(machined: u32, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = children(machined).into_iter().find(|&pid| {
            Some(pid) != not
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with(b"apid\0"))
        });
        if let Some(pid) = found {
            return pid;
        }
        assert!(Instant::now() < deadline, "machined started no apid");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `program args` as `uid`; whether it succeeded.
fn succeeds_as(uid: u32, program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .uid(uid)
        .gid(uid)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

async fn version(endpoint: &str) -> std::process::Output {
    Command::new(osctl())
        .args(["--insecure", "-e", endpoint, "version"])
        .output()
        .await
        .unwrap()
}

async fn eventually_version(endpoint: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = version(endpoint).await;
        if out.status.success() {
            return String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "osctl version never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start(dir: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_machined"))
        .args(["--listen", &format!("{NODE_IP}:{port}"), "--mode", "cloud"])
        .args(["--kubeprism-listen", NODE_IP])
        .args(["--apid-uid", &APID_UID.to_string()])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--cmdline")
        .arg(dir.join("cmdline"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn apid_runs_unprivileged_in_its_own_process_and_is_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // apid must reach the socket below it; the state directory machined makes is its own.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("cmdline"), "console=ttyS0\n").unwrap();
    let port = std::net::TcpListener::bind((NODE_IP, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("{NODE_IP}:{port}");
    let mut machined = start(dir, port);
    let mut log = BufReader::new(machined.stderr.take().unwrap()).lines();
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    let machined_pid = machined.id().unwrap();

    // Calls go through apid's process to the node.
    let out = eventually_version(&endpoint).await;
    assert!(out.contains("Maintenance: true"), "{out}");

    // apid: its own uid, no capabilities, no way to gain any.
    let apid = apid_pid(machined_pid, None).await;
    assert!(status_field(apid, "Uid").starts_with(&APID_UID.to_string()));
    assert_eq!(status_field(apid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(apid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(apid, "NoNewPrivs"), "1");

    // What apid's uid can do: not read the node's state, not signal machined, while
    // the socket is its alone (another uid cannot connect).
    let state_dir = dir.join("state");
    assert!(state_dir.join("state.redb.lock").exists());
    let state = state_dir.to_str().unwrap();
    assert!(
        !succeeds_as(APID_UID, "ls", &[state]),
        "apid's uid read the state's directory"
    );
    assert!(
        !succeeds_as(APID_UID, "kill", &["-0", &machined_pid.to_string()]),
        "apid's uid could signal machined"
    );
    let socket = dir.join("run/machined.sock");
    let connect = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
        socket.to_str().unwrap()
    );
    assert!(succeeds_as(APID_UID, "python3", &["-c", &connect]));
    assert!(!succeeds_as(APID_UID + 1, "python3", &["-c", &connect]));

    // apid killed: machined starts another, and the API answers again.
    std::process::Command::new("kill")
        .args(["-KILL", &apid.to_string()])
        .status()
        .unwrap();
    let second = apid_pid(machined_pid, Some(apid)).await;
    assert_ne!(second, apid);
    eventually_version(&endpoint).await;

    // machined stopped: its apid goes with it.
    std::process::Command::new("kill")
        .args(["-INT", &machined_pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), machined.wait())
        .await
        .expect("machined did not stop")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !Path::new(&format!("/proc/{second}")).exists(),
        "apid outlived machined"
    );
}
