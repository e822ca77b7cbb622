//! Table-driven tests of reading every kind of inbound frame, good and bad, and of the frames
//! the server writes.

use std::borrow::Cow;
use std::time::Duration;

use serde_json::{Value, json};
use server::config::Limits;
use server::message::{self, Channel, ChatMessage};
use server::protocol::{Body, ChannelRequest, Inbound, Notice, error_frame, id_frame, parse};

fn text(text: &str, delay: Option<u64>) -> Inbound<'static> {
    Inbound::Chat {
        body: Body::Text(Cow::Owned(text.to_owned())),
        delay: delay.map(Duration::from_secs),
        ack: false,
    }
}

fn emoji(emoji: &str) -> Inbound<'static> {
    Inbound::Chat { body: Body::Emoji(Cow::Owned(emoji.to_owned())), delay: None, ack: false }
}

#[test]
fn good_frames() {
    let limits = Limits::default();
    let table: Vec<(&str, Inbound)> = vec![
        (r#"{"channel":"random"}"#, Inbound::Join(ChannelRequest::Random)),
        (r#"{"channel":"feed"}"#, Inbound::Join(ChannelRequest::Feed)),
        // `channel` wins over anything else, as in lesson05.
        (
            r#"{"channel":"feed","type":"text","data":{"text":"x"}}"#,
            Inbound::Join(ChannelRequest::Feed),
        ),
        (r#"{"type":"text","data":{"text":"Hello"}}"#, text("Hello", None)),
        (r#"{"author":"someone else","type":"text","data":{"text":"hi"}}"#, text("hi", None)),
        (
            r#"{"type":"text","data":{"text":"hi","color":"red"},"extra":[1,{"a":2}]}"#,
            text("hi", None),
        ),
        (r#"{"type":"text","data":{"text":""}}"#, text("", None)),
        (
            r#"{"type":"text","data":{"text":"tab\tand \u0000 control"}}"#,
            text("tab\tand \u{0} control", None),
        ),
        (r#"{"type":"emoji","data":{"emoji":"😋"}}"#, emoji("😋")),
        (
            r#"{"type":"text","data":{"schedule":{"hours":1,"seconds":9},"text":"how are you?"}}"#,
            text("how are you?", Some(3609)),
        ),
        (r#"{"type":"text","data":{"schedule":{"minutes":"2"},"text":"x"}}"#, text("x", Some(120))),
        (r#"{"type":"text","data":{"schedule":{"seconds":0},"text":"now"}}"#, text("now", Some(0))),
        (
            r#"{"type":"text","data":{"text":"/schedule seconds 5 message hi there"}}"#,
            text("hi there", Some(5)),
        ),
        (
            r#"{"type":"text","data":{"text":"/schedule hours 24 message tomorrow"}}"#,
            text("tomorrow", Some(86_400)),
        ),
        // A client that parsed the command itself sends the schedule; its text is taken as is.
        (
            r#"{"type":"text","data":{"schedule":{"seconds":1},"text":"/schedule seconds 5 message x"}}"#,
            text("/schedule seconds 5 message x", Some(1)),
        ),
        (
            r#"{"type":"text","data":{"text":"/scheduler is not a command"}}"#,
            text("/scheduler is not a command", None),
        ),
        (
            r#"{"type":"emoji","data":{"emoji":"😋"},"ack":true}"#,
            Inbound::Chat { body: Body::Emoji(Cow::Borrowed("😋")), delay: None, ack: true },
        ),
        (r#"{"delete":42}"#, Inbound::Delete(42)),
        (
            r#"{"channel":"room","room":"rust"}"#,
            Inbound::Join(ChannelRequest::Named { name: Cow::Borrowed("rust"), after: None }),
        ),
        (
            r#"{"channel":"room","room":"rust","after":7}"#,
            Inbound::Join(ChannelRequest::Named { name: Cow::Borrowed("rust"), after: Some(7) }),
        ),
        (r#"{"channel":"feed","delete":42}"#, Inbound::Join(ChannelRequest::Feed)),
    ];
    for (frame, expected) in table {
        assert_eq!(parse(frame, &limits), Ok(expected), "{frame}");
    }
}

#[test]
fn bad_frames() {
    let limits = Limits::default();
    let long_text = format!(r#"{{"type":"text","data":{{"text":"{}"}}}}"#, "a".repeat(2001));
    let long_emoji = format!(r#"{{"type":"emoji","data":{{"emoji":"{}"}}}}"#, "😋".repeat(33));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_field = format!(r#"{{"x":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    let deep_schedule = format!(
        r#"{{"type":"text","data":{{"text":"x","schedule":{}{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    // Each bad frame, and a piece of the error it must get back.
    let table: Vec<(&str, &str)> = vec![
        ("", "not valid JSON"),
        ("hello", "not valid JSON"),
        ("{", "not valid JSON"),
        (r#"{"type":"text""#, "not valid JSON"),
        ("[1,2]", "bad message"),
        (r#""a string""#, "bad message"),
        ("42", "bad message"),
        ("null", "bad message"),
        ("1e999", "number out of range"),
        (&deep, "bad message"),
        (&deep_field, "a message needs \"type\""),
        (&deep_schedule, "recursion limit"),
        ("{}", "a message needs \"type\""),
        (r#"{"author":"x"}"#, "a message needs \"type\""),
        (r#"{"channel":"lobby"}"#, "channel must be \"random\", \"feed\" or \"room\""),
        (r#"{"channel":7}"#, "bad message"),
        (r#"{"channel":null}"#, "a message needs \"type\""),
        (r#"{"type":"image","data":{"url":"x"}}"#, "type must be \"text\" or \"emoji\""),
        (r#"{"type":5,"data":{"text":"x"}}"#, "bad message"),
        (r#"{"type":"text"}"#, "needs \"data\""),
        (r#"{"type":"text","data":"hi"}"#, "bad message"),
        (r#"{"type":"text","data":{}}"#, "a text message needs"),
        (r#"{"type":"text","data":{"text":12345678901234567890123}}"#, "bad message"),
        (r#"{"type":"text","data":{"text":["a"]}}"#, "bad message"),
        (r#"{"type":"emoji","data":{"text":"x"}}"#, "an emoji message needs"),
        (&long_text, "longer than 2000 characters"),
        (&long_emoji, "longer than 32 characters"),
        // Wire schedules.
        (
            r#"{"type":"text","data":{"schedule":{"days":1},"text":"x"}}"#,
            "schedule: unknown unit 'days'",
        ),
        (r#"{"type":"text","data":{"schedule":{},"text":"x"}}"#, "schedule: give at least one"),
        (r#"{"type":"text","data":{"schedule":"abc","text":"x"}}"#, "schedule: "),
        (r#"{"type":"text","data":{"schedule":null,"text":"x"}}"#, "schedule: "),
        (r#"{"type":"text","data":{"schedule":{"hours":"abc"},"text":"x"}}"#, "schedule: "),
        (r#"{"type":"text","data":{"schedule":{"hours":-1},"text":"x"}}"#, "schedule: "),
        (r#"{"type":"text","data":{"schedule":{"hours":1.5},"text":"x"}}"#, "schedule: "),
        (
            r#"{"type":"text","data":{"schedule":{"seconds":1e400},"text":"x"}}"#,
            "number out of range",
        ),
        (
            r#"{"type":"text","data":{"schedule":{"hours":25},"text":"x"}}"#,
            "schedule: the delay is longer",
        ),
        (
            r#"{"type":"text","data":{"schedule":{"hours":18446744073709551615},"text":"x"}}"#,
            "schedule: the delay is longer",
        ),
        (
            r#"{"type":"text","data":{"schedule":{"seconds":99999999999999999999},"text":"x"}}"#,
            "schedule: ",
        ),
        // Server-side /schedule.
        (
            r#"{"type":"text","data":{"text":"/schedule days 1 message hi"}}"#,
            "schedule: unknown unit 'days'",
        ),
        (r#"{"type":"text","data":{"text":"/schedule seconds 1"}}"#, "for example: /schedule"),
        (r#"{"type":"text","data":{"text":"/schedule"}}"#, "schedule: "),
        (
            r#"{"type":"text","data":{"text":"/schedule hours 25 message x"}}"#,
            "schedule: the delay is longer",
        ),
    ];
    for (frame, reason) in table {
        match parse(frame, &limits) {
            Ok(inbound) => panic!("{frame:.80} was accepted as {inbound:?}"),
            Err(error) => {
                assert!(error.0.contains(reason), "{frame:.80}: {error} lacks {reason:?}")
            }
        }
    }
}

#[test]
fn limits_come_from_the_configuration() {
    let limits = Limits { max_text_chars: 3, max_delay_secs: 10, ..Limits::default() };
    assert!(parse(r#"{"type":"text","data":{"text":"abc"}}"#, &limits).is_ok());
    assert!(parse(r#"{"type":"text","data":{"text":"abcd"}}"#, &limits).is_err());
    // Characters, not bytes.
    assert!(parse(r#"{"type":"text","data":{"text":"한국어"}}"#, &limits).is_ok());
    assert!(
        parse(r#"{"type":"text","data":{"text":"x","schedule":{"seconds":10}}}"#, &limits).is_ok()
    );
    assert!(
        parse(r#"{"type":"text","data":{"text":"x","schedule":{"seconds":11}}}"#, &limits).is_err()
    );
}

#[test]
fn outbound_frames() {
    let parse_json =
        |frame: &server::frame::Frame| serde_json::from_str::<Value>(frame.payload()).unwrap();
    assert_eq!(parse_json(&id_frame("abc")), json!({"id": "abc"}));
    assert_eq!(parse_json(&error_frame("no \"quotes\"")), json!({"error": "no \"quotes\""}));
    let chat = |body| ChatMessage::new(Channel::Feed, 3, "me".into(), body, 1_500, false);
    assert_eq!(
        parse_json(chat(message::Body::Text("a \"b\"\n".into())).frame()),
        json!({"author": "me", "type": "text", "data": {"text": "a \"b\"\n"}, "seq": 3, "at": "1970-01-01T00:00:01.500Z"})
    );
    assert_eq!(
        parse_json(chat(message::Body::Emoji("😋".into())).frame()),
        json!({"author": "me", "type": "emoji", "data": {"emoji": "😋"}, "seq": 3, "at": "1970-01-01T00:00:01.500Z"})
    );
    let notices = [
        (Notice::Waiting, json!({"channel": "random", "status": "waiting"})),
        (Notice::Paired, json!({"channel": "random", "status": "paired"})),
        (Notice::PartnerLeft, json!({"channel": "random", "status": "partner_left"})),
        (Notice::FeedJoined, json!({"channel": "feed", "status": "joined"})),
    ];
    for (notice, expected) in notices {
        assert_eq!(parse_json(&notice.frame()), expected);
    }
}
