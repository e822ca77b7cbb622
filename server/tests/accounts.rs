//! Accounts over real HTTP and WebSocket, against the server binary: sign-up, login, logout,
//! the profile and the password; the rules and their status codes; the login rate; the
//! session cookie and its revocation; sessions across a restart; cross-origin requests; and
//! a WebSocket opened with a session speaking as its account, while guests stay as they were.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use client::message::text;
use common::api::*;
use common::{connect, recv_json, start};
use futures::SinkExt;
use serde_json::json;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[tokio::test]
async fn sign_up_log_in_rename_change_password_and_log_out() -> Result<()> {
    let server = start(&[]).await?;
    let created = signup(&server, "Ada_L", "correct horse").await?;
    assert_eq!(created.status, 201, "{created:?}");
    let profile = created.json()?;
    let id = profile["id"].as_str().context("no id")?.to_owned();
    assert!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{id}"
    );
    assert_eq!(
        profile,
        json!({"id": id, "username": "ada_l", "name": "ada_l", "avatar": format!("/avatars/{id}")})
    );

    // The cookie: 256 bits in hex, HttpOnly, SameSite=Lax, Path=/, and no Secure by default.
    let set_cookie = created.header("set-cookie").context("no cookie")?.to_owned();
    let cookie = created.cookie()?;
    let token = cookie.strip_prefix("chatterbox_session=").context("cookie name")?;
    assert_eq!(token.len(), 64, "{set_cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(
            set_cookie.split("; ").any(|part| part == attribute),
            "{attribute} missing: {set_cookie}"
        );
    }
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");

    let mine = me(&server, &cookie).await?;
    assert_eq!((mine.status, mine.json()?), (200, profile.clone()));

    // A new display name: trimmed; bad ones refused.
    let rename = |name: &str| {
        let body = json!({"name": name}).to_string();
        let cookie = cookie.clone();
        let port = server.port();
        async move { request(port, "PATCH", "/api/me", &[("Cookie", &cookie)], Some(&body)).await }
    };
    let renamed = rename("  Ada Lovelace ").await?;
    assert_eq!((renamed.status, renamed.json()?["name"].clone()), (200, json!("Ada Lovelace")));
    for bad in ["", "   ", &"x".repeat(41), "a\u{202E}b", "tab\there"] {
        let refused = rename(bad).await?;
        assert_eq!(refused.status, 400, "{bad:?}: {refused:?}");
    }
    assert_eq!(me(&server, &cookie).await?.json()?["name"], "Ada Lovelace");

    // Logging in again, in any case, gives another session; the old one still works.
    let again = login(&server, "ADA_L", "correct horse").await?;
    assert_eq!(again.status, 200, "{again:?}");
    let second = again.cookie()?;
    assert_ne!(second, cookie);
    assert_eq!(again.json()?["name"], "Ada Lovelace");

    // Changing the password: the current one must be right; other sessions end.
    let change = |current: &str, new: &str| {
        let body = json!({"current": current, "new": new}).to_string();
        let cookie = cookie.clone();
        let port = server.port();
        async move {
            request(port, "POST", "/api/me/password", &[("Cookie", &cookie)], Some(&body)).await
        }
    };
    assert_eq!(change("wrong horse", "battery staple").await?.status, 403);
    assert_eq!(change("correct horse", "short").await?.status, 400);
    assert_eq!(change("correct horse", "battery staple").await?.status, 204);
    assert_eq!(me(&server, &second).await?.status, 401, "the other session was revoked");
    assert_eq!(me(&server, &cookie).await?.status, 200, "this one goes on");
    assert_eq!(login(&server, "ada_l", "correct horse").await?.status, 401);
    assert_eq!(login(&server, "ada_l", "battery staple").await?.status, 200);

    // Logging out revokes the session on the server: the same token no longer works.
    let out = post(&server, "/api/logout", &[("Cookie", &cookie)], &json!({})).await?;
    assert_eq!(out.status, 204);
    assert!(out.header("set-cookie").is_some_and(|set| set.contains("Max-Age=0")), "{out:?}");
    assert_eq!(me(&server, &cookie).await?.status, 401);
    assert_eq!(me(&server, "chatterbox_session=nonsense").await?.status, 401);
    assert_eq!(request(server.port(), "GET", "/api/me", &[], None).await?.status, 401);
    Ok(())
}

