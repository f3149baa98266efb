//! Weekly opening hours in an IANA time zone, with holidays.
//!
//! A campaign's schedule decides whether a conversation opened at an instant is
//! "out of hours", and when the next opening is (where the SLA clock of an
//! out-of-hours conversation starts). All maths is done on local wall-clock
//! time in the schedule's zone, so a daylight-saving change moves the opening
//! instants the way a person at the contact center expects.

use std::fmt;

use chrono::{Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Weekday};
use chrono_tz::Tz;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{ScheduleId, TextVisitor};
use crate::time::Timestamp;

/// At most this many opening ranges in one day.
pub const RANGES_PER_DAY_MAX: usize = 8;
/// At most this many holidays in one schedule.
pub const HOLIDAYS_MAX: usize = 400;
/// How far ahead the next opening is looked for, in days.
pub const NEXT_OPENING_SEARCH_DAYS_MAX: u64 = 400;
/// How far ahead open time is counted (business-hours SLA), in days: a
/// threshold not reached within them is never reached.
pub const OPEN_TIME_WALK_DAYS_MAX: u64 = 3660;

/// A time of day as minutes after midnight, `00:00` to `24:00`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DayMinute(u16);

const MINUTES_PER_DAY: u16 = 24 * 60;

/// One opening range in a day, `from` inclusive, `to` exclusive
/// (`"08:00-12:30"`; `"00:00-24:00"` is the whole day).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoursRange {
    pub from: DayMinute,
    pub to: DayMinute,
}

impl HoursRange {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (from, to) = text.split_once('-').ok_or_else(|| format!("expected \"HH:MM-HH:MM\", found {text:?}"))?;
        let from = parse_minute(from.trim())?;
        let to = parse_minute(to.trim())?;
        if from >= to {
            return Err(format!("{text:?} ends before it starts (a range past midnight is two ranges, one per day)"));
        }
        Ok(Self { from: DayMinute(from), to: DayMinute(to) })
    }

    fn contains(&self, minute: u16) -> bool {
        self.from.0 <= minute && minute < self.to.0
    }
}

fn parse_minute(text: &str) -> Result<u16, String> {
    let bad = || format!("{text:?} is not a time of day HH:MM");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h * 60 + m > MINUTES_PER_DAY {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl fmt::Display for HoursRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (self.from.0, self.to.0);
        write!(f, "{:02}:{:02}-{:02}:{:02}", a / 60, a % 60, b / 60, b % 60)
    }
}

impl JsonSchema for HoursRange {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HoursRange".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": "^[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}$", "description": "local opening hours, HH:MM-HH:MM"})
    }
}

impl Serialize for HoursRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct("HoursRange", &self.to_string())
    }
}

impl<'de> Deserialize<'de> for HoursRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct("HoursRange", TextVisitor(Self::parse, "HoursRange"))
    }
}

/// An IANA time zone name, validated when parsed (`America/Bogota`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zone(pub Tz);

impl Zone {
    pub fn parse(text: &str) -> Result<Self, String> {
        text.parse::<Tz>().map(Zone).map_err(|_| format!("{text:?} is not an IANA time zone (e.g. \"America/Bogota\")"))
    }
}

impl JsonSchema for Zone {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Zone".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "description": "an IANA time zone name, e.g. America/Bogota"})
    }
}

impl Serialize for Zone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct("Zone", self.0.name())
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct("Zone", TextVisitor(Self::parse, "Zone"))
    }
}

/// A calendar date in a schedule's zone (`2026-03-23`), for holidays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalDate(pub NaiveDate);

impl LocalDate {
    /// Parses `YYYY-MM-DD`, in the years [`crate::time::YEAR_MIN`] to [`crate::time::YEAR_MAX`].
    pub fn parse(text: &str) -> Result<Self, String> {
        use chrono::Datelike as _;
        let date =
            NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| format!("{text:?} is not a date YYYY-MM-DD"))?;
        let (min, max) = (crate::time::YEAR_MIN, crate::time::YEAR_MAX);
        if !(min..=max).contains(&date.year()) {
            return Err(format!("{text:?}: the year is {min} to {max}"));
        }
        Ok(LocalDate(date))
    }
}

