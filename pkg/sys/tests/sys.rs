//! The recording fake, and the real calls where this machine allows them: mounts in a
//! private mount namespace of a child process (so nothing the test does is seen outside
//! it), process controls, and following the kernel log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use basalt_sys::{kmsg, Call, Linux, Mount, MountFlags, Namespaces, Reboot, Recording, Sys};

#[test]
fn the_fake_records_calls_in_order_and_fails_those_it_is_told_to() {
    let sys = Recording::new();
    let proc = Mount {
        source: "proc".into(),
        target: PathBuf::from("/proc"),
        fstype: "proc".into(),
        flags: MountFlags {
            no_suid: true,
            no_dev: true,
            no_exec: true,
            read_only: false,
        },
        data: String::new(),
    };
    sys.mount(&proc).unwrap();
    sys.load_module(Path::new("/lib/modules/virtio_net.ko"), "")
        .unwrap();
    sys.fail("pivot_root");
    let err = sys
        .pivot_root(Path::new("/new"), Path::new("/new/old"))
        .unwrap_err();
    assert!(err.to_string().starts_with("pivot_root"), "{err}");
    sys.sync();
    sys.reboot(Reboot::PowerOff).unwrap();
    assert_eq!(
        sys.calls(),
        [
            Call::Mount(proc),
            Call::LoadModule {
                path: "/lib/modules/virtio_net.ko".into(),
                params: String::new()
            },
            Call::PivotRoot {
                new_root: "/new".into(),
                put_old: "/new/old".into()
            },
            Call::Sync,
            Call::Reboot(Reboot::PowerOff),
        ]
    );
}

/// Runs `test` (a test of this file) in a child process with `BASALT_SYS_CHILD` set, and
/// checks that it passed.
fn in_child(test: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--include-ignored"])
        .env("BASALT_SYS_CHILD", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{test} failed in its child:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mountinfo_has(target: &Path) -> bool {
    let target = target.to_str().unwrap();
    // The mount namespace is this thread's (unshare moved the calling thread).
    std::fs::read_to_string("/proc/thread-self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target))
}

#[test]
fn real_mounts_in_a_private_namespace() {
    if std::env::var_os("BASALT_SYS_CHILD").is_none() {
        return in_child("real_mounts_in_a_private_namespace");
    }
    let sys = Linux;
    sys.unshare(Namespaces {
        mount: true,
        ..Namespaces::default()
    })
    .unwrap();
    // Nothing mounted here propagates back to the host's namespace.
    sys.make_private(Path::new("/")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().canonicalize().unwrap();
    sys.mount(&Mount {
        source: "basalt-test".into(),
        target: target.clone(),
        fstype: "tmpfs".into(),
        flags: MountFlags {
            no_exec: true,
            ..MountFlags::default()
        },
        data: "size=1m,mode=0700".into(),
    })
    .unwrap();
    assert!(mountinfo_has(&target));
    std::fs::write(target.join("f"), "x").unwrap();
    sys.unmount(&target).unwrap();
    assert!(!mountinfo_has(&target));
    assert!(!target.join("f").exists());

    let err = sys
        .mount(&Mount {
            source: "none".into(),
            target: target.join("missing"),
            fstype: "tmpfs".into(),
            flags: MountFlags::default(),
            data: String::new(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn real_process_controls() {
    if std::env::var_os("BASALT_SYS_CHILD").is_none() {
        return in_child("real_process_controls");
    }
    let sys = Linux;
    sys.set_no_new_privs().unwrap();
    sys.set_child_subreaper().unwrap();
    // A per-thread attribute (inherited by children): this test's thread has it.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["NoNewPrivs:", "1"]),
        "{status}"
    );
    let err = sys
        .load_module(Path::new("/nonexistent.ko"), "")
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent.ko"), "{err}");
}

#[tokio::test]
async fn a_follower_sees_a_new_kernel_record_at_once() {
    let Ok(file) = kmsg::open(Path::new("/dev/kmsg")) else {
        eprintln!("no /dev/kmsg here");
        return;
    };
    let mut buf = vec![0; kmsg::RECORD_MAX];
    while kmsg::read_record(&file, &mut buf).unwrap().is_some() {}
    let mut follow = kmsg::Follow::new(file).unwrap();
    let marker = format!("basalt-sys-test-{}", std::process::id());
    if std::fs::write("/dev/kmsg", format!("{marker}\n")).is_err() {
        eprintln!("/dev/kmsg is not writable here");
        return;
    }
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if follow.next().await.unwrap().contains(&marker) {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "the record never came");
}
