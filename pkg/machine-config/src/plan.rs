//! The apply plan: from the config in effect, a new one and the mode the user asked for,
//! what applying it does — as data, decided without touching the node. The Machine API
//! executes a plan when a config is applied; the node executes one at boot for a staged
//! config.

use std::time::Duration;

use basalt_pki::{issue_node_certs, CertAndKey};

use crate::{Change, Config, ConfigError};

/// Config paths whose change takes effect only after a reboot.
const REBOOT_PATHS: &[&str] = &["MachineConfig.install", "MachineConfig.kernelArgs"];

/// Config paths some controller acts on today; a change anywhere else is stored, and the
/// plan warns that nothing acts on it yet.
const ACTED_ON: &[&str] = &[
    "MachineConfig.apiVersion",
    "MachineConfig.kind",
    "MachineConfig.role",
    "MachineConfig.hostname",
    "MachineConfig.ca",
    "MachineConfig.certSans",
    // Links, addresses, routes, name and time servers (network.ConfigController); a
    // link's `dhcp: true` is not acted on yet, which that controller logs.
    "MachineConfig.network",
    "MachineConfig.token",
    "MachineConfig.install",
    "MachineConfig.kernelArgs",
    "ClusterConfig.apiVersion",
    "ClusterConfig.kind",
    "ClusterConfig.controlPlane",
    "ClusterConfig.ca",
    "KubePrismConfig",
];

/// How long a tried config stays without confirmation unless the request says otherwise,
/// and the most it may ask for.
pub const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_TRY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Now if the changes allow it, else with a reboot.
    Auto,
    /// Now, or refused if a change needs a reboot.
    NoReboot,
    /// Stored, then the node reboots.
    Reboot,
    /// Stored for the next boot; nothing changes now.
    Staged,
    /// Now, and reverted after `timeout` unless another apply confirms it.
    Try { timeout: Duration },
}

/// What applying the config does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It becomes the config in effect and the controllers act on it now.
    ApplyNow,
    /// It becomes the config in effect, and the node reboots.
    ApplyAndReboot,
    /// It is kept and takes effect at the next boot.
    Stage,
    /// It becomes the config in effect now; the one before comes back after `timeout`
    /// unless confirmed by another apply.
    Try { timeout: Duration },
}

/// A decided apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub action: Action,
    /// What differs from the config in effect (from an empty config in maintenance mode).
    pub changes: Vec<Change>,
    /// The changes that need a reboot to take effect.
    pub reboot_paths: Vec<String>,
    /// Stored but not acted on yet, and the like.
    pub warnings: Vec<String>,
    /// PEM of the OS CA the node's API certificates will come from.
    pub os_ca: String,
}

impl Plan {
    /// The plan in words, for the API's answer.
    pub fn details(&self) -> String {
        match self.action {
            Action::ApplyNow => "applied without a reboot".into(),
            Action::ApplyAndReboot if self.reboot_paths.is_empty() => {
                "applied; the node reboots".into()
            }
            Action::ApplyAndReboot => {
                format!("a reboot applies {}", self.reboot_paths.join(", "))
            }
            Action::Stage => "staged: takes effect at the next boot".into(),
            Action::Try { timeout } => {
                format!("applied; reverted in {timeout:?} unless confirmed by another apply")
            }
        }
    }

    /// The changes, one per line (secrets not shown).
    pub fn diff(&self) -> String {
        self.changes.iter().map(|c| format!("{c}\n")).collect()
    }
}

