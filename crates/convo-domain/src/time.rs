//! Instants and durations as the domain sees them.
//!
//! The domain never reads a clock: every instant arrives with a command. An
//! instant is whole milliseconds since the Unix epoch in UTC; its JSON view is
//! RFC 3339 and its compact (postcard) view is the integer.

use std::fmt;

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text is not an instant a client may write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("{0}")]
    Format(chrono::ParseError),
    #[error("the year is {YEAR_MIN} to {YEAR_MAX}, not {0}")]
    Year(i32),
}

/// An instant, in milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

/// Milliseconds in one second.
pub const MS_PER_SEC: i64 = 1_000;
/// The first year an instant or a date written by a client may fall in.
pub const YEAR_MIN: i32 = 1970;
/// The last year an instant or a date written by a client may fall in.
pub const YEAR_MAX: i32 = 9999;

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn millis(self) -> i64 {
        self.0
    }

    /// This instant plus whole seconds (saturating).
    pub const fn plus_secs(self, secs: u64) -> Self {
        let add = if secs > (i64::MAX / MS_PER_SEC) as u64 { i64::MAX } else { secs as i64 * MS_PER_SEC };
        Self(self.0.saturating_add(add))
    }

    /// Whole seconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn secs_since(self, earlier: Timestamp) -> u64 {
        (self.0.saturating_sub(earlier.0).max(0) / MS_PER_SEC) as u64
    }

    /// Seconds from `earlier` to `self` rounded up to the whole second, 0 if
    /// `earlier` is later (how reports count handle times, as response times
    /// are counted: a handle time never reads shorter than its first response).
    pub fn secs_since_rounded_up(self, earlier: Timestamp) -> u64 {
        self.millis_since(earlier).div_ceil(MS_PER_SEC as u64)
    }

    /// Milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0).max(0) as u64
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.0).single().unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    pub fn from_datetime<Tz: TimeZone>(at: &DateTime<Tz>) -> Self {
        Self(at.timestamp_millis())
    }

    /// Parses RFC 3339 (`2026-03-02T09:00:00Z`, `2026-03-02T04:00:00-05:00`),
    /// in the years [`YEAR_MIN`] to [`YEAR_MAX`] (UTC).
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimeError> {
        let at = DateTime::parse_from_rfc3339(text).map_err(TimeError::Format)?;
        let year = at.with_timezone(&Utc).year();
        if !(YEAR_MIN..=YEAR_MAX).contains(&year) {
            return Err(TimeError::Year(year));
        }
        Ok(Self::from_datetime(&at))
    }

    /// RFC 3339 in UTC, with milliseconds only when there are any.
    pub fn to_rfc3339(self) -> String {
        let format = if self.0 % MS_PER_SEC == 0 { SecondsFormat::Secs } else { SecondsFormat::Millis };
        self.to_datetime().to_rfc3339_opts(format, true)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

/// In JSON an RFC 3339 instant in UTC with milliseconds (postcard: milliseconds as an i64).
impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "date-time"})
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_rfc3339())
        } else {
            s.serialize_newtype_struct("Timestamp", &self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Self::parse_rfc3339(&text)
                .map_err(|e| serde::de::Error::custom(format!("not an RFC 3339 instant ({e}): {text:?}")))
        } else {
            struct Millis;
            impl<'de> serde::de::Visitor<'de> for Millis {
                type Value = Timestamp;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("milliseconds since the Unix epoch")
                }
                fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
                    Ok(Timestamp(v))
                }
                fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Timestamp, D::Error> {
                    i64::deserialize(d).map(Timestamp)
                }
            }
            d.deserialize_newtype_struct("Timestamp", Millis)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_in_utc() {
        let t = Timestamp::parse_rfc3339("2026-03-02T04:00:00-05:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-02T09:00:00Z");
        let t = Timestamp::parse_rfc3339("2026-03-02T09:00:00.250Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-02T09:00:00.250Z");
        assert_eq!(t.plus_secs(60).secs_since(t), 60);
        assert_eq!(t.secs_since(t.plus_secs(5)), 0);
        assert!(Timestamp::parse_rfc3339("1969-12-31T23:59:59Z").is_err());
        assert!(Timestamp::parse_rfc3339("+10000-01-01T00:00:00Z").is_err());
    }
}
