//! Parsers of the kernel's text files (/proc, /dev/kmsg). Pure functions over text: they
//! never panic, whatever the kernel (or a fuzzer) hands them, and return `None` for a
//! record they cannot make sense of.

use std::collections::BTreeMap;

/// The fields of `/proc/[pid]/stat` that the API reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub pid: i32,
    /// The short command name (`comm`), which may hold spaces and parentheses.
    pub comm: String,
    pub state: String,
    pub ppid: i32,
    /// User and system time, in clock ticks.
    pub utime: u64,
    pub stime: u64,
    pub threads: i32,
    /// Bytes.
    pub vsize: u64,
    /// Pages.
    pub rss: u64,
}

/// Parses `/proc/[pid]/stat`: `pid (comm) state ppid ...`. The command name ends at the
/// last `)`, since it may contain `)` itself.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    // Fields after the name, counted from `state` (field 3 in proc(5)) as index 0.
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| rest.get(n).copied();
    let number = |n: usize| field(n)?.parse::<u64>().ok();
    Some(ProcStat {
        pid,
        comm,
        state: field(0)?.to_string(),
        ppid: field(1)?.parse().ok()?,
        utime: number(11)?,
        stime: number(12)?,
        threads: field(17)?.parse().ok()?,
        vsize: number(20)?,
        // rss is signed in the kernel's format; a negative value means none.
        rss: field(21)?.parse::<i64>().ok()?.max(0).unsigned_abs(),
    })
}

/// `/proc/[pid]/cmdline`: arguments separated (and ended) by NUL, joined with spaces.
pub(crate) fn parse_cmdline(raw: &[u8]) -> String {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `/proc/meminfo` as bytes per field. Lines are `Name:   123 kB` (or without a unit, as
/// for `HugePages_Total`); lines that do not fit are skipped.
pub(crate) fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let mut parts = value.split_whitespace();
            let number: u64 = parts.next()?.parse().ok()?;
            let bytes = match parts.next() {
                None => number,
                Some("kB") => number.checked_mul(1024)?,
                Some(_) => return None,
            };
            Some((name.trim().to_string(), bytes))
        })
        .collect()
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountInfo {
    pub source: String,
    pub target: String,
    pub filesystem: String,
    pub options: String,
}

/// Parses `id parent maj:min root target options [optional...] - fstype source super`.
/// The optional fields end at a lone `-`.
pub(crate) fn parse_mountinfo_line(line: &str) -> Option<MountInfo> {
    let mut fields = line.split(' ');
    let target = fields.nth(4)?;
    let options = fields.next()?;
    fields.find(|f| *f == "-")?;
    let filesystem = fields.next()?;
    let source = fields.next()?;
    if target.is_empty() || filesystem.is_empty() {
        return None;
    }
    Some(MountInfo {
        source: unescape_octal(source),
        target: unescape_octal(target),
        filesystem: unescape_octal(filesystem),
        options: options.to_string(),
    })
}

