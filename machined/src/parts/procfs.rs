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
}
