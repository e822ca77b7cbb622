//! The `/schedule` command, as the 2018 workshop's client read it:
//!
//! ```text
//! /schedule ({hours|minutes|seconds} N)+ message TEXT
//! /schedule hours 1 seconds 9 message how are you doing future?
//! ```
//!
//! becomes the `data` of a text message:
//! `{"schedule": {"hours": 1, "seconds": 9}, "text": "how are you doing future?"}`.
//! The terminal client and the finished server parse it here; the web page has the same
//! grammar in JavaScript (`web/app.js`), and the tests hold both to the same table.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, de};

/// An example of good syntax, for error messages.
pub const EXAMPLE: &str = "/schedule minutes 5 seconds 30 message time for coffee";

/// How long to wait before delivering: at least one unit, each a non-negative whole number.
///
/// On the wire each unit is a number or, as the 2018 client sent them, a string of digits;
/// any other key is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "count")]
    pub hours: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "count")]
    pub minutes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "count")]
    pub seconds: Option<u64>,
}

impl Schedule {
    /// The total delay, or `None` when no unit is given or the sum does not fit a `Duration`.
    pub fn delay(&self) -> Option<Duration> {
        if self.hours.is_none() && self.minutes.is_none() && self.seconds.is_none() {
            return None;
        }
        let hours = self.hours.unwrap_or(0).checked_mul(3600)?;
        let minutes = self.minutes.unwrap_or(0).checked_mul(60)?;
        let seconds = hours.checked_add(minutes)?.checked_add(self.seconds.unwrap_or(0))?;
        Some(Duration::from_secs(seconds))
    }

    fn unit_mut(&mut self, unit: &str) -> Option<&mut Option<u64>> {
        match unit {
            "hours" => Some(&mut self.hours),
            "minutes" => Some(&mut self.minutes),
            "seconds" => Some(&mut self.seconds),
            _ => None,
        }
    }
}

/// A unit's value: a non-negative integer, or a string of ASCII digits.
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct Count;
    impl de::Visitor<'_> for Count {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a non-negative whole number, or a string of digits")
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
            Ok(value)
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<u64, E> {
            digits(value).ok_or_else(|| E::invalid_value(de::Unexpected::Str(value), &self))
        }
    }
    deserializer.deserialize_any(Count).map(Some)
}

/// `"42"` → 42; anything but ASCII digits (signs, spaces, decimals, empty) → `None`.
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A parsed `/schedule` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduledText {
    pub schedule: Schedule,
    pub text: String,
}

/// Why a `/schedule` command could not be read; each says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    NoUnit,
    UnknownUnit(String),
    RepeatedUnit(String),
    BadNumber { unit: String, value: String },
    MissingNumber(String),
    NoMessage,
    EmptyMessage,
    TooLong,
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ScheduleError::NoUnit => write!(f, "give at least one of hours, minutes, seconds"),
            ScheduleError::UnknownUnit(unit) => {
                write!(f, "unknown unit '{unit}' (use hours, minutes or seconds)")
            }
            ScheduleError::RepeatedUnit(unit) => write!(f, "'{unit}' is given twice"),
            ScheduleError::BadNumber { unit, value } => {
                write!(f, "'{value}' after '{unit}' is not a whole number")
            }
            ScheduleError::MissingNumber(unit) => write!(f, "'{unit}' needs a number after it"),
            ScheduleError::NoMessage => write!(f, "end with: message TEXT"),
            ScheduleError::EmptyMessage => write!(f, "the message after 'message' is empty"),
            ScheduleError::TooLong => write!(f, "that delay is too long"),
        }
    }
}

impl std::error::Error for ScheduleError {}

/// Reads `input` if it is a `/schedule` command: `None` when it is not one (plain chat),
/// `Some(Err(..))` when it is one with bad syntax.
pub fn parse(input: &str) -> Option<Result<ScheduledText, ScheduleError>> {
    let rest = input.strip_prefix("/schedule")?;
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None; // "/scheduler" is not our command
    }
    Some(parse_arguments(rest))
}

fn parse_arguments(mut rest: &str) -> Result<ScheduledText, ScheduleError> {
    let mut schedule = Schedule::default();
    loop {
        let (word, after) = next_word(rest).ok_or(if schedule == Schedule::default() {
            ScheduleError::NoUnit
        } else {
            ScheduleError::NoMessage
        })?;
        if word == "message" {
            if schedule == Schedule::default() {
                return Err(ScheduleError::NoUnit);
            }
            // The text is everything after "message ", spaces and all.
            let text = after.strip_prefix(' ').unwrap_or(after);
            if text.trim().is_empty() {
                return Err(ScheduleError::EmptyMessage);
            }
            schedule.delay().ok_or(ScheduleError::TooLong)?;
            return Ok(ScheduledText { schedule, text: text.to_owned() });
        }
        let slot =
            schedule.unit_mut(word).ok_or_else(|| ScheduleError::UnknownUnit(word.to_owned()))?;
        if slot.is_some() {
            return Err(ScheduleError::RepeatedUnit(word.to_owned()));
        }
        let (value, after_value) =
            next_word(after).ok_or_else(|| ScheduleError::MissingNumber(word.to_owned()))?;
        *slot = Some(digits(value).ok_or_else(|| ScheduleError::BadNumber {
            unit: word.to_owned(),
            value: value.to_owned(),
        })?);
        rest = after_value;
    }
}

