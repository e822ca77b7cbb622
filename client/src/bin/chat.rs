//! `cargo run -p client --bin chat -- ws://127.0.0.1:8000/`: chat from a terminal, or a script.
//!
//! Each line read from stdin is sent as a text message, except the commands:
//! `/schedule ... message TEXT`, `/random`, `/feed`, `/emoji 😋`, `/name`, `/rooms`, `/join ROOM`,
//! `/who`, `/delete SEQ`, `/help` and `/quit`; any other `/word` is refused with the list of
//! commands, so a typo never reaches everyone.
//! What arrives is printed one line per frame on stdout, so the output can be piped too;
//! mistakes in what you typed are explained on stderr. At the end of stdin (or `/quit`) the
//! client closes the connection politely and waits for the server's answer, so every line
//! piped in has reached the server before the process exits.
//!
//! From the finished server, the history a connection gets is printed marked `(earlier)`. When
//! the server goes away (a restart, say) the client reconnects, a few times with a growing wait,
//! and says so on stderr; to the finished server it reconnects with `?after=` the last feed
//! message it saw, so that it gets exactly what it missed (docs/PROTOCOL.md). In a named room it
//! goes back into that room instead, with `"after"` the last seq it saw there, and prints what
//! it missed in the room (not the feed's messages it passes through on the way).
//!
//! With `--user NAME` it logs in to the finished server first (`POST /api/login` on the host
//! and port of the ws:// address; the password is read from the terminal without echo, or from
//! `CHATTERBOX_PASSWORD`) and opens the WebSocket with the session cookie: it then speaks as
//! that account, and `/name NEW NAME` changes the display name (`PATCH /api/me`). Messages that
//! carry a display name (`"name"`) are shown under it instead of the short id.
//!
//! Named rooms (the finished server): `/rooms` lists them (`GET /api/rooms`, with the session
//! cookie when logged in), `/join ROOM` enters one, `/who` says who is in the current channel and
//! `/delete SEQ` takes back one of your messages. Presence, typing, deletions and profile changes
//! (someone's new name or picture) are printed as `* ...` lines; a new name is used from then on. With `--seqs` every numbered message is printed with its seq (`#42 [ada] hi`)
//! and each of yours is acknowledged with its seq (`* sent as #43`), so you know what to delete.
//!
//! With `--raw`, each line is sent exactly as typed and each text frame is printed exactly as
//! it came: for the lessons' guides, which send JSON by hand (and frames that are not JSON). It
//! does not reconnect: it shows the protocol as it is (give `ws://HOST/?after=SEQ` yourself).

use std::collections::{HashMap, VecDeque};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use client::Connection;
use client::connection::one_line;
use client::http;
use client::schedule::{self, EXAMPLE};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// `println!`, except that a closed stdout (`chat ... | head -1`) is not a panic: the output
/// is only for whoever reads it.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// How long to wait for the server to answer our close before giving up on it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// After losing the server: how many attempts to reconnect, how long before the first, and
/// the longest wait between two (each wait doubles up to it): about half a minute in all.
const RECONNECT_ATTEMPTS: u32 = 10;
const RECONNECT_DELAY_FIRST: Duration = Duration::from_millis(500);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(4);

const HELP: &str = "\
commands:
  TEXT                                    send a text message
  /schedule seconds 5 message TEXT        send TEXT later (units: hours, minutes, seconds)
  /random                                 chat 1:1 with a random stranger (lesson05 on)
  /feed                                   back to the feed everyone shares
  /emoji 😋                               send an emoji
  /name NEW NAME                          change your display name (with --user)
  /rooms                                  list the named rooms (the finished server)
  /join ROOM                              enter the named room ROOM
  /who                                    who is in this channel
  /delete SEQ                             take back your message #SEQ (--seqs shows them)
  /help                                   this list
  /quit                                   leave (so does the end of input)";

/// chat: talk to a chatterbox server (any lesson, or the finished server) from a terminal or a
/// script.
#[derive(Parser)]
#[command(version, after_help = HELP)]
struct Args {
    /// The server's WebSocket address.
    #[arg(default_value = "ws://127.0.0.1:8000/")]
    server: String,

    /// Send each line exactly as typed (no commands, no JSON wrapping) and print each frame
    /// exactly as it comes.
    #[arg(long)]
    raw: bool,

    /// Log in as this account first (the finished server): the password is read from the
    /// terminal without echo, or from the environment variable CHATTERBOX_PASSWORD.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,

