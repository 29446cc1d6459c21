//! Validation of a parsed config for the mode a node runs in.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use basalt_resources::network::{HostnameSource, HostnameSpec};
use base64::Engine as _;

use crate::locate::{Seg, SourceMap};
use crate::{CertKey, Cni, Config, ConfigError, Role, Secret};

/// Where a node runs: what it must and must not be configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Real or virtual hardware that Basalt installs to: an install disk is required.
    Metal,
    /// A cloud image: already on its disk.
    Cloud,
    /// PID 1 of a container: no disk, no kernel.
    Container,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Metal => "metal",
            Mode::Cloud => "cloud",
            Mode::Container => "container",
        })
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "metal" => Ok(Mode::Metal),
            "cloud" => Ok(Mode::Cloud),
            "container" => Ok(Mode::Container),
            other => Err(format!(
                "unknown mode {other:?}: one of metal, cloud, container"
            )),
        }
    }
}

/// One problem: the document, the field path, what is wrong, and where in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// `MachineConfig`, or `ExtensionServiceConfig/NAME`.
    pub document: String,
    pub path: String,
    pub message: String,
    /// Line and column, when the config came from text.
    pub position: Option<(usize, usize)>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.document)?;
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        if let Some((line, column)) = self.position {
            write!(f, " (line {line}, column {column})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {e}")?;
        }
        Ok(())
    }
}

fn path_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Collects problems for one document.
struct Checker<'a> {
    document: String,
    kind: &'static str,
    name: Option<String>,
    source: Option<&'a SourceMap>,
    errors: &'a mut Vec<ValidationError>,
}

macro_rules! path {
    ($($seg:expr),* $(,)?) => { vec![$(Seg::from($seg)),*] };
}

impl From<&str> for Seg {
    fn from(k: &str) -> Self {
        Seg::Key(k.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

impl Checker<'_> {
    fn fail(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        if self.errors.len() >= MAX_ERRORS {
            return;
        }
        let position = self
            .source
            .and_then(|s| s.locate(self.kind, self.name.as_deref(), &path));
        self.errors.push(ValidationError {
            document: self.document.clone(),
            path: path_text(&path),
            message: message.into(),
            position,
        });
    }

    fn cidr(&mut self, path: Vec<Seg>, value: &str) {
        if let Err(reason) = parse_cidr(value) {
            self.fail(path, format!("{value:?} is not a CIDR: {reason}"));
        }
    }

    fn required_secret(&mut self, path: Vec<Seg>, secret: &Secret, what: &str) {
        if secret.is_empty() {
            self.fail(path, format!("{what} is required"));
        } else {
            self.not_redacted(path, secret);
        }
    }

    /// A redacted value (from a reader's view of a config) applied back would erase the
    /// secret.
    fn not_redacted(&mut self, path: Vec<Seg>, secret: &Secret) {
        if secret.expose() == crate::REDACTED {
            self.fail(
                path,
                "holds the redacted placeholder, not the secret itself",
            );
        }
    }

    /// As [`Checker::not_redacted`], for the environment values and file contents a
    /// redacted view hides.
    fn not_redacted_text(&mut self, path: Vec<Seg>, text: &str) {
        if text == crate::REDACTED {
            self.fail(path, "holds the redacted placeholder, not the value itself");
        }
    }

    /// Only control-plane nodes hold CA keys.
    fn no_key(&mut self, path: Vec<Seg>, pair: &Option<CertKey>, what: &str) {
        if pair.as_ref().is_some_and(|p| !p.key.is_empty()) {
            self.fail(path, format!("workers must not hold {what} key"));
        }
    }

    fn pair_with_key(&mut self, path: Vec<Seg>, pair: &Option<CertKey>, what: &str) {
        match pair {
            Some(p) if !p.crt.is_empty() && !p.key.is_empty() => {
                if p.key.expose() == crate::REDACTED {
                    self.not_redacted(path, &p.key);
                    return;
                }
                let pair = basalt_pki::CertAndKey {
                    crt: p.crt.clone(),
                    key: p.key.expose().to_string(),
                };
                if let Err(e) = pair.check_ca(what) {
                    self.fail(path, e.to_string());
                }
            }
            _ => self.fail(
                path,
                format!("{what} certificate and key are required on control-plane nodes"),
            ),
        }
    }

    /// A CA certificate a worker holds without its key: it must parse and be a CA.
    fn ca_certificate(&mut self, path: Vec<Seg>, pair: &Option<CertKey>, what: &str) {
        if let Some(p) = pair.as_ref().filter(|p| !p.crt.is_empty()) {
            if let Err(e) = basalt_pki::check_ca_certificate(&p.crt, &format!("{what}.crt")) {
                self.fail(path, e.to_string());
            }
        }
    }
}

/// Parses `ADDRESS/PREFIX`.
fn parse_cidr(value: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = value
        .split_once('/')
        .ok_or_else(|| "expected ADDRESS/PREFIX".to_string())?;
    let addr: IpAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| "the prefix is not a number".to_string())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("the prefix is longer than {max}"));
    }
    Ok((addr, prefix))
}