/// Splits off the next space-separated word: `(" hours 1 ...")` → `("hours", " 1 ...")`.
fn next_word(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start_matches(' ');
    if text.is_empty() {
        return None;
    }
    let end = text.find(' ').unwrap_or(text.len());
    Some((&text[..end], &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(hours: Option<u64>, minutes: Option<u64>, seconds: Option<u64>) -> Schedule {
        Schedule { hours, minutes, seconds }
    }

    #[test]
    fn good_commands() {
        let table = [
            (
                "/schedule hours 1 seconds 9 message how are you doing future?",
                schedule(Some(1), None, Some(9)),
                "how are you doing future?",
            ),
            ("/schedule seconds 1 message hi", schedule(None, None, Some(1)), "hi"),
            ("/schedule minutes 0 message now-ish", schedule(None, Some(0), None), "now-ish"),
            (
                "/schedule seconds 5 hours 2 minutes 3 message  two  spaces ",
                schedule(Some(2), Some(3), Some(5)),
                " two  spaces ",
            ),
            (
                "/schedule seconds 1 message message seconds 2",
                schedule(None, None, Some(1)),
                "message seconds 2",
            ),
        ];
        for (input, expected, text) in table {
            let parsed = parse(input).expect("a command").expect("good syntax");
            assert_eq!(parsed.schedule, expected, "{input}");
            assert_eq!(parsed.text, text, "{input}");
        }
    }

    #[test]
    fn the_seed_example_serialises_as_the_2018_client_sent_it() {
        let parsed = parse("/schedule hours 1 seconds 9 message how are you doing future?")
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            serde_json::json!({"schedule": {"hours": 1, "seconds": 9}, "text": "how are you doing future?"})
        );
    }

    #[test]
    fn bad_commands() {
        use ScheduleError::*;
        let bad = |unit: &str, value: &str| BadNumber { unit: unit.into(), value: value.into() };
        let table = [
            ("/schedule", NoUnit),
            ("/schedule message hi", NoUnit),
            ("/schedule days 1 message hi", UnknownUnit("days".into())),
            ("/schedule hours abc message hi", bad("hours", "abc")),
            ("/schedule hours -1 message hi", bad("hours", "-1")),
            ("/schedule hours 1.5 message hi", bad("hours", "1.5")),
            ("/schedule seconds +5 message hi", bad("seconds", "+5")),
            ("/schedule seconds", MissingNumber("seconds".into())),
            ("/schedule seconds 1", NoMessage),
            ("/schedule seconds 1 message", EmptyMessage),
            ("/schedule seconds 1 message   ", EmptyMessage),
            ("/schedule seconds 1 seconds 2 message hi", RepeatedUnit("seconds".into())),
            ("/schedule hours 99999999999999999 message hi", TooLong),
            (
                "/schedule seconds 99999999999999999999999 message hi",
                bad("seconds", "99999999999999999999999"),
            ),
        ];
        for (input, expected) in table {
            assert_eq!(parse(input), Some(Err(expected)), "{input}");
        }
    }

    #[test]
    fn other_text_is_not_a_command() {
        for input in
            ["hello", "/scheduler seconds 1 message hi", " /schedule seconds 1 message hi", ""]
        {
            assert_eq!(parse(input), None, "{input}");
        }
    }

    #[test]
    fn wire_schedules_take_numbers_or_digit_strings_only() {
        let good = [
            (r#"{"hours": 1, "seconds": 9}"#, schedule(Some(1), None, Some(9))),
            (r#"{"hours": "1", "seconds": "9"}"#, schedule(Some(1), None, Some(9))),
            (r#"{"minutes": 0}"#, schedule(None, Some(0), None)),
        ];
        for (json, expected) in good {
            assert_eq!(serde_json::from_str::<Schedule>(json).unwrap(), expected, "{json}");
        }
        for json in [
            r#"{"hours": "abc"}"#,
            r#"{"hours": -1}"#,
            r#"{"hours": 1.5}"#,
            r#"{"hours": "-1"}"#,
            r#"{"hours": ""}"#,
            r#"{"days": 1}"#,
            r#"{"hours": null}"#,
            r#"{"hours": [1]}"#,
        ] {
            assert!(serde_json::from_str::<Schedule>(json).is_err(), "{json}");
        }
        // `{}` parses, but names no unit: there is no delay to wait.
        assert_eq!(serde_json::from_str::<Schedule>("{}").unwrap().delay(), None);
    }
}