    /// Print each numbered message with its seq (`#42 [ada] hi`) and ask the server for the
    /// seq of each of yours (`* sent as #43`): the numbers `/delete SEQ` takes.
    #[arg(long)]
    seqs: bool,
}

/// Where the password for `--user` may come from instead of the terminal (for scripts).
const PASSWORD_VARIABLE: &str = "CHATTERBOX_PASSWORD";

fn main() -> ExitCode {
    let args = Args::parse();
    // Asked before anything runs, so that the prompt is not mixed with the conversation.
    let login = match &args.user {
        Some(user) => match password_for(user) {
            Ok(password) => Some((user.clone(), password)),
            Err(error) => {
                eprintln!("chat: {}", one_line(&error));
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chat: could not start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(&args.server, args.raw, args.seqs, login));
    // Reading stdin is a blocking read that cannot be cancelled: waiting for it at shutdown
    // would keep the process alive after the server left, until the user pressed Enter.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// Refuses a web address before trying it: `http://host:8000/` is the page, `ws://` the chat.
fn check_scheme(server: &str) -> Result<()> {
    for (web, chat) in [("http://", "ws://"), ("https://", "wss://")] {
        if let Some(rest) = server.strip_prefix(web) {
            anyhow::bail!("{server} is a web address; use {chat}{rest} for the chat");
        }
    }
    Ok(())
}

type Input = Lines<BufReader<Stdin>>;

/// What the user asked for with one line of input.
enum Command {
    Send(Value),
    /// `/name NEW NAME`: the account's display name, through the HTTP API.
    Rename(String),
    /// `/rooms`: the named rooms, through the HTTP API.
    Rooms,
    Quit,
    Nothing,
}

/// How one connection ended.
enum Ending {
    /// The input ended (or `/quit`): the connection was closed politely.
    Done,
    /// The server closed the connection, with this close frame if it sent one.
    Closed(Option<CloseFrame>),
    /// The connection failed, or a frame could not be sent.
    Failed(anyhow::Error),
}

async fn run(server: &str, raw: bool, seqs: bool, login: Option<(String, String)>) -> Result<()> {
    check_scheme(server)?;
    let mut session = Session { server: server.to_owned(), seqs, ..Session::default() };
    if let Some((user, password)) = login {
        session.account = Some(Account::log_in(server, &user, &password).await?);
    }
    let mut connection = Connection::connect_with_cookie(server, session.cookie()).await?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let lost = match converse(connection, &mut stdin, &mut session, raw).await? {
            Ending::Done => return Ok(()),
            // Raw mode shows the protocol as it is: no reconnect behind the user's back.
            Ending::Closed(close) if raw || !worth_reconnecting(close.as_ref()) => {
                say!("* the server closed the connection{}", close_reason(close.as_ref()));
                return Ok(());
            }
            Ending::Failed(error) if raw => return Err(error).context("the connection failed"),
            Ending::Closed(close) => {
                format!("the server closed the connection{}", close_reason(close.as_ref()))
            }
            Ending::Failed(error) => one_line(&error),
        };
        connection = reconnect(server, &session, &lost).await?;
    }
}

/// Sends what is typed and prints what arrives on one connection, until the input ends (then
/// it closes the connection politely) or the connection does.
async fn converse(
    connection: Connection,
    stdin: &mut Input,
    session: &mut Session,
    raw: bool,
) -> Result<Ending> {
    let (mut sink, mut frames) = connection.into_socket().split();
    if let Some(rejoin) = session.connected() {
        // Sent before any line typed meanwhile, so that those go to the room too.
        if let Err(error) = sink.send(Message::text(rejoin.to_string())).await {
            return Ok(Ending::Failed(anyhow!(error).context("going back into the room failed")));
        }
    }

    // Read input and frames at the same time, until the input ends or the server goes away.
    loop {
        tokio::select! {
            line = stdin.next_line() => {
                let line = line.context("reading stdin failed")?;
                let Some(line) = line else { break };
                let frame = if raw {
                    Message::text(line.clone())
                } else {
                    match command(&line, session.my_id.as_deref()) {
                        Command::Send(mut frame) => {
                            session.sent(&frame);
                            // A receipt with the seq, for a live (not scheduled) message.
                            if session.seqs
                                && chat_content(&frame).is_some()
                                && frame["data"].get("schedule").is_none()
                            {
                                frame["ack"] = json!(true);
                            }
                            Message::text(frame.to_string())
                        }
                        Command::Rename(name) => {
                            session.rename(&name).await;
                            continue;
                        }
                        Command::Rooms => {
                            session.rooms().await;
                            continue;
                        }
                        Command::Quit => break,
                        Command::Nothing => continue,
                    }
                };
                if let Err(error) = sink.send(frame).await {
                    eprintln!("! not sent, the connection is lost: {line}");
                    return Ok(Ending::Failed(anyhow!(error).context("sending failed")));
                }
            }
            frame = frames.next() => match frame {
                Some(Ok(Message::Close(close))) => return Ok(Ending::Closed(close)),
                None => return Ok(Ending::Closed(None)),
                Some(Ok(message)) => session.show(&message, raw),
                Some(Err(error)) => return Ok(Ending::Failed(error.into())),
            },
        }
    }

    // Close politely: the server reads our close after every message sent before it, and
    // answers it. Frames still on their way to us are printed meanwhile.
    let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
    sink.send(Message::Close(Some(frame))).await.context("closing the connection failed")?;
    let drain = async {
        while let Some(Ok(message)) = frames.next().await {
            if message.is_close() {
                break;
            }
            session.show(&message, raw);
        }
    };
    if tokio::time::timeout(CLOSE_TIMEOUT, drain).await.is_err() {
        eprintln!("chat: the server did not answer the close within {CLOSE_TIMEOUT:?}");
    }
    Ok(Ending::Done)
}

/// Whether a server that closed the connection this way may be back soon: it went away
/// (shutting down, restarting, overloaded) or the connection simply ended. A close for what
/// the client did (too many messages, a frame too big) is not retried.
fn worth_reconnecting(close: Option<&CloseFrame>) -> bool {
    close.is_none_or(|close| {
        matches!(
            close.code,
            CloseCode::Away | CloseCode::Error | CloseCode::Restart | CloseCode::Again
        )
    })
}

/// " (1001: going away)", or nothing when the server gave no code.
fn close_reason(close: Option<&CloseFrame>) -> String {
    match close {
        Some(close) if close.reason.is_empty() => format!(" ({})", u16::from(close.code)),
        Some(close) => format!(" ({}: {})", u16::from(close.code), close.reason),
        None => String::new(),
    }
}

/// Connects again after the server went away, with `?after=` the last feed message seen when
/// the server numbers its messages (from a named room, `converse` then goes back into it): [`RECONNECT_ATTEMPTS`] attempts, 0.5 s, 1 s, 2 s, ... apart
/// (at most [`RECONNECT_DELAY_MAX`]). What it does is said on stderr: stdout is the
/// conversation. Lines typed meanwhile wait in stdin and are sent once it is back.
async fn reconnect(server: &str, session: &Session, lost: &str) -> Result<Connection> {
    eprintln!("chat: {lost}");
    let url = session.resume_url(server)?;
    let mut delay = RECONNECT_DELAY_FIRST;
    for attempt in 1..=RECONNECT_ATTEMPTS {
        eprintln!("chat: reconnecting in {delay:?} (attempt {attempt} of {RECONNECT_ATTEMPTS})");
        tokio::time::sleep(delay).await;
        match Connection::connect_with_cookie(&url, session.cookie()).await {
            Ok(connection) => {
                match (&session.room, session.resume_after(), session.last_room_seq) {
                    (Some(room), _, Some(seq)) => eprintln!(
                        "chat: reconnected; back into {room}, asking for the messages after #{seq}"
                    ),
                    (Some(room), _, None) => eprintln!("chat: reconnected; back into {room}"),
                    (None, Some(seq), _) => {
                        eprintln!("chat: reconnected; asking for the messages after #{seq}")
                    }
                    (None, None, _) => eprintln!("chat: reconnected"),
                }
                return Ok(connection);
            }
            Err(error) => eprintln!("chat: attempt {attempt} failed: {}", one_line(&error)),
        }
        delay = (delay * 2).min(RECONNECT_DELAY_MAX);
    }
    bail!("gave up reconnecting to {server} after {RECONNECT_ATTEMPTS} attempts")
}

/// Reads one line of input; explains mistakes on stderr.
fn command(line: &str, my_id: Option<&str>) -> Command {
    let chat = |kind: &str, data: Value| {
        let mut frame = json!({"type": kind, "data": data});
        if let Some(id) = my_id {
            frame["author"] = json!(id);
        }
        Command::Send(frame)
    };
    if line.trim().is_empty() {
        return Command::Nothing;
    }
    if let Some(parsed) = schedule::parse(line) {
        return match parsed {
            Ok(scheduled) => match serde_json::to_value(scheduled) {
                Ok(data) => chat("text", data),
                Err(error) => {
                    eprintln!("! could not encode the schedule: {error}");
                    Command::Nothing
                }
            },
            Err(error) => {
                eprintln!("! /schedule: {error}. Example: {EXAMPLE}");
                Command::Nothing
            }
        };
    }
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "/random" => Command::Send(json!({"channel": "random"})),
        "/feed" => Command::Send(json!({"channel": "feed"})),
        "/quit" => Command::Quit,
        "/help" => {
            eprintln!("{HELP}");
            Command::Nothing
        }
        "/emoji" if rest.trim().is_empty() => {
            eprintln!("! /emoji needs an emoji, as in: /emoji 😋");
            Command::Nothing
        }
        "/emoji" => chat("emoji", json!({"emoji": rest.trim()})),
        "/name" if rest.trim().is_empty() => {
            eprintln!("! /name needs a name, as in: /name Ada Lovelace");
            Command::Nothing
        }
        "/name" => Command::Rename(rest.trim().to_owned()),
        "/rooms" => Command::Rooms,
        "/who" => Command::Send(json!({"who": true})),
        "/join" => match rest.trim() {
            "" => {
                eprintln!("! /join needs a room name, as in: /join rust (/rooms lists them)");
                Command::Nothing
            }
            room => Command::Send(json!({"channel": "room", "room": room})),
        },
        "/delete" => match rest.trim().trim_start_matches('#').parse::<u64>() {
            Ok(seq) => Command::Send(json!({"delete": seq})),
            Err(_) => {
                eprintln!(
                    "! /delete needs a message number, as in: /delete 42 (--seqs shows them)"
                );
                Command::Nothing
            }
        },
        // A typo such as /randon must not go to everyone as chat.
        _ if word.starts_with('/') && word.len() > 1 => {
            eprintln!("! unknown command {word}; {HELP}");
            Command::Nothing
        }
        _ => chat("text", json!({"text": line})),
    }
}

/// What the client knows of the conversation, across reconnects.
#[derive(Default)]
struct Session {
    /// Our id on this connection (lessons 01-02 send none): our messages go out under it.
    my_id: Option<String>,
    /// Every id we were given: a message of ours comes back under an earlier one when it was
    /// scheduled, or in the history of a resumed connection.
    ids: Vec<String>,
    /// In the feed, rather than a random room: only the feed's seqs count for resuming.
    in_feed: bool,
    /// The newest feed seq seen; `None` until a chat frame of the feed carries one (only the
    /// finished server numbers its messages), and again after one without.
    last_feed_seq: Option<u64>,
    /// Our own feed messages (type and body), which the server does not send back, except in
    /// the history of a resumed connection: there they are not printed again.
    unconfirmed: VecDeque<(String, String)>,
    /// The account logged in with `--user`, if any.
    account: Option<Account>,
    /// The ws:// address given: `/rooms` asks the API on its host and port.
    server: String,
    /// `--seqs`: print messages' seqs, and ask for receipts of ours.
    seqs: bool,
    /// Display names seen (in members, presence, who, messages and profile changes), by id.
    names: HashMap<String, String>,
    /// The named room we are in (the finished server): a reconnect goes back into it.
    room: Option<String>,
    /// The newest seq seen in `room`: a reconnect asks for the messages after it.
    last_room_seq: Option<u64>,
    /// From a reconnect into `room` until its joined frame: the feed's frames that come
    /// meanwhile are not printed.
    rejoining: bool,
    /// Our account's display name, as the server last said it.
    my_name: Option<String>,
    /// A name `/name` set and already printed: its `{"profile"}` frame is not printed again.
    renamed_to: Option<String>,
}

/// How many of our own messages [`Session::unconfirmed`] remembers.
const UNCONFIRMED_KEPT: usize = 100;

impl Session {
    /// A new connection starts in the feed, with an id to come. After a reconnect from a named
    /// room, returns the frame that goes back into it, asking for what was missed there.
    fn connected(&mut self) -> Option<Value> {
        self.my_id = None;
        let Some(room) = &self.room else {
            self.in_feed = true;
            return None;
        };
        // What the feed sends before the room's joined frame is not where the user is.
        self.in_feed = false;
        self.rejoining = true;
        let mut frame = json!({"channel": "room", "room": room});
        if let Some(seq) = self.last_room_seq {
            frame["after"] = json!(seq);
        }
        Some(frame)
    }

    /// The session cookie to open every connection with, when logged in.
    fn cookie(&self) -> Option<&str> {
        self.account.as_ref().map(|account| account.cookie.as_str())
    }

    /// `/name NEW NAME`: says on stdout what the name is now, or on stderr why not.
    async fn rename(&mut self, name: &str) {
        let Some(account) = &self.account else {
            eprintln!("! /name needs an account: start chat with --user NAME");
            return;
        };
        match account.rename(name).await {
            Ok(name) => {
                say!("* your name is now {name}");
                self.my_name = Some(name.clone());
                self.renamed_to = Some(name);
            }
            Err(error) => eprintln!("! /name: {}", one_line(&error)),
        }
    }

    /// `/rooms`: one line per named room, or on stderr why not.
    async fn rooms(&self) {
        let listing = async {
            let (authority, cookie) = match &self.account {
                Some(account) => (account.authority.clone(), Some(account.cookie.as_str())),
                None => (api_authority(&self.server)?, None),
            };
            let cookie: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
            let response = http::request(&authority, "GET", "/api/rooms", &cookie, None).await?;
            if response.status != 200 {
                bail!("{}", api_error(&response));
            }
            let rooms: Value =
                serde_json::from_str(&response.body).context("the list of rooms is not JSON")?;
            rooms.as_array().cloned().context("the list of rooms is not a list")
        };
        match listing.await {
            Ok(rooms) if rooms.is_empty() => say!("* no rooms yet"),
            Ok(rooms) => {
                for room in rooms {
                    let name = room["name"].as_str().unwrap_or("?");
                    let online = room["online"].as_u64().unwrap_or(0);
                    match room["topic"].as_str().filter(|topic| !topic.is_empty()) {
                        Some(topic) => say!("* room {name} ({online} online): {topic}"),
                        None => say!("* room {name} ({online} online)"),
                    }
                }
            }
            Err(error) => eprintln!("! /rooms: {}", one_line(&error)),
        }
    }

    /// Remembers the display name in `person` (`{"id","name"?}`) and returns how to show it:
    /// the name, else the short id; `me` for ourselves.
    fn person(&mut self, person: &Value) -> String {
        let Some(id) = person["id"].as_str() else { return "?".into() };
        if self.ids.iter().any(|mine| mine == id) {
            return "me".into();
        }
        if let Some(name) = person["name"].as_str().filter(|name| !name.is_empty()) {
            self.names.insert(id.to_owned(), name.to_owned());
        }
        self.names.get(id).cloned().unwrap_or_else(|| short(id).to_owned())
    }

    /// `members` (`[{"id","name"?}, ...]`) as `ada, bob, 1c75f06f`.
    fn people(&mut self, members: &Value) -> String {
        let members = members.as_array().map(Vec::as_slice).unwrap_or_default();
        let names: Vec<String> = members.iter().map(|member| self.person(member)).collect();
        names.join(", ")
    }

    /// The line for a frame of named rooms, presence, who or deletions, if it is one.
    fn room_notice(&mut self, frame: &serde_json::Map<String, Value>) -> Option<String> {
        if let (Some("room"), Some("joined"), Some(room)) = (
            frame.get("channel").and_then(Value::as_str),
            frame.get("status").and_then(Value::as_str),
            frame.get("room").and_then(Value::as_str),
        ) {
            self.in_feed = false;
            self.rejoining = false;
            if self.room.as_deref() != Some(room) {
                self.room = Some(room.to_owned());
                self.last_room_seq = None;
            }
            let members = frame.get("members").cloned().unwrap_or_default();
            let count = members.as_array().map_or(0, Vec::len);
            return Some(format!("joined {room}: {count} here: {}", self.people(&members)));
        }
        if frame.len() != 1 {
            return None;
        }
        let (key, value) = frame.iter().next()?;
        match key.as_str() {
            "presence" => {
                if let Some(person) = value.get("joined") {
                    return Some(format!("{} joined", self.person(person)));
                }
                let person = value.get("left")?;
                Some(format!("{} left", self.person(person)))
            }
            "typing" if value.is_object() => Some(format!("{} is typing", self.person(value))),
            "who" => {
                let count = value["count"].as_u64()?;
                let members = &value["members"];
                let listed = members.as_array().map_or(0, Vec::len) as u64;
                let more = if count > listed { ", ..." } else { "" };
                Some(format!("{count} here: {}{more}", self.people(members)))
            }
            "deleted" => Some(format!("message #{} deleted", value["seq"].as_u64()?)),
            "sent" => Some(format!("sent as #{}", value["seq"].as_u64()?)),
            _ => None,
        }
    }

    /// The line for `{"profile": {"id", "name", "avatar"}}`, remembering the name: `None` for
    /// our own rename, which `/name` has printed already.
    fn profile_changed(&mut self, id: &str, name: &str) -> Option<String> {
        if self.ids.iter().any(|mine| mine == id) {
            if self.renamed_to.as_deref() == Some(name) {
                self.renamed_to = None;
                return None;
            }
            let before = self.my_name.replace(name.to_owned());
            return Some(match before {
                Some(before) if before == name => "your picture was changed".into(),
                _ => format!("your name is now {name}"),
            });
        }
        let before = self.names.insert(id.to_owned(), name.to_owned());
        Some(match before {
            Some(before) if before == name => format!("{name} has a new picture"),
            Some(before) => format!("{before} is now {name}"),
            None => format!("{} is now {name}", short(id)),
        })
    }

    /// The feed seq to resume after, when the server numbers its messages.
    fn resume_after(&self) -> Option<u64> {
        // Going back into a named room: the feed is only passed through.
        self.last_feed_seq.filter(|_| self.room.is_none())
    }

    /// `server`, with `?after=` the last feed seq seen if there is one: the finished server
    /// then sends what we missed instead of its latest messages.
    fn resume_url(&self, server: &str) -> Result<String> {
        match self.resume_after() {
            Some(seq) => with_after(server, seq),
            None => Ok(server.to_owned()),
        }
    }

    /// Remembers a chat message we sent to the feed or a named room (not a scheduled one: that
    /// comes back).
    fn sent(&mut self, frame: &Value) {
        let data = &frame["data"];
        let kept = self.in_feed || self.room.is_some();
        if !kept || data.get("schedule").is_some() {
            return;
        }
        if let Some((kind, body)) = chat_content(frame) {
            self.unconfirmed.push_back((kind.to_owned(), body.to_owned()));
            if self.unconfirmed.len() > UNCONFIRMED_KEPT {
                self.unconfirmed.pop_front();
            }
        }
    }

    /// Prints one incoming frame as one line (a multi-line message keeps its lines); in raw
    /// mode, each text frame exactly as it came.
    fn show(&mut self, message: &Message, raw: bool) {
        let Message::Text(text) = message else { return };
        if raw {
            say!("{text}");
            return;
        }
        let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) else {
            // Not a JSON object: lessons 01-02 relay whatever anyone sent.
            say!("~ {text}");
            return;
        };
        if let (Some(Value::String(id)), 1) = (frame.get("id"), frame.len()) {
            say!("* connected as {}", short(id));
            self.my_id = Some(id.clone());
            self.ids.push(id.clone());
            return;
        }
        // The finished server's profile of the account this connection speaks as.
        if let (Some(Value::Object(me)), 1) = (frame.get("me"), frame.len()) {
            let name = me.get("name").and_then(Value::as_str).unwrap_or("?");
            let username = me.get("username").and_then(Value::as_str).unwrap_or("?");
            self.my_name = Some(name.to_owned());
            say!("* logged in as {name} (@{username})");
            return;
        }
        if let Some(error) = frame.get("error") {
            let reason = error.as_str().map_or_else(|| error.to_string(), str::to_owned);
            say!("! error: {reason}");
            if self.rejoining {
                // The room could not be entered again (it is gone): we stay in the feed.
                self.rejoining = false;
                self.room = None;
                self.in_feed = true;
                say!("* back in the feed");
            }
            return;
        }
        if let (Some(profile), 1) = (frame.get("profile"), frame.len())
            && let (Some(id), Some(name)) = (profile["id"].as_str(), profile["name"].as_str())
        {
            if let Some(line) = self.profile_changed(id, name) {
                say!("* {line}");
            }
            return;
        }
        if let Some(line) = self.room_notice(&frame) {
            say!("* {line}");
            return;
        }
        if let (Some(channel), Some(status)) = (
            frame.get("channel").and_then(Value::as_str),
            frame.get("status").and_then(Value::as_str),
        ) {
            self.in_feed = channel == "feed";
            self.room = None;
            say!("* {}", notice(channel, status));
            return;
        }
        if self.rejoining && (frame.contains_key("history") || frame.contains_key("type")) {
            return; // the feed's, on the way back into the room
        }
        // The finished server's word on the history ({"history": {...}} alone); lessons 01-02
        // relay whatever a client sent, so only a server that numbers its messages is heard
        // (and the finished server's, in a named room).
        if let (Some(Value::Object(history)), 1, true) =
            (frame.get("history"), frame.len(), self.last_feed_seq.is_some() || self.room.is_some())
            && let Some(line) = self.history_notice(history)
        {
            say!("* {line}");
            return;
        }
        let frame = Value::Object(frame);
        let Some((kind, body)) = chat_content(&frame) else {
            say!("~ {text}");
            return;
        };
        let author = frame["author"].as_str();
        let own = author.is_some_and(|author| self.ids.iter().any(|id| id == author));
        let history = frame["history"] == true && frame["seq"].is_u64();
        match frame["seq"].as_u64() {
            // No seq: a lesson, maybe in place of the finished server since the last
            // connection. Never send it ?after=.
            None => self.last_feed_seq = None,
            Some(seq) if self.in_feed || self.room.is_some() => {
                let last = match self.in_feed {
                    true => &mut self.last_feed_seq,
                    false => &mut self.last_room_seq,
                };
                if last.is_some_and(|last| seq <= last) {
                    return; // printed already
                }
                *last = Some(seq);
                if history && own && self.confirm(kind, body) {
                    return; // we sent it: it is on the screen as typed
                }
            }
            Some(_) => {} // a random room's own numbers: nothing to resume
        }
        if let (Some(author), Some(name)) = (author, frame["name"].as_str()) {
            self.names.insert(author.to_owned(), name.to_owned());
        }
        let author = match author {
            Some(_) if own => "me",
            // An account's display name; a guest's message carries none.
            Some(author) => {
                frame["name"].as_str().filter(|name| !name.is_empty()).unwrap_or(short(author))
            }
            None => "?",
        };
        let earlier = if history { "(earlier) " } else { "" };
        match frame["seq"].as_u64() {
            Some(seq) if self.seqs => say!("{earlier}#{seq} [{author}] {body}"),
            _ => say!("{earlier}[{author}] {body}"),
        }
    }

    /// One of ours came back in a resumed history: forget it rather than print it again.
    fn confirm(&mut self, kind: &str, body: &str) -> bool {
        let position = self.unconfirmed.iter().position(|(k, b)| k == kind && b == body);
        position.and_then(|index| self.unconfirmed.remove(index)).is_some()
    }

    /// The line for `{"history": {...}}`: some missed messages were skipped, or the server's
    /// store was reset (its numbers start again). `None` for any other shape.
    fn history_notice(&mut self, history: &serde_json::Map<String, Value>) -> Option<String> {
        if history.get("reset") == Some(&Value::Bool(true)) {
            match self.in_feed {
                true => self.last_feed_seq = None,
                false => self.last_room_seq = None,
            }
            self.unconfirmed.clear();
            return Some("the server's history was reset; its latest messages follow".into());
        }
        history.get("first")?.as_u64()?;
        Some(match history.get("skipped").and_then(Value::as_u64) {
            Some(1) => "1 message you missed is not shown".into(),
            Some(count) => format!("{count} messages you missed are not shown"),
            None => "some messages you missed are not shown".into(),
        })
    }
}

