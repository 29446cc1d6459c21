//! The boot image itself: every file in the initramfs is accounted for, none is a shell,
//! an interpreter or a tool that runs commands, and builds in clean directories are
//! bit-identical.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;

use basalt_e2e::{repo_root, workspace_binary, Image};

/// One entry of a newc cpio archive.
#[derive(Debug)]
struct Entry {
    name: String,
    mode: u32,
    data: Vec<u8>,
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

impl Entry {
    fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    /// A regular file anyone may execute (a symbolic link's mode says nothing).
    fn is_executable(&self) -> bool {
        self.mode & S_IFMT == S_IFREG && self.mode & 0o111 != 0
    }
}

/// Reads a newc archive (what `cpio --format=newc` writes): a 110-byte ASCII header, the
/// name, the data, each padded to 4 bytes, until the `TRAILER!!!` entry.
fn read_newc(archive: &[u8]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut at = 0;
    let pad = |n: usize| n.div_ceil(4) * 4;
    loop {
        let header = &archive[at..at + 110];
        assert_eq!(&header[..6], b"070701", "not a newc header at byte {at}");
        let field = |i: usize| {
            let text = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).unwrap();
            u32::from_str_radix(text, 16).unwrap()
        };
        let (mode, size, name_size) = (field(1), field(6) as usize, field(11) as usize);
        let name_at = at + 110;
        let name = std::str::from_utf8(&archive[name_at..name_at + name_size - 1])
            .unwrap()
            .to_string();
        let data_at = pad(name_at + name_size);
        at = pad(data_at + size);
        if name == "TRAILER!!!" {
            return entries;
        }
        entries.push(Entry {
            name,
            mode,
            data: archive[data_at..data_at + size].to_vec(),
        });
    }
}

fn unpack(initramfs: &Path) -> Vec<Entry> {
    let out = std::process::Command::new("zstd")
        .args(["-dc"])
        .arg(initramfs)
        .stderr(Stdio::inherit())
        .output()
        .expect("zstd is missing: run hack/setup.sh");
    assert!(out.status.success());
    read_newc(&out.stdout)
}

/// Why a file is in the image, or `None` if nothing accounts for it.
fn account(entry: &Entry, kernel: &str, modules_dep: &BTreeSet<String>) -> Option<&'static str> {
    let modules = format!("lib/modules/{kernel}/");
    let name = entry.name.as_str();
    Some(match name {
        "init" => "machined, PID 1 (and apid, by argv[0])",
        "lib64/ld-linux-x86-64.so.2" => "glibc's dynamic loader, which runs /init",
        "lib/x86_64-linux-gnu/libc.so.6"
        | "lib/x86_64-linux-gnu/libm.so.6"
        | "lib/x86_64-linux-gnu/libgcc_s.so.1" => "a library machined links",
        "etc/basalt/modules" => "the kernel modules PID 1 loads",
        "etc/hosts" | "etc/resolv.conf" => {
            "a link to the node's own file in /system/etc, which it writes"
        }
        "etc/os-release" => "the OS's name and version",
        _ if name == format!("{modules}modules.dep") => "the modules' dependencies",
        _ if name.ends_with(".ko") && modules_dep.contains(name.trim_start_matches(&modules)) => {
            "a kernel module in modules.dep"
        }
        _ if entry.is_dir() => "a directory",
        _ => return None,
    })
}

/// Names of shells, interpreters and tools that run commands.
const FORBIDDEN: &[&str] = &[
    "sh", "bash", "dash", "ash", "zsh", "busybox", "toybox", "python", "python3", "perl", "lua",
    "ruby", "node", "awk", "env", "su", "sudo", "login", "getty", "nsenter", "chroot", "xargs",
    "find", "systemd", "init.sh",
];

