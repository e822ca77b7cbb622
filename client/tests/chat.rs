//! The terminal client (`chat`), driven through a pipe as a script would drive it, against the
//! real lesson05 binary, with a [`Connection`] on the other side of the conversation.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use client::message;
use client::running::workspace_binary;
use client::schedule::EXAMPLE;
use client::{Connection, RunningServer};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{TempDatabase, finished_server, say_from_elsewhere, say_while_away, terminate};

const WAIT: Duration = Duration::from_secs(10);

/// The `chat` binary with its three standard streams in our hands; killed on drop.
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Chat {
    fn start(server: &str) -> Result<Chat> {
        Chat::start_with(&[server])
    }

    fn start_with(args: &[&str]) -> Result<Chat> {
        Chat::start_with_env(args, &[])
    }

    /// `chat ARGS` with these environment variables set (`CHATTERBOX_PASSWORD`, say).
    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Chat> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("could not start chat")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let stderr = BufReader::new(child.stderr.take().context("no stderr")?).lines();
        Ok(Chat { child, stdin, stdout, stderr })
    }

    async fn type_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin is already closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        Ok(stdin.flush().await?)
    }

    /// Ends the input, as the end of a piped file does.
    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Reads stdout until a line contains `needle`; returns that line.
    async fn stdout_line(&mut self, needle: &str) -> Result<String> {
        Ok(self.stdout_lines(needle).await?.pop().unwrap_or_default())
    }

    /// Reads stdout until a line contains `needle`; returns every line read, that one last.
    async fn stdout_lines(&mut self, needle: &str) -> Result<Vec<String>> {
        read_until(&mut self.stdout, needle).await.context("on stdout")
    }

    async fn stderr_line(&mut self, needle: &str) -> Result<String> {
        let lines = read_until(&mut self.stderr, needle).await.context("on stderr")?;
        Ok(lines.last().cloned().unwrap_or_default())
    }

    async fn exit(&mut self) -> Result<ExitStatus> {
        timeout(WAIT, self.child.wait())
            .await
            .map_err(|_| anyhow!("chat did not exit"))?
            .map_err(Into::into)
    }
}

/// Reads lines until one contains `needle`; returns them all, that one last.
async fn read_until<R>(lines: &mut Lines<R>, needle: &str) -> Result<Vec<String>>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut seen = Vec::new();
    let search = async {
        while let Some(line) = lines.next_line().await? {
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return Ok(());
            }
        }
        bail!("the stream ended")
    };
    let failure = match timeout(WAIT, search).await {
        Ok(Ok(())) => return Ok(seen),
        Ok(Err(error)) => error.context(format!("no line with {needle:?}")),
        Err(_) => anyhow!("no line with {needle:?} within {WAIT:?}"),
    };
    Err(failure.context(format!("lines seen before: {seen:?}")))
}

async fn lesson05() -> Result<RunningServer> {
    RunningServer::start(workspace_binary("lesson05")?, &[]).await
}

/// lesson05, a `chat` connected to it, and another user there (which has its id).
async fn chat_and_other_on_lesson05() -> Result<(RunningServer, Connection, Chat)> {
    let server = lesson05().await?;
    let mut other = Connection::connect(&server.ws_url()).await?;
    other.recv_id().await?;
    let (chat, _) = connected_chat(&server).await?;
    Ok((server, other, chat))
}

/// What `chat ARGS` prints on stdout and stderr when it runs without input.
async fn output_of(args: &[&str]) -> Result<(String, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = timeout(WAIT, output).await.context("chat did not exit")??;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Ok((text(&output.stdout), text(&output.stderr)))
}

/// Starts `chat` and waits for it to print its id; returns the id's first 8 characters.
async fn connected_chat(server: &RunningServer) -> Result<(Chat, String)> {
    let mut chat = Chat::start(&server.ws_url())?;
    let line = chat.stdout_line("* connected as ").await?;
    let short = line.trim_start_matches("* connected as ").to_owned();
    assert_eq!(short.len(), 8, "{line}");
    Ok((chat, short))
}