/// The password for `--user`: from [`PASSWORD_VARIABLE`] if set, else typed on the terminal
/// without echo.
fn password_for(user: &str) -> Result<String> {
    if let Ok(password) = std::env::var(PASSWORD_VARIABLE) {
        return Ok(password);
    }
    rpassword::prompt_password(format!("password for {user}: ")).with_context(|| {
        format!("could not read the password from the terminal (or set {PASSWORD_VARIABLE})")
    })
}

/// An account of the finished server that this client logged in to: where its HTTP API is,
/// and the session cookie that every connection and API call carries.
struct Account {
    /// `HOST:PORT` of the ws:// address: the API is on the same server.
    authority: String,
    /// `chatterbox_session=...`, as the `Cookie` header sends it.
    cookie: String,
}

impl Account {
    /// `POST /api/login`, over plain HTTP/1.1 to the host and port of `server`.
    async fn log_in(server: &str, user: &str, password: &str) -> Result<Account> {
        let authority = api_authority(server)?;
        let body = json!({"username": user, "password": password}).to_string();
        let response = http::request(&authority, "POST", "/api/login", &[], Some(&body))
            .await
            .with_context(|| format!("logging in as {user} failed"))?;
        if response.status != 200 {
            bail!("logging in as {user} failed: {}", api_error(&response));
        }
        let cookie = response
            .header("set-cookie")
            .and_then(|cookie| cookie.split(';').next())
            .filter(|cookie| cookie.starts_with("chatterbox_session="))
            .context("the server logged us in but sent no session cookie")?;
        Ok(Account { authority, cookie: cookie.to_owned() })
    }

