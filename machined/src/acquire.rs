//! Where a booting node's machine config comes from, in order: the config it had
//! (persisted on STATE; a config staged for this boot takes its place), the one embedded
//! in the image, the `basalt.config=` URL of the kernel command line; without any, the
//! node waits in maintenance mode. Each is parsed and validated as an apply would; a
//! source that fails is reported (logged and in `MachineConfigStatus`) and the next one
//! is tried, so bad input never keeps the node from booting to a reachable API.

use std::time::Duration;

use basalt_machine_config::{Config, Mode};
use basalt_resource::{Resource, ResourceKey};
use basalt_resources::config::MachineConfigSpec;
use basalt_resources::runtime::{ConfigSource, MachineConfigStatusSpec};
use basalt_state::{State, StateError};
use http_body_util::BodyExt as _;

use crate::api;

/// The owner of what the boot writes.
const OWNER: &str = "machined.Boot";
/// A persisted config that no longer reads is kept under this id, for inspection.
pub const CORRUPT_ID: &str = "corrupt";

/// How a config is fetched from `basalt.config=`.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    /// The whole fetch, retries included: a URL that never answers costs this much boot
    /// time and no more.
    pub timeout: Duration,
    /// A longer answer is refused.
    pub max_bytes: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            timeout: Duration::from_secs(30),
            max_bytes: basalt_machine_config::MAX_CONFIG_BYTES,
        }
    }
}

/// Where the node may find a config besides its state.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// The image's embedded config (YAML).
    pub embedded: Option<String>,
    /// The `basalt.config=` URL.
    pub url: Option<String>,
    pub fetch: FetchLimits,
}

impl ConfigSources {
    /// The URL a kernel command line names (`basalt.config=`; the last one wins).
    pub fn url_from_cmdline(cmdline: &str) -> Option<String> {
        let cmdline = basalt_resources::runtime::KernelCmdlineSpec::parse(cmdline);
        cmdline.get(CMDLINE_KEY).map(str::to_string)
    }
}

/// The kernel argument that names a config URL.
pub const CMDLINE_KEY: &str = "basalt.config";

/// Why a config could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: not a URL: {reason}")]
    Url { url: String, reason: String },
    #[error("{url}: only http:// URLs are supported")]
    Scheme { url: String },
    #[error("{url}: connecting: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{url}: answered {status}")]
    Status {
        url: String,
        status: http::StatusCode,
    },
    #[error("{url}: the answer is larger than {max} bytes")]
    TooLarge { url: String, max: usize },
    #[error("{url}: the answer is not UTF-8")]
    NotUtf8 { url: String },
    #[error("{url}: no answer within {timeout:?}")]
    TimedOut { url: String, timeout: Duration },
}

