//! Local Basalt clusters on one host, for `osctl cluster`.
//!
//! The container provider runs each node as machined in container mode (the image's files
//! unpacked under `_out/rootfs`, copied once per cluster): a shim per node in its own
//! network namespace, cabled by a veth pair to a bridge inside a network namespace of the
//! cluster's own; one more veth pair joins the host to that bridge, and holds the host's
//! address in the cluster's subnet. Nothing else on the host changes.
//!
//! A cluster is described by its record, `cluster.json` in its directory, written before
//! anything is made: every piece named there can be removed again by [`destroy`], also
//! when the cluster was left half made.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub mod container;
mod error;
pub mod network;
pub mod qemu;

pub use error::ClusterError;

/// How the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// machined in container mode, each node in namespaces of its own.
    Container,
    /// The boot image under QEMU, each node with a STATE disk and a tap on the bridge.
    Qemu,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Container => "container",
            Provider::Qemu => "qemu",
        })
    }
}

/// A node's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    ControlPlane,
    Worker,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::ControlPlane => "controlplane",
            Role::Worker => "worker",
        })
    }
}

/// What a new cluster is to be.
#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    pub provider: Provider,
    pub controlplanes: usize,
    pub workers: usize,
    /// The cluster's private subnet: the host takes its first address, the nodes the next.
    pub cidr: Ipv4Net,
    /// Where clusters keep their files (`~/.basalt/clusters`).
    pub clusters_dir: PathBuf,
}

/// A cluster as made (or to be made): everything `destroy` needs to remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    pub provider: Provider,
    pub dir: PathBuf,
    pub cidr: Ipv4Net,
    /// The host's address on the cluster's bridge: the nodes' gateway.
    pub host_address: Ipv4Addr,
    /// The host's end of the veth pair to the cluster's bridge.
    pub host_link: String,
    /// The pin of the cluster's network namespace (the bridge's).
    pub netns: PathBuf,
    /// The image's files the nodes run.
    pub rootfs: PathBuf,
    pub nodes: Vec<NodeRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub role: Role,
    pub address: Ipv4Addr,
    /// The pin of the node's network namespace (container nodes).
    pub netns: PathBuf,
    /// The node's STATE, kept across its reboots: a directory (container nodes) or a
    /// disk image (qemu nodes).
    pub state: PathBuf,
    /// What the node printed (the shim's and PID 1's logs).
    pub console: PathBuf,
    /// The node's cgroups on the host, one per hierarchy (filled when it starts).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// The shim's pid, when it runs.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// The name of the file a cluster's record is kept in.
const RECORD: &str = "cluster.json";
/// Interface names are at most 15 bytes: `bs-` and the cluster's name.
const MAX_NAME: usize = 12;

impl ClusterRecord {
    /// The plan of a new cluster: names, addresses and paths, nothing made yet.
    pub fn plan(options: &Options) -> Result<ClusterRecord, ClusterError> {
        validate_name(&options.name)?;
        if options.controlplanes == 0 {
            return Err(ClusterError::Invalid(
                "a cluster needs at least one control-plane node".into(),
            ));
        }
        let count = options.controlplanes + options.workers;
        // The network's own address, the host's, the nodes', and the broadcast address.
        let room = options.cidr.hosts().count();
        if room < count + 1 {
            return Err(ClusterError::Invalid(format!(
                "{} has room for {} nodes besides the host, not {count}",
                options.cidr,
                room.saturating_sub(1)
            )));
        }
        let cidr = options.cidr.trunc();
        let mut hosts = cidr.hosts();
        let host_address = hosts
            .next()
            .ok_or_else(|| ClusterError::Invalid(format!("{cidr} has no address for the host")))?;
        let dir = options.clusters_dir.join(&options.name);
        let roles = std::iter::repeat_n(Role::ControlPlane, options.controlplanes)
            .chain(std::iter::repeat_n(Role::Worker, options.workers));
        let mut counts = [0usize; 2];
        let nodes = roles
            .zip(hosts)
            .map(|(role, address)| {
                let n = &mut counts[role as usize];
                *n += 1;
                let name = format!("{}-{role}-{n}", options.name);
                let state = match options.provider {
                    Provider::Container => "state",
                    Provider::Qemu => "state.img",
                };
                NodeRecord {
                    netns: basalt_sys::netns::path_of(&format!("basalt-{name}")),
                    state: dir.join("nodes").join(&name).join(state),
                    console: dir.join("nodes").join(&name).join("console.log"),
                    name,
                    role,
                    address,
                    cgroups: Vec::new(),
                    pid: None,
                }
            })
            .collect();
        Ok(ClusterRecord {
            name: options.name.clone(),
            provider: options.provider,
            netns: basalt_sys::netns::path_of(&format!("basalt-{}", options.name)),
            host_link: format!("bs-{}", options.name),
            rootfs: dir.join("rootfs"),
            dir,
            cidr,
            host_address,
            nodes,
        })
    }

