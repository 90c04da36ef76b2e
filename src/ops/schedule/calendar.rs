//! A cron expression as systemd calendar events (`OnCalendar=`): the same minutes, hours, days,
//! months and weekdays written out as systemd reads them. systemd requires every part of an
//! event to match, so cron's "day of month *or* day of week" (both fields restricted) becomes two
//! events, one per day field; a timer fires when any of its events does.

use super::cron::{CronExpr, Field};

/// systemd's weekday names, Monday first (cron counts from Sunday = 0).
const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// The `OnCalendar=` values equivalent to `expr`: one, or two when cron would run on either day
/// field.
pub fn on_calendar(expr: &CronExpr) -> Vec<String> {
    let time = format!("{}:{}:00", list(&expr.hour, 0, 23), list(&expr.minute, 0, 59));
    let month = list(&expr.month, 1, 12);
    let day = list(&expr.day, 1, 31);
    let weekdays = weekdays(&expr.weekday);
    let date = |day: &str| format!("*-{month}-{day}");
    let event = |weekdays: Option<&str>, day: &str| match weekdays {
        Some(w) => format!("{w} {} {time}", date(day)),
        None => format!("{} {time}", date(day)),
    };
    if expr.days_either() {
        vec![event(None, &day), event(weekdays.as_deref(), "*")]
    } else {
        vec![event(weekdays.as_deref(), &day)]
    }
}

/// A field as a systemd value list: `*` when full, else values and `a..b` runs, two digits each.
fn list(field: &Field, low: u32, high: u32) -> String {
    if field.is_full(low, high) {
        return "*".into();
    }
    runs(&field.values())
        .into_iter()
        .map(|(a, b)| range(&format!("{a:02}"), &format!("{b:02}"), a, b))
        .collect::<Vec<_>>()
        .join(",")
}

/// The weekday prefix, `None` when every day is in the set.
fn weekdays(field: &Field) -> Option<String> {
    // Monday = 1 … Sunday = 7, as systemd orders them.
    let days: Vec<u32> = (1..=7).filter(|d| field.contains(d % 7)).collect();
    if days.len() == 7 {
        return None;
    }
    let name = |d: u32| WEEKDAYS[(d as usize - 1) % 7];
    Some(runs(&days).into_iter().map(|(a, b)| range(name(a), name(b), a, b)).collect::<Vec<_>>().join(","))
}

/// `a`, `a,b` or `a..b` for a run from `first` to `last`.
fn range(a: &str, b: &str, first: u32, last: u32) -> String {
    match last - first {
        0 => a.to_string(),
        1 => format!("{a},{b}"),
        _ => format!("{a}..{b}"),
    }
}

/// Ascending values grouped into runs of consecutive ones.
fn runs(values: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &v in values {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == v => *last = v,
            _ => out.push((v, v)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(text: &str) -> Vec<String> {
        on_calendar(&CronExpr::parse(text).unwrap())
    }

    #[test]
    fn cron_lines_become_calendar_events() {
        assert_eq!(convert("00 01 * * 1"), vec!["Mon *-*-* 01:00:00"]);
        assert_eq!(convert("00 01 * * 2,3,4,5,6,7"), vec!["Tue..Sun *-*-* 01:00:00"]);
        assert_eq!(convert("*/15 * * * *"), vec!["*-*-* *:00,15,30,45:00"]);
        assert_eq!(convert("30 2 1 */3 *"), vec!["*-01,04,07,10-01 02:30:00"]);
        assert_eq!(convert("0 0 * * 0,6"), vec!["Sat,Sun *-*-* 00:00:00"]);
        assert_eq!(convert("0 9-17 * * mon-fri"), vec!["Mon..Fri *-*-* 09..17:00:00"]);
        assert_eq!(convert("@monthly"), vec!["*-*-01 00:00:00"]);
    }

    #[test]
    fn both_day_fields_restricted_give_two_events() {
        assert_eq!(convert("0 1 1 * 1"), vec!["*-*-01 01:00:00", "Mon *-*-* 01:00:00"]);
        // A starred day of month keeps cron's "and".
        assert_eq!(convert("0 1 */2 * 1"), vec!["Mon *-*-01,03,05,07,09,11,13,15,17,19,21,23,25,27,29,31 01:00:00"]);
    }
}
