//! Turning the configured upstream list into addresses: checking `host:port`, dropping
//! repeats, resolving names. Every problem is reported, none is fatal.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::status::Problem;

type Lookup = dyn Fn(String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> + Send + Sync;

/// Turns `host:port` into addresses: the system's resolver (`getaddrinfo`, so
/// `/etc/hosts` and DNS) unless told otherwise. Tests give their own, so that no name
/// lookup leaves the machine.
#[derive(Clone)]
pub struct Resolver(Arc<Lookup>);

impl Resolver {
    pub fn system() -> Self {
        Resolver::new(|name| {
            Box::pin(async move { Ok(tokio::net::lookup_host(name).await?.collect()) })
        })
    }

    /// A resolver that asks `lookup`.
    pub fn new(
        lookup: impl Fn(String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Resolver(Arc::new(lookup))
    }

    async fn lookup(&self, name: String) -> io::Result<Vec<SocketAddr>> {
        (self.0)(name).await
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

/// Splits `host:port`; the host may be a name, an IPv4 or a bracketed IPv6 literal.
pub fn parse(name: &str) -> Result<(&str, u16), String> {
    let (host, port) = name
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port".to_string())?;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    if port == 0 {
        return Err("port 0".into());
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if host.is_empty() || (bare.is_none() && host.contains(':')) {
        return Err("expected host:port (IPv6 literals in brackets)".into());
    }
    Ok((host, port))
}

/// The names to use, in order, without invalid ones and repeats (compared without case),
/// with a problem for each one left out.
pub fn dedupe(names: &[String]) -> (Vec<String>, Vec<Problem>) {
    let mut kept: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    if names.is_empty() {
        problems.push(Problem::NoUpstreams);
    }
    for name in names {
        let name = name.trim();
        if let Err(reason) = parse(name) {
            problems.push(Problem::Invalid {
                name: name.to_string(),
                reason,
            });
        } else if let Some(same) = kept.iter().find(|k| k.eq_ignore_ascii_case(name)) {
            problems.push(Problem::Duplicate {
                name: name.to_string(),
                same_as: same.clone(),
            });
        } else {
            kept.push(name.to_string());
        }
    }
    (kept, problems)
}

/// Resolves every name (concurrently, each within `timeout`) and drops names that
/// resolve to an address already taken. IPv4 is preferred when a name has both.
pub async fn resolve(
    resolver: &Resolver,
    names: Vec<String>,
    timeout: Duration,
    problems: &mut Vec<Problem>,
) -> Vec<(String, SocketAddr)> {
    let lookups = names.into_iter().map(|name| async move {
        if let Ok(addr) = name.parse::<SocketAddr>() {
            // An address already: nothing to look up.
            return (name, Ok(addr));
        }
        let result = tokio::time::timeout(timeout, resolver.lookup(name.clone())).await;
        let addr = match result {
            Err(_) => Err(format!("timed out after {timeout:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(addrs)) => addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .copied()
                .ok_or_else(|| "no addresses".to_string()),
        };
        (name, addr)
    });
    let mut out: Vec<(String, SocketAddr)> = Vec::new();
    for (name, addr) in futures::future::join_all(lookups).await {
        match addr {
            Err(error) => problems.push(Problem::Unresolvable { name, error }),
            Ok(addr) => match out.iter().find(|(_, a)| *a == addr) {
                Some((same, _)) => problems.push(Problem::Duplicate {
                    name,
                    same_as: same.clone(),
                }),
                None => out.push((name, addr)),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(parse("10.0.0.1:6443"), Ok(("10.0.0.1", 6443)));
        assert_eq!(parse("[fd00::1]:6443"), Ok(("[fd00::1]", 6443)));
        assert_eq!(parse("api.lab:443"), Ok(("api.lab", 443)));
        for bad in [
            "",
            "api",
            "api:",
            ":6443",
            "api:99999",
            "api:0",
            "fd00::1:6443",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repeats_and_invalid_names_are_reported_and_dropped() {
        let names: Vec<String> = ["a:1", "A:1", "b:2", "nope", " b:2 "]
            .into_iter()
            .map(String::from)
            .collect();
        let (kept, problems) = dedupe(&names);
        assert_eq!(kept, ["a:1", "b:2"]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            matches!(&problems[0], Problem::Duplicate { name, same_as } if name == "A:1" && same_as == "a:1")
        );
        assert!(matches!(&problems[1], Problem::Invalid { name, .. } if name == "nope"));
        assert_eq!(dedupe(&[]).1, [Problem::NoUpstreams]);
    }
}