#[tokio::test]
async fn sends_lines_and_prints_what_arrives() -> Result<()> {
    let server = lesson05().await?;
    let mut other = Connection::connect(&server.ws_url()).await?;
    let other_id = other.recv_id().await?;
    let (mut chat, chat_id) = connected_chat(&server).await?;

    chat.type_line("hello from the pipe").await?;
    let frame = other.recv_json().await?;
    assert_eq!(frame["type"], "text", "{frame}");
    assert_eq!(frame["data"], json!({"text": "hello from the pipe"}));
    assert!(frame["author"].as_str().is_some_and(|author| author.starts_with(&chat_id)), "{frame}");

    other
        .send_json(&json!({"author": other_id, "type": "text", "data": {"text": "hi terminal"}}))
        .await?;
    let line = chat.stdout_line("hi terminal").await?;
    assert_eq!(line, format!("[{}] hi terminal", &other_id[..8]));

    other.send_json(&json!({"type": "emoji", "data": {"emoji": "🍕"}})).await?;
    assert_eq!(chat.stdout_line("🍕").await?, format!("[{}] 🍕", &other_id[..8]));

    chat.type_line("/emoji").await?;
    chat.stderr_line("/emoji needs an emoji").await?;
    chat.type_line("/emoji 😋").await?;
    let frame = other.recv_json().await?;
    assert_eq!((&frame["type"], &frame["data"]), (&json!("emoji"), &json!({"emoji": "😋"})));

    chat.type_line("/quit").await?;
    assert!(chat.exit().await?.success());
    Ok(())
}

#[tokio::test]
async fn schedules_and_explains_bad_schedules() -> Result<()> {
    let (_server, mut other, mut chat) = chat_and_other_on_lesson05().await?;

    chat.type_line("/schedule days 1 message hi").await?;
    let line = chat.stderr_line("/schedule").await?;
    assert!(line.contains("unknown unit 'days'") && line.contains(EXAMPLE), "{line}");
    chat.type_line("/schedule seconds 1").await?;
    assert!(chat.stderr_line("/schedule").await?.contains("end with: message TEXT"));

    // Nothing was sent for the bad ones: the next frame the other side gets is this one.
    chat.type_line("/schedule seconds 1 message later").await?;
    let frame = other.recv_json().await?;
    assert_eq!(frame["data"], json!({"text": "later"}), "delivered without the schedule");
    // lesson05 delivers a scheduled message to its sender too: the client marks it as its own.
    assert_eq!(chat.stdout_line("later").await?, "[me] later");
    Ok(())
}

#[tokio::test]
async fn follows_random_rooms() -> Result<()> {
    let (_server, mut other, mut chat) = chat_and_other_on_lesson05().await?;

    chat.type_line("/random").await?;
    chat.stdout_line("* waiting for a partner").await?;
    other.send_json(&json!({"channel": "random"})).await?;
    assert_eq!(other.recv_json().await?["status"], "paired");
    chat.stdout_line("* paired with a partner").await?;

    other.send_json(&json!({"channel": "feed"})).await?;
    assert_eq!(other.recv_json().await?["status"], "joined");
    chat.stdout_line("* your partner left").await?;
    chat.type_line("/feed").await?;
    chat.stdout_line("* back in the feed").await?;

    Ok(())
}

#[tokio::test]
async fn a_piped_file_is_sent_in_full_before_exit() -> Result<()> {
    let (_server, mut other, mut chat) = chat_and_other_on_lesson05().await?;

    // Like `printf 'one\ntwo\nthree\n' | chat`: the input ends right after the last line.
    for line in ["one", "two", "/emoji 🎉", "three"] {
        chat.type_line(line).await?;
    }
    chat.close_stdin();
    let status = chat.exit().await?;
    assert!(status.success(), "{status}");

    let mut received = Vec::new();
    for _ in 0..4 {
        let frame: Value = other.recv_json().await?;
        received.push(frame["data"].clone());
    }
    assert_eq!(
        received,
        [
            json!({"text": "one"}),
            json!({"text": "two"}),
            json!({"emoji": "🎉"}),
            json!({"text": "three"})
        ]
    );
    Ok(())
}