#[test]
fn every_file_in_the_initramfs_is_accounted_for_and_none_runs_commands() {
    let image = Image::locate();
    let entries = unpack(&image.initramfs);
    let kernel = entries
        .iter()
        .find_map(|e| {
            e.name
                .strip_prefix("lib/modules/")
                .filter(|k| !k.contains('/'))
        })
        .expect("no lib/modules/<kernel> directory")
        .to_string();
    let dep_name = format!("lib/modules/{kernel}/modules.dep");
    let dep = entries.iter().find(|e| e.name == dep_name).unwrap();
    let modules_dep: BTreeSet<String> = String::from_utf8(dep.data.clone())
        .unwrap()
        .lines()
        .flat_map(|line| line.split([':', ' ']))
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();

    let mut unaccounted = Vec::new();
    for entry in &entries {
        let base = entry.name.rsplit('/').next().unwrap();
        assert!(
            !FORBIDDEN.contains(&base),
            "{} is a shell, an interpreter or a command runner",
            entry.name
        );
        if entry.mode & S_IFMT == S_IFREG {
            assert!(!entry.data.starts_with(b"#!"), "{} is a script", entry.name);
        }
        match account(entry, &kernel, &modules_dep) {
            Some(why) => println!("{:<70} {why}", entry.name),
            None => unaccounted.push(entry.name.clone()),
        }
    }
    assert!(unaccounted.is_empty(), "not accounted for: {unaccounted:?}");
    // Only /init and the loader (which the kernel's ELF loader maps for it) execute.
    let executables: Vec<_> = entries
        .iter()
        .filter(|e| !e.is_dir() && e.is_executable())
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(executables, ["init", "lib64/ld-linux-x86-64.so.2"]);
    // Every module in modules.dep is in the image, and so is every listed one.
    for module in &modules_dep {
        let path = format!("lib/modules/{kernel}/{module}");
        assert!(entries.iter().any(|e| e.name == path), "{path} is missing");
    }
    let listed = entries
        .iter()
        .find(|e| e.name == "etc/basalt/modules")
        .unwrap();
    // The kernel takes `-` and `_` in module names as the same.
    let stems: BTreeSet<String> = modules_dep
        .iter()
        .map(|m| {
            m.rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".ko")
                .replace('-', "_")
        })
        .collect();
    for name in String::from_utf8(listed.data.clone()).unwrap().lines() {
        assert!(
            stems.contains(&name.replace('-', "_")),
            "listed module {name} is not in the image"
        );
    }
}

/// A build in a clean directory, with another umask, locale and temporary directory,
/// gives the same bytes as the image `make image` built, if that one was built from the
/// same inputs (`hack/image.sh inputs`); otherwise as a second such build. Either way two
/// builds are compared, and `make test` pays for one. The builds take the zstd level
/// `make image` took (a development image's: 3).
#[test]
fn builds_in_clean_directories_are_bit_identical() {
    let machined = workspace_binary("machined");
    let made = Image::locate();
    let made_dir = made.initramfs.parent().unwrap();
    let made_inputs = std::fs::read_to_string(made_dir.join("INPUTS")).unwrap_or_default();
    let level = made_inputs
        .lines()
        .find_map(|line| line.strip_prefix("zstd-level "))
        .unwrap_or("3")
        .to_string();
    let script = |args: &[&str], umask: &str, lang: &str, out: &Path, tmp: &Path| {
        std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("umask {umask} && exec bash hack/image.sh \"$@\""))
            .arg("image.sh")
            .args(args)
            .current_dir(repo_root())
            .env("OUT", out)
            .env("TMPDIR", tmp)
            .env("LANG", lang)
            .env("IMAGE_ZSTD_LEVEL", &level)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let binary = machined.to_str().unwrap();
    let inputs = script(&["inputs", binary], "0022", "C", made_dir, made_dir)
        .wait_with_output()
        .unwrap();
    assert!(inputs.status.success(), "hack/image.sh inputs failed");
    let same_inputs = made_inputs.as_bytes() == inputs.stdout;

    let builds: Vec<_> = [("0077", "C.UTF-8"), ("0022", "C")]
        .into_iter()
        .take(if same_inputs { 1 } else { 2 })
        .map(|(umask, lang)| {
            let (out, tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let child = script(&["build", binary], umask, lang, out.path(), tmp.path());
            (out, tmp, child)
        })
        .collect();
    let mut sums = Vec::new();
    for (out, _tmp, child) in builds {
        assert!(
            child.wait_with_output().unwrap().status.success(),
            "hack/image.sh build failed"
        );
        sums.push(std::fs::read_to_string(out.path().join("SHA256SUMS")).unwrap());
    }
    if same_inputs {
        println!("compared with {}", made_dir.display());
        sums.push(std::fs::read_to_string(made_dir.join("SHA256SUMS")).unwrap());
    }
    assert_eq!(sums[0], sums[1], "the two builds differ");
    println!("{}", sums[0]);
}

/// What boots is the image layers' segment (uncompressed: squashfs is compressed already)
/// followed by our initramfs, so each one's size stays visible; the segment holds
/// squashfs layers and nothing else.
#[test]
fn the_boot_initramfs_is_the_layers_segment_then_ours() {
    let image = Image::locate();
    let dir = image.initramfs.parent().unwrap();
    let layers = std::fs::read(dir.join("extensions.cpio")).unwrap();
    let ours = std::fs::read(&image.initramfs).unwrap();
    let boot = std::fs::read(&image.boot_initramfs).unwrap();
    assert_eq!(boot.len(), layers.len() + ours.len());
    assert!(boot.starts_with(&layers) && boot.ends_with(&ours));
    for entry in read_newc(&layers) {
        if entry.is_dir() {
            continue;
        }
        assert!(
            entry.name.starts_with("system/extensions/") && entry.name.ends_with(".sqsh"),
            "{} is not an image layer",
            entry.name
        );
        assert!(
            entry.data.starts_with(b"hsqs"),
            "{} is not squashfs",
            entry.name
        );
        assert!(!entry.is_executable(), "{}", entry.name);
    }
    println!(
        "ours: {} bytes compressed; layers: {} bytes",
        ours.len(),
        layers.len()
    );
}
