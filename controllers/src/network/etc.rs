use std::path::{Path, PathBuf};

use async_trait::async_trait;
use basalt_controller_runtime::{Action, Controller, ControllerError, Input, Output, Runtime};
use basalt_resources::network::{
    AddressSpecSpec, HostnameSpec, ResolverSpecSpec, ResolverStatusSpec,
};

use super::NetworkError;

/// glibc's resolver reads at most three name servers.
const MAX_NAMESERVERS: usize = 3;

/// Writes the files the node's resolver reads, `hosts` and `resolv.conf`, into a
/// directory of the node's own (`/etc`'s entries link there), and sets the kernel's
/// host name: from the `Hostname`, the resolvers and the node's first configured
/// address. Publishes the name servers written.
#[derive(Debug)]
pub struct EtcFilesController {
    dir: PathBuf,
    /// Whether to set the kernel's host name (a node's own UTS namespace); tests that
    /// run in the host's do not.
    set_hostname: bool,
}

impl EtcFilesController {
    pub fn new(dir: PathBuf, set_hostname: bool) -> Self {
        EtcFilesController { dir, set_hostname }
    }
}

#[async_trait]
impl Controller for EtcFilesController {
    basalt_controller_runtime::declare! {
        name: "network.EtcFilesController",
        inputs: [
            Input::weak::<HostnameSpec>().with_id(HostnameSpec::ID),
            Input::weak::<ResolverSpecSpec>().with_id(ResolverSpecSpec::ID),
            Input::weak::<AddressSpecSpec>(),
        ],
        outputs: [
            Output::exclusive::<ResolverStatusSpec>(),
        ],
    }

    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let hostname = rt
            .get::<HostnameSpec>(HostnameSpec::ID)
            .await?
            .map(|h| h.spec);
        let nameservers: Vec<String> = rt
            .get::<ResolverSpecSpec>(ResolverSpecSpec::ID)
            .await?
            .map(|r| r.spec.nameservers)
            .unwrap_or_default()
            .into_iter()
            .take(MAX_NAMESERVERS)
            .collect();
        // The node's own address for its name: the highest layer's first one that is
        // not loopback.
        let mut addresses = rt.list::<AddressSpecSpec>().await?;
        addresses.sort_by(|a, b| {
            b.spec
                .layer
                .cmp(&a.spec.layer)
                .then(a.metadata.id.cmp(&b.metadata.id))
        });
        let address = addresses
            .iter()
            .find(|a| a.spec.link != "lo")
            .and_then(|a| a.spec.address.split('/').next().map(str::to_string));

        write_if_changed(
            &self.dir.join("hosts"),
            &hosts(hostname.as_ref(), address.as_deref()),
        )?;
        write_if_changed(
            &self.dir.join("resolv.conf"),
            &resolv_conf(&nameservers, hostname.as_ref()),
        )?;
        if self.set_hostname {
            if let Some(hostname) = &hostname {
                rustix::system::sethostname(hostname.hostname.as_bytes())
                    .map_err(|e| NetworkError::Hostname { source: e.into() })?;
            }
        }
        rt.put_spec(ResolverStatusSpec::ID, ResolverStatusSpec { nameservers })
            .await?;
        Ok(Action::Done)
    }
}

fn hosts(hostname: Option<&HostnameSpec>, address: Option<&str>) -> String {
    let mut text = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n");
    if let Some(name) = hostname {
        let names = if name.domainname.is_empty() {
            name.hostname.clone()
        } else {
            format!("{}.{} {}", name.hostname, name.domainname, name.hostname)
        };
        // Without an address of its own, the name resolves to loopback (as Debian does).
        text.push_str(&format!("{} {names}\n", address.unwrap_or("127.0.1.1")));
    }
    text
}

fn resolv_conf(nameservers: &[String], hostname: Option<&HostnameSpec>) -> String {
    let mut text = String::from("# written by Basalt (network.EtcFilesController)\n");
    for server in nameservers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if let Some(domain) = hostname.map(|h| &h.domainname).filter(|d| !d.is_empty()) {
        text.push_str(&format!("search {domain}\n"));
    }
    text
}

/// Replaces `path` atomically (a reader sees the old file or the new one, never half)
/// when its content differs.
fn write_if_changed(path: &Path, content: &str) -> Result<(), NetworkError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    let error = |source| NetworkError::Write {
        path: path.display().to_string(),
        source,
    };
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, content).map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_resources::network::HostnameSource;

    #[test]
    fn hosts_names_the_node_at_its_address() {
        let name = HostnameSpec {
            hostname: "node-1".into(),
            domainname: "lab.test".into(),
            source: HostnameSource::Config,
        };
        let text = hosts(Some(&name), Some("10.0.0.2"));
        assert!(text.starts_with("127.0.0.1 localhost\n"));
        assert!(
            text.ends_with("10.0.0.2 node-1.lab.test node-1\n"),
            "{text}"
        );
        assert!(hosts(Some(&name), None).ends_with("127.0.1.1 node-1.lab.test node-1\n"));
        let resolv = resolv_conf(&["10.0.0.53".into()], Some(&name));
        assert!(
            resolv.contains("nameserver 10.0.0.53\nsearch lab.test\n"),
            "{resolv}"
        );
    }
}
