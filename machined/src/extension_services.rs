//! Extension services: the services an image layer brings, each described by a file of
//! the layer, `services/<name>.yaml` (the name is the service's id). They run on a
//! configured node, whatever its role, beside the role's own services; an
//! `ExtensionServiceConfig` document of the machine config names one and adds to its
//! environment.
//!
//! ```yaml
//! # services/agent.yaml in the layer `agent`
//! command: [usr/bin/agent, --listen, 127.0.0.1:9100]  # a path in the layer
//! restart: onFailure          # always (the default), onFailure, never
//! dependsOn: [etcd]           # started once these are healthy
//! environment: {GOGC: "50"}
//! health: {http: "http://127.0.0.1:9100/healthz", expect: ok, interval: 5s}
//! memoryMax: 64Mi             # bytes, or with Ki, Mi or Gi
//! pidsMax: 128
//! capabilities: []            # the default: none
//! user: 65534                 # the uid it runs as (the default: 0, root)
//! group: 65534                # its gid (the default: its user's uid)
//! ```
//!
//! A file that cannot be read, or a service that cannot run here (a dependency the node
//! does not run, dependencies in a cycle), is not dropped silently: the service is
//! published as Skipped with the reason, and the reason is logged. A service named like
//! one the node has of its own (etcd) or one an earlier layer brings is left out, and
//! that is logged.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use basalt_resources::runtime::ExtensionServiceConfigSpec;
use serde::Deserialize;

use crate::parts::{HealthCheck, RestartPolicy, ServiceDefinition};

/// Where in a layer its services are described.
pub const SERVICES_DIR: &str = "services";
/// A description larger than this is refused unread.
const MAX_DESCRIPTION_BYTES: u64 = 64 * 1024;

/// Why a layer's service cannot be defined.
#[derive(Debug, thiserror::Error)]
pub enum ExtensionServiceError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_DESCRIPTION_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// One service's description, as written in the layer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Description {
    command: Vec<String>,
    #[serde(default)]
    restart: RestartPolicy,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    health: Option<Health>,
    memory_max: Option<Size>,
    pids_max: Option<u64>,
    #[serde(default)]
    capabilities: Vec<String>,
    user: Option<u32>,
    group: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Health {
    http: Option<String>,
    tcp: Option<SocketAddr>,
    expect: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    initial_delay: Option<String>,
}

/// Bytes, written as a number or with a binary suffix (`64Mi`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self) -> Result<u64, String> {
        let text = match self {
            Size::Bytes(bytes) => return Ok(*bytes),
            Size::Text(text) => text.trim(),
        };
        let (number, unit) = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)]
            .into_iter()
            .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n, unit)))
            .unwrap_or((text, 1));
        number
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .ok_or_else(|| format!("{text:?} is not a size (bytes, or a number with Ki, Mi or Gi)"))
    }
}

/// The services every layer under `extensions` describes, in layer then name order.
/// A layer without a services directory has none.
pub fn load(extensions: &Path) -> Vec<ServiceDefinition> {
    let mut definitions = Vec::new();
    for layer in sorted_entries(extensions)
        .into_iter()
        .filter(|p| p.is_dir())
    {
        for file in sorted_entries(&layer.join(SERVICES_DIR)) {
            if file.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let Some(id) = file.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            let definition = match describe(&layer, &file, &id) {
                Ok(definition) => definition,
                Err(error) => {
                    // Never started (`fit` logs why): the command is only there to be
                    // well-formed.
                    ServiceDefinition::new(id, &[&file.to_string_lossy()]).skip(error.to_string())
                }
            };
            definitions.push(definition);
        }
    }
    definitions
}

/// The entries of `dir`, sorted; none if it does not exist (a layer without services).
fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => {
            tracing::error!(dir = %dir.display(), %error, "extension services cannot be listed");
            Vec::new()
        }
    };
    entries.sort();
    entries
}