#[tokio::test]
async fn the_rules_and_their_status_codes() -> Result<()> {
    let server = start(&["--max-json-bytes", "2048"]).await?;
    account(&server, "taken").await?;
    let taken = signup(&server, "TAKEN", "a fine password").await?;
    assert_eq!((taken.status, taken.error().as_str()), (409, "that username is taken"));
    for (username, password) in [
        ("ab", "a fine password"),
        (&"a".repeat(33), "a fine password"),
        ("with space", "a fine password"),
        ("dot.ted", "a fine password"),
        ("fine", "1234567"),
        ("fine", &"x".repeat(1025)),
    ] {
        let refused = signup(&server, username, password).await?;
        assert_eq!(refused.status, 400, "{username:?} {password:?}: {refused:?}");
        assert!(!refused.error().is_empty(), "a reason: {refused:?}");
    }
    assert_eq!(signup(&server, &"a".repeat(32), &"x".repeat(1024)).await?.status, 201);

    // Bad JSON: 400 with a reason; too large a body: 413.
    let bad = request(server.port(), "POST", "/api/signup", &[], Some("{\"username\": ")).await?;
    assert_eq!(bad.status, 400);
    assert!(bad.error().starts_with("bad JSON"), "{bad:?}");
    let missing = post(&server, "/api/signup", &[], &json!({"username": "x"})).await?;
    assert!(missing.error().contains("missing field"), "{missing:?}");
    let huge = json!({"username": "huge", "password": "x".repeat(3000)});
    assert_eq!(post(&server, "/api/signup", &[], &huge).await?.status, 413);
    // Without a length given, the limit holds while the body is read.
    let chunk = format!("{{\"username\": \"huge\", \"password\": \"{}\"}}", "x".repeat(3000));
    let chunked = format!(
        "POST /api/signup HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    assert_eq!(exchange(server.port(), chunked.as_bytes()).await?.status, 413);

    // Unknown user and wrong password: the same 401, the same body.
    let unknown = login(&server, "nobody", "a fine password").await?;
    let wrong = login(&server, "taken", "a wrong password").await?;
    assert_eq!((unknown.status, wrong.status), (401, 401));
    assert_eq!(unknown.body, wrong.body);
    assert!(unknown.header("set-cookie").is_none());

    assert_eq!(request(server.port(), "GET", "/api/nothing", &[], None).await?.status, 404);
    assert_eq!(request(server.port(), "GET", "/api/login", &[], None).await?.status, 405);
    assert_eq!(request(server.port(), "DELETE", "/api/me", &[], None).await?.status, 405);
    Ok(())
}

#[tokio::test]
async fn logins_over_the_rate_get_429_per_username_and_per_address() -> Result<()> {
    let server = start(&[
        "--login-burst-per-username",
        "3",
        "--login-per-minute-per-username",
        "0",
        "--login-burst-per-address",
        "5",
        "--login-per-minute-per-address",
        "0",
    ])
    .await?;
    for _ in 0..3 {
        assert_eq!(login(&server, "victim", "guess guess").await?.status, 401);
    }
    let limited = login(&server, "victim", "guess guess").await?;
    assert_eq!(limited.status, 429, "{limited:?}");
    assert!(limited.header("retry-after").is_some());
    // Another username from the same address still has tries, up to the address's burst.
    assert_eq!(login(&server, "other", "guess guess").await?.status, 401);
    assert_eq!(login(&server, "third", "guess guess").await?.status, 401);
    assert_eq!(
        login(&server, "fourth", "guess guess").await?.status,
        429,
        "the address's burst is spent"
    );
    assert_eq!(signup(&server, "newcomer", "a fine password").await?.status, 429);
    Ok(())
}

#[tokio::test]
async fn secure_cookies_with_the_flag() -> Result<()> {
    let server = start(&["--secure-cookies"]).await?;
    let created = signup(&server, "ada", "a fine password").await?;
    let set_cookie = created.header("set-cookie").context("no cookie")?;
    assert!(set_cookie.split("; ").any(|part| part == "Secure"), "{set_cookie}");
    Ok(())
}

#[tokio::test]
async fn a_session_survives_a_restart_with_its_database() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("accounts.db");
    let database = path.to_str().context("a UTF-8 path")?;
    let server = start(&["--database", database]).await?;
    let (cookie, profile) = account(&server, "ada").await?;
    let (mut socket, _, _) = account_socket(&server, &cookie).await?;
    socket.send(Message::text(text("kept").to_string())).await?;
    // Wait until it has been fanned out (and so handed to the store).
    let mut guest = connect(&server).await?;
    guest.conn.send_json(&text("after")).await?;
    next_json(&mut socket).await?;
    // On disk within 100 ms (the store's promise); sessions are written when they are made.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop().await?; // SIGKILL

    let server = start(&["--database", database]).await?;
    let mine = me(&server, &cookie).await?;
    assert_eq!(
        (mine.status, mine.json()?),
        (200, profile.clone()),
        "the same account, the same id"
    );
    let (mut socket, id, _) = account_socket(&server, &cookie).await?;
    assert_eq!(id["id"], profile["id"]);
    let replayed = next_json(&mut socket).await?;
    assert_eq!(replayed["data"]["text"], "kept", "{replayed}");
    assert_eq!(
        (replayed["author"].clone(), replayed["name"].clone()),
        (profile["id"].clone(), json!("ada"))
    );
    assert_eq!(replayed["history"], true);
    Ok(())
}

