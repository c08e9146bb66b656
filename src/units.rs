//! Human-readable durations (`500ms`, `5s`, `10m`, `24h`, `7d`) and sizes
//! (`4096`, `64KiB`, `16MiB`, `2GiB`, `1GB`) for flags and `config.toml`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// A byte count, optionally written with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// A value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

const DURATION_UNITS: [(&str, u64); 5] = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)];

impl FromStr for HumanDuration {
    type Err = UnitError;

    /// ```
    /// use std::time::Duration;
    /// use hearth::units::HumanDuration;
    /// assert_eq!("1500ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(1500));
    /// assert_eq!("10m".parse::<HumanDuration>().unwrap().0, Duration::from_secs(600));
    /// assert!("10".parse::<HumanDuration>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            UnitError(format!(
                "invalid duration {s:?}: expected a whole number and a unit, like 500ms, 5s, 10m, 24h or 7d"
            ))
        })?;
        let per = DURATION_UNITS
            .iter()
            .find(|(u, _)| *u == unit.trim())
            .map(|(_, ms)| *ms)
            .ok_or_else(|| UnitError(format!("invalid duration {s:?}: the unit must be one of ms, s, m, h, d")))?;
        let ms = n.checked_mul(per).ok_or_else(|| UnitError(format!("duration {s:?} is too large")))?;
        Ok(HumanDuration(Duration::from_millis(ms)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis() as u64;
        if ms == 0 {
            return f.write_str("0s");
        }
        let (unit, per) = DURATION_UNITS.iter().find(|(_, per)| ms.is_multiple_of(*per)).copied().unwrap_or(("ms", 1));
        write!(f, "{}{unit}", ms / per)
    }
}

const SIZE_UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1000),
    ("B", 1),
];

impl FromStr for ByteSize {
    type Err = UnitError;

    /// ```
    /// use hearth::units::ByteSize;
    /// assert_eq!("16MiB".parse::<ByteSize>().unwrap().0, 16 << 20);
    /// assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
    /// assert_eq!("1GB".parse::<ByteSize>().unwrap().0, 1_000_000_000);
    /// ```
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            UnitError(format!("invalid size {s:?}: expected a whole number of bytes, optionally with a unit (KiB, MiB, GiB, TiB, KB, MB, GB, TB)"))
        })?;
        let unit = unit.trim();
        let per = if unit.is_empty() {
            1
        } else {
            SIZE_UNITS
                .iter()
                .find(|(u, _)| u.eq_ignore_ascii_case(unit))
                .map(|(_, b)| *b)
                .ok_or_else(|| UnitError(format!("invalid size {s:?}: unknown unit {unit:?}")))?
        };
        n.checked_mul(per).map(ByteSize).ok_or_else(|| UnitError(format!("size {s:?} is too large")))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n == 0 {
            return f.write_str("0");
        }
        match SIZE_UNITS[..4].iter().find(|(_, per)| n.is_multiple_of(*per)) {
            Some((unit, per)) => write!(f, "{}{unit}", n / per),
            None => write!(f, "{n}"),
        }
    }
}

impl ByteSize {
    /// The size as `usize`, saturating.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_roundtrips() {
        for s in ["0s", "1ms", "1500ms", "5s", "90s", "10m", "25h", "1d", "7d"] {
            let d: HumanDuration = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        for s in ["0", "4095", "1000", "16MiB", "4KiB", "1GiB"] {
            let b: ByteSize = s.parse().unwrap();
            assert_eq!(b.to_string(), s);
        }
        assert_eq!("1 kib".parse::<ByteSize>().unwrap().0, 1024);
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "s", "5", "5x", "-5s", "1.5s", "99999999999999999999d"] {
            assert!(s.parse::<HumanDuration>().is_err(), "{s}");
        }
        for s in ["", "MiB", "5QB", "-1", "99999999999TiB"] {
            assert!(s.parse::<ByteSize>().is_err(), "{s}");
        }
    }
}