impl FetchError {
    /// Whether trying again may help (until the deadline).
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Connect { .. } | FetchError::Http { .. } => true,
            FetchError::Status { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

/// Finds the config the node boots with and stores it as the one in effect; returns
/// what happened, for `MachineConfigStatus`. `problems` holds what went wrong before
/// (opening the state).
pub(crate) async fn acquire(
    state: &State,
    sources: &ConfigSources,
    mode: Mode,
    mut problems: Vec<String>,
) -> Result<MachineConfigStatusSpec, StateError> {
    let mut report = |problem: String| {
        tracing::error!(problem = %problem, "machine config");
        problems.push(problem);
    };
    let mut source = ConfigSource::None;
    if promote_staged(state, mode, &mut report).await? {
        source = ConfigSource::Staged;
    } else if keep_active(state, mode, &mut report).await? {
        source = ConfigSource::State;
    } else if let Some(yaml) = &sources.embedded {
        match store_checked(state, yaml, mode).await {
            Ok(()) => source = ConfigSource::Image,
            Err(e) => report(format!("the image's embedded config: {e}")),
        }
    }
    if source == ConfigSource::None {
        if let Some(url) = &sources.url {
            tracing::info!(url = %url, "fetching the machine config");
            let fetched = fetch(url, &sources.fetch).await;
            match fetched.map_err(|e| e.to_string()) {
                Ok(yaml) => match store_checked(state, &yaml, mode).await {
                    Ok(()) => source = ConfigSource::Url,
                    Err(e) => report(format!("the config from {url}: {e}")),
                },
                Err(e) => report(format!("fetching the config: {e}")),
            }
        }
    }
    tracing::info!(?source, "machine config");
    let status = MachineConfigStatusSpec {
        source,
        url: sources.url.clone(),
        problems,
    };
    state
        .put(
            Resource::new(MachineConfigStatusSpec::ID, status.clone()).into_any(),
            OWNER,
        )
        .await?;
    Ok(status)
}

/// A config staged for this boot becomes the one in effect (the apply plan's `Stage`
/// action, carried out now); true if it did.
async fn promote_staged(
    state: &State,
    mode: Mode,
    report: &mut impl FnMut(String),
) -> Result<bool, StateError> {
    let Some(yaml) = stored(state, MachineConfigSpec::STAGED).await? else {
        return Ok(false);
    };
    let promoted = match api::check(&yaml, mode) {
        Ok(config) => store(state, MachineConfigSpec::ACTIVE, &yaml, &config).await,
        Err(e) => Err(format!("the staged config does not read: {e}")),
    };
    // Used or not, it was for this boot only.
    remove(state, MachineConfigSpec::STAGED).await?;
    match promoted {
        Ok(()) => {
            tracing::info!("the staged config is now in effect");
            Ok(true)
        }
        Err(e) => {
            report(e);
            Ok(false)
        }
    }
}

/// Whether the persisted config reads; one that does not is moved aside (kept as
/// `MachineConfig/corrupt`) so the node boots without it rather than failing on it.
async fn keep_active(
    state: &State,
    mode: Mode,
    report: &mut impl FnMut(String),
) -> Result<bool, StateError> {
    let Some(yaml) = stored(state, MachineConfigSpec::ACTIVE).await? else {
        return Ok(false);
    };
    let Err(e) = api::check(&yaml, mode) else {
        return Ok(true);
    };
    report(format!(
        "the config on STATE does not read ({e}): kept as MachineConfig/{CORRUPT_ID}, \
         not used"
    ));
    let kept = MachineConfigSpec {
        yaml,
        digest: String::new(),
    };
    state
        .put(Resource::new(CORRUPT_ID, kept).into_any(), OWNER)
        .await?;
    remove(state, MachineConfigSpec::ACTIVE).await?;
    Ok(false)
}

async fn stored(state: &State, id: &str) -> Result<Option<String>, StateError> {
    match state.get(&ResourceKey::of::<MachineConfigSpec>(id)).await {
        Ok(resource) => Ok(resource
            .spec_as::<MachineConfigSpec>()
            .ok()
            .map(|spec| spec.yaml.clone())),
        Err(StateError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn store_checked(state: &State, yaml: &str, mode: Mode) -> Result<(), String> {
    let config = api::check(yaml, mode)?;
    store(state, MachineConfigSpec::ACTIVE, yaml, &config).await
}

async fn store(state: &State, id: &str, yaml: &str, config: &Config) -> Result<(), String> {
    api::store(state, id, Some((yaml, config)))
        .await
        .map_err(|status| status.message().to_string())
}

async fn remove(state: &State, id: &str) -> Result<(), StateError> {
    match state
        .destroy(&ResourceKey::of::<MachineConfigSpec>(id), api::CONFIG_OWNER)
        .await
    {
        Err(StateError::NotFound(_)) => Ok(()),
        other => other,
    }
}

/// Fetches `url` (http only), retrying what may pass (refused connections, 5xx) until
/// the deadline; never reads more than `limits.max_bytes` of the answer.
pub async fn fetch(url: &str, limits: &FetchLimits) -> Result<String, FetchError> {
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut delay = Duration::from_millis(250);
    loop {
        let attempt = tokio::time::timeout_at(deadline, fetch_once(url, limits.max_bytes));
        match attempt.await {
            Err(_) => {
                return Err(FetchError::TimedOut {
                    url: url.to_string(),
                    timeout: limits.timeout,
                })
            }
            Ok(Err(e)) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?delay, "fetching the machine config");
                if tokio::time::Instant::now() + delay >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Ok(result) => return result,
        }
    }
}

async fn fetch_once(url: &str, max_bytes: usize) -> Result<String, FetchError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| FetchError::Url {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    if uri.scheme_str() != Some("http") {
        return Err(FetchError::Scheme {
            url: url.to_string(),
        });
    }
    let host = uri.host().ok_or_else(|| FetchError::Url {
        url: url.to_string(),
        reason: "no host".to_string(),
    })?;
    let port = uri.port_u16().unwrap_or(80);
    let http = |source| FetchError::Http {
        url: url.to_string(),
        source,
    };
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|source| FetchError::Connect {
            url: url.to_string(),
            source,
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(http)?;
    let connection = tokio::spawn(connection);
    let authority = uri.authority().map_or(host, |a| a.as_str()).to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "basalt-machined")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| FetchError::Url {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    let answer = sender.send_request(request).await.map_err(http)?;
    if !answer.status().is_success() {
        connection.abort();
        return Err(FetchError::Status {
            url: url.to_string(),
            status: answer.status(),
        });
    }
    let mut body = answer.into_body();
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(chunk) = frame.map_err(http)?.into_data() {
            if data.len() + chunk.len() > max_bytes {
                connection.abort();
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                    max: max_bytes,
                });
            }
            data.extend_from_slice(&chunk);
        }
    }
    connection.abort();
    String::from_utf8(data).map_err(|_| FetchError::NotUtf8 {
        url: url.to_string(),
    })
}
