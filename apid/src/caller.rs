//! Who is calling, as apid hands an authorized call to the node: the verified roles and
//! the caller's name in call metadata that only apid sets. apid drops any values of these
//! keys a client sends, so the node can trust them (it is reached only through apid: in
//! process, or over a unix socket only apid may open).

use basalt_pki::Role;
use http::HeaderMap;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::authz::Caller;

/// The caller's roles, comma-separated.
pub const ROLES: &str = "basalt-caller-roles";
/// The caller for logs and the audit trail (`admin@10.0.0.1:4711`).
pub const WHO: &str = "basalt-caller";
/// `true` unless the caller came without a client certificate (maintenance mode).
pub const AUTHENTICATED: &str = "basalt-caller-authenticated";

/// The caller of a call apid authorized, as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedCaller {
    pub roles: Vec<Role>,
    pub who: String,
    pub authenticated: bool,
}

impl AuthorizedCaller {
    /// apid itself, reading what it needs from the node (its certificates).
    pub fn apid() -> Self {
        AuthorizedCaller {
            roles: vec![Role::Admin],
            who: "apid".into(),
            authenticated: true,
        }
    }

    pub(crate) fn of(caller: &Caller) -> Self {
        AuthorizedCaller {
            roles: caller.roles.clone(),
            who: caller.who(),
            authenticated: caller.peer.authenticated,
        }
    }

    /// Sensitive resources and secret config fields are for admins only.
    pub fn sees_secrets(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    /// Replaces whatever the request says about its caller with this.
    pub fn write(&self, headers: &mut HeaderMap) {
        for key in [ROLES, WHO, AUTHENTICATED] {
            headers.remove(key);
        }
        let roles = self
            .roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",");
        // Header values are visible ASCII; a certificate's common name can be anything.
        let who = self.who.escape_default().to_string();
        for (key, value) in [
            (ROLES, roles),
            (WHO, who),
            (AUTHENTICATED, self.authenticated.to_string()),
        ] {
            if let Ok(value) = value.parse() {
                headers.insert(key, value);
            }
        }
    }

    /// The caller apid wrote into a call's metadata.
    pub fn read(metadata: &MetadataMap) -> Result<Self, Status> {
        let get = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    Status::internal(format!("the call came without {key}: it did not pass apid"))
                })
        };
        Ok(AuthorizedCaller {
            roles: get(ROLES)?
                .split(',')
                .filter_map(|r| r.parse().ok())
                .collect(),
            who: get(WHO)?.to_string(),
            authenticated: get(AUTHENTICATED)? == "true",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_what_the_client_said() {
        let caller = AuthorizedCaller {
            roles: vec![Role::Reader, Role::Operator],
            who: "jöe@127.0.0.1:1".into(),
            authenticated: true,
        };
        let mut headers = HeaderMap::new();
        headers.insert(ROLES, "os:admin".parse().unwrap());
        headers.append(ROLES, "os:admin".parse().unwrap());
        caller.write(&mut headers);
        assert_eq!(headers.get_all(ROLES).iter().count(), 1);
        let read = AuthorizedCaller::read(&MetadataMap::from_headers(headers)).unwrap();
        assert_eq!(read.roles, caller.roles);
        assert_eq!(read.who, "j\\u{f6}e@127.0.0.1:1");
        assert!(read.authenticated && !read.sees_secrets());
        let missing = AuthorizedCaller::read(&MetadataMap::new()).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Internal);
    }
}
