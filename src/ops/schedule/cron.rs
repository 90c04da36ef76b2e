//! Cron expressions as cron(8) reads the lines of `/etc/cron.d`: five fields (minute, hour, day of
//! month, month, day of week) of numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists, month and
//! weekday names, or one of the `@hourly`…`@yearly` shorthands. Each field becomes the set of
//! values it matches, which is what the systemd conversion and the validation work from.
//!
//! One rule of cron is easy to miss: when both the day of month and the day of week are
//! restricted (neither field starts with `*`), a day matches when *either* does; otherwise both
//! must. `0 1 1 * 1` runs on the first of the month and on every Monday.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// The set of values a field matches, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    bits: u64,
    /// Whether the field was written starting with `*` (which decides how the two day fields
    /// combine).
    pub star: bool,
}

impl Field {
    /// Whether `value` is in the set.
    pub fn contains(&self, value: u32) -> bool {
        value < 64 && self.bits & (1 << value) != 0
    }

    /// The values in the set, ascending.
    pub fn values(&self) -> Vec<u32> {
        (0..64).filter(|v| self.contains(*v)).collect()
    }

    /// Whether the set holds every value from `low` to `high`.
    pub fn is_full(&self, low: u32, high: u32) -> bool {
        (low..=high).all(|v| self.contains(v))
    }
}

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpr {
    /// The expression as written (whitespace collapsed).
    pub text: String,
    /// Minutes, 0–59.
    pub minute: Field,
    /// Hours, 0–23.
    pub hour: Field,
    /// Days of the month, 1–31.
    pub day: Field,
    /// Months, 1–12.
    pub month: Field,
    /// Days of the week, 0–6 from Sunday (7 is read as Sunday too).
    pub weekday: Field,
}

/// What one field accepts.
struct Spec {
    name: &'static str,
    low: u32,
    high: u32,
    names: &'static [&'static str],
}

const MINUTE: Spec = Spec { name: "minute", low: 0, high: 59, names: &[] };
const HOUR: Spec = Spec { name: "hour", low: 0, high: 23, names: &[] };
const DAY: Spec = Spec { name: "day of month", low: 1, high: 31, names: &[] };
/// Month names start at 1.
const MONTH: Spec = Spec {
    name: "month",
    low: 1,
    high: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
};
/// Weekday names start at 0 (Sunday); 7 is Sunday again.
const WEEKDAY: Spec =
    Spec { name: "day of week", low: 0, high: 7, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] };

impl CronExpr {
    /// Parses `text`; the error says which field is wrong and why.
    pub fn parse(text: &str) -> Result<CronExpr, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let fields: Vec<&str> = match words.as_slice() {
            [macro_name] if macro_name.starts_with('@') => expand_macro(macro_name)?.split(' ').collect(),
            [_, _, _, _, _] => words.clone(),
            _ => {
                return Err(format!(
                    "{text:?} has {} fields; cron wants five (minute hour day-of-month month day-of-week) or @daily, @weekly, …",
                    words.len()
                ));
            }
        };
        let [minute, hour, day, month, weekday] = fields.as_slice() else {
            return Err(format!("{text:?} is not a cron expression"));
        };
        let mut weekday = parse_field(weekday, &WEEKDAY)?;
        if weekday.contains(7) {
            weekday.bits = (weekday.bits & !(1 << 7)) | 1;
        }
        let expr = CronExpr {
            text: words.join(" "),
            minute: parse_field(minute, &MINUTE)?,
            hour: parse_field(hour, &HOUR)?,
            day: parse_field(day, &DAY)?,
            month: parse_field(month, &MONTH)?,
            weekday,
        };
        if expr.next_after(NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default().and_time(NaiveTime::MIN)).is_none() {
            return Err(format!("{text:?} never runs: no month has that day"));
        }
        Ok(expr)
    }

    /// Whether the two day fields combine with "or" (both restricted) rather than "and".
    pub fn days_either(&self) -> bool {
        !self.day.star && !self.weekday.star
    }

    /// Whether the job runs on `date` (any time of it).
    pub fn runs_on(&self, date: NaiveDate) -> bool {
        let day = self.day.contains(date.day());
        let weekday = self.weekday.contains(date.weekday().num_days_from_sunday());
        let days = if self.days_either() { day || weekday } else { day && weekday };
        days && self.month.contains(date.month())
    }

    /// The first minute strictly after `after` at which the job runs; `None` when it never does
    /// within eight years (only a day that no month has, such as February 30).
    pub fn next_after(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let mut date = start.date();
        let last = date + Duration::days(366 * 8);
        while date <= last {
            if self.runs_on(date) {
                let from = if date == start.date() { start.time() } else { NaiveTime::MIN };
                let mut times = self.hour.values().into_iter().flat_map(|h| {
                    self.minute.values().into_iter().filter_map(move |m| NaiveTime::from_hms_opt(h, m, 0))
                });
                if let Some(time) = times.find(|t| *t >= from) {
                    return Some(date.and_time(time));
                }
            }
            date = date.succ_opt()?;
        }
        None
    }
}

/// The five fields a shorthand stands for (as cron(8) defines them).
fn expand_macro(name: &str) -> Result<&'static str, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        "@reboot" => return Err("@reboot is not a time: schedule it by a time of day".into()),
        other => return Err(format!("{other} is not a cron shorthand (@hourly, @daily, @weekly, @monthly, @yearly)")),
    })
}

