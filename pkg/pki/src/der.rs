//! The few DER encodings a leaf certificate needs.
//!
//! rcgen keeps a subject as a map from attribute type to one value, so it cannot write a
//! subject with several Organization values (rcgen issue #81) — and a client certificate
//! carries one O per role. Leaf certificates are therefore encoded here; the encodings
//! are checked by parsing the results with x509-parser and with `openssl`.

use time::OffsetDateTime;

const TAG_BOOLEAN: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;

/// One tag-length-value.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        // Short form: `len` fits in seven bits.
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = &bytes[skip..];
        // Long form: at most size_of::<usize>() (8) length bytes, so this fits.
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

pub(crate) fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(TAG_SEQUENCE, &parts.concat())
}

pub(crate) fn set(parts: &[&[u8]]) -> Vec<u8> {
    tlv(TAG_SET, &parts.concat())
}

/// An OID from the content bytes of its encoding (as `oid_registry::Oid::as_bytes`).
pub(crate) fn oid(encoded: &[u8]) -> Vec<u8> {
    tlv(TAG_OID, encoded)
}

pub(crate) fn boolean(value: bool) -> Vec<u8> {
    tlv(TAG_BOOLEAN, &[if value { 0xff } else { 0x00 }])
}

pub(crate) fn small_integer(value: u8) -> Vec<u8> {
    unsigned_integer(&[value])
}

/// A non-negative INTEGER from big-endian magnitude bytes, in minimal form.
pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let significant = &magnitude[skip..];
    let mut content = Vec::with_capacity(significant.len() + 1);
    // A leading bit of 1 would make the number negative.
    if significant.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(significant);
    tlv(TAG_INTEGER, &content)
}

pub(crate) fn octet_string(content: &[u8]) -> Vec<u8> {
    tlv(TAG_OCTET_STRING, content)
}

/// A BIT STRING of whole bytes.
pub(crate) fn bit_string(content: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(content.len() + 1);
    bytes.push(0); // no unused bits
    bytes.extend_from_slice(content);
    tlv(TAG_BIT_STRING, &bytes)
}

/// A named-bit BIT STRING (KeyUsage) with bits numbered from the most significant bit
/// of the first byte; DER drops trailing zero bits.
pub(crate) fn named_bits(bits: &[u8]) -> Vec<u8> {
    let Some(&highest) = bits.iter().max() else {
        return tlv(TAG_BIT_STRING, &[0]);
    };
    let len = usize::from(highest / 8) + 1;
    let mut bytes = vec![0u8; len];
    for &bit in bits {
        bytes[usize::from(bit / 8)] |= 0x80 >> (bit % 8);
    }
    let unused = 7 - (highest % 8);
    let mut content = Vec::with_capacity(len + 1);
    content.push(unused);
    content.extend_from_slice(&bytes);
    tlv(TAG_BIT_STRING, &content)
}

pub(crate) fn utf8_string(value: &str) -> Vec<u8> {
    tlv(TAG_UTF8_STRING, value.as_bytes())
}

/// A certificate time: UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280
/// 4.1.2.5), in whole seconds, UTC.
pub(crate) fn time(at: OffsetDateTime) -> Vec<u8> {
    let at = at.to_offset(time::UtcOffset::UTC);
    let (year, rest) = (
        at.year(),
        format!(
            "{:02}{:02}{:02}{:02}{:02}Z",
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
    );
    if (1950..2050).contains(&year) {
        tlv(
            TAG_UTC_TIME,
            format!("{:02}{rest}", year.rem_euclid(100)).as_bytes(),
        )
    } else {
        tlv(TAG_GENERALIZED_TIME, format!("{year:04}{rest}").as_bytes())
    }
}

/// `[n]` EXPLICIT: a constructed context-specific tag around a whole encoding.
pub(crate) fn explicit(n: u8, inner: &[u8]) -> Vec<u8> {
    tlv(0xa0 | n, inner)
}

/// `[n]` IMPLICIT on a primitive value: the context-specific tag replaces the value's own.
pub(crate) fn implicit_primitive(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0x80 | n, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(tlv(0x04, &[]), [0x04, 0x00]);
        assert_eq!(&tlv(0x04, &[7; 0x7f])[..2], [0x04, 0x7f]);
        assert_eq!(&tlv(0x04, &[7; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(&tlv(0x04, &[7; 0x1234])[..4], [0x04, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(unsigned_integer(&[]), [0x02, 0x01, 0x00]);
        assert_eq!(unsigned_integer(&[0, 0, 5]), [0x02, 0x01, 0x05]);
        assert_eq!(unsigned_integer(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(small_integer(2), [0x02, 0x01, 0x02]);
    }

    #[test]
    fn key_usage_bits() {
        // digitalSignature (0) alone: one byte, seven unused bits.
        assert_eq!(named_bits(&[0]), [0x03, 0x02, 0x07, 0x80]);
        // keyCertSign (5) + cRLSign (6).
        assert_eq!(named_bits(&[5, 6]), [0x03, 0x02, 0x01, 0x06]);
        // decipherOnly (8) spills into a second byte.
        assert_eq!(named_bits(&[0, 8]), [0x03, 0x03, 0x07, 0x80, 0x80]);
    }

    #[test]
    fn times() {
        let at = |y, m, d| {
            time::Date::from_calendar_date(y, m, d)
                .unwrap()
                .with_hms_milli(4, 5, 6, 789)
                .unwrap()
                .assume_utc()
        };
        let t = at(2031, time::Month::February, 3);
        assert_eq!(time(t), tlv(TAG_UTC_TIME, b"310203040506Z"));
        let t = at(2050, time::Month::January, 1);
        assert_eq!(time(t), tlv(TAG_GENERALIZED_TIME, b"20500101040506Z"));
    }
}
