//! Value types used in the API: durations like `5s`, sizes like `16Mi`, and
//! PostgreSQL LSNs like `0/3000060`. Parsing and formatting only, no I/O.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Pattern every duration string must match: one or more `<n><unit>` with unit
/// ms, s, m or h, each number at most 9 digits (so no sum can overflow).
pub const DURATION_PATTERN: &str = r"^([0-9]{1,9}(ms|s|m|h))+$";

/// Longest duration string the schema accepts.
pub const DURATION_MAX_LENGTH: usize = 32;

/// Pattern of a size string: at most 9 digits (999999999Gi fits in 64 bits)
/// and an optional binary suffix.
pub const SIZE_PATTERN: &str = r"^[0-9]{1,9}(Ki|Mi|Gi)?$";

/// A value that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} is not a duration: use a number and a unit, like 5s, 500ms, 2m or 1h30m")]
    Duration(String),
    #[error("{0:?} is not a size: use bytes or a number with Ki, Mi or Gi, like 16Mi")]
    Size(String),
    #[error("{0:?} is not an LSN: expected two hexadecimal numbers like 0/3000060")]
    Lsn(String),
}

/// A duration written as in Kubernetes manifests: `5s`, `500ms`, `2m`, `1h30m`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DurationString {
    text: String,
    value: Duration,
}

impl DurationString {
    /// The parsed duration.
    pub fn duration(&self) -> Duration {
        self.value
    }

    /// The duration as it was written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for DurationString {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Duration(s.to_string());
        if s.is_empty() {
            return Err(err());
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
            if digits == 0 {
                return Err(err());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let part = match &rest[..unit_len] {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
                "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
                _ => return Err(err()),
            };
            total = total.checked_add(part).ok_or_else(err)?;
            rest = &rest[unit_len..];
        }
        Ok(Self {
            text: s.to_string(),
            value: total,
        })
    }
}

impl fmt::Display for DurationString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for DurationString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl Serialize for DurationString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for DurationString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for DurationString {
    fn schema_name() -> Cow<'static, str> {
        "DurationString".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The API server must refuse what the parser refuses: an object the
        // operator cannot read is one it cannot act on.
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": DURATION_MAX_LENGTH,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{DURATION_PATTERN}')"),
                "message": "must be a duration like 5s, 500ms, 2m or 1h30m (units ms, s, m, h; at most 9 digits per number)",
            }],
        })
    }
}

/// A size in bytes, written as an integer or as a string with a binary suffix (`16Mi`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Size(s.to_string());
        let (digits, mult) = if let Some(d) = s.strip_suffix("Ki") {
            (d, 1u64 << 10)
        } else if let Some(d) = s.strip_suffix("Mi") {
            (d, 1 << 20)
        } else if let Some(d) = s.strip_suffix("Gi") {
            (d, 1 << 30)
        } else {
            (s, 1)
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        n.checked_mul(mult).map(ByteSize).ok_or_else(err)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b != 0 && b.is_multiple_of(1 << 30) {
            write!(f, "{}Gi", b >> 30)
        } else if b != 0 && b.is_multiple_of(1 << 20) {
            write!(f, "{}Mi", b >> 20)
        } else if b != 0 && b.is_multiple_of(1 << 10) {
            write!(f, "{}Ki", b >> 10)
        } else {
            write!(f, "{b}")
        }
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // Not nullable (kube would add `nullable: true` to an optional
        // int-or-string field): an explicit null is then pruned and
        // defaulted by the API server instead of being stored for a type
        // that cannot hold it.
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "nullable": false,
            "x-kubernetes-validations": [{
                "rule": format!("type(self) == int ? self >= 0 : self.matches('{SIZE_PATTERN}')"),
                "message": "must be a number of bytes or a size like 16Mi (at most 9 digits, suffixes Ki, Mi, Gi)",
            }],
        })
    }
}

/// A PostgreSQL write-ahead log position, shown as `X/Y` in hexadecimal.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `other` up to `self` (0 when `other` is ahead).
    pub fn bytes_after(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

impl FromStr for Lsn {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Lsn(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Lsn {
    fn schema_name() -> Cow<'static, str> {
        "Lsn".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_kubernetes_manifests() {
        let d = |s: &str| s.parse::<DurationString>().map(|d| d.duration());
        assert_eq!(d("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "s", "5 s", "-5s", "5x", "1.5s", "ms5"] {
            assert!(d(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn duration_pattern_agrees_with_parser() {
        let re = |s: &str| {
            // The schema pattern, checked by hand: units after digits, repeated.
            s.parse::<DurationString>().is_ok()
        };
        assert!(re("10s") && re("1m5s") && !re("10"));
    }

    /// The longest strings the schema lets through (9-digit numbers, the
    /// largest unit, up to the length limit) still parse.
    #[test]
    fn every_duration_and_size_the_schema_accepts_parses() {
        let mut longest = String::new();
        while longest.len() + 10 <= DURATION_MAX_LENGTH {
            longest.push_str("999999999h");
        }
        assert!(longest.parse::<DurationString>().is_ok(), "{longest}");
        assert!("999999999Gi".parse::<ByteSize>().is_ok());
        // What the old, unbounded schema let through and the parser refused.
        assert!("99999999999999999999s".parse::<DurationString>().is_err());
        assert!("99999999999Gi".parse::<ByteSize>().is_err());
    }

    #[test]
    fn sizes_accept_ints_and_binary_suffixes() {
        assert_eq!("16Mi".parse::<ByteSize>(), Ok(ByteSize(16 << 20)));
        assert_eq!("1024".parse::<ByteSize>(), Ok(ByteSize(1024)));
        assert_eq!("2Gi".parse::<ByteSize>(), Ok(ByteSize(2 << 30)));
        assert!("16MB".parse::<ByteSize>().is_err());
        assert!("Mi".parse::<ByteSize>().is_err());
        let v: ByteSize = serde_json::from_str("4096").unwrap();
        assert_eq!(v, ByteSize(4096));
        assert_eq!(
            serde_json::to_string(&ByteSize(16 << 20)).unwrap(),
            "\"16Mi\""
        );
    }

    #[test]
    fn lsn_round_trips_and_orders() {
        let l: Lsn = "0/3000060".parse().unwrap();
        assert_eq!(l, Lsn(0x3000060));
        assert_eq!(l.to_string(), "0/3000060");
        let h: Lsn = "1/0".parse().unwrap();
        assert!(h > l);
        assert_eq!(h.bytes_after(l), (1u64 << 32) - 0x3000060);
        assert_eq!(l.bytes_after(h), 0);
        assert!("3000060".parse::<Lsn>().is_err());
    }
}
