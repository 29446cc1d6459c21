//! The one HTTP exchange the health check needs: `GET /readyz` and the status line of
//! the answer. Hand-written because a whole client stack for one line is not worth it;
//! whatever the server sends, parsing ends in a status or an error, never a panic.

/// The longest status line accepted; kube-apiserver's is about 20 bytes.
pub const MAX_STATUS_LINE: usize = 1024;

/// The request for `path` on `host` (the connection is closed after the answer).
pub fn request(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: basalt-kubeprism\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Parses the status code from the start of a response. `Ok(None)`: more bytes needed.
pub fn parse_status(buf: &[u8]) -> Result<Option<u16>, &'static str> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_STATUS_LINE {
            Err("status line too long")
        } else {
            Ok(None)
        };
    };
    if end >= MAX_STATUS_LINE {
        return Err("status line too long");
    }
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let version = parts.next().unwrap_or_default();
    if !matches!(version, b"HTTP/1.1" | b"HTTP/1.0") {
        return Err("not an HTTP/1.x status line");
    }
    match parts.next() {
        Some(code) if code.len() == 3 && code.iter().all(u8::is_ascii_digit) => Ok(Some(
            code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')),
        )),
        _ => Err("bad status code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Ok(Some(200)));
        assert_eq!(parse_status(b"HTTP/1.0 503\r\nx: y"), Ok(Some(503)));
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), Ok(None));
        assert_eq!(parse_status(b""), Ok(None));
        assert!(parse_status(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status(b"HTTP/1.1 2000 OK\r\n").is_err());
        assert!(parse_status(b"HTTP/1.1 +20 OK\r\n").is_err());
        assert!(parse_status(&[b'x'; MAX_STATUS_LINE]).is_err());
        let mut long = b"HTTP/1.1 200 ".to_vec();
        long.extend([b'k'; MAX_STATUS_LINE]);
        long.push(b'\n');
        assert!(parse_status(&long).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_status(&bytes);
        }
    }
}