    /// `PATCH /api/me`: returns the display name the server kept.
    async fn rename(&self, name: &str) -> Result<String> {
        let body = json!({"name": name}).to_string();
        let cookie = [("Cookie", self.cookie.as_str())];
        let response =
            http::request(&self.authority, "PATCH", "/api/me", &cookie, Some(&body)).await?;
        if response.status != 200 {
            bail!("{}", api_error(&response));
        }
        let profile: Value =
            serde_json::from_str(&response.body).context("the profile is not JSON")?;
        profile["name"].as_str().map(str::to_owned).context("the profile has no name")
    }
}

/// `HOST:PORT` of a ws:// address (port 80 when it gives none). The account API is spoken in
/// plain HTTP: a wss:// server is refused rather than sent a password in the clear.
fn api_authority(server: &str) -> Result<String> {
    let uri: Uri = server.parse().with_context(|| format!("{server} is not a valid address"))?;
    if uri.scheme_str() != Some("ws") {
        bail!(
            "the account API needs a ws:// address (this client speaks plain HTTP), not {server}"
        );
    }
    let host = uri.host().with_context(|| format!("{server} has no host"))?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}

/// The `{"error"}` text of an API answer, else its status.
fn api_error(response: &http::Response) -> String {
    let error = serde_json::from_str::<Value>(&response.body)
        .ok()
        .and_then(|body| body["error"].as_str().map(str::to_owned));
    error.unwrap_or_else(|| format!("HTTP {}", response.status))
}

