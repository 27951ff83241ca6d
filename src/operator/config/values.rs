//! Value types of `shipjar.toml` with their own syntax: durations, sizes,
//! batch sizes and service names.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::protocol::validate_service_name;

/// A validated service name: `[a-z][a-z0-9-]*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName(pub String);

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        validate_service_name(&name).map_err(de::Error::custom)?;
        Ok(ServiceName(name))
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A duration written like `90s`, `1m 30s` or `500ms`, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Millis(pub u64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let duration = humantime::parse_duration(&text).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration `{text}` ({e}): expected e.g. \"90s\", \"1m 30s\", \"500ms\""
            ))
        })?;
        Ok(Millis(duration.as_millis().min(u64::MAX as u128) as u64))
    }
}

/// `rolling.pause`: how long a canary is watched before the rest of the
/// stage, or `"confirm"`: the deploy stops until `deploy --continue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// Watch the canary this long, then go on.
    For(Millis),
    /// Stop after the canary; `deploy --continue` or `--abort` decides.
    Confirm,
}

impl<'de> Deserialize<'de> for Pause {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "confirm" {
            return Ok(Pause::Confirm);
        }
        let duration = humantime::parse_duration(&text).map_err(|e| {
            de::Error::custom(format!(
                "invalid pause `{text}` ({e}): expected a duration such as \"10m\" or \"confirm\""
            ))
        })?;
        Ok(Pause::For(Millis(
            duration.as_millis().min(u64::MAX as u128) as u64,
        )))
    }
}

/// A size written like `"10MiB"`, `"500KB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl Bytes {
    /// Parses `10MiB`, `10 MB`, `4096`: KiB/MiB/GiB are powers of 1024, KB/MB/GB of 1000.
    pub fn parse(text: &str) -> Result<Bytes, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let bad = || {
            format!(
                "invalid size `{text}`: expected e.g. \"10MiB\", \"500KB\" or a number of bytes"
            )
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(factor).map(Bytes).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Accepts a string with a unit or a plain non-negative integer.
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"10MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Bytes, E> {
                Ok(Bytes(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Bytes, E> {
                u64::try_from(n)
                    .map(Bytes)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Bytes, E> {
                Bytes::parse(text).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A batch size: a number of hosts or a percentage of the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    /// This many hosts.
    Hosts(usize),
    /// This percentage of the stage's hosts (rounded up, at least one).
    Percent(u8),
}

impl Default for BatchSize {
    fn default() -> Self {
        BatchSize::Percent(super::defaults::ROLLING_BATCH_PERCENT)
    }
}

impl BatchSize {
    /// Hosts per batch for a stage of `total` hosts.
    pub fn hosts(self, total: usize) -> usize {
        let n = match self {
            BatchSize::Hosts(n) => n,
            BatchSize::Percent(p) => (total * usize::from(p)).div_ceil(100),
        };
        n.clamp(1, total.max(1))
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Accepts a positive integer or a string `N%`.
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = BatchSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of hosts (e.g. 2) or a percentage (e.g. \"25%\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BatchSize, E> {
                usize::try_from(v)
                    .ok()
                    .filter(|n| *n > 0)
                    .map(BatchSize::Hosts)
                    .ok_or_else(|| E::custom("a batch needs at least one host"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BatchSize, E> {
                v.strip_suffix('%')
                    .and_then(|p| p.trim().parse::<u8>().ok())
                    .filter(|p| (1..=100).contains(p))
                    .map(BatchSize::Percent)
                    .ok_or_else(|| {
                        E::custom(format!(
                            "invalid batch `{v}`: expected e.g. 2 or \"25%\" (1% to 100%)"
                        ))
                    })
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(Bytes::parse("2 MB"), Ok(Bytes(2_000_000)));
        assert_eq!(Bytes::parse("0"), Ok(Bytes(0)));
        assert_eq!(Bytes::parse("512KiB"), Ok(Bytes(512 * 1024)));
        assert!(Bytes::parse("lots").is_err());
    }

    #[test]
    fn a_pause_is_a_duration_or_confirm() {
        let parse =
            |t: &str| Pause::deserialize(de::value::StrDeserializer::<de::value::Error>::new(t));
        assert_eq!(parse("confirm"), Ok(Pause::Confirm));
        assert_eq!(parse("10m"), Ok(Pause::For(Millis(600_000))));
        assert!(
            parse("later")
                .unwrap_err()
                .to_string()
                .contains("\"confirm\"")
        );
    }

    #[test]
    fn batch_sizes_round_up_and_stay_within_the_stage() {
        assert_eq!(BatchSize::Percent(25).hosts(5), 2);
        assert_eq!(BatchSize::Hosts(10).hosts(3), 3);
        assert_eq!(BatchSize::Percent(100).hosts(30), 30);
    }
}