impl JsonSchema for LocalDate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LocalDate".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "date"})
    }
}

impl Serialize for LocalDate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct("LocalDate", &self.0.format("%Y-%m-%d").to_string())
    }
}

impl<'de> Deserialize<'de> for LocalDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct("LocalDate", TextVisitor(Self::parse, "LocalDate"))
    }
}

impl Default for Zone {
    fn default() -> Self {
        Zone(Tz::UTC)
    }
}

/// Opening ranges for each day of the week; a missing day is closed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Week {
    #[serde(default)]
    pub mon: Vec<HoursRange>,
    #[serde(default)]
    pub tue: Vec<HoursRange>,
    #[serde(default)]
    pub wed: Vec<HoursRange>,
    #[serde(default)]
    pub thu: Vec<HoursRange>,
    #[serde(default)]
    pub fri: Vec<HoursRange>,
    #[serde(default)]
    pub sat: Vec<HoursRange>,
    #[serde(default)]
    pub sun: Vec<HoursRange>,
}

impl Week {
    pub fn day(&self, day: Weekday) -> &[HoursRange] {
        match day {
            Weekday::Mon => &self.mon,
            Weekday::Tue => &self.tue,
            Weekday::Wed => &self.wed,
            Weekday::Thu => &self.thu,
            Weekday::Fri => &self.fri,
            Weekday::Sat => &self.sat,
            Weekday::Sun => &self.sun,
        }
    }

    pub fn days(&self) -> [(&'static str, &[HoursRange]); 7] {
        [
            ("mon", &self.mon),
            ("tue", &self.tue),
            ("wed", &self.wed),
            ("thu", &self.thu),
            ("fri", &self.fri),
            ("sat", &self.sat),
            ("sun", &self.sun),
        ]
    }
}

/// A schedule: weekly hours in a zone, plus whole-day holidays (local dates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    pub id: ScheduleId,
    pub name: String,
    pub time_zone: Zone,
    pub week: Week,
    #[serde(default)]
    pub holidays: Vec<LocalDate>,
}

/// The id of the built-in schedule a campaign has when it names none: open
/// around the clock (an account may define its own `always` instead).
pub const ALWAYS: &str = "always";

