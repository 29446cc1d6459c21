//! Generating the configs of a new cluster from its secrets bundle: what
//! `osctl gen config` writes.

use std::time::Duration;

use basalt_pki::{issue_client_cert, CertAndKey, Role, SecretsBundle};

use crate::client::{ClientConfig, Context};
use crate::{
    CertKey, ClusterConfig, Config, ConfigError, ControlPlane, Etcd, Install, KubePrismConfig,
    MachineConfig, Secret,
};

/// What `gen config` needs besides the secrets.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub cluster_name: String,
    /// `https://HOST:PORT` of the Kubernetes API.
    pub endpoint: String,
    /// The disk to install to on metal; `None` for cloud and container nodes.
    pub install_disk: Option<String>,
    /// How long the admin client certificate is valid.
    pub admin_validity: Duration,
}

/// The three outputs of `gen config`.
#[derive(Debug, Clone)]
pub struct Generated {
    pub controlplane: Config,
    pub worker: Config,
    pub client: ClientConfig,
}

fn with_key(pair: &CertAndKey) -> CertKey {
    CertKey {
        crt: pair.crt.clone(),
        key: Secret::new(pair.key.clone()),
    }
}

fn cert_only(pair: &CertAndKey) -> CertKey {
    CertKey {
        crt: pair.crt.clone(),
        key: Secret::default(),
    }
}

fn gen_error(reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Encode(format!("cannot generate the configuration: {reason}"))
}

/// The host of an `https://HOST:PORT` endpoint (brackets of an IPv6 address removed).
fn endpoint_host(endpoint: &str) -> Option<String> {
    let rest = endpoint.strip_prefix("https://")?.trim_end_matches('/');
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// Builds the control-plane and worker configs and an admin client config. Worker
/// configs carry CA certificates but no CA keys.
pub fn generate(
    bundle: &SecretsBundle,
    options: &GenerateOptions,
) -> Result<Generated, ConfigError> {
    let certs = &bundle.certs;
    let bootstrap_token = Secret::new(bundle.bootstrap_token.0.clone());
    let machine_token = Secret::new(bundle.trustdinfo.token.0.clone());
    let machine = |role: crate::Role, ca: CertKey| MachineConfig {
        role,
        token: machine_token.clone(),
        ca: Some(ca),
        install: options.install_disk.as_ref().map(|disk| Install {
            disk: disk.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let cluster = |controlplane: bool| ClusterConfig {
        name: options.cluster_name.clone(),
        id: bundle.cluster.id.clone(),
        secret: Secret::new(bundle.cluster.secret.clone()),
        control_plane: ControlPlane {
            endpoint: options.endpoint.clone(),
        },
        ca: Some(if controlplane {
            with_key(&certs.k8s)
        } else {
            cert_only(&certs.k8s)
        }),
        aggregator_ca: controlplane.then(|| with_key(&certs.k8s_aggregator)),
        service_account_key: if controlplane {
            Secret::new(certs.k8s_service_account.0.clone())
        } else {
            Secret::default()
        },
        bootstrap_token: bootstrap_token.clone(),
        etcd: controlplane.then(|| Etcd {
            ca: Some(with_key(&certs.etcd)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let controlplane = Config {
        machine: Some(machine(crate::Role::Controlplane, with_key(&certs.os))),
        cluster: Some(cluster(true)),
        kubeprism: Some(KubePrismConfig::default()),
        ..Default::default()
    };
    let worker = Config {
        machine: Some(machine(crate::Role::Worker, cert_only(&certs.os))),
        cluster: Some(cluster(false)),
        kubeprism: Some(KubePrismConfig::default()),
        ..Default::default()
    };

    let admin = issue_client_cert(&certs.os, "admin", &[Role::Admin], options.admin_validity)
        .map_err(gen_error)?;
    let host = endpoint_host(&options.endpoint)
        .ok_or_else(|| gen_error(format!("{:?} is not https://HOST:PORT", options.endpoint)))?;
    let client = ClientConfig::single(
        &options.cluster_name,
        Context {
            endpoints: vec![host],
            nodes: Vec::new(),
            ca: certs.os.crt.clone(),
            crt: admin.crt,
            key: Secret::new(admin.key),
        },
    );
    Ok(Generated {
        controlplane,
        worker,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_token_is_trustds_and_workers_get_no_ca_key() {
        let bundle = SecretsBundle::generate().unwrap();
        let options = GenerateOptions {
            cluster_name: "lab".into(),
            endpoint: "https://10.5.0.2:6443".into(),
            install_disk: None,
            admin_validity: std::time::Duration::from_secs(60),
        };
        let generated = generate(&bundle, &options).unwrap();
        for config in [&generated.controlplane, &generated.worker] {
            let machine = config.machine.as_ref().unwrap();
            assert_eq!(machine.token.expose(), bundle.trustdinfo.token.0);
            let cluster = config.cluster.as_ref().unwrap();
            assert_eq!(cluster.bootstrap_token.expose(), bundle.bootstrap_token.0);
        }
        let worker = generated.worker.machine.as_ref().unwrap();
        assert!(worker.ca.as_ref().unwrap().key.is_empty());
        let controlplane = generated.controlplane.machine.as_ref().unwrap();
        assert!(!controlplane.ca.as_ref().unwrap().key.is_empty());
    }
}