    /// The record of the cluster `name`.
    pub fn load(clusters_dir: &Path, name: &str) -> Result<ClusterRecord, ClusterError> {
        let dir = clusters_dir.join(name);
        let path = dir.join(RECORD);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClusterError::NotFound {
                    name: name.to_string(),
                    dir,
                })
            }
            Err(source) => return Err(ClusterError::io("reading", &path, source)),
        };
        serde_json::from_str(&text).map_err(|source| ClusterError::Record { path, source })
    }

    /// Every cluster with a record under `clusters_dir`; unreadable records are skipped
    /// and named in the second list.
    pub fn all(clusters_dir: &Path) -> (Vec<ClusterRecord>, Vec<ClusterError>) {
        let mut found = Vec::new();
        let mut problems = Vec::new();
        let Ok(entries) = std::fs::read_dir(clusters_dir) else {
            return (found, problems);
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(RECORD).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            match ClusterRecord::load(clusters_dir, &name) {
                Ok(record) => found.push(record),
                Err(e) => problems.push(e),
            }
        }
        (found, problems)
    }

    /// Makes the cluster's directory and writes the record there, refusing a cluster of
    /// the same name or whose subnet overlaps another's.
    pub fn claim(&self) -> Result<(), ClusterError> {
        let clusters_dir = self.dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(clusters_dir)
            .map_err(|e| ClusterError::io("creating", clusters_dir, e))?;
        match std::fs::create_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ClusterError::Exists {
                    name: self.name.clone(),
                    dir: self.dir.clone(),
                })
            }
            Err(e) => return Err(ClusterError::io("creating", &self.dir, e)),
        }
        let (others, _) = ClusterRecord::all(clusters_dir);
        let overlapping = others.iter().find(|o| {
            o.name != self.name
                && (o.cidr.contains(&self.cidr.network()) || self.cidr.contains(&o.cidr.network()))
        });
        if let Some(other) = overlapping {
            let _ = std::fs::remove_dir(&self.dir);
            return Err(ClusterError::SubnetInUse {
                cidr: self.cidr,
                by: format!("cluster {:?} ({})", other.name, other.cidr),
            });
        }
        self.save()
    }

    /// Writes the record (whole, then renamed over the old one).
    pub fn save(&self) -> Result<(), ClusterError> {
        let path = self.dir.join(RECORD);
        let partial = self.dir.join(format!("{RECORD}.new"));
        let text = serde_json::to_string_pretty(self).map_err(|source| ClusterError::Record {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&partial, text).map_err(|e| ClusterError::io("writing", &partial, e))?;
        std::fs::rename(&partial, &path).map_err(|e| ClusterError::io("writing", &path, e))
    }
}

/// Cluster names become directory, interface and cgroup names.
fn validate_name(name: &str) -> Result<(), ClusterError> {
    let invalid = |reason: &str| ClusterError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(invalid(&format!("it must have 1 to {MAX_NAME} characters")));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || name.starts_with('-')
    {
        return Err(invalid(
            "only lowercase letters, digits and '-' (not first) are allowed",
        ));
    }
    Ok(())
}