/// `https://HOST:PORT`, with HOST a name or an (IPv6: bracketed) address.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| "must start with https://".to_string())?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| "must name a port, e.g. https://HOST:6443".to_string())?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<IpAddr>().is_err()
        && HostnameSpec::from_fqdn(host, HostnameSource::Config).is_err()
    {
        return Err(format!("{host:?} is neither an address nor a host name"));
    }
    Ok(())
}

/// Past this many problems, the rest are not reported (nor located).
const MAX_ERRORS: usize = 100;

const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

impl Config {
    /// Checks the config for a node running in `mode`; every problem is reported.
    pub fn validate(&self, mode: Mode) -> Result<(), ConfigError> {
        self.validate_with_source(mode, None)
    }

    /// Like [`Config::validate`], naming lines and columns from where the config was read.
    pub fn validate_with_source(
        &self,
        mode: Mode,
        source: Option<&SourceMap>,
    ) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        self.validate_machine(mode, source, &mut errors);
        self.validate_cluster(source, &mut errors);
        self.validate_features(source, &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(ValidationErrors(errors)))
        }
    }

    fn validate_machine(
        &self,
        mode: Mode,
        source: Option<&SourceMap>,
        errors: &mut Vec<ValidationError>,
    ) {
        let mut c = Checker {
            document: "MachineConfig".into(),
            kind: "MachineConfig",
            name: None,
            source,
            errors,
        };
        let Some(m) = &self.machine else {
            c.fail(vec![], "a MachineConfig document is required");
            return;
        };
        c.required_secret(path!["token"], &m.token, "the machine token");
        match m.role {
            Role::Controlplane => c.pair_with_key(path!["ca"], &m.ca, "the OS CA"),
            Role::Worker => {
                c.no_key(path!["ca", "key"], &m.ca, "the OS CA");
                c.ca_certificate(path!["ca", "crt"], &m.ca, "the OS CA");
            }
        }
        match (mode, &m.install) {
            (Mode::Metal, None) => c.fail(path!["install"], "an install disk is required on metal"),
            (Mode::Container, Some(_)) => {
                c.fail(path!["install"], "a container has no disk to install to")
            }
            _ => {}
        }
        if let Some(install) = &m.install {
            if !install.disk.starts_with("/dev/") {
                c.fail(
                    path!["install", "disk"],
                    format!("{:?} is not a device path under /dev/", install.disk),
                );
            }
        }
        if mode == Mode::Container && !m.kernel_args.is_empty() {
            c.fail(
                path!["kernelArgs"],
                "a container has no kernel to pass arguments to",
            );
        }
        if let Some(h) = &m.hostname {
            if let Err(e) = HostnameSpec::from_fqdn(h, HostnameSource::Config) {
                c.fail(path!["hostname"], e.to_string());
            }
        }
        if let Some(net) = &m.network {
            let mut names = std::collections::BTreeSet::new();
            for (i, link) in net.links.iter().enumerate() {
                if link.name.is_empty() {
                    c.fail(path!["network", "links", i, "name"], "a link needs a name");
                } else if !names.insert(link.name.as_str()) {
                    c.fail(
                        path!["network", "links", i, "name"],
                        format!("link {:?} is listed twice", link.name),
                    );
                }
                if let Some(mtu) = link.mtu {
                    if !(68..=65535).contains(&mtu) {
                        c.fail(
                            path!["network", "links", i, "mtu"],
                            format!("{mtu} is not an MTU (68 to 65535)"),
                        );
                    }
                }
                for (j, a) in link.addresses.iter().enumerate() {
                    c.cidr(path!["network", "links", i, "addresses", j], a);
                }
                for (j, r) in link.routes.iter().enumerate() {
                    c.cidr(
                        path!["network", "links", i, "routes", j, "network"],
                        &r.network,
                    );
                    if let (Ok((dest, _)), Some(gw)) = (parse_cidr(&r.network), r.gateway) {
                        if dest.is_ipv4() != gw.is_ipv4() {
                            c.fail(
                                path!["network", "links", i, "routes", j, "gateway"],
                                format!("gateway {gw} is not of the same family as {}", r.network),
                            );
                        }
                    }
                }
            }
            for (i, t) in net.time_servers.iter().enumerate() {
                if t.trim().is_empty() {
                    c.fail(path!["network", "timeServers", i], "empty time server");
                }
            }
        }
        if let Some(k) = &m.kubelet {
            for (i, s) in k.node_ip_subnets.iter().enumerate() {
                c.cidr(
                    path!["kubelet", "nodeIpSubnets", i],
                    s.trim_start_matches('!'),
                );
            }
        }
        for (key, value) in &m.node_taints {
            let effect = value.rsplit_once(':').map(|(_, e)| e).unwrap_or("");
            if !TAINT_EFFECTS.contains(&effect) {
                c.fail(
                    path!["nodeTaints", key.as_str()],
                    format!("{value:?} must end in :NoSchedule, :PreferNoSchedule or :NoExecute"),
                );
            }
        }
        for (key, value) in &m.env {
            c.not_redacted_text(path!["env", key.as_str()], value);
        }
        for (i, f) in m.files.iter().enumerate() {
            c.not_redacted_text(path!["files", i, "content"], &f.content);
            if !f.path.starts_with("/var/") || f.path.split('/').any(|p| p == "..") {
                c.fail(
                    path!["files", i, "path"],
                    format!("{:?}: files can be written only under /var/", f.path),
                );
            }
            if f.permissions.is_some_and(|p| p > 0o7777) {
                c.fail(
                    path!["files", i, "permissions"],
                    "permissions must be at most 0o7777",
                );
            }
        }
    }

    fn validate_cluster(&self, source: Option<&SourceMap>, errors: &mut Vec<ValidationError>) {
        let mut c = Checker {
            document: "ClusterConfig".into(),
            kind: "ClusterConfig",
            name: None,
            source,
            errors,
        };
        let Some(cl) = &self.cluster else {
            c.fail(vec![], "a ClusterConfig document is required");
            return;
        };
        if HostnameSpec::from_fqdn(&cl.name, HostnameSource::Config).is_err()
            || cl.name.contains('.')
            || cl.name != cl.name.to_ascii_lowercase()
        {
            c.fail(
                path!["name"],
                format!("{:?} is not a DNS label (a-z, 0-9, '-')", cl.name),
            );
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        if b64.decode(&cl.id).map(|b| b.len()) != Ok(32) {
            c.fail(
                path!["id"],
                "the cluster id must be 32 bytes, base64-encoded",
            );
        }
        if b64.decode(cl.secret.expose()).map(|b| b.len()) != Ok(32) {
            c.fail(
                path!["secret"],
                "the cluster secret must be 32 bytes, base64-encoded",
            );
        }
        if let Err(e) = check_endpoint(&cl.control_plane.endpoint) {
            c.fail(
                path!["controlPlane", "endpoint"],
                format!("{:?} {e}", cl.control_plane.endpoint),
            );
        }
        let controlplane = self
            .machine
            .as_ref()
            .is_some_and(|m| m.role == Role::Controlplane);
        if controlplane {
            c.pair_with_key(path!["ca"], &cl.ca, "the Kubernetes CA");
            c.pair_with_key(
                path!["aggregatorCa"],
                &cl.aggregator_ca,
                "the aggregator CA",
            );
            c.pair_with_key(
                path!["etcd", "ca"],
                &cl.etcd.as_ref().and_then(|e| e.ca.clone()),
                "the etcd CA",
            );
            c.required_secret(
                path!["serviceAccountKey"],
                &cl.service_account_key,
                "the service account key",
            );
            let key = cl.service_account_key.expose();
            if !key.is_empty() && key != crate::REDACTED {
                let checked = basalt_pki::KeyPem(key.to_string()).check("the service account key");
                if let Err(e) = checked {
                    c.fail(path!["serviceAccountKey"], e.to_string());
                }
            }
            c.required_secret(
                path!["bootstrapToken"],
                &cl.bootstrap_token,
                "the bootstrap token",
            );
        } else {
            if cl.ca.as_ref().is_none_or(|p| p.crt.is_empty()) {
                c.fail(
                    path!["ca", "crt"],
                    "the Kubernetes CA certificate is required",
                );
            }
            c.no_key(path!["ca", "key"], &cl.ca, "the Kubernetes CA");
            c.ca_certificate(path!["ca", "crt"], &cl.ca, "the Kubernetes CA");
            c.no_key(
                path!["aggregatorCa", "key"],
                &cl.aggregator_ca,
                "the aggregator CA",
            );
            let etcd_ca = cl.etcd.as_ref().and_then(|e| e.ca.clone());
            c.no_key(path!["etcd", "ca", "key"], &etcd_ca, "the etcd CA");
            c.ca_certificate(path!["etcd", "ca", "crt"], &etcd_ca, "the etcd CA");
            if !cl.service_account_key.is_empty() {
                c.fail(
                    path!["serviceAccountKey"],
                    "workers must not hold the service account key",
                );
            }
        }
        let net = &cl.network;
        for (i, s) in net.pod_subnets.iter().enumerate() {
            c.cidr(path!["network", "podSubnets", i], s);
        }
        for (i, s) in net.service_subnets.iter().enumerate() {
            c.cidr(path!["network", "serviceSubnets", i], s);
        }
        if net.pod_subnets.is_empty() {
            c.fail(
                path!["network", "podSubnets"],
                "at least one pod subnet is required",
            );
        }
        if net.service_subnets.is_empty() {
            c.fail(
                path!["network", "serviceSubnets"],
                "at least one service subnet is required",
            );
        }
        if HostnameSpec::from_fqdn(&net.dns_domain, HostnameSource::Config).is_err() {
            c.fail(
                path!["network", "dnsDomain"],
                format!("{:?} is not a domain name", net.dns_domain),
            );
        }
        match (net.cni, net.cni_urls.is_empty()) {
            (Cni::Custom, true) => c.fail(
                path!["network", "cniUrls"],
                "a custom CNI needs at least one manifest URL",
            ),
            (Cni::Flannel | Cni::None, false) => c.fail(
                path!["network", "cniUrls"],
                "manifest URLs are only for a custom CNI",
            ),
            _ => {}
        }
    }

    fn validate_features(&self, source: Option<&SourceMap>, errors: &mut Vec<ValidationError>) {
        if let Some(k) = &self.kubespan {
            let mut c = Checker {
                document: "KubeSpanConfig".into(),
                kind: "KubeSpanConfig",
                name: None,
                source,
                errors,
            };
            if k.mtu.is_some_and(|m| m < 1280) {
                c.fail(
                    path!["mtu"],
                    "the KubeSpan MTU must be at least 1280 (IPv6 needs it)",
                );
            }
            for (i, f) in k.endpoint_filters.iter().enumerate() {
                c.cidr(path!["endpointFilters", i], f.trim_start_matches('!'));
            }
        }
        if let Some(k) = &self.kubeprism {
            let mut c = Checker {
                document: "KubePrismConfig".into(),
                kind: "KubePrismConfig",
                name: None,
                source,
                errors,
            };
            if k.port == 0 {
                c.fail(path!["port"], "port 0 is not a port");
            }
        }
        for e in &self.extensions {
            let mut c = Checker {
                document: format!("ExtensionServiceConfig/{}", e.name),
                kind: "ExtensionServiceConfig",
                name: Some(e.name.clone()),
                source,
                errors,
            };
            if e.name.is_empty() {
                c.fail(path!["name"], "an extension service needs a name");
            }
            for (key, value) in &e.environment {
                c.not_redacted_text(path!["environment", key.as_str()], value);
            }
            let mut mounts = std::collections::BTreeSet::new();
            for (i, f) in e.config_files.iter().enumerate() {
                c.not_redacted_text(path!["configFiles", i, "content"], &f.content);
                if !f.mount_path.starts_with('/') {
                    c.fail(
                        path!["configFiles", i, "mountPath"],
                        "must be an absolute path",
                    );
                } else if !mounts.insert(f.mount_path.as_str()) {
                    c.fail(
                        path!["configFiles", i, "mountPath"],
                        format!("{:?} is mounted twice", f.mount_path),
                    );
                }
            }
        }
    }
}