/// The line for a lesson05 notice, such as `{"channel":"random","status":"paired"}`.
fn notice(channel: &str, status: &str) -> String {
    let line = match (channel, status) {
        ("random", "waiting") => "waiting for a partner in a random room",
        ("random", "paired") => "paired with a partner: say hi",
        ("random", "partner_left") => "your partner left; waiting for the next one",
        ("feed", "joined") => "back in the feed",
        _ => return format!("{channel}: {status}"),
    };
    line.to_owned()
}

/// The type and body of a text or emoji frame.
fn chat_content(frame: &Value) -> Option<(&str, &str)> {
    let data = &frame["data"];
    match frame["type"].as_str()? {
        "text" => Some(("text", data["text"].as_str()?)),
        "emoji" => Some(("emoji", data["emoji"].as_str()?)),
        _ => None,
    }
}

/// `server` with `after=SEQ` in its query (any `after` there replaced), for resuming.
fn with_after(server: &str, seq: u64) -> Result<String> {
    let uri: Uri = server.parse().with_context(|| format!("{server} is not a valid address"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        bail!("{server} is not a full address such as ws://127.0.0.1:8000/");
    };
    let path = if uri.path().is_empty() { "/" } else { uri.path() };
    let mut query: Vec<String> = (uri.query().unwrap_or_default().split('&'))
        .filter(|pair| !pair.is_empty() && !pair.starts_with("after="))
        .map(str::to_owned)
        .collect();
    query.push(format!("after={seq}"));
    Ok(format!("{scheme}://{authority}{path}?{}", query.join("&")))
}

/// The first 8 characters of an id: enough to tell people apart on screen.
fn short(id: &str) -> &str {
    id.char_indices().nth(8).map_or(id, |(end, _)| &id[..end])
}

#[cfg(test)]
mod tests {
    use super::with_after;

    #[test]
    fn resuming_puts_after_in_the_query() {
        let cases = [
            ("ws://127.0.0.1:8000/", "ws://127.0.0.1:8000/?after=12"),
            ("ws://127.0.0.1:8000", "ws://127.0.0.1:8000/?after=12"),
            ("ws://example.org/ws", "ws://example.org/ws?after=12"),
            ("ws://example.org/?after=3", "ws://example.org/?after=12"),
            ("wss://example.org/ws?room=a&after=3", "wss://example.org/ws?room=a&after=12"),
        ];
        for (server, resumed) in cases {
            assert_eq!(with_after(server, 12).unwrap(), resumed, "{server}");
        }
        assert!(with_after("not an address", 12).is_err());
    }
}