#[tokio::test]
async fn a_version_1_database_is_upgraded_in_place_to_the_newest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("v1.db");
    {
        // The version 1 schema, as the server before accounts wrote it, with one message.
        let connection = rusqlite::Connection::open(&path)?;
        connection.execute_batch(
            "CREATE TABLE messages (channel TEXT NOT NULL, seq INTEGER NOT NULL, author TEXT NOT NULL,
                 type TEXT NOT NULL, body TEXT NOT NULL, at_ms INTEGER NOT NULL,
                 late INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (channel, seq)) WITHOUT ROWID;
             CREATE TABLE channels (name TEXT PRIMARY KEY, reserved INTEGER NOT NULL);
             CREATE TABLE schedules (id INTEGER PRIMARY KEY, due_ms INTEGER NOT NULL,
                 channel TEXT NOT NULL, author TEXT NOT NULL, type TEXT NOT NULL,
                 body TEXT NOT NULL, firing INTEGER NOT NULL DEFAULT 0);
             INSERT INTO messages VALUES ('feed', 1, 'abcdef', 'text', 'from before', 0, 0);
             INSERT INTO channels VALUES ('feed', 1);
             PRAGMA application_id = 1128419160;
             PRAGMA user_version = 1;",
        )?;
    }
    let server = start(&["--database", path.to_str().context("a UTF-8 path")?]).await?;
    let mut guest = connect(&server).await?;
    let old = recv_json(&mut guest.conn).await?;
    assert_eq!(
        (old["data"]["text"].clone(), old["author"].clone()),
        (json!("from before"), json!("abcdef"))
    );
    assert!(old.get("name").is_none(), "{old}");
    account(&server, "ada").await?;
    server.stop().await?;
    let version: i64 =
        rusqlite::Connection::open(&path)?
            .query_row("PRAGMA user_version", [], |row| row.get(0))?;
    assert_eq!(version, server::sqlite::SCHEMA_VERSION, "every step up to the newest");
    Ok(())
}

#[tokio::test]
async fn a_foreign_origin_with_the_cookie_is_refused_for_the_api_and_the_socket() -> Result<()> {
    let server = start(&["--allow-origin", "https://friend.example"]).await?;
    let (cookie, _) = account(&server, "ada").await?;
    let own = format!("http://127.0.0.1:{}", server.port());
    let get_me = |origin: &str| {
        let (cookie, origin, port) = (cookie.clone(), origin.to_owned(), server.port());
        async move {
            request(port, "GET", "/api/me", &[("Cookie", &cookie), ("Origin", &origin)], None).await
        }
    };
    let refused = get_me("http://evil.example").await?;
    assert_eq!((refused.status, refused.error().as_str()), (403, "cross-origin request refused"));
    let logout = post(
        &server,
        "/api/logout",
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        &json!({}),
    )
    .await?;
    assert_eq!(logout.status, 403, "a foreign page cannot log you out either");
    assert_eq!(get_me(&own).await?.status, 200);
    assert_eq!(get_me("https://friend.example").await?.status, 200, "--allow-origin");
    assert_eq!(me(&server, &cookie).await?.status, 200, "no Origin: not from a page");

    let upgrade =
        open_socket(&server, &[("Cookie", &cookie), ("Origin", "http://evil.example")]).await?;
    assert_eq!(upgrade.err(), Some(403));
    for origin in [own.as_str(), "https://friend.example"] {
        let opened = open_socket(&server, &[("Cookie", &cookie), ("Origin", origin)]).await?;
        assert!(opened.is_ok(), "{origin} was refused");
    }
    // A guest from another site is let in as before: there is no session to steal.
    let guest = open_socket(&server, &[("Origin", "http://evil.example")]).await?;
    assert!(guest.is_ok());
    Ok(())
}

