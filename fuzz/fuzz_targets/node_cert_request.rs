#![no_main]
//! trustd signs certificate requests from the network (`sign_node_request`): whatever
//! arrives is refused with an error or signed for the names it asks, never a panic.

use std::sync::OnceLock;
use std::time::Duration;

use basalt_pki::{sign_node_request, CertAndKey, NodeCertRequest, SecretsBundle};
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static CertAndKey {
    static CA: OnceLock<CertAndKey> = OnceLock::new();
    CA.get_or_init(|| SecretsBundle::generate().expect("a bundle").certs.os)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The two requests, split at the first NUL; the first also stands alone.
    let (server, peer) = text.split_once('\0').unwrap_or((text, text));
    let request = NodeCertRequest {
        server_csr: server.to_string(),
        peer_csr: peer.to_string(),
    };
    if let Ok(signed) = sign_node_request(ca(), &request, Duration::from_secs(60)) {
        basalt_pki::verify(&signed.server_crt, &ca().crt, time::OffsetDateTime::now_utc())
            .expect("what trustd signs chains to its CA");
    }
});