impl ScheduleSpec {
    /// The built-in 24/7 schedule ([`ALWAYS`]).
    pub fn always() -> &'static ScheduleSpec {
        static ALWAYS_OPEN: std::sync::OnceLock<ScheduleSpec> = std::sync::OnceLock::new();
        ALWAYS_OPEN.get_or_init(|| {
            let day = vec![HoursRange::parse("00:00-24:00").expect("a valid range")];
            ScheduleSpec {
                id: ScheduleId::new(ALWAYS).expect("a valid id"),
                name: "24/7".into(),
                time_zone: Zone::default(),
                week: Week {
                    mon: day.clone(),
                    tue: day.clone(),
                    wed: day.clone(),
                    thu: day.clone(),
                    fri: day.clone(),
                    sat: day.clone(),
                    sun: day,
                },
                holidays: Vec::new(),
            }
        })
    }

    /// Checks ranges are ordered and disjoint, and the limits; names the field.
    pub fn check(&self) -> Result<(), (String, String)> {
        let mut any = false;
        for (name, ranges) in self.week.days() {
            if ranges.len() > RANGES_PER_DAY_MAX {
                return Err((format!("week.{name}"), format!("at most {RANGES_PER_DAY_MAX} ranges a day")));
            }
            for (i, pair) in ranges.windows(2).enumerate() {
                if pair[1].from < pair[0].to {
                    return Err((
                        format!("week.{name}[{}]", i + 1),
                        format!("{} overlaps or precedes {}; list ranges in order, apart", pair[1], pair[0]),
                    ));
                }
            }
            any |= !ranges.is_empty();
        }
        if !any {
            return Err(("week".into(), "a schedule needs at least one opening range".into()));
        }
        if self.holidays.len() > HOLIDAYS_MAX {
            return Err(("holidays".into(), format!("at most {HOLIDAYS_MAX} holidays")));
        }
        Ok(())
    }

    fn is_holiday(&self, date: NaiveDate) -> bool {
        self.holidays.contains(&LocalDate(date))
    }

    /// Whether the schedule is open at `at` (local time, holidays closed).
    pub fn is_open(&self, at: Timestamp) -> bool {
        let local = at.to_datetime().with_timezone(&self.time_zone.0);
        let date = local.date_naive();
        if self.is_holiday(date) {
            return false;
        }
        let minute = (local.hour() * 60 + local.minute()) as u16;
        self.week.day(local.weekday()).iter().any(|r| r.contains(minute))
    }

    /// The first instant at or after `at` when the schedule is open; `None` if
    /// it does not open within [`NEXT_OPENING_SEARCH_DAYS_MAX`] days.
    pub fn next_opening(&self, at: Timestamp) -> Option<Timestamp> {
        if self.is_open(at) {
            return Some(at);
        }
        let tz = self.time_zone.0;
        let today = at.to_datetime().with_timezone(&tz).date_naive();
        for offset in 0..=NEXT_OPENING_SEARCH_DAYS_MAX {
            let date = today.checked_add_days(Days::new(offset))?;
            if self.is_holiday(date) {
                continue;
            }
            for range in self.week.day(date.weekday()) {
                if range.from.0 >= MINUTES_PER_DAY {
                    continue;
                }
                let wall = NaiveTime::from_hms_opt(u32::from(range.from.0 / 60), u32::from(range.from.0 % 60), 0)?;
                let opening = resolve_local(tz, date.and_time(wall))?;
                if opening > at {
                    return Some(opening);
                }
            }
        }
        None
    }

    /// Visits the open intervals `[start, end)` from `from` on, in order,
    /// the first clipped to start at `from`, until `visit` says stop or
    /// [`OPEN_TIME_WALK_DAYS_MAX`] days have been walked.
    fn walk_open(&self, from: Timestamp, mut visit: impl FnMut(Timestamp, Timestamp) -> bool) {
        let tz = self.time_zone.0;
        let today = from.to_datetime().with_timezone(&tz).date_naive();
        let mut floor = from;
        for offset in 0..=OPEN_TIME_WALK_DAYS_MAX {
            let Some(date) = today.checked_add_days(Days::new(offset)) else { return };
            if self.is_holiday(date) {
                continue;
            }
            for range in self.week.day(date.weekday()) {
                let (Some(start), Some(end)) =
                    (local_minute(tz, date, range.from.0), local_minute(tz, date, range.to.0))
                else {
                    continue;
                };
                // A range a daylight-saving change folds onto an earlier one counts once.
                let start = start.max(floor);
                if end <= start {
                    continue;
                }
                floor = end;
                if !visit(start, end) {
                    return;
                }
            }
        }
    }

    /// The open time between `from` and `to`, in milliseconds (holidays and
    /// the gaps between ranges, a lunch break, count nothing).
    pub fn open_millis(&self, from: Timestamp, to: Timestamp) -> u64 {
        let mut total = 0;
        if to > from {
            self.walk_open(from, |start, end| {
                if start >= to {
                    return false;
                }
                total += end.min(to).millis_since(start);
                end < to
            });
        }
        total
    }

    /// The instant when `millis` of open time have passed since `from`;
    /// `None` when that is more than [`OPEN_TIME_WALK_DAYS_MAX`] days away.
    pub fn after_open_millis(&self, from: Timestamp, millis: u64) -> Option<Timestamp> {
        let mut left = millis;
        let mut found = None;
        self.walk_open(from, |start, end| {
            let length = end.millis_since(start);
            if left <= length {
                found = Some(Timestamp::from_millis(start.millis() + left as i64));
                return false;
            }
            left -= length;
            true
        });
        found
    }
}

/// The instant of a minute of a local date (`24:00` is the next day's midnight).
fn local_minute(tz: Tz, date: NaiveDate, minute: u16) -> Option<Timestamp> {
    let (date, minute) = if minute >= MINUTES_PER_DAY { (date.succ_opt()?, 0) } else { (date, minute) };
    let wall = NaiveTime::from_hms_opt(u32::from(minute / 60), u32::from(minute % 60), 0)?;
    resolve_local(tz, date.and_time(wall))
}