/// Why a config cannot be applied as asked.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("these changes need a reboot: {}; use --mode auto, reboot or staged", .0.join(", "))]
    NeedsReboot(Vec<String>),
    #[error("a node in maintenance mode has no config to keep until a reboot: apply without --mode staged")]
    NothingToStage,
    #[error("a node in maintenance mode has no config to go back to: apply without --mode try")]
    NothingToRevertTo,
    #[error("the config has no MachineConfig")]
    NoMachineConfig,
    #[error("machine.ca is missing")]
    NoOsCa,
    #[error(
        "machine.token is empty: a node without the OS CA key (a worker) gets its API \
         certificate from the control plane's trustd, which asks for the machine token"
    )]
    NoToken,
    #[error(
        "cluster.controlPlane.endpoint is missing: a node without the OS CA key (a worker) \
         gets its API certificate from trustd there"
    )]
    NoEndpoint,
    #[error("the node's API certificate cannot be issued: {0}")]
    ApiCertificate(#[from] basalt_pki::PkiError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Decides what applying `new` over `current` (none: maintenance mode) in `mode` does.
pub fn plan(current: Option<&Config>, new: &Config, mode: ApplyMode) -> Result<Plan, PlanError> {
    let os_ca = check_api_identity(new)?;
    let changes = current.cloned().unwrap_or_default().diff(new)?;
    let reboot_paths: Vec<String> = match current {
        // The first config is applied at once: nothing was running under another.
        None => Vec::new(),
        Some(_) => changes
            .iter()
            .filter(|c| REBOOT_PATHS.iter().any(|p| c.path.starts_with(p)))
            .map(|c| c.path.clone())
            .collect(),
    };
    let needs_reboot = !reboot_paths.is_empty();
    let maintenance = current.is_none();
    let action = match mode {
        ApplyMode::Auto if needs_reboot => Action::ApplyAndReboot,
        ApplyMode::Auto => Action::ApplyNow,
        ApplyMode::NoReboot | ApplyMode::Try { .. } if needs_reboot => {
            return Err(PlanError::NeedsReboot(reboot_paths))
        }
        ApplyMode::Staged if maintenance => return Err(PlanError::NothingToStage),
        ApplyMode::Try { .. } if maintenance => return Err(PlanError::NothingToRevertTo),
        ApplyMode::NoReboot => Action::ApplyNow,
        ApplyMode::Reboot => Action::ApplyAndReboot,
        ApplyMode::Staged => Action::Stage,
        ApplyMode::Try { timeout } => Action::Try {
            timeout: timeout.min(MAX_TRY_TIMEOUT),
        },
    };
    let warnings = not_acted_on(&changes);
    Ok(Plan {
        action,
        changes,
        reboot_paths,
        warnings,
        os_ca,
    })
}

/// One warning naming the changed parts of the config nothing on the node acts on yet.
fn not_acted_on(changes: &[Change]) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for path in changes.iter().flat_map(paths) {
        if ACTED_ON.iter().any(|p| under(&path, p)) {
            continue;
        }
        // `MachineConfig.network.links[0].mtu` → `MachineConfig.network`
        let mut segments = path.split('.');
        let part = match (segments.next(), segments.next()) {
            (Some(kind), Some(field)) => {
                format!("{kind}.{}", field.split('[').next().unwrap_or(field))
            }
            (Some(kind), None) => kind.to_string(),
            _ => continue,
        };
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    if parts.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "stored, but nothing on this node acts on these yet: {}",
        parts.join(", ")
    )]
}

/// The paths a change touches: a document added or removed whole touches each of its
/// fields.
fn paths(change: &Change) -> Vec<String> {
    if !change.path.contains('.') {
        if let Some(serde_json::Value::Object(fields)) = change.new.as_ref().or(change.old.as_ref())
        {
            return fields
                .keys()
                .map(|field| format!("{}.{field}", change.path))
                .collect();
        }
    }
    vec![change.path.clone()]
}

