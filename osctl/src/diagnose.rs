//! What went wrong reaching a node, said so that the user knows what to do: nothing
//! listening, no answer in time, a certificate refused (by which side, and why), the
//! node wanting a client certificate, this client's own certificate expired. Permission
//! denied needs nothing here: the node's answer names the roles the call needs and the
//! caller's.

use std::io;

use rustls::CertificateError;

/// A sentence for the failure behind `error` (anywhere in its chain of causes), if it is
/// one of the kinds told apart here.
pub fn explain(error: &anyhow::Error, endpoint: &str) -> Option<String> {
    error.chain().find_map(|cause| problem(cause, endpoint))
}

/// As [`explain`], for a library error and its sources.
pub fn explain_std(error: &(dyn std::error::Error + 'static), endpoint: &str) -> Option<String> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|cause| problem(cause, endpoint))
}

/// Whether the node closed the connection under a call (with TLS 1.3 a server refuses a
/// client certificate after the client has finished its handshake: the client then sees
/// only a closed connection, never the alert). Depending on when the close lands, it
/// reaches us as an I/O error on a write or a read, or as hyper's "connection closed"
/// for a request that was never answered.
pub fn closed_by_peer(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let io_closed = cause.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::UnexpectedEof
            )
        });
        let http_closed = cause.downcast_ref::<hyper::Error>().is_some_and(|http| {
            http.is_canceled() || http.is_closed() || http.is_incomplete_message()
        });
        io_closed || http_closed
    })
}

/// What is wrong with this context's own client certificate on this machine's clock, if
/// anything: a node refuses one that expired or is not valid yet, and with TLS 1.3 the
/// client learns only that the connection closed, so the reason is found here.
pub fn client_certificate_problem(crt_pem: &str, now: time::OffsetDateTime) -> Option<String> {
    let info = basalt_pki::inspect(crt_pem).ok()?;
    let date = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    if now > info.not_after {
        Some(format!(
            "this context's client certificate expired on {} (a new osconfig comes from \
             `osctl gen config` with the cluster's secrets)",
            date(info.not_after)
        ))
    } else if now < info.not_before {
        Some(format!(
            "this context's client certificate is not valid before {}: check this \
             machine's clock",
            date(info.not_before)
        ))
    } else {
        None
    }
}

fn problem(cause: &(dyn std::error::Error + 'static), endpoint: &str) -> Option<String> {
    if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
        return tls_problem(tls, endpoint);
    }
    let io = cause.downcast_ref::<io::Error>()?;
    // tokio-rustls hands TLS failures over as I/O errors wrapping them.
    if let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        return tls_problem(tls, endpoint);
    }
    // An alert read after the handshake reaches us as text only.
    let text = io.to_string();
    if let Some(alert) = text.strip_prefix("received fatal alert: ") {
        return alert_problem(alert, endpoint);
    }
    match io.kind() {
        io::ErrorKind::ConnectionRefused => Some(format!(
            "nothing listens at {endpoint}: is the node up, and is this its address and port \
             (the Machine API's is 50000)?"
        )),
        io::ErrorKind::TimedOut => Some(format!(
            "no answer from {endpoint} in time: the node is down or unreachable from here, \
             or something drops the traffic"
        )),
        _ => None,
    }
}

fn tls_problem(error: &rustls::Error, endpoint: &str) -> Option<String> {
    Some(match error {
        rustls::Error::InvalidCertificate(problem) => match problem {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the certificate of {endpoint} is not signed by this context's CA: it is \
                 another cluster's node, or this is the wrong context (osctl config info)"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                "the certificate of {endpoint} has expired: check the node's clock and \
                 this machine's"
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!(
                    "the certificate of {endpoint} is not valid yet: check the node's clock \
                     and this machine's"
                )
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the certificate of {endpoint} does not name it: use a name or address \
                     the node's certificate carries (its hostname, addresses, certSans)"
                )
            }
            other => format!("the certificate of {endpoint} is refused: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => {
            return alert_problem(&format!("{alert:?}"), endpoint)
        }
        _ => return None,
    })
}

/// The node's TLS alert (by rustls's name for it), if it says why it refused us.
fn alert_problem(alert: &str, endpoint: &str) -> Option<String> {
    Some(match alert {
        "CertificateRequired" => format!(
            "{endpoint} needs a client certificate: the node is configured (drop \
             --insecure, or use a context that has one)"
        ),
        "CertificateExpired" => format!(
            "{endpoint} refused this client certificate: it has expired (a new osconfig \
             comes from `osctl gen config` with the cluster's secrets)"
        ),
        "BadCertificate" | "UnknownCA" | "DecryptError" => format!(
            "{endpoint} refused this client certificate: it is not signed by the node's CA \
             (another cluster's osconfig?)"
        ),
        _ => return None,
    })
}