/// The instant of a local wall-clock time. In a DST gap (the clock jumps over
/// it) the opening happens when the clock lands after the gap; when a time
/// occurs twice, the first occurrence.
fn resolve_local(tz: Tz, wall: NaiveDateTime) -> Option<Timestamp> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(at) => Some(Timestamp::from_datetime(&at)),
        LocalResult::Ambiguous(first, _) => Some(Timestamp::from_datetime(&first)),
        LocalResult::None => {
            // Walk forward a minute at a time (gaps are at most a few hours).
            (1..=24 * 60).find_map(|m| {
                let later = wall + chrono::Duration::minutes(m);
                tz.from_local_datetime(&later).earliest().map(|at| Timestamp::from_datetime(&at))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(zone: &str, week: Week, holidays: &[&str]) -> ScheduleSpec {
        ScheduleSpec {
            id: ScheduleId::new("s").unwrap(),
            name: "s".into(),
            time_zone: Zone(zone.parse().unwrap()),
            week,
            holidays: holidays.iter().map(|d| LocalDate::parse(d).unwrap()).collect(),
        }
    }

    fn r(text: &str) -> HoursRange {
        HoursRange::parse(text).unwrap()
    }

    fn t(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    fn weekdays(ranges: &[&str]) -> Week {
        let day: Vec<HoursRange> = ranges.iter().map(|x| r(x)).collect();
        Week { mon: day.clone(), tue: day.clone(), wed: day.clone(), thu: day.clone(), fri: day, ..Week::default() }
    }

    #[test]
    fn several_ranges_in_one_day() {
        let s = spec("America/Bogota", weekdays(&["08:00-12:00", "14:00-18:00"]), &[]);
        s.check().unwrap();
        // Monday 2026-03-02, Bogota is UTC-5.
        assert!(!s.is_open(t("2026-03-02T07:59:59-05:00")));
        assert!(s.is_open(t("2026-03-02T08:00:00-05:00")));
        assert!(s.is_open(t("2026-03-02T11:59:59-05:00")));
        assert!(!s.is_open(t("2026-03-02T12:00:00-05:00")));
        assert_eq!(s.next_opening(t("2026-03-02T12:30:00-05:00")), Some(t("2026-03-02T14:00:00-05:00")));
        assert!(s.is_open(t("2026-03-02T17:00:00-05:00")));
        // Friday evening -> Monday morning.
        assert_eq!(s.next_opening(t("2026-03-06T18:00:00-05:00")), Some(t("2026-03-09T08:00:00-05:00")));
    }

    #[test]
    fn a_holiday_is_closed_all_day() {
        let s = spec("America/Mexico_City", weekdays(&["09:00-18:00"]), &["2026-03-16"]);
        // Monday 2026-03-16 is a holiday; Mexico City is UTC-6 all year.
        assert!(!s.is_open(t("2026-03-16T10:00:00-06:00")));
        assert_eq!(s.next_opening(t("2026-03-16T10:00:00-06:00")), Some(t("2026-03-17T09:00:00-06:00")));
        // Friday night before the long weekend -> Tuesday.
        assert_eq!(s.next_opening(t("2026-03-13T20:00:00-06:00")), Some(t("2026-03-17T09:00:00-06:00")));
    }

    #[test]
    fn a_dst_change_keeps_local_opening_hours() {
        // Madrid moves from UTC+1 to UTC+2 on Sunday 2026-03-29.
        let mut week = weekdays(&["09:00-17:00"]);
        week.sun = vec![r("01:00-03:00")];
        let s = spec("Europe/Madrid", week, &[]);
        // Friday 27 March 09:00 local is 08:00 UTC; Monday 30 March 09:00 is 07:00 UTC.
        assert!(s.is_open(t("2026-03-27T08:00:00Z")));
        assert!(!s.is_open(t("2026-03-30T06:59:00Z")));
        assert!(s.is_open(t("2026-03-30T07:00:00Z")));
        // Sunday: 02:00 local does not exist; the range is open 01:00-02:00 (+1)
        // and from 03:00 (+2) the range has ended.
        assert!(s.is_open(t("2026-03-29T00:30:00Z")));
        assert!(!s.is_open(t("2026-03-29T01:30:00Z")));
        assert_eq!(s.next_opening(t("2026-03-29T01:30:00Z")), Some(t("2026-03-30T07:00:00Z")));
        // An opening inside the gap happens when the clock lands after it.
        let gap = spec("Europe/Madrid", Week { sun: vec![r("02:30-05:00")], ..Week::default() }, &[]);
        assert_eq!(gap.next_opening(t("2026-03-28T12:00:00Z")), Some(t("2026-03-29T01:00:00Z")));
    }

    #[test]
    fn bad_ranges_name_the_field() {
        assert!(HoursRange::parse("18:00-08:00").is_err());
        assert!(HoursRange::parse("8:00-12:00").is_err());
        assert!(HoursRange::parse("08:00-24:01").is_err());
        assert_eq!(r("00:00-24:00").to_string(), "00:00-24:00");
        let s = spec("UTC", Week { tue: vec![r("08:00-12:00"), r("11:00-13:00")], ..Week::default() }, &[]);
        assert_eq!(s.check().unwrap_err().0, "week.tue[1]");
        assert_eq!(spec("UTC", Week::default(), &[]).check().unwrap_err().0, "week");
    }

    #[test]
    fn open_time_skips_nights_weekends_lunch_and_holidays() {
        // Mon-Fri 08:00-18:00 in Bogota (UTC-5); Friday 2026-03-06.
        let s = spec("America/Bogota", weekdays(&["08:00-18:00"]), &[]);
        let friday = t("2026-03-06T17:50:00-05:00");
        assert_eq!(s.after_open_millis(friday, 60_000), Some(t("2026-03-06T17:51:00-05:00")));
        assert_eq!(s.after_open_millis(friday, 3_600_000), Some(t("2026-03-09T08:50:00-05:00")));
        assert_eq!(s.open_millis(friday, t("2026-03-09T08:10:00-05:00")), 1_200_000);
        // Exactly the rest of the day ends at the closing instant.
        assert_eq!(s.after_open_millis(friday, 600_000), Some(t("2026-03-06T18:00:00-05:00")));
        // From a closed instant, the clock starts at the next opening.
        assert_eq!(s.after_open_millis(t("2026-03-07T10:00:00-05:00"), 0), Some(t("2026-03-09T08:00:00-05:00")));
        // A lunch break pauses it; a holiday skips the day.
        let lunch = spec("America/Bogota", weekdays(&["08:00-12:00", "13:00-18:00"]), &["2026-03-10"]);
        let before_lunch = t("2026-03-09T11:30:00-05:00");
        assert_eq!(lunch.after_open_millis(before_lunch, 3_600_000), Some(t("2026-03-09T13:30:00-05:00")));
        assert_eq!(lunch.open_millis(before_lunch, t("2026-03-09T13:30:00-05:00")), 3_600_000);
        let evening = t("2026-03-09T17:00:00-05:00");
        assert_eq!(lunch.after_open_millis(evening, 2 * 3_600_000), Some(t("2026-03-11T09:00:00-05:00")));
        // A schedule open around the clock counts elapsed time.
        let always = ScheduleSpec::always();
        assert_eq!(
            always.open_millis(friday, t("2026-03-09T08:10:00-05:00")),
            friday.millis_since(friday) + 224_400_000
        );
        assert_eq!(always.after_open_millis(friday, 86_400_000), Some(t("2026-03-07T17:50:00-05:00")));
    }

    #[test]
    fn always_open() {
        let all = vec![r("00:00-24:00")];
        let week = Week {
            mon: all.clone(),
            tue: all.clone(),
            wed: all.clone(),
            thu: all.clone(),
            fri: all.clone(),
            sat: all.clone(),
            sun: all,
        };
        let s = spec("Asia/Tokyo", week, &[]);
        assert!(s.is_open(t("2026-01-01T00:00:00Z")));
        assert!(s.is_open(t("2026-07-04T23:59:59Z")));
    }
}