/// Making a cluster's namespaces, links and cgroups takes root.
pub fn require_root() -> Result<(), ClusterError> {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        Err(ClusterError::Invalid(
            "local clusters need root (network namespaces, veth pairs, cgroups): run with sudo"
                .into(),
        ))
    }
}

/// Removes every piece of the cluster the record names that is still there: the nodes'
/// processes and cgroups, the network namespaces and the veth pair, and the directory.
/// Goes on past a piece it cannot remove, and returns what is left.
pub async fn destroy(record: &ClusterRecord) -> Vec<ClusterError> {
    let mut problems = Vec::new();
    for node in &record.nodes {
        problems.extend(container::stop(record, node).await.err());
    }
    problems.extend(network::destroy(record).await);
    match std::fs::remove_dir_all(&record.dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            problems.push(ClusterError::io("removing", &record.dir, e));
        }
        _ => {}
    }
    problems
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn options(dir: &Path) -> Options {
        Options {
            name: "lab".into(),
            provider: Provider::Container,
            controlplanes: 1,
            workers: 2,
            cidr: "10.5.0.0/24".parse().unwrap(),
            clusters_dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn a_plan_names_and_numbers_the_nodes_after_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let record = ClusterRecord::plan(&options(dir.path())).unwrap();
        assert_eq!(record.host_address, Ipv4Addr::new(10, 5, 0, 1));
        assert_eq!(record.host_link, "bs-lab");
        let nodes: Vec<_> = record
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.role, n.address.to_string()))
            .collect();
        assert_eq!(
            nodes,
            [
                ("lab-controlplane-1", Role::ControlPlane, "10.5.0.2".into()),
                ("lab-worker-1", Role::Worker, "10.5.0.3".into()),
                ("lab-worker-2", Role::Worker, "10.5.0.4".into()),
            ]
        );
        assert_eq!(
            record.nodes[0].netns,
            PathBuf::from("/run/netns/basalt-lab-controlplane-1")
        );
    }

    #[test]
    fn bad_plans_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        for (name, why) in [
            ("", "1 to 12"),
            ("a-very-long-name", "1 to 12"),
            ("Lab", "lowercase"),
            ("-lab", "lowercase"),
            ("la b", "lowercase"),
        ] {
            let e = ClusterRecord::plan(&Options {
                name: name.into(),
                ..options(dir.path())
            })
            .unwrap_err();
            assert!(e.to_string().contains(why), "{name:?}: {e}");
        }
        let e = ClusterRecord::plan(&Options {
            cidr: "10.5.0.0/30".parse().unwrap(),
            ..options(dir.path())
        })
        .unwrap_err();
        assert!(e.to_string().contains("room for 1 nodes"), "{e}");
        let e = ClusterRecord::plan(&Options {
            controlplanes: 0,
            ..options(dir.path())
        })
        .unwrap_err();
        assert!(e.to_string().contains("at least one control-plane"), "{e}");
    }

    #[test]
    fn a_second_cluster_of_the_same_name_or_subnet_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = ClusterRecord::plan(&options(dir.path())).unwrap();
        first.claim().unwrap();
        assert_eq!(ClusterRecord::load(dir.path(), "lab").unwrap(), first);
        let e = first.claim().unwrap_err();
        assert!(
            e.to_string().contains("exists") && e.to_string().contains("destroy"),
            "{e}"
        );
        let other = ClusterRecord::plan(&Options {
            name: "lab2".into(),
            cidr: "10.5.0.128/25".parse().unwrap(),
            ..options(dir.path())
        })
        .unwrap();
        let e = other.claim().unwrap_err();
        assert!(matches!(e, ClusterError::SubnetInUse { .. }), "{e}");
        assert!(!dir.path().join("lab2").exists());
        let e = ClusterRecord::load(dir.path(), "none").unwrap_err();
        assert!(matches!(e, ClusterError::NotFound { .. }), "{e}");
        std::fs::write(dir.path().join("lab").join(RECORD), "{").unwrap();
        let e = ClusterRecord::load(dir.path(), "lab").unwrap_err();
        assert!(e.to_string().contains("cluster.json"), "{e}");
    }
}