#[tokio::test]
async fn prints_error_frames_raw_frames_and_authorless_messages() -> Result<()> {
    // No lesson sends all of these to a client that only sends JSON objects, so a scripted
    // server does: a raw frame (lessons 01-02 relay anything), an error, a message without an
    // author (lesson02 relays what a page sent before it had an id).
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/", listener.local_addr()?);
    let script = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        let mut socket = tokio_tungstenite::accept_async(stream).await?;
        for frame in [
            "plain words".to_owned(),
            json!({"error": "something went wrong"}).to_string(),
            json!({"type": "text", "data": {"text": "no author"}}).to_string(),
        ] {
            socket.send(Message::text(frame)).await?;
        }
        // What chat sends without an id: a message with no author.
        let sent = timeout(WAIT, socket.next()).await?.context("chat hung up")??;
        anyhow::Ok(sent.into_text()?.to_string())
    });

    let mut chat = Chat::start(&url)?;
    assert_eq!(chat.stdout_line("plain words").await?, "~ plain words");
    assert_eq!(chat.stdout_line("something").await?, "! error: something went wrong");
    assert_eq!(chat.stdout_line("no author").await?, "[?] no author");
    chat.type_line("hi without an id").await?;
    let sent: Value = serde_json::from_str(&timeout(WAIT, script).await???)?;
    assert_eq!(sent, json!({"type": "text", "data": {"text": "hi without an id"}}));
    Ok(())
}

#[tokio::test]
async fn unknown_commands_are_refused_with_the_list_of_commands() -> Result<()> {
    let (_server, mut other, mut chat) = chat_and_other_on_lesson05().await?;

    for typo in ["/randon", "/nope please"] {
        chat.type_line(typo).await?;
        let word = typo.split(' ').next().unwrap_or_default();
        chat.stderr_line(&format!("unknown command {word}")).await?;
        chat.stderr_line("/random").await?; // the list of commands follows
        chat.stderr_line("/join ROOM").await?; // with the rooms' commands
    }
    // Neither typo reached anyone: the next frame the other side gets is this one.
    chat.type_line("no typo").await?;
    assert_eq!(other.recv_json().await?["data"], json!({"text": "no typo"}));
    Ok(())
}