fn describe(
    layer: &Path,
    file: &Path,
    id: &str,
) -> Result<ServiceDefinition, ExtensionServiceError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_error = |source| ExtensionServiceError::Read {
        path: file.to_path_buf(),
        source,
    };
    // Without blocking (a FIFO waits for a writer to open), and then judged by what was
    // opened, not by what the name pointed at before: a FIFO or a device would block or
    // never end.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(file)
        .map_err(read_error)?;
    if !opened.metadata().map_err(read_error)?.is_file() {
        return Err(ExtensionServiceError::Invalid {
            path: file.to_path_buf(),
            reason: "not a regular file".to_string(),
        });
    }
    let mut text = String::new();
    opened
        .take(MAX_DESCRIPTION_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_DESCRIPTION_BYTES {
        return Err(ExtensionServiceError::TooLarge {
            path: file.to_path_buf(),
        });
    }
    parse(layer, id, &text).map_err(|reason| ExtensionServiceError::Invalid {
        path: file.to_path_buf(),
        reason,
    })
}

/// The service `id` that `text` describes, for the layer at `layer`.
pub fn parse(layer: &Path, id: &str, text: &str) -> Result<ServiceDefinition, String> {
    if !valid_id(id) {
        return Err(format!(
            "{id:?} is not a service name (lowercase letters, digits and '-', at most 63)"
        ));
    }
    basalt_resource::yaml::check_expansion(text)?;
    let description: Description = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    definition(layer, id, description)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

fn definition(layer: &Path, id: &str, d: Description) -> Result<ServiceDefinition, String> {
    let (program, args) = d.command.split_first().ok_or("command is empty")?;
    let relative = Path::new(program);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "command {program:?} must be a path inside the layer (relative, without '..')"
        ));
    }
    let program = layer.join(relative).to_string_lossy().into_owned();
    let mut command = vec![program.as_str()];
    command.extend(args.iter().map(String::as_str));
    let mut definition = ServiceDefinition::new(id, &command).restart(d.restart);
    for dependency in d.depends_on {
        definition = definition.depends_on(dependency);
    }
    for (key, value) in d.environment {
        definition = definition.env(key, value);
    }
    if let Some(health) = d.health {
        let check = health_check(health)?;
        if let Some(reason) = check.refused() {
            return Err(format!("health: {reason}"));
        }
        definition = definition.health(check);
    }
    if let Some(size) = d.memory_max {
        match size.bytes().map_err(|e| format!("memoryMax: {e}"))? {
            0 => return Err("memoryMax: 0 leaves the service no memory".to_string()),
            bytes => definition = definition.memory_max(bytes),
        }
    }
    match d.pids_max {
        Some(0) => return Err("pidsMax: 0 leaves the service no process".to_string()),
        Some(pids) => definition = definition.pids_max(pids),
        None => {}
    }
    match (d.user, d.group) {
        (None, None) => {}
        (Some(u32::MAX), _) | (_, Some(u32::MAX)) => {
            return Err("user and group: 4294967295 (-1) is not an id".to_string())
        }
        (user, group) => {
            let uid = user.unwrap_or(0);
            let gid = group.unwrap_or(uid);
            definition = definition.user(basalt_sys::exec::User { uid, gid });
        }
    }
    let capabilities = d
        .capabilities
        .iter()
        .map(|name| basalt_sys::exec::parse_capability(name).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(definition.capabilities(capabilities))
}