/// Undoes the kernel's `\ooo` escapes of space, tab, newline and backslash in mount
/// fields. Anything that is not a valid escape is kept as it is.
pub(crate) fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                d.iter()
                    .try_fold(0u32, |acc, c| Some(acc * 8 + u32::from(c - b'0')))
            })
            .and_then(|v| u8::try_from(v).ok());
        match escaped {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One record of `/dev/kmsg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KmsgRecord {
    pub seq: u64,
    pub timestamp_us: u64,
    pub message: String,
}

impl KmsgRecord {
    /// The line as `dmesg` prints it: `[   12.345678] message\n`.
    pub fn line(&self) -> String {
        format!(
            "[{:5}.{:06}] {}\n",
            self.timestamp_us / 1_000_000,
            self.timestamp_us % 1_000_000,
            self.message
        )
    }
}

/// Parses one record, `prio,seq,ts_usec,flags[,...];message\n`, followed by continuation
/// lines (` KEY=value`) that are dropped: they are metadata, not log text.
pub(crate) fn parse_kmsg_record(record: &str) -> Option<KmsgRecord> {
    let (header, body) = record.split_once(';')?;
    let mut fields = header.split(',');
    let _priority: u32 = fields.next()?.trim().parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let timestamp_us = fields.next()?.parse().ok()?;
    let message = body.split('\n').next().unwrap_or_default();
    Some(KmsgRecord {
        seq,
        timestamp_us,
        message: message.to_string(),
    })
}

/// One line of `/proc/net/{tcp,tcp6,udp,udp6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetSocket {
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    /// The kernel's state number (`TCP_ESTABLISHED` = 1 ... `TCP_NEW_SYN_RECV` = 12).
    pub state: u8,
    pub tx_queue: u32,
    pub rx_queue: u32,
    pub uid: u32,
    pub inode: u64,
}

/// The kernel's name of a socket state number (include/net/tcp_states.h).
pub(crate) fn socket_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// `ADDR:PORT` as /proc/net shows it: the address as 32-bit words in hex, each in the
/// machine's byte order (one word for IPv4, four for IPv6), the port in hex.
fn parse_net_address(text: &str) -> Option<std::net::SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = address.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match address.len() {
        8 => std::net::IpAddr::from(word(0)?),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            std::net::IpAddr::from(bytes)
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

/// Parses a socket line of `/proc/net/tcp` (and tcp6, udp, udp6): `sl local remote st
/// tx:rx tr:when retrnsmt uid timeout inode ...`. The header line gives `None`.
pub(crate) fn parse_net_line(line: &str) -> Option<NetSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let field = |n: usize| fields.get(n).copied();
    let (tx, rx) = field(4)?.split_once(':')?;
    Some(NetSocket {
        local: parse_net_address(field(1)?)?,
        remote: parse_net_address(field(2)?)?,
        state: u8::from_str_radix(field(3)?, 16).ok()?,
        tx_queue: u32::from_str_radix(tx, 16).ok()?,
        rx_queue: u32::from_str_radix(rx, 16).ok()?,
        uid: field(7)?.parse().ok()?,
        inode: field(9)?.parse().ok()?,
    })
}

/// The inode of a `/proc/[pid]/fd/N` link target `socket:[INODE]`.
pub(crate) fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    proptest::proptest! {
        /// Whatever the kernel or a fuzzer hands them, the parsers return, never panic.
        #[test]
        fn parsers_never_panic(
            text in "\\PC{0,200}",
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let _ = parse_stat(&text);
            let _ = parse_meminfo(&text);
            let _ = parse_mountinfo_line(&text);
            let _ = unescape_octal(&text);
            let _ = parse_kmsg_record(&text).map(|r| r.line());
            let _ = parse_cmdline(&bytes);
        }

        /// Lines shaped like the real ones, with arbitrary fields, still never panic.
        #[test]
        fn shaped_lines_never_panic(
            fields in proptest::collection::vec("[0-9a-z()\\\\ ,;:-]{0,12}", 0..30),
        ) {
            let line = fields.join(" ");
            let _ = parse_stat(&line);
            let _ = parse_mountinfo_line(&line);
            let _ = unescape_octal(&line);
            let _ = parse_kmsg_record(&fields.join(","));
        }
    }

    #[test]
    fn stat_with_a_tricky_command_name() {
        let text = "1234 (my) (proc 1) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 12345678 42 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.pid, 1234);
        assert_eq!(stat.comm, "my) (proc 1");
        assert_eq!(stat.state, "S");
        assert_eq!(stat.ppid, 1);
        assert_eq!((stat.utime, stat.stime), (250, 50));
        assert_eq!(stat.threads, 3);
        assert_eq!(stat.vsize, 12345678);
        assert_eq!(stat.rss, 42);
    }

    #[test]
    fn malformed_stat_is_none() {
        for text in [
            "",
            "1234",
            "1234 (x",
            "x) 1234 (",
            "1234 (x) S 1",
            "abc (x) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 1 1 1",
            "1234 (x) S one 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 1 1 1",
            "\u{0}(\u{0})\u{0}",
        ] {
            assert_eq!(parse_stat(text), None, "{text:?}");
        }
    }

    #[test]
    fn cmdline_joins_arguments() {
        assert_eq!(parse_cmdline(b"sh\0-c\0echo hi\0"), "sh -c echo hi");
        assert_eq!(parse_cmdline(b""), "");
        assert_eq!(parse_cmdline(b"\0\0\xff"), "\u{fffd}");
    }

    #[test]
    fn meminfo_in_bytes() {
        let info = parse_meminfo(
            "MemTotal:       24578044 kB\nMemFree: 10 kB\nHugePages_Total:       0\nBad line\nOdd: 1 MB\nHuge: 18446744073709551615 kB\n:\n",
        );
        assert_eq!(info.get("MemTotal"), Some(&(24578044 * 1024)));
        assert_eq!(info.get("MemFree"), Some(&10240));
        assert_eq!(info.get("HugePages_Total"), Some(&0));
        assert_eq!(info.len(), 3, "{info:?}");
    }

    #[test]
    fn mountinfo_lines() {
        let m = parse_mountinfo_line(
            "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 shared:2 - ext4 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!(m.target, "/mnt/with space");
        assert_eq!(m.source, "/dev/root");
        assert_eq!(m.filesystem, "ext4");
        assert_eq!(m.options, "rw,noatime");
        let root = parse_mountinfo_line("1 0 8:1 / / rw - xfs /dev/sda1 rw").unwrap();
        assert_eq!(root.target, "/");
        for bad in [
            "",
            "1 0 8:1 / / rw",
            "1 0 8:1 / / rw -",
            "1 2 3",
            "- - - - - -",
        ] {
            assert_eq!(parse_mountinfo_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape_octal(r"a\040b\011c\134d\012"), "a b\tc\\d\n");
        assert_eq!(unescape_octal(r"\"), "\\");
        assert_eq!(unescape_octal(r"\04"), "\\04");
        assert_eq!(unescape_octal(r"\089"), "\\089");
        assert_eq!(unescape_octal(r"\777"), "\\777");
        assert_eq!(unescape_octal("é\\040"), "é ");
    }

    #[test]
    fn kmsg_records() {
        let r = parse_kmsg_record(
            "6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n DEVICE=+net:lo\n",
        )
        .unwrap();
        assert_eq!(r.seq, 339);
        assert_eq!(
            r.line(),
            "[    5.140900] NET: Registered protocol family 10\n"
        );
        let r = parse_kmsg_record("4,1,0,c,extra;a;b").unwrap();
        assert_eq!(r.message, "a;b");
        assert_eq!(r.line(), "[    0.000000] a;b\n");
        for bad in ["", ";", "6,1;x", "x,1,2,-;m", "6,1,two,-;m", "6,1,2,-"] {
            assert_eq!(parse_kmsg_record(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn proc_net_lines() {
        // 127.0.0.1:8080 listening, as a little-endian machine writes it.
        let word = |ip: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(ip));
        let line = format!(
            "   0: {}:1F90 00000000:0000 0A 00000002:00000003 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0",
            word([127, 0, 0, 1])
        );
        let s = parse_net_line(&line).unwrap();
        assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.remote, "0.0.0.0:0".parse().unwrap());
        assert_eq!(socket_state_name(s.state), "LISTEN");
        assert_eq!((s.tx_queue, s.rx_queue, s.uid, s.inode), (2, 3, 1000, 4242));
        // ::1 port 443, established.
        let v6 = format!(
            "{}{}{}{}",
            word([0; 4]),
            word([0; 4]),
            word([0; 4]),
            word([0, 0, 0, 1])
        );
        let line = format!(
            "   1: {v6}:01BB {v6}:D431 01 00000000:00000000 00:00000000 00000000     0        0 99 1"
        );
        let s = parse_net_line(&line).unwrap();
        assert_eq!(s.local, "[::1]:443".parse().unwrap());
        assert_eq!(s.remote, "[::1]:54321".parse().unwrap());
        assert_eq!(socket_state_name(s.state), "ESTABLISHED");
        for bad in [
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
            "",
            "0: 0100007F:1F90",
            "0: 0100007F:ZZZZ 00000000:0000 0A 0:0 00:0 0 0 0 1",
            "0: 00007F:1F90 00000000:0000 0A 0:0 00:0 0 0 0 1",
            "0: 0100007F:1F90 00000000:0000 0A 00000000 00:0 0 0 0 1",
        ] {
            assert_eq!(parse_net_line(bad), None, "{bad:?}");
        }
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }
}