#[tokio::test]
async fn a_socket_with_a_session_speaks_as_its_account() -> Result<()> {
    let server = start(&[]).await?;
    let (cookie, profile) = account(&server, "ada").await?;
    let rename = json!({"name": "Ada"}).to_string();
    request(server.port(), "PATCH", "/api/me", &[("Cookie", &cookie)], Some(&rename)).await?;
    let mut guest = connect(&server).await?;

    let (mut first_tab, id, me_frame) = account_socket(&server, &cookie).await?;
    assert_eq!(id, json!({"id": profile["id"]}), "exactly one key: the account's id");
    let avatar = format!("/avatars/{}", profile["id"].as_str().unwrap_or_default());
    assert_eq!(
        me_frame,
        json!({"me": {"id": profile["id"], "username": "ada", "name": "Ada", "avatar": avatar}})
    );
    let (mut second_tab, second_id, _) = account_socket(&server, &cookie).await?;
    assert_eq!(second_id, id, "two tabs, one id");

    first_tab.send(Message::text(text("from tab one").to_string())).await?;
    let seen = recv_json(&mut guest.conn).await?;
    assert_eq!(seen["author"], profile["id"]);
    assert_eq!(seen["name"], "Ada");
    assert_eq!(seen["data"]["text"], "from tab one");
    let other_tab = next_json(&mut second_tab).await?;
    assert_eq!(
        (other_tab["author"].clone(), other_tab["name"].clone()),
        (profile["id"].clone(), json!("Ada"))
    );

    second_tab.send(Message::text(text("from tab two").to_string())).await?;
    let seen = recv_json(&mut guest.conn).await?;
    assert_eq!(seen["author"], profile["id"], "one author for both tabs");
    let in_first_tab = next_json(&mut first_tab).await?;
    assert_eq!(in_first_tab["data"]["text"], "from tab two", "each tab sees the other's messages");

    // A rename reaches the next message of an open socket.
    let rename = json!({"name": "Countess"}).to_string();
    request(server.port(), "PATCH", "/api/me", &[("Cookie", &cookie)], Some(&rename)).await?;
    // Everyone in the feed, where the tabs are, is told (profile.rs has the details).
    assert_eq!(recv_json(&mut guest.conn).await?["profile"]["name"], "Countess");
    for tab in [&mut first_tab, &mut second_tab] {
        assert_eq!(next_json(tab).await?["profile"]["name"], "Countess");
    }
    first_tab.send(Message::text(text("renamed").to_string())).await?;
    assert_eq!(recv_json(&mut guest.conn).await?["name"], "Countess");

    // A scheduled message carries the name too.
    first_tab.send(Message::text(text("/schedule seconds 1 message later").to_string())).await?;
    let scheduled = recv_json(&mut guest.conn).await?;
    assert_eq!(scheduled["data"]["text"], "later");
    assert_eq!(
        (scheduled["author"].clone(), scheduled["name"].clone()),
        (profile["id"].clone(), json!("Countess"))
    );
    assert_eq!(next_json(&mut second_tab).await?["data"]["text"], "renamed");
    for tab in [&mut first_tab, &mut second_tab] {
        assert_eq!(next_json(tab).await?["data"]["text"], "later", "both tabs get it");
    }

    // A guest is as before: a fresh id, no me frame, no name on its messages.
    guest.conn.send_json(&text("guest here")).await?;
    let from_guest = next_json(&mut first_tab).await?;
    assert_eq!(from_guest["author"], guest.id.as_str());
    assert!(from_guest.get("name").is_none(), "{from_guest}");
    assert_ne!(guest.id, profile["id"].as_str().unwrap_or_default());

    // History replays the account's messages with their names.
    let mut newcomer = connect(&server).await?;
    let replayed = recv_json(&mut newcomer.conn).await?;
    assert_eq!(
        (replayed["name"].clone(), replayed["history"].clone()),
        (json!("Ada"), json!(true))
    );

    // A logged-out cookie opens a guest socket: a fresh id, no me frame.
    post(&server, "/api/logout", &[("Cookie", &cookie)], &json!({})).await?;
    let (mut stale, stale_id) = socket_with_cookie(&server, &cookie).await?;
    assert_ne!(stale_id["id"], profile["id"]);
    let after = next_json(&mut stale).await?;
    assert!(after.get("me").is_none(), "{after}");
    Ok(())
}