/// Whether `path` is `prefix` or inside it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The node's API certificates come from the config's OS CA, or without its key from
/// trustd: a config that cannot give them (no CA; no key and no token or endpoint to ask
/// trustd with; names a certificate cannot carry) is refused now, dry run included,
/// rather than leaving the node without an API. Returns the CA's PEM.
fn check_api_identity(config: &Config) -> Result<String, PlanError> {
    let machine = config.machine.as_ref().ok_or(PlanError::NoMachineConfig)?;
    let ca = machine.ca.as_ref().ok_or(PlanError::NoOsCa)?;
    let name = machine.hostname.as_deref().unwrap_or("basalt");
    let mut sans = machine.cert_sans.clone();
    sans.push(name.to_string());
    if ca.key.is_empty() {
        if machine.token.is_empty() {
            return Err(PlanError::NoToken);
        }
        let endpoint = config
            .cluster
            .as_ref()
            .map(|c| c.control_plane.endpoint.as_str())
            .unwrap_or_default();
        if endpoint.is_empty() {
            return Err(PlanError::NoEndpoint);
        }
        // The names are checked as trustd will: a request for them can be made.
        basalt_pki::request_node_certs(name, &sans)?;
        return Ok(ca.crt.clone());
    }
    let ca = CertAndKey {
        crt: ca.crt.clone(),
        key: ca.key.expose().to_string(),
    };
    issue_node_certs(&ca, name, &sans, Duration::from_secs(3600))?;
    Ok(ca.crt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{generate, GenerateOptions};

    fn base() -> Config {
        let bundle = basalt_pki::SecretsBundle::generate().unwrap();
        let options = GenerateOptions {
            cluster_name: "plan".into(),
            endpoint: "https://10.0.0.1:6443".into(),
            install_disk: None,
            admin_validity: Duration::from_secs(3600),
        };
        generate(&bundle, &options).unwrap().controlplane
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Outcome {
        Now,
        Reboot,
        Stage,
        Try,
        NeedsReboot,
        NothingToStage,
        NothingToRevertTo,
    }

    fn outcome(result: &Result<Plan, PlanError>) -> Outcome {
        match result {
            Ok(plan) => match plan.action {
                Action::ApplyNow => Outcome::Now,
                Action::ApplyAndReboot => Outcome::Reboot,
                Action::Stage => Outcome::Stage,
                Action::Try { .. } => Outcome::Try,
            },
            Err(PlanError::NeedsReboot(_)) => Outcome::NeedsReboot,
            Err(PlanError::NothingToStage) => Outcome::NothingToStage,
            Err(PlanError::NothingToRevertTo) => Outcome::NothingToRevertTo,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    const TRY: ApplyMode = ApplyMode::Try {
        timeout: Duration::from_secs(30),
    };
    const MODES: [ApplyMode; 5] = [
        ApplyMode::Auto,
        ApplyMode::NoReboot,
        ApplyMode::Reboot,
        ApplyMode::Staged,
        TRY,
    ];

    #[test]
    fn every_mode_for_every_kind_of_change() {
        use Outcome::*;
        let current = base();
        let with = |change: fn(&mut Config)| {
            let mut c = current.clone();
            change(&mut c);
            c
        };
        // (kind of change, current, new, outcome per mode in MODES order, warns)
        type Row<'a> = (&'a str, Option<&'a Config>, Config, [Outcome; 5], bool);
        let table: Vec<Row> = vec![
            (
                "first config (maintenance)",
                None,
                current.clone(),
                [Now, Now, Reboot, NothingToStage, NothingToRevertTo],
                true,
            ),
            (
                "no change",
                Some(&current),
                current.clone(),
                [Now, Now, Reboot, Stage, Try],
                false,
            ),
            (
                "hostname (acted on now)",
                Some(&current),
                with(|c| c.machine.as_mut().unwrap().hostname = Some("n2".into())),
                [Now, Now, Reboot, Stage, Try],
                false,
            ),
            (
                "kernel arguments (need a reboot)",
                Some(&current),
                with(|c| c.machine.as_mut().unwrap().kernel_args.push("quiet".into())),
                [Reboot, NeedsReboot, Reboot, Stage, NeedsReboot],
                false,
            ),
            (
                "node labels (not acted on yet)",
                Some(&current),
                with(|c| {
                    c.machine
                        .as_mut()
                        .unwrap()
                        .node_labels
                        .insert("zone".into(), "a".into());
                }),
                [Now, Now, Reboot, Stage, Try],
                true,
            ),
        ];
        for (what, current, new, outcomes, warns) in table {
            for (mode, expected) in MODES.iter().zip(outcomes) {
                let result = plan(current, &new, *mode);
                assert_eq!(outcome(&result), expected, "{what}, {mode:?}");
                if let Ok(plan) = result {
                    assert_eq!(
                        !plan.warnings.is_empty(),
                        warns,
                        "{what}: {:?}",
                        plan.warnings
                    );
                }
            }
        }
    }

    /// What the controllers act on draws no warning, named as the config spells it.
    #[test]
    fn acted_on_changes_draw_no_warning() {
        let current = base();
        let mut new = current.clone();
        let machine = new.machine.as_mut().unwrap();
        machine.cert_sans.push("api.example.test".into());
        machine.network = Some(crate::Network {
            nameservers: vec!["10.0.0.53".parse().unwrap()],
            time_servers: vec!["10.0.0.123".into()],
            ..Default::default()
        });
        let p = plan(Some(&current), &new, ApplyMode::Auto).unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn details_warnings_and_limits() {
        let current = base();
        let mut new = current.clone();
        new.machine
            .as_mut()
            .unwrap()
            .kernel_args
            .push("quiet".into());
        new.machine
            .as_mut()
            .unwrap()
            .node_labels
            .insert("zone".into(), "a".into());
        let p = plan(Some(&current), &new, ApplyMode::Auto).unwrap();
        assert_eq!(p.reboot_paths, ["MachineConfig.kernelArgs"]);
        assert!(p.details().contains("kernelArgs"), "{}", p.details());
        assert!(p.diff().contains("quiet"), "{}", p.diff());
        assert_eq!(
            p.warnings,
            ["stored, but nothing on this node acts on these yet: MachineConfig.nodeLabels"]
        );
        let err = plan(Some(&current), &new, ApplyMode::NoReboot).unwrap_err();
        assert!(
            err.to_string().contains("MachineConfig.kernelArgs"),
            "{err}"
        );

        let long = ApplyMode::Try {
            timeout: Duration::from_secs(7 * 24 * 3600),
        };
        let p = plan(Some(&current), &current, long).unwrap();
        assert_eq!(
            p.action,
            Action::Try {
                timeout: MAX_TRY_TIMEOUT
            }
        );
        let first = plan(None, &current, ApplyMode::Auto).unwrap();
        assert!(first.diff().contains("+ MachineConfig"), "{}", first.diff());
        assert_eq!(
            first.os_ca,
            current.machine.as_ref().unwrap().ca.as_ref().unwrap().crt
        );
    }

    #[test]
    fn a_config_that_cannot_give_the_api_its_certificates_is_refused_in_every_mode() {
        // Without the CA key (a worker), trustd is asked: with the token, at the endpoint.
        let mut worker = base();
        worker.machine.as_mut().unwrap().ca.as_mut().unwrap().key = Default::default();
        let mut no_token = worker.clone();
        no_token.machine.as_mut().unwrap().token = Default::default();
        let mut no_endpoint = worker.clone();
        no_endpoint.cluster.as_mut().unwrap().control_plane.endpoint = String::new();
        let mut worker_bad_name = worker.clone();
        worker_bad_name.machine.as_mut().unwrap().cert_sans = vec!["not a name!".into()];
        let mut bad_name = base();
        bad_name.machine.as_mut().unwrap().cert_sans = vec!["not a name!".into()];
        let mut no_ca = base();
        no_ca.machine.as_mut().unwrap().ca = None;
        for mode in MODES {
            assert!(
                !matches!(
                    plan(None, &worker, mode),
                    Err(PlanError::NoToken | PlanError::NoEndpoint | PlanError::ApiCertificate(_))
                ),
                "{mode:?}"
            );
            assert!(matches!(
                plan(None, &no_token, mode),
                Err(PlanError::NoToken)
            ));
            assert!(matches!(
                plan(None, &no_endpoint, mode),
                Err(PlanError::NoEndpoint)
            ));
            assert!(matches!(
                plan(None, &worker_bad_name, mode),
                Err(PlanError::ApiCertificate(_))
            ));
            assert!(matches!(plan(None, &no_ca, mode), Err(PlanError::NoOsCa)));
            assert!(matches!(
                plan(None, &Config::default(), mode),
                Err(PlanError::NoMachineConfig)
            ));
            assert!(
                matches!(
                    plan(None, &bad_name, mode),
                    Err(PlanError::ApiCertificate(_))
                ),
                "{mode:?}"
            );
        }
    }
}