fn health_check(h: Health) -> Result<HealthCheck, String> {
    let check = match (h.http, h.tcp) {
        (Some(url), None) => {
            let check = HealthCheck::http(url);
            match h.expect {
                Some(text) => check.expect(text),
                None => check,
            }
        }
        (None, Some(address)) if h.expect.is_none() => HealthCheck::tcp(address),
        (None, Some(_)) => return Err("health: expect is for http checks".to_string()),
        _ => return Err("health: give one of http or tcp".to_string()),
    };
    let duration = |field: &str, text: Option<String>, default: Duration| match text {
        None => Ok(default),
        Some(text) => {
            humantime::parse_duration(&text).map_err(|e| format!("health.{field}: {text:?}: {e}"))
        }
    };
    let interval = duration("interval", h.interval, check.interval)?;
    let timeout = duration("timeout", h.timeout, check.timeout)?;
    let initial_delay = duration("initialDelay", h.initial_delay, check.initial_delay)?;
    Ok(check.timing(interval, timeout, initial_delay))
}

/// Makes `extensions` fit beside `others` (the node's own services now) and `reserved`
/// (names the node's own services have whether it runs them or not): one named like
/// either, or like an extension before it, is left out; one that depends on a service
/// the node does not run, or waits on a cycle of dependencies, is skipped with the
/// reason. `configs` (by service name) add to their environment.
pub fn fit(
    others: &[ServiceDefinition],
    reserved: &[&str],
    extensions: Vec<ServiceDefinition>,
    configs: &BTreeMap<String, ExtensionServiceConfigSpec>,
) -> Vec<ServiceDefinition> {
    let mut taken: HashSet<String> = others.iter().map(|d| d.id.clone()).collect();
    taken.extend(reserved.iter().map(|r| r.to_string()));
    let mut fitted: Vec<ServiceDefinition> = extensions
        .into_iter()
        .filter(|d| {
            let first = taken.insert(d.id.clone());
            if !first {
                // Two of a name would refuse the whole set.
                tracing::error!(service = %d.id, "an extension service is named like another service: left out");
            }
            first
        })
        .collect();
    // Skipping one may leave another without its dependency: until none changes.
    loop {
        let defined: HashSet<String> = others
            .iter()
            .chain(&fitted)
            .filter(|d| d.skip.is_none())
            .map(|d| d.id.clone())
            .collect();
        let mut changed = false;
        for definition in fitted.iter_mut().filter(|d| d.skip.is_none()) {
            if let Some(missing) = definition.depends_on.iter().find(|d| !defined.contains(*d)) {
                definition.skip = Some(format!(
                    "it depends on {missing}, which this node does not run"
                ));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // What can start: each service once all it depends on can. The rest wait on a cycle.
    let mut can_start: HashSet<String> = others.iter().map(|d| d.id.clone()).collect();
    loop {
        let ready: Vec<String> = fitted
            .iter()
            .filter(|d| d.skip.is_none() && !can_start.contains(&d.id))
            .filter(|d| d.depends_on.iter().all(|dep| can_start.contains(dep)))
            .map(|d| d.id.clone())
            .collect();
        if ready.is_empty() {
            break;
        }
        can_start.extend(ready);
    }
    for definition in &mut fitted {
        if definition.skip.is_none() && !can_start.contains(&definition.id) {
            definition.skip = Some("its dependencies wait on each other in a cycle".to_string());
        }
        if let Some(reason) = &definition.skip {
            tracing::error!(service = %definition.id, %reason, "an extension service cannot run");
            // Never started, so it waits for nothing (and names nothing undefined).
            definition.depends_on.clear();
        }
        if let Some(config) = configs.get(&definition.id) {
            definition.env.extend(config.environment.clone());
            if !config.config_files.is_empty() {
                tracing::warn!(
                    service = %definition.id,
                    "ExtensionServiceConfig configFiles are not delivered to services yet"
                );
            }
        }
    }
    for name in configs.keys() {
        if !fitted.iter().any(|d| &d.id == name) {
            tracing::warn!(service = %name, "an ExtensionServiceConfig names no extension service of this node");
        }
    }
    fitted
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A directory of layers; `services` are (layer, file name, text).
    fn layers(services: &[(&str, &str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (layer, name, text) in services {
            let services = dir.path().join(layer).join(SERVICES_DIR);
            std::fs::create_dir_all(&services).unwrap();
            std::fs::write(services.join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn a_layers_services_are_defined_from_their_files() {
        let dir = layers(&[
            (
                "agent",
                "agent.yaml",
                "command: [usr/bin/agent, --port, '9100']\n\
                 restart: onFailure\n\
                 dependsOn: [etcd]\n\
                 environment: {GOGC: '50'}\n\
                 health: {http: 'http://127.0.0.1:9100/healthz', expect: ok, interval: 2s}\n\
                 memoryMax: 64Mi\n\
                 pidsMax: 128\n\
                 capabilities: [CAP_NET_BIND_SERVICE]\n\
                 user: 65534\n",
            ),
            ("agent", "README", "not a service"),
            ("tools", "idle.yaml", "command: [bin/sleep, '60']\n"),
        ]);
        let definitions = load(dir.path());
        let layer = dir.path().join("agent");
        let expected = ServiceDefinition::new(
            "agent",
            &[
                &layer.join("usr/bin/agent").to_string_lossy(),
                "--port",
                "9100",
            ],
        )
        .restart(RestartPolicy::OnFailure)
        .depends_on("etcd")
        .env("GOGC", "50")
        .health(
            HealthCheck::http("http://127.0.0.1:9100/healthz")
                .expect("ok")
                .timing(
                    Duration::from_secs(2),
                    Duration::from_secs(2),
                    Duration::ZERO,
                ),
        )
        .memory_max(64 << 20)
        .pids_max(128)
        .capabilities(vec![basalt_sys::exec::Capability::CAP_NET_BIND_SERVICE])
        .user(basalt_sys::exec::User {
            uid: 65534,
            gid: 65534,
        });
        assert_eq!(definitions.len(), 2, "{definitions:?}");
        assert_eq!(definitions[0], expected);
        let idle = &definitions[1];
        assert_eq!(idle.id, "idle");
        assert_eq!(idle.restart, RestartPolicy::Always);
        assert_eq!(idle.capabilities, Some(Vec::new()), "none unless asked for");
        assert_eq!(idle.resources.memory_max, None);
        assert_eq!(idle.user, None, "root unless asked for");
    }

    #[test]
    fn a_service_that_cannot_be_defined_is_skipped_saying_why() {
        let dir = layers(&[
            ("l", "absolute.yaml", "command: [/bin/sh]\n"),
            ("l", "escapes.yaml", "command: [../other/bin/x]\n"),
            ("l", "empty.yaml", "command: []\n"),
            (
                "l",
                "typo.yaml",
                "command: [x]\nrestart: always\nmemoryMx: 1\n",
            ),
            ("l", "size.yaml", "command: [x]\nmemoryMax: 12Mb\n"),
            (
                "l",
                "health.yaml",
                "command: [x]\nhealth: {tcp: '127.0.0.1:1', expect: ok}\n",
            ),
            (
                "l",
                "cap.yaml",
                "command: [x]\ncapabilities: [CAP_EVERYTHING]\n",
            ),
            ("l", "nobody.yaml", "command: [x]\nuser: 4294967295\n"),
            ("l", "Bad_Name.yaml", "command: [x]\n"),
            ("l", "garbage.yaml", "command: [x\n"),
            (
                "l",
                "remote.yaml",
                "command: [x]\nhealth: {http: 'http://192.0.2.1/'}\n",
            ),
            ("l", "nomemory.yaml", "command: [x]\nmemoryMax: 0\n"),
            (
                "l",
                "deep.yaml",
                &format!("command: {}\n", "[".repeat(1000)),
            ),
        ]);
        // A FIFO that nobody writes: reading it would block for ever.
        let fifo = dir.path().join("l/services/fifo.yaml");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let big = dir.path().join("l/services/big.yaml");
        std::fs::write(&big, "#".repeat(MAX_DESCRIPTION_BYTES as usize + 1)).unwrap();
        let definitions = load(dir.path());
        let reason = |id: &str| {
            let d = definitions.iter().find(|d| d.id == id).unwrap();
            d.skip
                .clone()
                .unwrap_or_else(|| panic!("{id} is not skipped: {d:?}"))
        };
        for (id, says) in [
            ("absolute", "must be a path inside the layer"),
            ("escapes", "must be a path inside the layer"),
            ("empty", "command is empty"),
            ("typo", "unknown field `memoryMx`"),
            ("size", "memoryMax: \"12Mb\" is not a size"),
            ("health", "expect is for http checks"),
            ("cap", "CAP_EVERYTHING"),
            ("nobody", "4294967295 (-1) is not an id"),
            ("Bad_Name", "is not a service name"),
            ("garbage", "did not find expected"),
            ("remote", "192.0.2.1 is not a loopback address"),
            ("nomemory", "leaves the service no memory"),
            ("deep", "nested more than"),
            ("fifo", "not a regular file"),
            ("big", "larger than"),
        ] {
            let why = reason(id);
            assert!(why.contains(says), "{id}: {why}");
            assert!(
                why.contains(&format!("{id}.yaml")),
                "{id}: names the file: {why}"
            );
        }
        // Skipped, they make a set the supervisor accepts.
        crate::parts::Supervisor::new(
            basalt_state::State::new(),
            definitions,
            crate::parts::SupervisorOptions::default(),
        )
        .unwrap();
    }

    #[test]
    fn extensions_fit_beside_the_nodes_services() {
        let own = vec![ServiceDefinition::new("etcd", &["etcd"])];
        let extensions = vec![
            ServiceDefinition::new("etcd", &["impostor"]),
            ServiceDefinition::new("kubelet", &["impostor"]),
            ServiceDefinition::new("a", &["a"]).depends_on("etcd"),
            ServiceDefinition::new("b", &["b"]).depends_on("kubelet"),
            ServiceDefinition::new("c", &["c"]).depends_on("b"),
            ServiceDefinition::new("d", &["d"]).depends_on("e"),
            ServiceDefinition::new("e", &["e"]).depends_on("d"),
            ServiceDefinition::new("f", &["f"]).depends_on("d"),
            ServiceDefinition::new("a", &["a again"]),
        ];
        let configs = BTreeMap::from([(
            "a".to_string(),
            ExtensionServiceConfigSpec {
                environment: BTreeMap::from([("TOKEN".to_string(), "s3cret".to_string())]),
                config_files: Vec::new(),
            },
        )]);
        let fitted = fit(&own, &["etcd", "kubelet"], extensions, &configs);
        let ids: Vec<&str> = fitted.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            ["a", "b", "c", "d", "e", "f"],
            "impostors and the second a are left out"
        );
        let skip = |id: &str| fitted.iter().find(|d| d.id == id).unwrap().skip.clone();
        assert_eq!(skip("a"), None);
        assert_eq!(fitted[0].command, ["a"]);
        assert_eq!(
            fitted[0].env.get("TOKEN").map(String::as_str),
            Some("s3cret")
        );
        assert_eq!(
            skip("b").as_deref(),
            Some("it depends on kubelet, which this node does not run")
        );
        assert_eq!(
            skip("c").as_deref(),
            Some("it depends on b, which this node does not run")
        );
        for id in ["d", "e", "f"] {
            assert_eq!(
                skip(id).as_deref(),
                Some("its dependencies wait on each other in a cycle"),
                "{id}"
            );
        }
        assert!(fitted.iter().skip(1).all(|d| d.depends_on.is_empty()));
        // What is fitted, the supervisor takes.
        let mut all = own.clone();
        all.extend(fitted);
        crate::parts::Supervisor::new(
            basalt_state::State::new(),
            all,
            crate::parts::SupervisorOptions::default(),
        )
        .unwrap();
    }
}