#[tokio::test]
async fn raw_mode_sends_lines_as_typed_and_prints_frames_as_they_come() -> Result<()> {
    let server = RunningServer::start(workspace_binary("lesson03")?, &[]).await?;
    let (mut other, other_id) = Connection::join(&server.ws_url()).await?;
    let mut chat = Chat::start_with(&["--raw", &server.ws_url()])?;
    let first = chat.stdout_line(r#"{"id":"#).await?;
    let id: Value = serde_json::from_str(&first)?;
    let id = id["id"].as_str().context("an id")?.to_owned();

    // A lie about the author, sent as typed: lesson03 stamps the real one.
    chat.type_line(r#"{"author":"someone-else","type":"text","data":{"text":"Hello"}}"#).await?;
    let frame = other.recv_json().await?;
    assert_eq!(frame, json!({"author": id, "type": "text", "data": {"text": "Hello"}}));
    // Not JSON, and a /word that is no command in raw mode: both go as they are.
    chat.type_line("hello").await?;
    let error: Value = serde_json::from_str(&chat.stdout_line("error").await?)?;
    assert!(error["error"].is_string(), "{error}");
    other.send_text(json!({"type": "text", "data": {"text": "/randon"}}).to_string()).await?;
    let line = chat.stdout_line("/randon").await?;
    let frame: Value = serde_json::from_str(&line)?;
    assert_eq!(frame["author"], other_id.as_str(), "printed as it came: {line}");
    Ok(())
}

#[tokio::test]
async fn help_addresses_and_connection_errors_read_well() -> Result<()> {
    let (help, _) = output_of(&["--help"]).await?;
    let first = help.lines().next().unwrap_or_default();
    assert!(first.starts_with("chat: talk to a chatterbox server"), "{first}");
    assert!(help.contains("--raw") && help.contains("/schedule"), "{help}");
    assert!(help.contains("--seqs") && help.contains("/delete SEQ"), "{help}");

    let (_, stderr) = output_of(&["http://127.0.0.1:8000/"]).await?;
    assert_eq!(
        stderr.trim_end(),
        "chat: http://127.0.0.1:8000/ is a web address; use ws://127.0.0.1:8000/ for the chat"
    );

    // A port nobody listens on: each cause of the error is said once.
    let free = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/", free.local_addr()?);
    drop(free);
    let (_, stderr) = output_of(&[&url]).await?;
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The finished server: history and resume

/// What chat prints for `earlier` texts from the history, all by `author`, then for a `live`
/// one by `live_author`.
fn earlier_then_live(author: &str, earlier: &[&str], live_author: &str, live: &str) -> Vec<String> {
    let mut lines: Vec<String> =
        earlier.iter().map(|text| format!("(earlier) [{}] {text}", &author[..8])).collect();
    lines.push(format!("[{}] {live}", &live_author[..8]));
    lines
}

#[tokio::test]
async fn history_is_printed_marked_earlier() -> Result<()> {
    let server = finished_server("memory", 0, &[]).await?;
    let earlier = ["said before", "and again"];
    let speaker_id = say_from_elsewhere(&server, &earlier).await?;

    let (mut chat, _) = connected_chat(&server).await?;
    let (mut alice, alice_id) = Connection::join(&server.ws_url()).await?;
    alice.send_json(&message::text("said live")).await?;
    let expected = earlier_then_live(&speaker_id, &earlier, &alice_id, "said live");
    assert_eq!(chat.stdout_lines("said live").await?, expected);
    Ok(())
}

#[tokio::test]
async fn after_a_restart_chat_resumes_with_exactly_what_it_missed() -> Result<()> {
    let database = TempDatabase::new()?;
    let database = database.path();
    // No history for newcomers: only ?after= can bring back what chat missed.
    let quiet = ["--history", "0"];
    let server = finished_server(database, 0, &quiet).await?;
    let port = server.port();
    let (mut other, _) = Connection::join(&server.ws_url()).await?;
    let (mut chat, _) = connected_chat(&server).await?;

    other.send_json(&message::text("before the restart")).await?;
    chat.stdout_line("before the restart").await?;
    // Ours is not sent back to us, so it comes after the last seq chat saw: it will be in what
    // the server sends on resuming, and must not be printed again.
    chat.type_line("mine, before the restart").await?;
    let mine = other.recv_json().await?;
    assert_eq!(mine["data"]["text"], "mine, before the restart", "{mine}");
    let last_seen = mine["seq"].as_u64().context("a seq")? - 1;

    other.close().await?; // so that the server need not wait for it to answer the close
    terminate(server).await?;
    chat.stderr_line("reconnecting in").await?;
    // Said while chat cannot reach the server.
    let missed = ["missed 1", "missed 2", "missed 3"];
    let speaker_id = say_while_away(database, &quiet, &missed).await?;

    let server = finished_server(database, port, &quiet).await?;
    let line = chat.stderr_line("reconnected").await?;
    assert!(line.ends_with(&format!("after #{last_seen}")), "{line}");
    // Once chat has its id it is registered: what is said now comes live.
    let reconnected = chat.stdout_lines("* connected as").await?;
    assert_eq!(reconnected.len(), 1, "printed while reconnecting: {reconnected:?}");
    let (mut other, other_id) = Connection::join(&server.ws_url()).await?;
    other.send_json(&message::text("after the restart")).await?;
    let expected = earlier_then_live(&speaker_id, &missed, &other_id, "after the restart");
    assert_eq!(chat.stdout_lines("after the restart").await?, expected);
    Ok(())
}

#[tokio::test]
async fn a_server_with_fewer_messages_than_chat_saw_starts_its_numbers_again() -> Result<()> {
    let server = finished_server("memory", 0, &[]).await?;
    let port = server.port();
    let (mut other, _) = Connection::join(&server.ws_url()).await?;
    let (mut chat, _) = connected_chat(&server).await?;
    for text in ["one", "two", "three"] {
        other.send_json(&message::text(text)).await?;
    }
    chat.stdout_line("three").await?;

    // Killed, and back with an empty store: its numbers start at 1 again.
    server.stop().await?;
    chat.stderr_line("reconnecting in").await?;
    let server = finished_server("memory", port, &[]).await?;
    chat.stdout_line("* connected as").await?;
    chat.stdout_line("the server's history was reset").await?;
    let (mut other, other_id) = Connection::join(&server.ws_url()).await?;
    other.send_json(&message::text("number one again")).await?;
    let line = chat.stdout_line("again").await?;
    assert_eq!(line, format!("[{}] number one again", &other_id[..8]));
    Ok(())
}

#[tokio::test]
async fn raw_mode_does_not_reconnect() -> Result<()> {
    let server = lesson05().await?;
    let mut chat = Chat::start_with(&["--raw", &server.ws_url()])?;
    chat.stdout_line(r#"{"id":"#).await?;
    server.stop().await?;
    let status = chat.exit().await?;
    assert!(!status.success(), "a lost connection in raw mode is an error: {status}");
    chat.stderr_line("the connection failed").await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The finished server: accounts

/// Signs `username` up with a raw HTTP request (`POST /api/signup`); returns the session
/// cookie (`chatterbox_session=...`).
async fn sign_up(server: &RunningServer, username: &str, password: &str) -> Result<String> {
    let body = json!({"username": username, "password": password}).to_string();
    let authority = format!("127.0.0.1:{}", server.port());
    let response =
        client::http::request(&authority, "POST", "/api/signup", &[], Some(&body)).await?;
    anyhow::ensure!(
        response.status == 201,
        "sign-up answered {}: {}",
        response.status,
        response.body
    );
    let cookie = response.header("set-cookie").and_then(|cookie| cookie.split(';').next());
    Ok(cookie.context("no session cookie")?.to_owned())
}

/// `chat --user USERNAME`, with the password given in `CHATTERBOX_PASSWORD`.
fn chat_as(server: &RunningServer, username: &str, password: &str) -> Result<Chat> {
    Chat::start_with_env(
        &["--user", username, &server.ws_url()],
        &[("CHATTERBOX_PASSWORD", password)],
    )
}

#[tokio::test]
async fn with_user_chat_speaks_as_the_account_and_shows_names() -> Result<()> {
    let server = finished_server("memory", 0, &[]).await?;
    sign_up(&server, "ada", "correct horse").await?;
    let bob_cookie = sign_up(&server, "bob", "battery staple").await?;
    let (mut guest, guest_id) = Connection::join(&server.ws_url()).await?;

    let mut chat = chat_as(&server, "ada", "correct horse")?;
    chat.stdout_line("* logged in as ada (@ada)").await?;
    chat.type_line("hello as ada").await?;
    let frame = guest.recv_json().await?;
    assert_eq!(
        (&frame["name"], &frame["data"]["text"]),
        (&json!("ada"), &json!("hello as ada")),
        "{frame}"
    );

    // Someone else's account is shown by name, a guest by the short id.
    let mut bob = Connection::connect_with_cookie(&server.ws_url(), Some(&bob_cookie)).await?;
    bob.recv_id().await?;
    bob.send_json(&message::text("hi from bob")).await?;
    assert_eq!(chat.stdout_line("hi from bob").await?, "[bob] hi from bob");
    guest.send_json(&message::text("hi from a guest")).await?;
    assert_eq!(
        chat.stdout_line("hi from a guest").await?,
        format!("[{}] hi from a guest", &guest_id[..8])
    );

    // /name changes the display name: the next message carries it.
    chat.type_line("/name Ada Lovelace").await?;
    chat.stdout_line("* your name is now Ada Lovelace").await?;
    chat.type_line("renamed").await?;
    let frame = loop {
        let frame = guest.recv_json().await?;
        if frame["data"]["text"] == "renamed" {
            break frame;
        }
    };
    assert_eq!(frame["name"], "Ada Lovelace", "{frame}");
    // A name the server refuses is explained with its reason.
    chat.type_line(&format!("/name {}", "x".repeat(41))).await?;
    chat.stderr_line("! /name: a name is 1 to 40 characters").await?;

    chat.type_line("/quit").await?;
    assert!(chat.exit().await?.success());
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_or_no_account_is_explained() -> Result<()> {
    let server = finished_server("memory", 0, &[]).await?;
    sign_up(&server, "ada", "correct horse").await?;

    let mut chat = chat_as(&server, "ada", "not the password")?;
    chat.stderr_line("logging in as ada failed: wrong username or password").await?;
    assert!(!chat.exit().await?.success());

    let (mut chat, _) = connected_chat(&server).await?;
    chat.type_line("/name Somebody").await?;
    chat.stderr_line("! /name needs an account: start chat with --user NAME").await?;
    chat.type_line("/quit").await?;
    assert!(chat.exit().await?.success());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The finished server: named rooms, presence, who and taking a message back

/// Creates the named room `name` as the account whose session `cookie` is (`POST /api/rooms`).
async fn create_room(server: &RunningServer, cookie: &str, name: &str, topic: &str) -> Result<()> {
    let body = json!({"name": name, "topic": topic}).to_string();
    let authority = format!("127.0.0.1:{}", server.port());
    let headers = [("Cookie", cookie)];
    let response =
        client::http::request(&authority, "POST", "/api/rooms", &headers, Some(&body)).await?;
    anyhow::ensure!(
        response.status == 201,
        "creating {name} answered {}: {}",
        response.status,
        response.body
    );
    Ok(())
}

/// A guest connection that has entered the named room `room`; returns it and its id.
async fn guest_in_room(server: &RunningServer, room: &str) -> Result<(Connection, String)> {
    let (mut guest, id) = Connection::join(&server.ws_url()).await?;
    guest.send_json(&json!({"channel": "room", "room": room})).await?;
    while guest.recv_json().await?["status"] != "joined" {}
    Ok((guest, id))
}

/// The next frame on `connection` that has `key`, skipping the others.
async fn next_with(connection: &mut Connection, key: &str) -> Result<Value> {
    loop {
        let frame = connection.recv_json().await?;
        if frame.get(key).is_some() {
            return Ok(frame);
        }
    }
}

#[tokio::test]
async fn rooms_are_listed_joined_and_talked_in_with_presence_and_who() -> Result<()> {
    let server = finished_server("memory", 0, &[]).await?;
    let cookie = sign_up(&server, "ada", "correct horse").await?;
    create_room(&server, &cookie, "rust", "all things crab").await?;
    let (mut member, member_id) = guest_in_room(&server, "rust").await?;
    let (mut feed, _) = Connection::join(&server.ws_url()).await?;
    let (mut chat, chat_id) = connected_chat(&server).await?;

    chat.type_line("/rooms").await?;
    assert_eq!(chat.stdout_line("* room ").await?, "* room rust (1 online): all things crab");

    chat.type_line("/join rust").await?;
    let joined = chat.stdout_line("* joined").await?;
    assert_eq!(joined, format!("* joined rust: 2 here: {}, me", &member_id[..8]));
    let presence = next_with(&mut member, "presence").await?;
    let newcomer = presence["presence"]["joined"]["id"].as_str().unwrap_or_default();
    assert!(newcomer.starts_with(&chat_id), "{presence}");

    // Said in the room: the member hears it.
    chat.type_line("hello room").await?;
    let frame = next_with(&mut member, "type").await?;
    assert_eq!(frame["data"]["text"], "hello room", "{frame}");

    chat.type_line("/who").await?;
    let who = chat.stdout_line(" here: ").await?;
    assert_eq!(who, format!("* 2 here: {}, me", &member_id[..8]));

    // Others coming and going are told as `*` lines.
    let (visitor, visitor_id) = guest_in_room(&server, "rust").await?;
    assert_eq!(chat.stdout_line("joined").await?, format!("* {} joined", &visitor_id[..8]));
    visitor.close().await?;
    assert_eq!(chat.stdout_line("left").await?, format!("* {} left", &visitor_id[..8]));

    // Back in the feed: what chat says there is the first message the feed hears, so
    // "hello room" never reached it.
    chat.type_line("/feed").await?;
    chat.stdout_line("* back in the feed").await?;
    chat.type_line("hello feed").await?;
    let frame = next_with(&mut feed, "type").await?;
    assert_eq!(frame["data"]["text"], "hello feed", "{frame}");
    // The member saw the visitor come and go, then chat leave.
    let chat_left = loop {
        let presence = next_with(&mut member, "presence").await?;
        let left = presence["presence"]["left"]["id"].as_str().unwrap_or_default().to_owned();
        if left.starts_with(&chat_id) {
            break left;
        }
    };
    assert_eq!(chat_left.len(), 32, "{chat_left}");

    // A room that does not exist, and /join without a name.
    chat.type_line("/join nowhere").await?;
    chat.stdout_line("! error: there is no room named").await?;
    chat.type_line("/join").await?;
    chat.stderr_line("! /join needs a room name").await?;
    chat.type_line("/quit").await?;
    assert!(chat.exit().await?.success());
    Ok(())
}

#[tokio::test]
async fn with_seqs_a_message_can_be_taken_back_and_others_see_it_go() -> Result<()> {
    let server = finished_server("memory", 0, &[]).await?;
    let url = server.ws_url();
    let mut ada = Chat::start_with(&["--seqs", &url])?;
    let ada_id = ada.stdout_line("* connected as ").await?.replace("* connected as ", "");
    let mut bob = Chat::start_with(&["--seqs", &url])?;
    bob.stdout_line("* connected as ").await?;

    ada.type_line("take this back").await?;
    let sent = ada.stdout_line("* sent as #").await?;
    let seq: u64 = sent.trim_start_matches("* sent as #").parse().context(sent.clone())?;
    let seen = bob.stdout_line("take this back").await?;
    assert_eq!(seen, format!("#{seq} [{ada_id}] take this back"));

    // Someone else's message is not theirs to take back.
    bob.type_line(&format!("/delete {seq}")).await?;
    let refused = bob.stdout_line("! error").await?;
    assert_eq!(refused, format!("! error: delete: message {seq} is not yours"));

    ada.type_line(&format!("/delete {seq}")).await?;
    assert_eq!(bob.stdout_line("deleted").await?, format!("* message #{seq} deleted"));
    assert_eq!(ada.stdout_line("deleted").await?, format!("* message #{seq} deleted"));

    ada.type_line("/delete soon").await?;
    ada.stderr_line("! /delete needs a message number").await?;
    ada.type_line("/quit").await?;
    assert!(ada.exit().await?.success());
    Ok(())
}

/// Says `text` in `connection`'s channel and waits for the server's receipt: it is numbered.
async fn say_numbered(connection: &mut Connection, text: &str) -> Result<u64> {
    let mut frame = message::text(text);
    frame["ack"] = json!(true);
    connection.send_json(&frame).await?;
    let sent = next_with(connection, "sent").await?;
    sent["sent"]["seq"].as_u64().context("a seq in the receipt")
}

#[tokio::test]
async fn after_a_restart_chat_goes_back_into_its_room_with_what_it_missed_there() -> Result<()> {
    let database = TempDatabase::new()?;
    let database = database.path();
    // A newcomer to the feed gets its newest 5: on the way back into the room they are not
    // printed.
    let flags = ["--history", "5"];
    let server = finished_server(database, 0, &flags).await?;
    let port = server.port();
    let cookie = sign_up(&server, "ada", "correct horse").await?;
    create_room(&server, &cookie, "rust", "").await?;
    let (mut member, _) = guest_in_room(&server, "rust").await?;
    let (mut chat, _) = connected_chat(&server).await?;
    chat.type_line("/join rust").await?;
    chat.stdout_line("* joined rust").await?;
    member.send_json(&message::text("before the restart")).await?;
    chat.stdout_line("before the restart").await?;
    // Ours comes after the last seq chat saw: the resumed history has it, not to be printed.
    chat.type_line("mine, before the restart").await?;
    let mine = next_with(&mut member, "type").await?;
    assert_eq!(mine["data"]["text"], "mine, before the restart", "{mine}");
    let last_seen = mine["seq"].as_u64().context("a seq")? - 1;
    member.close().await?;
    chat.stdout_line(" left").await?;
    terminate(server).await?;
    chat.stderr_line("reconnecting in").await?;

    // While chat cannot reach the server: said in the room, and in the feed.
    let meanwhile = finished_server(database, 0, &flags).await?;
    let (mut speaker, speaker_id) = guest_in_room(&meanwhile, "rust").await?;
    for text in ["missed 1", "missed 2"] {
        say_numbered(&mut speaker, text).await?;
    }
    speaker.close().await?;
    say_from_elsewhere(&meanwhile, &["in the feed 1", "in the feed 2"]).await?;
    terminate(meanwhile).await?;

    let server = finished_server(database, port, &flags).await?;
    let line = chat.stderr_line("reconnected").await?;
    assert!(line.ends_with(&format!("back into rust, asking for the messages after #{last_seen}")));
    let back = chat.stdout_lines("* joined rust").await?;
    assert_eq!(back.len(), 2, "only the id and the room, not the feed: {back:?}");
    assert_eq!(back[1], "* joined rust: 1 here: me");
    let (mut other, other_id) = guest_in_room(&server, "rust").await?;
    other.send_json(&message::text("after the restart")).await?;
    let (speaker, other) = (&speaker_id[..8], &other_id[..8]);
    let expected = [
        format!("(earlier) [{speaker}] missed 1"),
        format!("(earlier) [{speaker}] missed 2"),
        format!("* {other} joined"),
        format!("[{other}] after the restart"),
    ];
    assert_eq!(chat.stdout_lines("after the restart").await?, expected);
    Ok(())
}

/// `PATCH /api/me` as the account whose session `cookie` is.
async fn rename(server: &RunningServer, cookie: &str, name: &str) -> Result<()> {
    let body = json!({"name": name}).to_string();
    let authority = format!("127.0.0.1:{}", server.port());
    let headers = [("Cookie", cookie)];
    let response =
        client::http::request(&authority, "PATCH", "/api/me", &headers, Some(&body)).await?;
    anyhow::ensure!(response.status == 200, "renaming answered {}", response.status);
    Ok(())
}

#[tokio::test]
async fn profile_changes_are_shown_and_the_new_name_is_used() -> Result<()> {
    let server = finished_server("memory", 0, &[]).await?;
    let ada_cookie = sign_up(&server, "ada", "correct horse").await?;
    let bob_cookie = sign_up(&server, "bob", "battery staple").await?;
    let mut chat = chat_as(&server, "ada", "correct horse")?;
    chat.stdout_line("* logged in as ada").await?;
    let mut bob = Connection::connect_with_cookie(&server.ws_url(), Some(&bob_cookie)).await?;
    bob.recv_id().await?;
    bob.send_json(&message::text("hi from bob")).await?;
    chat.stdout_line("[bob] hi from bob").await?;

    // Someone else's new name, told live, and used for what follows.
    rename(&server, &bob_cookie, "Robert").await?;
    assert_eq!(chat.stdout_line(" is now ").await?, "* bob is now Robert");
    bob.send_json(&message::text("renamed")).await?;
    assert_eq!(chat.stdout_line("renamed").await?, "[Robert] renamed");

    // Our own, changed elsewhere (the page, say), and with /name: said once.
    rename(&server, &ada_cookie, "Countess").await?;
    assert_eq!(chat.stdout_line("your name").await?, "* your name is now Countess");
    chat.type_line("/name Ada Lovelace").await?;
    chat.stdout_line("* your name is now Ada Lovelace").await?;
    chat.type_line("/who").await?;
    let lines = chat.stdout_lines(" here: ").await?;
    assert_eq!(lines.len(), 1, "the profile frame of our /name is not printed again: {lines:?}");
    chat.type_line("/quit").await?;
    assert!(chat.exit().await?.success());
    Ok(())
}

#[tokio::test]
async fn a_room_gone_after_a_restart_leaves_chat_in_the_feed() -> Result<()> {
    // Nothing on disk: after the restart the room is gone.
    let server = finished_server("memory", 0, &[]).await?;
    let port = server.port();
    let cookie = sign_up(&server, "ada", "correct horse").await?;
    create_room(&server, &cookie, "rust", "").await?;
    let (mut chat, _) = connected_chat(&server).await?;
    chat.type_line("/join rust").await?;
    chat.stdout_line("* joined rust").await?;
    terminate(server).await?;
    chat.stderr_line("reconnecting in").await?;

    let server = finished_server("memory", port, &[]).await?;
    chat.stdout_line("! error: there is no room named \"rust\"").await?;
    chat.stdout_line("* back in the feed").await?;
    let (mut feed, _) = Connection::join(&server.ws_url()).await?;
    chat.type_line("in the feed again").await?;
    let frame = next_with(&mut feed, "type").await?;
    assert_eq!(frame["data"]["text"], "in the feed again", "{frame}");
    Ok(())
}