#[tokio::test]
async fn a_session_unused_for_the_idle_time_has_ended() -> Result<()> {
    let server = start(&["--session-idle-days", "0"]).await?;
    let (cookie, profile) = account(&server, "ada").await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(me(&server, &cookie).await?.status, 401);
    // The socket is a guest's: a fresh id, and no {"me"} frame (the feed's history is empty).
    let (mut socket, id) = socket_with_cookie(&server, &cookie).await?;
    assert_ne!(id["id"], profile["id"]);
    socket.send(Message::text(text("as a guest").to_string())).await?;
    let echo = timeout(Duration::from_millis(300), next_json(&mut socket)).await;
    assert!(echo.is_err(), "a guest gets no {{\"me\"}} frame, nor its own message: {echo:?}");
    Ok(())
}

/// Runs the server with every log line (`--log trace`) into a file, goes through every
/// endpoint and a socket with the session, and checks that neither the password nor the
/// token appears in the log.
#[tokio::test]
async fn passwords_and_tokens_are_never_logged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("server.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--log", "trace", "--database", "memory"])
        .env("PORT", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path)?)
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout);
    let mut first = String::new();
    timeout(WAIT, tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut first)).await??;
    let port: u16 = first.trim().rsplit(':').next().context("no port")?.parse()?;

    let password = "unforgettable-secret-1";
    let new_password = "unforgettable-secret-2";
    let credentials = json!({"username": "ada", "password": password}).to_string();
    let created = request(port, "POST", "/api/signup", &[], Some(&credentials)).await?;
    assert_eq!(created.status, 201);
    let wrong = json!({"username": "ada", "password": "wrong-secret-3"}).to_string();
    assert_eq!(request(port, "POST", "/api/login", &[], Some(&wrong)).await?.status, 401);
    let logged_in = request(port, "POST", "/api/login", &[], Some(&credentials)).await?;
    let cookie = logged_in.cookie()?;
    let token = cookie.split('=').nth(1).context("no token")?.to_owned();
    let change = json!({"current": password, "new": new_password}).to_string();
    let changed =
        request(port, "POST", "/api/me/password", &[("Cookie", &cookie)], Some(&change)).await?;
    assert_eq!(changed.status, 204);
    let mut request_ws = format!("ws://127.0.0.1:{port}/").into_client_request()?;
    request_ws.headers_mut().insert("Cookie", HeaderValue::from_str(&cookie)?);
    let (mut socket, _) = timeout(WAIT, tokio_tungstenite::connect_async(request_ws)).await??;
    next_json(&mut socket).await?;
    socket.send(Message::text(text("hello").to_string())).await?;
    request(port, "POST", "/api/logout", &[("Cookie", &cookie)], None).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().await?;

    let log = std::fs::read_to_string(&log_path)?;
    ensure!(log.lines().count() > 10, "the log is nearly empty: {log}");
    for secret in [password, new_password, "wrong-secret-3", &token] {
        ensure!(!log.contains(secret), "{secret:?} is in the log");
    }
    Ok(())
}

#[tokio::test]
async fn one_tab_of_an_account_takes_back_what_the_other_tab_said_but_a_guest_cannot() -> Result<()>
{
    let server = start(&[]).await?;
    let (cookie, profile) = account(&server, "ada").await?;
    let mut guest = connect(&server).await?;
    let (mut first_tab, _, _) = account_socket(&server, &cookie).await?;
    let (mut second_tab, _, _) = account_socket(&server, &cookie).await?;
    let mut asked = text("from tab one");
    asked["ack"] = json!(true);
    first_tab.send(Message::text(asked.to_string())).await?;
    let seq = next_json(&mut first_tab).await?["sent"]["seq"].clone();
    assert!(seq.is_u64(), "a receipt with the seq");
    assert_eq!(next_json(&mut second_tab).await?["seq"], seq);
    let said = recv_json(&mut guest.conn).await?;
    assert_eq!((said["seq"].clone(), said["author"].clone()), (seq.clone(), profile["id"].clone()));

    // The guest's id is not the account's: not its message.
    guest.conn.send_json(&json!({"delete": seq})).await?;
    let refused = recv_json(&mut guest.conn).await?;
    assert_eq!(refused, json!({"error": format!("delete: message {seq} is not yours")}));

    second_tab.send(Message::text(json!({"delete": seq}).to_string())).await?;
    let deleted = json!({"deleted": {"channel": "feed", "seq": seq}});
    assert_eq!(recv_json(&mut guest.conn).await?, deleted);
    for tab in [&mut first_tab, &mut second_tab] {
        assert_eq!(next_json(tab).await?, deleted, "both tabs are told");
    }
    Ok(())
}