/// One field: a comma-separated list of `*`, `N`, `N-M`, each optionally followed by `/STEP`.
fn parse_field(text: &str, spec: &Spec) -> Result<Field, String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 =
                    step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        format!("{} field {text:?}: step {step:?} is not a positive number", spec.name)
                    })?;
                (range, step)
            }
            None => (item, 1),
        };
        let (low, high) = if range == "*" {
            (spec.low, if spec.high == 7 { 6 } else { spec.high })
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a, text, spec)?, value(b, text, spec)?);
            if a > b {
                return Err(format!("{} field {text:?}: range {range} runs backwards", spec.name));
            }
            (a, b)
        } else if step > 1 {
            // cron(8) takes a step only after `*` or a range.
            return Err(format!(
                "{} field {text:?}: a step needs * or a range before it ({range}-… /{step})",
                spec.name
            ));
        } else {
            let v = value(range, text, spec)?;
            (v, v)
        };
        for v in (low..=high).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(Field { bits, star: text.starts_with('*') })
}

/// A number or name within the field's bounds.
fn value(word: &str, field: &str, spec: &Spec) -> Result<u32, String> {
    let lower = word.to_ascii_lowercase();
    let named = spec.names.iter().position(|n| *n == lower).map(|i| i as u32 + if spec.low == 1 { 1 } else { 0 });
    let v = match named {
        Some(v) => v,
        None => word.parse::<u32>().map_err(|_| {
            let names =
                if spec.names.is_empty() { String::new() } else { format!(" or a name ({})", spec.names.join(", ")) };
            format!("{} field {field:?}: {word:?} is not a number{names}", spec.name)
        })?,
    };
    if v < spec.low || v > spec.high {
        return Err(format!("{} field {field:?}: {v} is outside {}–{}", spec.name, spec.low, spec.high));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn fields_become_sets() {
        let e = CronExpr::parse("*/15 1,13 1-7 jan-mar mon-fri").unwrap();
        assert_eq!(e.minute.values(), vec![0, 15, 30, 45]);
        assert_eq!(e.hour.values(), vec![1, 13]);
        assert_eq!(e.day.values(), (1..=7).collect::<Vec<_>>());
        assert_eq!(e.month.values(), vec![1, 2, 3]);
        assert_eq!(e.weekday.values(), vec![1, 2, 3, 4, 5]);
        assert!(e.days_either());
        let sunday = CronExpr::parse("0 0 * * 7").unwrap();
        assert_eq!(sunday.weekday.values(), vec![0]);
        assert_eq!(CronExpr::parse("0 0 * * 5-7").unwrap().weekday.values(), vec![0, 5, 6]);
        assert_eq!(CronExpr::parse("@weekly").unwrap().text, "@weekly");
        assert_eq!(CronExpr::parse("@weekly").unwrap().weekday.values(), vec![0]);
    }

    #[test]
    fn the_day_fields_combine_as_cron_does() {
        // Restricted both: the 1st of the month or any Monday.
        let either = CronExpr::parse("0 1 1 * 1").unwrap();
        assert_eq!(either.next_after(at("2025-01-01 02:00")), Some(at("2025-01-06 01:00")));
        assert_eq!(either.next_after(at("2025-01-27 02:00")), Some(at("2025-02-01 01:00")));
        // A star in either field: both must hold (`*/2` counts as a star, as in cron).
        let both = CronExpr::parse("0 1 */2 * 1").unwrap();
        assert!(!both.days_either());
        assert_eq!(both.next_after(at("2025-01-01 00:00")), Some(at("2025-01-13 01:00")));
    }

    #[test]
    fn next_runs_follow_the_fields() {
        let pigsty = CronExpr::parse("00 01 * * 1").unwrap();
        assert_eq!(pigsty.next_after(at("2025-07-15 12:00")), Some(at("2025-07-21 01:00")));
        let hourly = CronExpr::parse("@hourly").unwrap();
        assert_eq!(hourly.next_after(at("2025-07-15 12:00")), Some(at("2025-07-15 13:00")));
        let leap = CronExpr::parse("0 0 29 2 *").unwrap();
        assert_eq!(leap.next_after(at("2025-01-01 00:00")), Some(at("2028-02-29 00:00")));
    }

    #[test]
    fn bad_expressions_are_refused_with_the_field_named() {
        for (text, expected) in [
            ("0 1 * *", "has 4 fields"),
            ("60 1 * * *", "minute field"),
            ("0 24 * * *", "hour field"),
            ("0 1 0 * *", "day of month field"),
            ("0 1 * 13 *", "month field"),
            ("0 1 * * 8", "day of week field"),
            ("0 1 * * mon-sunday", "not a number"),
            ("*/0 * * * *", "not a positive number"),
            ("5/10 * * * *", "a step needs"),
            ("0 1 5-2 * *", "runs backwards"),
            ("0 0 30 2 *", "never runs"),
            ("@reboot", "not a time"),
            ("@often", "not a cron shorthand"),
            ("0 1 * * 1,", "not a number"),
        ] {
            let err = CronExpr::parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_input_parses_or_is_refused(text in "[0-9*/,@a-z -]{0,30}") {
            let _ = CronExpr::parse(&text);
        }
    }
}
