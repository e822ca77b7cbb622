//! `cargo run -p client --bin chat -- ws://127.0.0.1:8000/`: chat from a terminal, or a script.
//!
//! Each line read from stdin is sent as a text message, except the commands:
//! `/schedule ... message TEXT`, `/random`, `/feed`, `/emoji 😋`, `/help` and `/quit`; any other
//! `/word` is refused with the list of commands, so a typo never reaches everyone.
//! What arrives is printed one line per frame on stdout, so the output can be piped too;
//! mistakes in what you typed are explained on stderr. At the end of stdin (or `/quit`) the
//! client closes the connection politely and waits for the server's answer, so every line
//! piped in has reached the server before the process exits.
//!
//! With `--raw`, each line is sent exactly as typed and each text frame is printed exactly as
//! it came: for the lessons' guides, which send JSON by hand (and frames that are not JSON).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use client::Connection;
use client::connection::{Socket, one_line};
use client::schedule::{self, EXAMPLE};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
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

const HELP: &str = "\
commands:
  TEXT                                    send a text message
  /schedule seconds 5 message TEXT        send TEXT later (units: hours, minutes, seconds)
  /random                                 chat 1:1 with a random stranger (lesson05 on)
  /feed                                   back to the feed everyone shares
  /emoji 😋                               send an emoji
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args.server, args.raw).await {
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

type Sink = SplitSink<Socket, Message>;

/// What the user asked for with one line of input.
enum Command {
    Send(Value),
    Quit,
    Nothing,
}

async fn run(server: &str, raw: bool) -> Result<()> {
    check_scheme(server)?;
    let connection = Connection::connect(server).await?;
    let (mut sink, mut frames) = connection.into_socket().split();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    // Lessons 01-02 never send an id; then messages go without an author.
    let mut my_id: Option<String> = None;

    // Read input and frames at the same time, until the input ends or the server goes away.
    loop {
        tokio::select! {
            line = stdin.next_line() => {
                let line = line.context("reading stdin failed")?;
                let Some(line) = line else { break };
                if raw {
                    sink.send(Message::text(line)).await.context("sending failed")?;
                    continue;
                }
                match command(&line, my_id.as_deref()) {
                    Command::Send(frame) => send(&mut sink, &frame).await?,
                    Command::Quit => break,
                    Command::Nothing => {}
                }
            }
            frame = frames.next() => match frame {
                Some(Ok(Message::Close(_))) | None => {
                    say!("* the server closed the connection");
                    return Ok(());
                }
                Some(Ok(message)) => show(&message, &mut my_id, raw),
                Some(Err(error)) => return Err(error).context("the connection failed"),
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
            show(&message, &mut my_id, raw);
        }
    };
    if tokio::time::timeout(CLOSE_TIMEOUT, drain).await.is_err() {
        eprintln!("chat: the server did not answer the close within {CLOSE_TIMEOUT:?}");
    }
    Ok(())
}

async fn send(sink: &mut Sink, frame: &Value) -> Result<()> {
    sink.send(Message::text(frame.to_string())).await.context("sending failed")
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
        // A typo such as /randon must not go to everyone as chat.
        _ if word.starts_with('/') && word.len() > 1 => {
            eprintln!("! unknown command {word}; {HELP}");
            Command::Nothing
        }
        _ => chat("text", json!({"text": line})),
    }
}

/// Prints one incoming frame as one line (a multi-line message keeps its lines); in raw mode,
/// each text frame exactly as it came.
fn show(message: &Message, my_id: &mut Option<String>, raw: bool) {
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
        *my_id = Some(id.clone());
        return;
    }
    if let Some(error) = frame.get("error") {
        let reason = error.as_str().map_or_else(|| error.to_string(), str::to_owned);
        say!("! error: {reason}");
        return;
    }
    if let (Some(channel), Some(status)) =
        (frame.get("channel").and_then(Value::as_str), frame.get("status").and_then(Value::as_str))
    {
        let line = match (channel, status) {
            ("random", "waiting") => "waiting for a partner in a random room",
            ("random", "paired") => "paired with a partner: say hi",
            ("random", "partner_left") => "your partner left; waiting for the next one",
            ("feed", "joined") => "back in the feed",
            _ => "",
        };
        if line.is_empty() {
            say!("* {channel}: {status}");
        } else {
            say!("* {line}");
        }
        return;
    }
    let author = match frame.get("author").and_then(Value::as_str) {
        Some(author) if Some(author) == my_id.as_deref() => "me".to_owned(),
        Some(author) => short(author).to_owned(),
        None => "?".to_owned(),
    };
    let data = &frame.get("data").cloned().unwrap_or(Value::Null);
    match (frame.get("type").and_then(Value::as_str), &data["text"], &data["emoji"]) {
        (Some("text"), Value::String(text), _) => say!("[{author}] {text}"),
        (Some("emoji"), _, Value::String(emoji)) => say!("[{author}] {emoji}"),
        _ => say!("~ {text}"),
    }
}

/// The first 8 characters of an id: enough to tell people apart on screen.
fn short(id: &str) -> &str {
    id.char_indices().nth(8).map_or(id, |(end, _)| &id[..end])
}
