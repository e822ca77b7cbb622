//! The web page in a real browser: headless Chromium driven over WebDriver (`fantoccini` talking
//! to `chromedriver`), against the real lesson binaries and the finished server.
//!
//! Each test starts its own chromedriver (`--port=0`: it prints the port it got) and one
//! Chromium per page, each with a fresh profile. Every wait polls a DOM condition with a
//! deadline; none sleeps a fixed time. Each scenario leaves a PNG in `target/screenshots/`;
//! with `CHATTERBOX_UPDATE_SCREENSHOT=1` the named room one is also written to
//! `docs/screenshot.png` for the README.
//!
//! Without Chromium and chromedriver the tests say they were skipped, and pass; with the
//! environment variable `CI` set they fail instead, so CI cannot silently skip them.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use client::running::workspace_binary;
use client::schedule;
use client::{Connection, RunningServer};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

mod common;
use common::{TempDatabase, finished_server, say_from_elsewhere, say_while_away, terminate};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long any one condition may take to come true on a page.
const WAIT: Duration = Duration::from_secs(15);
/// A whole scenario, browser start-up included.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// The browser

/// A chromedriver and the browser sessions opened through it.
struct Browser {
    _driver: Child,
    url: String,
    sessions: Mutex<Vec<Client>>,
    profiles: Mutex<Vec<TempDir>>,
}

impl Browser {
    /// `None` when Chromium or chromedriver is missing (and `CI` is not set).
    async fn start() -> Result<Option<Browser>> {
        let missing: Vec<&str> =
            [CHROMIUM, CHROMEDRIVER].into_iter().filter(|path| !Path::new(path).exists()).collect();
        if !missing.is_empty() {
            let missing = missing.join(" and ");
            let install = "install with `apt-get install chromium chromium-driver`";
            if std::env::var_os("CI").is_some() {
                bail!("the browser tests need {missing}: {install} (CI is set: no skipping)");
            }
            // Written to stderr directly: the test harness would swallow an `eprintln!` of a
            // passing test, and this line must be seen. Once for the whole suite.
            static SKIPPED: std::sync::Once = std::sync::Once::new();
            SKIPPED.call_once(|| {
                use std::io::Write as _;
                let line = format!("browser tests skipped: {missing} not found; {install}");
                let _ = writeln!(std::io::stderr(), "{line}");
            });
            return Ok(None);
        }

        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("could not start chromedriver")?;
        let stdout = driver.stdout.take().context("chromedriver has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // "ChromeDriver was started successfully on port 35175."
        let port = timeout(WAIT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(port) = line.split("started successfully on port ").nth(1) {
                    return port.trim_end_matches('.').parse::<u16>().context("a port number");
                }
            }
            bail!("chromedriver exited before it was ready")
        })
        .await
        .map_err(|_| anyhow!("chromedriver was not ready within {WAIT:?}"))??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        Ok(Some(Browser {
            _driver: driver,
            url: format!("http://127.0.0.1:{port}"),
            sessions: Mutex::default(),
            profiles: Mutex::default(),
        }))
    }

    /// Opens a new browser window (a Chromium of its own) at `url`.
    async fn open(&self, url: &str) -> Result<Page> {
        let profile = tempfile::tempdir()?;
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=860,720",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let Value::Object(capabilities) = capabilities else { unreachable!("an object literal") };
        let session = ClientBuilder::native()
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .context("could not open a Chromium session")?;
        self.sessions.lock().unwrap().push(session.clone());
        self.profiles.lock().unwrap().push(profile);
        session.goto(url).await.with_context(|| format!("could not load {url}"))?;
        Ok(Page { session })
    }

    /// Closes every window, so that no Chromium outlives the test. (chromedriver itself is
    /// killed when the `Browser` is dropped.)
    async fn shutdown(&self) {
        let sessions = std::mem::take(&mut *self.sessions.lock().unwrap());
        for session in sessions {
            let _ = timeout(WAIT, session.close()).await;
        }
    }
}

/// Runs `scenario` with a fresh browser, and closes the browser however the scenario ends.
async fn with_browser<F, Fut>(scenario: F) -> Result<()>
where
    F: FnOnce(Arc<Browser>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let Some(browser) = Browser::start().await? else { return Ok(()) };
    let browser = Arc::new(browser);
    // A task of its own, so that a failed assertion (a panic) still lets us close the browser.
    let mut task = tokio::spawn(scenario(browser.clone()));
    let outcome = timeout(SCENARIO_LIMIT, &mut task).await;
    if outcome.is_err() {
        task.abort();
    }
    browser.shutdown().await;
    match outcome {
        Err(_) => bail!("the scenario did not finish within {SCENARIO_LIMIT:?}"),
        Ok(Ok(result)) => result,
        Ok(Err(failure)) if failure.is_panic() => std::panic::resume_unwind(failure.into_panic()),
        Ok(Err(failure)) => Err(failure.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// One page

struct Page {
    session: Client,
}

impl Page {
    /// Waits until the JavaScript expression `condition` (which may use `arguments[0]`) is true.
    async fn wait_for(&self, condition: &str, argument: Value, what: &str) -> Result<()> {
        let script = format!("return Boolean({condition});");
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.session.execute(&script, vec![argument.clone()]).await?;
            if value == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let messages = self.messages().await.unwrap_or_default();
                bail!("timed out waiting for {what}; the page shows {messages:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // the polling period
        }
    }

    /// The text of every line in the message list, with its class, for error reports.
    async fn messages(&self) -> Result<Vec<String>> {
        let script = "return [...document.querySelectorAll('#messages li')]
            .map(li => `${li.className}: ${li.textContent}`);";
        let value = self.session.execute(script, vec![]).await?;
        Ok(serde_json::from_value(value)?)
    }

    /// Waits for the `{"id"}` frame and returns the id.
    async fn id(&self) -> Result<String> {
        self.wait_for("document.body.dataset.id", Value::Null, "an id from the server").await?;
        let id = self.session.execute("return document.body.dataset.id;", vec![]).await?;
        id.as_str().map(str::to_owned).context("no id")
    }

    async fn wait_connected(&self) -> Result<()> {
        let open = r#"document.querySelector('#status[data-state="open"]')"#;
        self.wait_for(open, Value::Null, "the connection").await
    }

    /// Waits for a chat message with exactly this text, on our side (`own`) or theirs.
    async fn wait_message(&self, side: &str, text: &str) -> Result<()> {
        let condition = format!(
            "[...document.querySelectorAll('#messages li.message.{side} .bubble')]
                .some(bubble => bubble.textContent === arguments[0])"
        );
        self.wait_for(&condition, json!(text), &format!("{side} message {text:?}")).await
    }

    /// Every chat message on the page, top to bottom, as `[place, side, text]`: `place` is
    /// "earlier" above the history's divider, else "live"; `side` is "own" or "other".
    async fn chat(&self) -> Result<Value> {
        let script = "const divider = document.querySelector('#messages li.divider');
            return [...document.querySelectorAll('#messages li.message')].map(li => [
                divider && li.compareDocumentPosition(divider) & Node.DOCUMENT_POSITION_FOLLOWING
                    ? 'earlier' : 'live',
                li.classList.contains('own') ? 'own' : 'other',
                li.querySelector('.bubble').textContent,
            ]);";
        self.eval(script).await
    }

    /// The text of every chat message on the page, top to bottom.
    async fn chat_texts(&self) -> Result<Vec<String>> {
        let chat = self.chat().await?;
        let rows = chat.as_array().context("an array")?;
        Ok(rows.iter().map(|row| row[2].as_str().unwrap_or_default().to_owned()).collect())
    }

    /// Waits for a system line with this `data-status` (waiting, paired, scheduled, ...).
    async fn wait_system(&self, status: &str) -> Result<()> {
        let condition =
            "document.querySelector(`#messages li.system[data-status=\"${arguments[0]}\"]`)";
        self.wait_for(condition, json!(status), &format!("a {status:?} line")).await
    }

    /// Types `text` into the message box and presses Enter, as a person would.
    async fn say(&self, text: &str) -> Result<()> {
        let input = self.session.find(Locator::Id("input")).await?;
        input.send_keys(&format!("{text}{}", char::from(Key::Enter))).await?;
        Ok(())
    }

    async fn click(&self, css: &str) -> Result<()> {
        self.session.find(Locator::Css(css)).await?.click().await?;
        Ok(())
    }

    /// Replaces what the field with this id holds by `text`, typed.
    async fn fill(&self, id: &str, text: &str) -> Result<()> {
        let field = self.session.find(Locator::Id(id)).await?;
        field.clear().await?;
        field.send_keys(text).await?;
        Ok(())
    }

    /// Opens the log-in form if it is closed, types the username and password, and clicks
    /// `button` (`#login-submit` or `#signup`).
    async fn account_form(&self, button: &str, username: &str, password: &str) -> Result<()> {
        if self.eval("return document.getElementById('login').hidden;").await? == json!(true) {
            self.click("#login-toggle").await?;
        }
        self.fill("login-username", username).await?;
        self.fill("login-password", password).await?;
        self.click(button).await
    }

    /// Waits until the socket speaks as an account (its `{"me"}` frame came), the header
    /// shows the display name `name` and the log-in form is out of sight.
    async fn wait_account(&self, name: &str) -> Result<()> {
        let condition = "document.body.dataset.account
            && document.getElementById('me-name').textContent === arguments[0]
            && getComputedStyle(document.getElementById('login')).display === 'none'";
        self.wait_for(condition, json!(name), &format!("logged in as {name:?}")).await
    }

    /// Waits for someone else's message with this text, shown as from `author`.
    async fn wait_from(&self, author: &str, text: &str) -> Result<()> {
        let condition = "[...document.querySelectorAll('#messages li.message.other')].some(li =>
            li.querySelector('.bubble').textContent === arguments[0][1]
            && li.querySelector('.author').textContent === arguments[0][0])";
        let what = format!("{text:?} from {author:?}");
        self.wait_for(condition, json!([author, text]), &what).await
    }

    /// Waits until the element with this id shows exactly `text`.
    async fn wait_text(&self, id: &str, text: &str) -> Result<()> {
        let condition = "document.getElementById(arguments[0][0])?.textContent === arguments[0][1]";
        self.wait_for(condition, json!([id, text]), &format!("#{id} to say {text:?}")).await
    }

    async fn eval(&self, script: &str) -> Result<Value> {
        Ok(self.session.execute(script, vec![]).await?)
    }

    /// Signs up through the log-in form (the password is the same for everyone) and waits
    /// until the page speaks as the new account.
    async fn sign_up(&self, username: &str) -> Result<()> {
        self.account_form("#signup", username, "correct horse").await?;
        self.wait_account(username).await
    }

    /// The text of every element that `css` matches, in page order.
    async fn texts(&self, css: &str) -> Result<Vec<String>> {
        let script =
            "return [...document.querySelectorAll(arguments[0])].map(node => node.textContent);";
        let value = self.session.execute(script, vec![json!(css)]).await?;
        Ok(serde_json::from_value(value)?)
    }

    /// Waits until the elements that `css` matches say exactly `expected`, in that order.
    async fn wait_texts(&self, css: &str, expected: &[&str]) -> Result<()> {
        let condition = "JSON.stringify([...document.querySelectorAll(arguments[0][0])]
            .map(node => node.textContent)) === JSON.stringify(arguments[0][1])";
        let what = format!("{css} to say {expected:?}");
        self.wait_for(condition, json!([css, expected]), &what).await
    }

    /// Opens the rooms panel if it is closed (which asks the server for the list).
    async fn open_rooms(&self) -> Result<()> {
        if self.eval("return document.getElementById('rooms').hidden;").await? == json!(true) {
            self.click("#rooms-toggle").await?;
        }
        Ok(())
    }

    /// Fills the rooms panel's form with `name` and `topic` and clicks Create (and join).
    async fn try_create_room(&self, name: &str, topic: &str) -> Result<()> {
        self.open_rooms().await?;
        self.fill("room-name", name).await?;
        self.fill("room-topic", topic).await?;
        self.click("#room-create button[type=submit]").await
    }

    /// Creates the room `name` and waits until the page is in it.
    async fn create_room(&self, name: &str, topic: &str) -> Result<()> {
        self.try_create_room(name, topic).await?;
        self.wait_text("room-title", &format!("#{name}")).await
    }

    /// Asks for the list again, clicks the room `name` in it, and waits until the page is in it.
    async fn join_room(&self, name: &str) -> Result<()> {
        self.open_rooms().await?;
        self.click("#rooms-refresh").await?;
        // Clicked once the newest list is shown: a list that comes after would replace it.
        let button = format!(r#"#room-list button[data-room="{name}"]"#);
        let listed = "document.getElementById('room-list').dataset.state === 'ready'
            && document.querySelector(arguments[0])";
        self.wait_for(listed, json!(button), &format!("{name} in the list")).await?;
        self.click(&button).await?;
        self.wait_text("room-title", &format!("#{name}")).await
    }

    /// How this page's member list names itself as a guest: its short id and "(you)".
    async fn guest_member_label(&self) -> Result<String> {
        Ok(format!("{} (you)", &self.id().await?[..8]))
    }

    /// Waits until nothing a name, topic or message smuggled in has run (`window.__xss`), and
    /// no element came out of its markup (an `img` whose `src` is `x`).
    async fn assert_no_markup_ran(&self) -> Result<()> {
        let injected = self
            .eval("return [window.__xss ?? null, [...document.images].filter(img => img.getAttribute('src') === 'x').length];")
            .await?;
        ensure!(injected == json!([null, 0]), "markup ran or became elements: {injected}");
        Ok(())
    }

    /// Saves what the page looks like now as target/screenshots/NAME.png.
    async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self.session.screenshot().await?;
        let dir = screenshot_dir()?;
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png)?;
        if name == DOCS_SCREENSHOT && std::env::var_os("CHATTERBOX_UPDATE_SCREENSHOT").is_some() {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshot.png");
            std::fs::write(&docs, &png)?;
        }
        Ok(path)
    }
}

/// The scenario whose screenshot illustrates the README: the finished server's page, logged in,
/// in a named room with its members, someone typing, pictures and a deleted message.
const DOCS_SCREENSHOT: &str = "room-with-members";

/// target/screenshots, next to target/debug where this test runs from.
fn screenshot_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target =
        exe.ancestors().nth(3).context("the test does not run from target/<profile>/deps")?;
    Ok(target.join("screenshots"))
}

// ---------------------------------------------------------------------------------------------
// The servers

/// The page, served by this crate's own `client` binary (as `cargo run -p client` does).
async fn page_server() -> Result<RunningServer> {
    RunningServer::start(env!("CARGO_BIN_EXE_client"), &[]).await
}

async fn lesson(name: &str) -> Result<RunningServer> {
    RunningServer::start(workspace_binary(name)?, &[]).await
}

/// A port nobody listens on now, for a server that must come back on the same one.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("0.0.0.0:0")?.local_addr()?.port())
}

/// "prefix 1", "prefix 2", ...
fn numbered(prefix: &str, numbers: std::ops::RangeInclusive<u32>) -> Vec<String> {
    numbers.map(|number| format!("{prefix} {number}")).collect()
}

/// The page's address, told to talk to `chat_server`.
fn page_url(pages: &RunningServer, chat_server: &str) -> String {
    format!("{}?server={chat_server}", pages.http_url())
}

/// A lesson, the page server, and two pages (Alice's and Bob's) that have their ids.
struct Chat {
    alice: Page,
    bob: Page,
    alice_id: String,
    _servers: [RunningServer; 2],
}

impl Chat {
    async fn open(browser: &Browser, stage: &str) -> Result<Chat> {
        let chat = lesson(stage).await?;
        let pages = page_server().await?;
        let url = page_url(&pages, &chat.ws_url());
        let alice = browser.open(&url).await?;
        let bob = browser.open(&url).await?;
        let alice_id = alice.id().await?;
        bob.id().await?;
        Ok(Chat { alice, bob, alice_id, _servers: [chat, pages] })
    }
}

/// Alice's page, talking to the finished server on `database`, on a port that the server comes
/// back to after a restart.
struct RestartablePage {
    alice: Page,
    server: RunningServer,
    port: u16,
    _pages: RunningServer,
}

impl RestartablePage {
    async fn open(browser: &Browser, database: &str, flags: &[&str]) -> Result<RestartablePage> {
        let port = free_port()?;
        let server = finished_server(database, port, flags).await?;
        let pages = page_server().await?;
        let alice = browser.open(&page_url(&pages, &server.ws_url())).await?;
        alice.id().await?;
        Ok(RestartablePage { alice, server, port, _pages: pages })
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_through_lesson03() -> Result<()> {
    with_browser(|browser| async move {
        let Chat { alice, bob, alice_id, .. } = &Chat::open(&browser, "lesson03").await?;

        alice.say("hello from alice").await?;
        alice.wait_message("own", "hello from alice").await?;
        bob.wait_message("other", "hello from alice").await?;
        // Shift+Enter is a new line inside the message, not a send.
        let input = bob.session.find(Locator::Id("input")).await?;
        let shift_enter = format!("{}{}{}", char::from(Key::Shift), char::from(Key::Enter), char::from(Key::Null));
        input.send_keys(&format!("hi alice{shift_enter}two lines")).await?;
        bob.say("").await?;
        alice.wait_message("other", "hi alice\ntwo lines").await?;
        bob.wait_message("own", "hi alice\ntwo lines").await?;

        // The author is the sender's id, shown in a colour derived from it.
        let author = bob.eval("return document.querySelector('#messages li.other').dataset.author;").await?;
        assert_eq!(author, json!(alice_id));
        let colour = bob
            .eval("return document.querySelector('#messages li.other').style.getPropertyValue('--author');")
            .await?;
        let expected = bob.eval(&format!("return window.chatterbox.colourFor({alice_id:?});")).await?;
        assert_eq!(colour, expected);

        // Served apart from the finished server, the page has no accounts or rooms to offer.
        for page in [alice, bob] {
            let corner = page
                .eval("return [document.getElementById('account').hidden, document.getElementById('rooms-toggle').hidden];")
                .await?;
            assert_eq!(corner, json!([true, true]), "account or room controls on a page served apart");
        }
        alice.screenshot("lesson03-two-pages").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_through_the_server() -> Result<()> {
    with_browser(|browser| async move {
        // The finished server serves the page itself, which then talks back to its own origin.
        let (_server, alice, bob) = server_and_two_pages(&browser).await?;

        alice.say("hello through the server").await?;
        bob.wait_message("other", "hello through the server").await?;
        bob.say("and back").await?;
        alice.wait_message("other", "and back").await?;
        alice.wait_message("own", "hello through the server").await?;
        // A guest has no picture: above each message only its label, its time (and Delete on
        // ours), nothing else, not even a stray text.
        let metas = "return [...document.querySelectorAll('#messages li.message .meta')].map(meta =>
            [...meta.childNodes].map(node => node.nodeType === Node.ELEMENT_NODE ? node.className || node.localName : 'text'));";
        assert_eq!(
            alice.eval(metas).await?,
            json!([["author", "time", "delete quiet"], ["author", "time"]]),
            "the lines above the messages"
        );
        alice.screenshot("server-two-pages").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_in_a_random_pair_and_a_deleted_message_show_as_quiet_lines() -> Result<()> {
    with_browser(|browser| async move {
        let (server, alice, bob) = server_and_two_pages(&browser).await?;
        // A message in the feed, taken back by its author (a raw client: what another client
        // deletes must vanish from the page too).
        let (mut raw, _) = Connection::join(&server.ws_url()).await?;
        raw.send_json(&json!({"type": "text", "data": {"text": "oops"}, "ack": true})).await?;
        let seq = raw.recv_json().await?["sent"]["seq"].clone();
        alice.wait_message("other", "oops").await?;
        raw.send_json(&json!({"delete": seq})).await?;
        alice
            .wait_for(
                "document.querySelector('#messages li.deleted')?.textContent.includes('message deleted')",
                json!(true),
                "the deleted message",
            )
            .await?;
        // The finished server tells a random pair who comes and goes: lines, not raw frames.
        alice.click("#random").await?;
        alice.wait_system("waiting").await?;
        bob.click("#random").await?;
        alice.wait_system("presence").await?;
        bob.click("#feed").await?;
        alice.wait_system("partner_left").await?;
        let lines = alice
            .eval("return [...document.querySelectorAll('#messages li.system[data-status=presence]')].map(li => li.textContent);")
            .await?;
        let lines = lines.as_array().cloned().unwrap_or_default();
        assert!(lines.iter().any(|line| line.as_str().is_some_and(|l| l.ends_with(" joined"))), "{lines:?}");
        assert!(lines.iter().any(|line| line.as_str().is_some_and(|l| l.ends_with(" left"))), "{lines:?}");
        let raw_frames = alice.eval("return document.querySelectorAll('#messages li.raw').length;").await?;
        assert_eq!(raw_frames, json!(0), "a frame was shown raw");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_message_arrives_on_both_pages() -> Result<()> {
    with_browser(|browser| async move {
        let Chat { alice, bob, alice_id, .. } = &Chat::open(&browser, "lesson04").await?;

        alice.say("/schedule seconds 1 message hi").await?;
        alice.wait_system("scheduled").await?;
        // The server sends it to everyone after the delay, its sender included.
        bob.wait_message("other", "hi").await?;
        alice.wait_message("own", "hi").await?;
        let author =
            bob.eval("return document.querySelector('#messages li.other').dataset.author;").await?;
        assert_eq!(author, json!(alice_id));
        alice.screenshot("lesson04-schedule").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_pairs_the_pages_and_feed_brings_one_back() -> Result<()> {
    with_browser(|browser| async move {
        let Chat { alice, bob, .. } = &Chat::open(&browser, "lesson05").await?;

        alice.say("anyone in the feed?").await?;
        bob.wait_message("other", "anyone in the feed?").await?;
        // An emoji from the picker, shown large.
        bob.click("#emoji-toggle").await?;
        bob.click("#emoji-picker button").await?;
        alice
            .wait_for(
                "document.querySelector('#messages li.other .bubble.emoji')",
                Value::Null,
                "an emoji",
            )
            .await?;

        alice.click("#random").await?;
        alice.wait_system("waiting").await?;
        bob.click("#random").await?;
        alice.wait_system("paired").await?;
        bob.wait_system("paired").await?;
        let channel = bob.eval("return document.getElementById('channel').textContent;").await?;
        assert_eq!(channel, json!("random · paired"));
        bob.say("just us two now").await?;
        alice.wait_message("other", "just us two now").await?;
        alice.say("bye!").await?;
        bob.wait_message("other", "bye!").await?;
        // Typing in a pair sent nothing but the messages: lesson05 would relay a {"typing"}
        // (the finished server's) as an unknown frame, shown raw.
        for page in [alice, bob] {
            let raw =
                page.eval("return document.querySelectorAll('#messages li.raw').length;").await?;
            assert_eq!(raw, json!(0), "a frame other than chat reached the pair");
        }

        alice.click("#feed").await?;
        alice.wait_system("joined").await?;
        bob.wait_system("partner_left").await?;
        let channel = alice.eval("return document.getElementById('channel').textContent;").await?;
        assert_eq!(channel, json!("feed"));
        bob.screenshot("lesson05-random-and-feed").await?;
        Ok(())
    })
    .await
}

/// The header's channel, and the status line.
async fn header(page: &Page) -> Result<Value> {
    page.eval("return [document.getElementById('channel').textContent, document.getElementById('status-text').textContent];")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_resets_offline_and_a_bad_address_offers_the_default() -> Result<()> {
    with_browser(|browser| async move {
        let chat = lesson("lesson05").await?;
        let pages = page_server().await?;
        let alice = browser.open(&page_url(&pages, &chat.ws_url())).await?;
        alice.id().await?;
        alice.click("#random").await?;
        alice.wait_system("waiting").await?;
        assert_eq!(header(&alice).await?[0], json!("random · waiting"));

        // The server goes away: no channel, no id, while offline.
        chat.stop().await?;
        let closed = r#"document.querySelector('#status[data-state="closed"]')"#;
        alice.wait_for(closed, Value::Null, "the offline status").await?;
        assert_eq!(header(&alice).await?[0], json!("—"));
        assert_eq!(alice.eval("return document.body.dataset.id ?? null;").await?, Value::Null);

        // A malformed address from ⚙: the header says so, and the error offers the way back.
        alice.click("#settings-toggle").await?;
        let field = alice.session.find(Locator::Id("server-url")).await?;
        field.clear().await?;
        field.send_keys(&format!("ftp://127.0.0.1/{}", char::from(Key::Enter))).await?;
        let offered = "document.querySelector('#errors .error button.action')?.textContent.startsWith(arguments[0])";
        alice.wait_for(offered, json!("Use default"), "the 'Use default' offer").await?;
        assert_eq!(header(&alice).await?, json!(["—", "bad server address"]));
        alice.screenshot("bad-address").await?;
        alice.click("#errors .error button.action").await?;
        let back = "window.chatterbox.state.server === arguments[0] && localStorage.getItem('chatterbox.server') === null";
        alice.wait_for(back, json!("ws://127.0.0.1:8000/"), "the default address").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_on_lesson03_says_the_server_does_not_know_it() -> Result<()> {
    with_browser(|browser| async move {
        let Chat { alice, bob, .. } = &Chat::open(&browser, "lesson03").await?;

        alice.say("/schedule seconds 1 message later").await?;
        alice.wait_system("scheduled").await?;
        // lesson03 passes it on at once, schedule and all: the other page says so...
        bob.wait_message("other", "later").await?;
        bob.wait_system("no-schedules").await?;
        // ...and the sender learns it when the message does not come back.
        alice.wait_system("no-schedules").await?;
        alice.say("/schedule seconds 1 message again").await?;
        let help_shown = "document.getElementById('input-help').textContent.includes(arguments[0])";
        alice.wait_for(help_shown, json!("does not know /schedule"), "the refusal").await?;
        alice.screenshot("lesson03-no-schedules").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_in_a_message_shows_literally() -> Result<()> {
    with_browser(|browser| async move {
        let Chat { alice, bob, .. } = &Chat::open(&browser, "lesson03").await?;

        let payload = r#"<img src=x onerror="document.body.dataset.pwned=1"><b>bold?</b>"#;
        alice.say(payload).await?;
        bob.wait_message("other", payload).await?;
        alice.wait_message("own", payload).await?;
        for page in [&alice, &bob] {
            let injected = page
                .eval("return [document.querySelector('#messages img, #messages b') === null, document.body.dataset.pwned ?? null];")
                .await?;
            assert_eq!(injected, json!([true, null]), "the payload became markup");
        }
        bob.screenshot("xss-literal").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_schedule_is_explained_next_to_the_input() -> Result<()> {
    with_browser(|browser| async move {
        let chat = lesson("lesson04").await?;
        let pages = page_server().await?;
        let mut other = Connection::connect(&chat.ws_url()).await?;
        other.recv_id().await?;
        let alice = browser.open(&page_url(&pages, &chat.ws_url())).await?;
        alice.id().await?;
        // Enough messages to scroll: the help must not push the newest one out of sight.
        for number in 0..30 {
            other.send_json(&client::message::text(&format!("filler {number}"))).await?;
        }
        alice.wait_message("other", "filler 29").await?;

        alice.say("/schedule days 1 message hi").await?;
        let help_shown = "!document.getElementById('input-help').hidden
            && document.getElementById('input-help').textContent.includes(arguments[0])";
        alice.wait_for(help_shown, json!("unknown unit 'days'"), "the inline help").await?;
        let newest_in_sight = "(() => { const scroller = document.getElementById('scroller');
            const newest = document.querySelector('#messages li:last-child').getBoundingClientRect();
            return newest.bottom <= scroller.getBoundingClientRect().bottom + 1; })()";
        alice.wait_for(newest_in_sight, Value::Null, "the newest message in sight").await?;
        let help = alice.eval("return document.getElementById('input-help').textContent;").await?;
        assert!(help.as_str().is_some_and(|help| help.contains(schedule::EXAMPLE)), "{help}");
        // The command stays in the box to be fixed.
        let input = alice.eval("return document.getElementById('input').value;").await?;
        assert_eq!(input, json!("/schedule days 1 message hi"));
        alice.screenshot("bad-schedule-help").await?;

        // Fixing it hides the help, and only the good command reaches the server.
        alice.session.find(Locator::Id("input")).await?.clear().await?;
        alice.say("/schedule seconds 0 message fixed").await?;
        alice
            .wait_for("document.getElementById('input-help').hidden", Value::Null, "the help to go")
            .await?;
        let frame = other.recv_json().await?;
        assert_eq!(frame["data"], json!({"text": "fixed"}), "{frame}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_after_a_server_restart() -> Result<()> {
    with_browser(|browser| async move {
        let lesson03 = workspace_binary("lesson03")?;
        // A port that stays the same across the restart: let the system pick a free one.
        let port = std::net::TcpListener::bind("0.0.0.0:0")?.local_addr()?.port();
        let chat = RunningServer::start_on_port(&lesson03, &[], port).await?;
        let pages = page_server().await?;
        let alice = browser.open(&page_url(&pages, &chat.ws_url())).await?;
        let first_id = alice.id().await?;

        chat.stop().await?;
        alice.wait_system("disconnected").await?;
        let closed = r#"document.querySelector('#status[data-state="closed"]')"#;
        alice.wait_for(closed, Value::Null, "the offline status").await?;
        alice.screenshot("reconnect-offline").await?;

        let chat = RunningServer::start_on_port(&lesson03, &[], port).await?;
        alice.wait_system("reconnected").await?;
        alice.wait_connected().await?;
        let second_id = alice.id().await?;
        assert_ne!(first_id, second_id, "a new connection gets a new id");

        // And it chats again.
        let mut other = Connection::connect(&chat.ws_url()).await?;
        other.recv_id().await?;
        alice.say("back again").await?;
        let frame = other.recv_json().await?;
        assert_eq!(
            (&frame["data"], &frame["author"]),
            (&json!({"text": "back again"}), &json!(second_id))
        );
        alice.screenshot("reconnect-online").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lesson01_echo_and_lesson02_raw_frames_show_in_the_page() -> Result<()> {
    with_browser(|browser| async move {
        let pages = page_server().await?;

        // lesson01 sends back what the page sent: the page shows it as sent, then as received.
        let echo = lesson("lesson01").await?;
        let alice = browser.open(&page_url(&pages, &echo.ws_url())).await?;
        alice.wait_connected().await?;
        alice.say("echo me").await?;
        alice.wait_message("own", "echo me").await?;
        alice.wait_message("other", "echo me").await?;
        alice.screenshot("lesson01-echo").await?;

        // lesson02 relays frames as they are, with no id and no author.
        let relay = lesson("lesson02").await?;
        let mut raw = Connection::connect(&relay.ws_url()).await?;
        let bob = browser.open(&page_url(&pages, &relay.ws_url())).await?;
        bob.wait_connected().await?;
        bob.say("hello raw tool").await?;
        let frame = raw.recv_json().await?;
        assert_eq!(frame, json!({"type": "text", "data": {"text": "hello raw tool"}}));

        raw.send_text("just some words").await?;
        bob.wait_for(
            "[...document.querySelectorAll('#messages li.raw')].some(li => li.textContent.includes(arguments[0]))",
            json!("just some words"),
            "a raw frame",
        )
        .await?;
        raw.send_json(&json!({"type": "text", "data": {"text": "from nobody"}})).await?;
        bob.wait_message("other", "from nobody").await?;
        raw.send_json(&json!({"error": "something went wrong"})).await?;
        let error_shown = "document.querySelector('#errors .error')?.textContent.includes(arguments[0])";
        bob.wait_for(error_shown, json!("something went wrong"), "the error").await?;
        bob.screenshot("lesson02-raw").await?;
        bob.click("#errors .error button").await?;
        bob.wait_for("!document.querySelector('#errors .error')", Value::Null, "the error to go").await?;
        Ok(())
    })
    .await
}

/// The page's JavaScript `/schedule` parser against the Rust one, input by input: same
/// commands, same results, same error messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_parses_schedule_exactly_like_the_rust_side() -> Result<()> {
    with_browser(|browser| async move {
        let pages = page_server().await?;
        // Nothing listens on port 9 (discard): the page stays offline, which is fine here.
        let page = browser.open(&page_url(&pages, "ws://127.0.0.1:9/")).await?;

        let inputs = [
            "/schedule hours 1 seconds 9 message how are you doing future?",
            "/schedule seconds 1 message hi",
            "/schedule minutes 0 message now-ish",
            "/schedule seconds 5 hours 2 minutes 3 message  two  spaces ",
            "/schedule seconds 1 message message seconds 2",
            "/schedule  seconds  2   message x",
            "/schedule seconds 1 message hi\nthere",
            "/schedule seconds 18446744073709551615 message the largest",
            "/schedule hours 5124095576030431 message just fits",
            "/schedule hours 5124095576030432 message one hour too far",
            "/schedule seconds 18446744073709551616 message too big a number",
            "/schedule",
            "/schedule ",
            "/schedule message hi",
            "/schedule days 1 message hi",
            "/schedule hours abc message hi",
            "/schedule hours -1 message hi",
            "/schedule hours 1.5 message hi",
            "/schedule seconds +5 message hi",
            "/schedule seconds ٣ message hi",
            "/schedule seconds",
            "/schedule seconds 1",
            "/schedule seconds 1 message",
            "/schedule seconds 1 message   ",
            "/schedule seconds 1 message \u{3000}",
            "/schedule seconds 1 message\u{a0}hi",
            "/schedule seconds 1 seconds 2 message hi",
            "/schedule hours 99999999999999999 message hi",
            "/schedule seconds 99999999999999999999999 message hi",
            "hello",
            "",
            "/scheduler seconds 1 message hi",
            " /schedule seconds 1 message hi",
            "/schedule\tseconds 1 message hi",
            "/Schedule seconds 1 message hi",
        ];
        // Unit values as strings on both sides: JavaScript sends the ones too big for a Number
        // as digit strings, which the protocol allows.
        let script = "return arguments[0].map(input => {
            const parsed = window.chatterbox.parseSchedule(input);
            if (!parsed?.ok) return parsed;
            const schedule = Object.fromEntries(
                Object.entries(parsed.ok.schedule).map(([unit, n]) => [unit, String(n)]));
            return { ok: { schedule, text: parsed.ok.text } };
        });";
        let from_js = page.session.execute(script, vec![json!(inputs.as_slice())]).await?;
        let from_js = from_js.as_array().context("an array")?;
        for (input, js) in inputs.iter().zip(from_js) {
            let rust = match schedule::parse(input) {
                None => Value::Null,
                Some(Err(error)) => json!({"error": error.to_string()}),
                Some(Ok(parsed)) => {
                    let units = [
                        ("hours", parsed.schedule.hours),
                        ("minutes", parsed.schedule.minutes),
                        ("seconds", parsed.schedule.seconds),
                    ];
                    let schedule: serde_json::Map<String, Value> = units
                        .into_iter()
                        .filter_map(|(unit, n)| Some((unit.to_owned(), json!(n?.to_string()))))
                        .collect();
                    json!({"ok": {"schedule": schedule, "text": parsed.text}})
                }
            };
            assert_eq!(js, &rust, "JavaScript and Rust disagree on {input:?}");
        }
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// History, resume and earlier pages (the finished server)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_page_shows_the_earlier_messages_above_a_divider() -> Result<()> {
    with_browser(|browser| async move {
        let server = finished_server("memory", 0, &[]).await?;
        // The page from this crate's binary, which `cargo test -p client` always rebuilds
        // (the server's copy is as old as the server binary).
        let pages = page_server().await?;
        let alice = browser.open(&page_url(&pages, &server.ws_url())).await?;
        alice.id().await?;
        let (mut bob, _) = Connection::join(&server.ws_url()).await?;
        for text in ["hello from before", "and once more"] {
            alice.say(text).await?;
            assert_eq!(bob.recv_json().await?["data"]["text"], text);
        }
        bob.send_json(&client::message::text("bob was here")).await?;
        alice.wait_message("other", "bob was here").await?;

        alice.session.refresh().await?;
        alice.id().await?;
        let divider = "document.querySelector('#messages li.divider')";
        alice.wait_for(divider, Value::Null, "the history's divider").await?;
        bob.send_json(&client::message::text("said after the reload")).await?;
        alice.wait_message("other", "said after the reload").await?;
        // Alice's own messages are still hers: the tab remembers the ids it was given.
        assert_eq!(
            alice.chat().await?,
            json!([
                ["earlier", "own", "hello from before"],
                ["earlier", "own", "and once more"],
                ["earlier", "other", "bob was here"],
                ["live", "other", "said after the reload"],
            ])
        );
        alice.screenshot("history-after-reload").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_the_page_shows_every_message_once_in_order() -> Result<()> {
    with_browser(|browser| async move {
        let database = TempDatabase::new()?;
        let database = database.path();
        // No history for newcomers: only ?after= can bring back what the page missed.
        let quiet = ["--history", "0"];
        let RestartablePage { alice, server, port, _pages } =
            RestartablePage::open(&browser, database, &quiet).await?;

        let (mut bob, _) = Connection::join(&server.ws_url()).await?;
        for text in ["before 1", "before 2"] {
            bob.send_json(&client::message::text(text)).await?;
        }
        alice.wait_message("other", "before 2").await?;
        // Not sent back to alice, so after the last seq she saw: it comes again on resuming.
        alice.say("mine before").await?;
        assert_eq!(bob.recv_json().await?["data"]["text"], "mine before");
        bob.close().await?;
        terminate(server).await?;
        alice.wait_system("disconnected").await?;

        // Said while the page cannot reach the server.
        say_while_away(database, &quiet, &numbered("missed", 1..=3)).await?;

        // Back on the page's port. Said while the page reconnects: each comes once, in the
        // history it resumes with or live, whichever way the race goes.
        let server = finished_server(database, port, &quiet).await?;
        let (mut carol, _) = Connection::join(&server.ws_url()).await?;
        for text in numbered("around", 1..=3) {
            carol.send_json(&client::message::text(&text)).await?;
        }
        alice.wait_system("reconnected").await?;
        alice.wait_message("other", "around 3").await?;
        alice.say("mine after").await?;
        assert_eq!(carol.recv_json().await?["data"]["text"], "mine after");
        carol.send_json(&client::message::text("last")).await?;
        alice.wait_message("other", "last").await?;

        let mut expected = vec!["before 1".to_owned(), "before 2".into(), "mine before".into()];
        expected.extend(numbered("missed", 1..=3));
        expected.extend(numbered("around", 1..=3));
        expected.extend(["mine after".to_owned(), "last".into()]);
        assert_eq!(alice.chat_texts().await?, expected);
        let seqs = alice
            .eval("return [...document.querySelectorAll('#messages li[data-seq]')].map(li => Number(li.dataset.seq));")
            .await?;
        let seqs: Vec<u64> = serde_json::from_value(seqs)?;
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "seqs out of order: {seqs:?}");
        alice.screenshot("resume-after-restart").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrolling_to_the_top_loads_earlier_messages_in_place() -> Result<()> {
    with_browser(|browser| async move {
        let server = finished_server("memory", 0, &["--history", "5"]).await?;
        say_from_elsewhere(&server, &numbered("earlier", 1..=20)).await?;
        let pages = page_server().await?;
        let alice = browser.open(&page_url(&pages, &server.ws_url())).await?;
        // A short window, so that five messages already fill it and it scrolls.
        alice.session.set_window_size(860, 420).await?;
        alice.wait_message("other", "earlier 20").await?;
        assert_eq!(alice.chat_texts().await?, numbered("earlier", 16..=20));
        let overflows = alice
            .eval("const scroller = document.getElementById('scroller'); return scroller.scrollHeight > scroller.clientHeight;")
            .await?;
        assert_eq!(overflows, json!(true), "the window must be short enough to scroll");

        // Where "earlier 16" is on screen once the reader has scrolled to the top: it stays
        // there while the earlier page comes in above it.
        let place_of_16 = "const scroller = document.getElementById('scroller');
            const item = [...document.querySelectorAll('#messages li.message')]
                .find(li => li.textContent.endsWith('earlier 16'));
            return item.getBoundingClientRect().top - scroller.getBoundingClientRect().top;";
        let scroll_to = "document.getElementById('scroller').scrollTop =";
        alice.eval(&format!("{scroll_to} 1e6;")).await?; // at the bottom, as a reader is
        let before = alice.eval(&format!("{scroll_to} 0; {place_of_16}")).await?;
        alice.wait_message("other", "earlier 1").await?;
        let none_left = "document.getElementById('earlier').dataset.state === 'none'";
        alice.wait_for(none_left, Value::Null, "'No earlier messages'").await?;
        assert_eq!(alice.chat_texts().await?, numbered("earlier", 1..=20));
        let after = alice.eval(place_of_16).await?;
        let moved = (after.as_f64().context("a number")? - before.as_f64().context("a number")?).abs();
        assert!(moved <= 2.0, "'earlier 16' moved by {moved} px ({before} → {after})");
        alice.screenshot("earlier-messages-loaded").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_back_with_an_empty_store_starts_the_numbers_again() -> Result<()> {
    with_browser(|browser| async move {
        let RestartablePage { alice, server, port, _pages } =
            RestartablePage::open(&browser, "memory", &[]).await?;
        say_from_elsewhere(&server, &numbered("old", 1..=3)).await?;
        alice.wait_message("other", "old 3").await?;

        // Killed, and back on the same port with nothing: its numbers start at 1 again, and
        // the page, which asks for what came after 3, is told so.
        server.stop().await?;
        alice.wait_system("disconnected").await?;
        let server = finished_server("memory", port, &[]).await?;
        alice.wait_system("history-reset").await?;
        say_from_elsewhere(&server, &["new 1"]).await?;
        alice.wait_message("other", "new 1").await?;
        let mut expected = numbered("old", 1..=3);
        expected.push("new 1".into());
        assert_eq!(alice.chat_texts().await?, expected);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_missed_more_than_the_server_replays_says_how_many() -> Result<()> {
    with_browser(|browser| async move {
        let database = TempDatabase::new()?;
        let database = database.path();
        let replays_two = ["--resume-max", "2"];
        let RestartablePage { alice, server, port, _pages } =
            RestartablePage::open(&browser, database, &replays_two).await?;
        say_from_elsewhere(&server, &["seen"]).await?;
        alice.wait_message("other", "seen").await?;

        terminate(server).await?;
        alice.wait_system("disconnected").await?;
        say_while_away(database, &replays_two, &numbered("missed", 1..=5)).await?;
        let _server = finished_server(database, port, &replays_two).await?;
        alice.wait_message("other", "missed 5").await?;
        let skipped = alice
            .eval("return document.querySelector('#messages li.system[data-status=\"history-skipped\"]')?.textContent ?? null;")
            .await?;
        assert_eq!(skipped, json!("3 messages you missed while offline are not shown."));
        assert_eq!(alice.chat_texts().await?, ["seen", "missed 4", "missed 5"]);
        alice.screenshot("resume-skipped").await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Accounts (the finished server serves the page: its session cookie is the page's own)

/// The finished server (nothing on disk) and two of its pages, Alice's and Bob's, with ids.
async fn server_and_two_pages(browser: &Browser) -> Result<(RunningServer, Page, Page)> {
    server_with_flags_and_two_pages(browser, &[]).await
}

async fn server_with_flags_and_two_pages(
    browser: &Browser,
    flags: &[&str],
) -> Result<(RunningServer, Page, Page)> {
    let server = RunningServer::start(workspace_binary("server")?, flags).await?;
    let alice = browser.open(&server.http_url()).await?;
    let bob = browser.open(&server.http_url()).await?;
    alice.id().await?;
    bob.id().await?;
    Ok((server, alice, bob))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_signs_up_logs_out_and_logs_in() -> Result<()> {
    with_browser(|browser| async move {
        let (_server, alice, bob) = server_and_two_pages(&browser).await?;
        let offered = "!document.getElementById('account').hidden
            && !document.getElementById('login-toggle').hidden";
        alice.wait_for(offered, Value::Null, "the log-in button").await?;
        alice.wait_text("me-name", "guest").await?;

        // Signing up logs in, and the socket is opened again as the account.
        alice.account_form("#signup", "ada", "correct horse").await?;
        alice.wait_account("ada").await?;
        alice.say("hello as ada").await?;
        bob.wait_from("ada", "hello as ada").await?;
        alice.wait_message("own", "hello as ada").await?;

        // Logging out: a guest again, with a fresh id, and no name on its messages.
        alice.click("#logout").await?;
        let guest = "!document.body.dataset.account && document.body.dataset.id
            && !document.getElementById('login-toggle').hidden
            && document.getElementById('logout').hidden";
        alice.wait_for(guest, Value::Null, "a guest again").await?;
        alice.wait_text("me-name", "guest").await?;
        let guest_id = alice.id().await?;
        alice.say("hello as a guest").await?;
        bob.wait_from(&guest_id[..8], "hello as a guest").await?;

        // A wrong password: the server's error, as text, and still a guest.
        alice.account_form("#login-submit", "ada", "not the password").await?;
        alice.wait_text("login-error", "wrong username or password").await?;
        assert_eq!(alice.eval("return document.body.dataset.account ?? null;").await?, Value::Null);
        // The right one logs in.
        alice.account_form("#login-submit", "ada", "correct horse").await?;
        alice.wait_account("ada").await?;
        alice.wait_text("login-error", "").await?;
        alice.say("ada is back").await?;
        bob.wait_from("ada", "ada is back").await?;
        // Another account's message shows its name on Alice's page too.
        bob.account_form("#signup", "bob", "battery staple").await?;
        bob.wait_account("bob").await?;
        bob.say("welcome back, ada!").await?;
        alice.wait_from("bob", "welcome back, ada!").await?;
        alice.screenshot("account-logged-in").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_display_name_is_text_and_a_rename_reaches_the_next_message() -> Result<()> {
    with_browser(|browser| async move {
        let (_server, alice, bob) = server_and_two_pages(&browser).await?;
        alice.account_form("#signup", "grace", "correct horse").await?;
        alice.wait_account("grace").await?;

        // Markup as a display name is shown as its characters, in the header and on messages.
        let payload = "<img src=x onerror=window.pwned=1>";
        alice.click("#profile-toggle").await?;
        alice.fill("profile-name", payload).await?;
        alice.click("#name-form button").await?;
        alice.wait_text("profile-note", "Name saved.").await?;
        alice.wait_text("me-name", payload).await?;
        alice.say("who am i").await?;
        bob.wait_from(payload, "who am i").await?;
        for page in [&alice, &bob] {
            // Pictures of accounts are images now: only the payload's own would have src="x".
            let injected = page
                .eval("return [document.querySelector('img[src=\"x\"]') === null, window.pwned ?? null];")
                .await?;
            assert_eq!(injected, json!([true, null]), "the display name became markup");
        }

        // A rename reaches the next message; a name the server refuses is explained as text.
        alice.fill("profile-name", "Grace Hopper").await?;
        alice.click("#name-form button").await?;
        alice.wait_text("me-name", "Grace Hopper").await?;
        alice.say("renamed").await?;
        bob.wait_from("Grace Hopper", "renamed").await?;
        alice.fill("profile-name", "   ").await?;
        alice.click("#name-form button").await?;
        let refused = "document.getElementById('profile-error').textContent !== ''";
        alice.wait_for(refused, Value::Null, "the refused name's reason").await?;
        assert_eq!(
            alice.eval("return document.getElementById('me-name').textContent;").await?,
            json!("Grace Hopper")
        );

        // The password: the current one must be right.
        alice.fill("password-current", "wrong horse").await?;
        alice.fill("password-new", "a new password").await?;
        alice.click("#password-form button").await?;
        alice.wait_text("profile-error", "the current password is wrong").await?;
        alice.fill("password-current", "correct horse").await?;
        alice.fill("password-new", "a new password").await?;
        alice.click("#password-form button").await?;
        alice.wait_text("profile-note", "Password changed.").await?;
        alice.wait_text("profile-error", "").await?;
        bob.screenshot("account-name-as-text").await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Named rooms, members, typing, deleting, pictures (the finished server serves the page)

/// The names in the page's member list, top to bottom.
const MEMBERS: &str = "#members .member-name";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_created_and_joined_with_members_typing_and_deletions() -> Result<()> {
    with_browser(|browser| async move {
        let (_server, alice, bob) = server_and_two_pages(&browser).await?;

        // A guest sees the list but is not offered to create a room.
        bob.wait_for("!document.getElementById('rooms-toggle').hidden", Value::Null, "Rooms").await?;
        bob.open_rooms().await?;
        bob.wait_texts("#room-list li", &["No rooms yet."]).await?;
        let create_offered = "return [document.getElementById('room-create').hidden, document.getElementById('rooms-note').hidden];";
        assert_eq!(bob.eval(create_offered).await?, json!([true, false]), "a guest is offered to create");

        // An account creates one, and is in it at once.
        alice.sign_up("ada").await?;
        alice.create_room("rust", "all things crab").await?;
        alice.wait_text("channel", "#rust").await?;
        alice.wait_text("room-topic-shown", "all things crab").await?;
        alice.wait_texts(MEMBERS, &["ada (you)"]).await?;

        // Bob signs up, refreshes the list, and joins by clicking the room.
        bob.sign_up("bob").await?;
        bob.open_rooms().await?;
        bob.click("#rooms-refresh").await?;
        bob.wait_texts("#room-list li .room-online", &["1 online"]).await?;
        bob.wait_texts("#room-list li .room-topic", &["all things crab"]).await?;
        bob.join_room("rust").await?;
        bob.wait_texts(MEMBERS, &["ada", "bob (you)"]).await?;
        alice.wait_texts(MEMBERS, &["ada (you)", "bob"]).await?;
        // Accounts have pictures, in the member list too.
        let pictures = "[...document.querySelectorAll('#members img.avatar')]
            .filter(img => img.complete && img.naturalWidth === 256).length === 2";
        alice.wait_for(pictures, Value::Null, "both members' pictures").await?;

        // Bob types: Alice reads that he does; his message ends it (well before its 3 s).
        bob.session.find(Locator::Id("input")).await?.send_keys("hello").await?;
        alice.wait_text("typing", "bob is typing…").await?;
        bob.say(" ada").await?;
        alice.wait_from("bob", "hello ada").await?;
        assert_eq!(alice.texts("#typing").await?, [""], "the typing line outlived the message");
        let bobs_picture = "document.querySelector('#messages li.other img.avatar')?.naturalWidth === 256";
        alice.wait_for(bobs_picture, Value::Null, "bob's picture on his message").await?;

        // Ada takes back her own message (it has a seq from its receipt); Bob's have no control
        // on her page, hers none on his.
        alice.say("oops, wrong room").await?;
        bob.wait_from("ada", "oops, wrong room").await?;
        alice.say("hi bob").await?;
        bob.wait_from("ada", "hi bob").await?;
        let control = "li.message.own button.delete:not([hidden])";
        alice.wait_for(&format!("document.querySelectorAll('{control}').length === 2"), Value::Null, "two delete controls").await?;
        let controls = "return ['li.own', 'li.other'].map(side =>
            document.querySelectorAll(`#messages ${side} button.delete`).length);";
        assert_eq!(alice.eval(controls).await?, json!([2, 0]), "delete controls on ada's page");
        assert_eq!(bob.eval(controls).await?, json!([1, 0]), "delete controls on bob's page");
        alice.click(&format!("#messages {control}")).await?;
        for page in [&alice, &bob] {
            page.wait_texts("#messages li.deleted .bubble", &["message deleted"]).await?;
        }
        assert_eq!(bob.chat_texts().await?, ["hello ada", "message deleted", "hi bob"]);
        // The server's refusal is shown as text.
        alice.eval("window.chatterbox.sendFrame({delete: 999});").await?;
        let refusal = "delete: there is no message 999 in this channel";
        alice.wait_for(
            "document.querySelector('#errors .error span')?.textContent === 'Server: ' + arguments[0]",
            json!(refusal),
            "the refusal",
        )
        .await?;
        alice.click("#errors .error button").await?;

        // Bob starts typing again (the server passes on one a 2 s per person: he keeps
        // typing until it does), for the picture of the page.
        let typing_again = async {
            let input = bob.session.find(Locator::Id("input")).await?;
            loop {
                input.send_keys("…").await?;
                if alice.texts("#typing").await? == ["bob is typing…"] {
                    return anyhow::Ok(());
                }
                tokio::time::sleep(Duration::from_millis(250)).await; // the typing pace
            }
        };
        timeout(WAIT, typing_again).await.context("bob's typing never showed again")??;
        alice.screenshot(DOCS_SCREENSHOT).await?;

        // Bob goes back to the feed: he leaves Ada's list, and his page leaves the room.
        bob.click("#feed").await?;
        alice.wait_texts(MEMBERS, &["ada (you)"]).await?;
        bob.wait_for("document.getElementById('room-bar').hidden", Value::Null, "the room bar to go").await?;
        alice.open_rooms().await?;
        alice.wait_texts("#room-list li .room-online", &["1 online"]).await?;
        Ok(())
    })
    .await
}

/// An 8×8 PNG of one orange, (245, 158, 11): small, and easy to recognise once the server has
/// made it 256×256.
const ORANGE_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x08, 0x08, 0x02, 0x00, 0x00, 0x00, 0x4b, 0x6d, 0x29,
    0xdc, 0x00, 0x00, 0x00, 0x11, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8, 0x3a, 0x8f, 0x1b,
    0x2b, 0x62, 0x18, 0x5a, 0x12, 0x00, 0xab, 0xa0, 0x67, 0x81, 0x68, 0x7f, 0x76, 0xde, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// True when every picture of account `arguments[0]` on the page (but the preview) is loaded
/// and orange in its centre.
const ORANGE_PICTURES: &str = "(() => {
    const pictures = [...document.querySelectorAll(`img[data-avatar-id='${arguments[0]}']`)];
    const orange = (img) => {
        if (!img.complete || img.naturalWidth === 0) return false;
        const canvas = document.createElement('canvas');
        canvas.width = canvas.height = 1;
        const context = canvas.getContext('2d');
        context.drawImage(img, img.naturalWidth / 2, img.naturalHeight / 2, 1, 1, 0, 0, 1, 1);
        const [r, g, b] = context.getImageData(0, 0, 1, 1).data;
        return Math.abs(r - 245) < 8 && Math.abs(g - 158) < 8 && Math.abs(b - 11) < 8;
    };
    return pictures.length > 0 && pictures.every(orange);
})()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_picture_is_previewed_uploaded_and_a_rename_is_seen_live() -> Result<()> {
    with_browser(|browser| async move {
        let flags = ["--max-avatar-bytes", "4096"];
        let (_server, alice, bob) = server_with_flags_and_two_pages(&browser, &flags).await?;
        alice.sign_up("grace").await?;
        let grace = alice.eval("return document.body.dataset.account;").await?;
        let grace = grace.as_str().context("an account id")?.to_owned();
        alice.create_room("lab", "").await?;
        bob.join_room("lab").await?;
        alice.say("before the change").await?;
        bob.wait_from("grace", "before the change").await?;

        let files = tempfile::tempdir()?;
        let path_of = |name: &str, bytes: &[u8]| -> Result<String> {
            let path = files.path().join(name);
            std::fs::write(&path, bytes)?;
            path.to_str().map(str::to_owned).context("a UTF-8 temporary path")
        };
        let good = path_of("orange.png", ORANGE_PNG)?;
        let text = path_of("notes.png", b"not a picture at all")?;
        let mut big = ORANGE_PNG.to_vec();
        big.resize(5000, 0);
        let big = path_of("big.png", &big)?;

        // The picture chosen shows at once, from the file itself, before anything is sent.
        alice.click("#profile-toggle").await?;
        alice.session.find(Locator::Id("avatar-file")).await?.send_keys(&good).await?;
        let previewed = "(() => { const preview = document.getElementById('avatar-preview');
            return !preview.hidden && preview.src.startsWith('blob:') && preview.complete
                && preview.naturalWidth === 8; })()";
        alice.wait_for(previewed, Value::Null, "the preview of the file").await?;
        assert_eq!(
            alice.eval("return document.getElementById('avatar-upload').disabled;").await?,
            json!(false)
        );
        alice.screenshot("picture-preview").await?;

        // Uploaded: the profile's picture, and Grace's pictures on Bob's page (her message, the
        // member list), are the new one, fetched again after the server's {"profile"} frame.
        alice.click("#avatar-upload").await?;
        alice.wait_text("profile-note", "Picture saved.").await?;
        alice
            .wait_for(
                "document.getElementById('avatar-preview').hidden",
                Value::Null,
                "the preview to go",
            )
            .await?;
        alice.wait_for(ORANGE_PICTURES, json!(grace), "the new picture on grace's page").await?;
        bob.wait_for(ORANGE_PICTURES, json!(grace), "the new picture on bob's page").await?;
        let on_bobs_page =
            "return document.querySelectorAll(`img[data-avatar-id='${arguments[0]}']`).length;";
        let pictures = bob.session.execute(on_bobs_page, vec![json!(grace)]).await?;
        assert_eq!(pictures, json!(2), "grace's message and her entry in the member list");

        // The server's reasons, as text: not a picture; too big.
        alice.session.find(Locator::Id("avatar-file")).await?.send_keys(&text).await?;
        alice.click("#avatar-upload").await?;
        alice.wait_text("profile-error", "the picture must be a PNG, JPEG or WebP image").await?;
        alice.session.find(Locator::Id("avatar-file")).await?.send_keys(&big).await?;
        alice.click("#avatar-upload").await?;
        alice.wait_text("profile-error", "the body is over 4096 bytes").await?;

        // A rename reaches Bob's page at once: the member list and the label of the message
        // already there; the next message carries it too.
        alice.fill("profile-name", "Grace Hopper").await?;
        alice.click("#name-form button").await?;
        bob.wait_texts(MEMBERS, &["Grace Hopper", &bob.guest_member_label().await?]).await?;
        bob.wait_from("Grace Hopper", "before the change").await?;
        alice.say("after the change").await?;
        bob.wait_from("Grace Hopper", "after the change").await?;
        bob.screenshot("live-rename").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_topics_and_room_names_are_shown_as_text() -> Result<()> {
    with_browser(|browser| async move {
        let (_server, alice, bob) = server_and_two_pages(&browser).await?;
        let payload = "<img src=x onerror=window.__xss=1>";
        alice.sign_up("mallory").await?;
        alice.click("#profile-toggle").await?;
        alice.fill("profile-name", payload).await?;
        alice.click("#name-form button").await?;
        alice.wait_text("me-name", payload).await?;

        // Markup as a room's topic: the list and the room's bar show its characters.
        alice.create_room("markup", payload).await?;
        alice.wait_text("room-topic-shown", payload).await?;
        // Markup as a room's name: the server refuses it, and its reason is shown as text.
        alice.open_rooms().await?;
        alice.wait_texts("#room-list .room-topic", &[payload]).await?;
        alice.try_create_room(payload, "").await?;
        alice.wait_text("rooms-error", "a room name is 1 to 32 of a-z, 0-9 and -").await?;

        // A guest joins: the name in the member list, the typing line and on a message.
        bob.join_room("markup").await?;
        bob.wait_text("room-topic-shown", payload).await?;
        bob.open_rooms().await?;
        bob.wait_texts("#room-list .room-topic", &[payload]).await?;
        bob.wait_texts(MEMBERS, &[payload, &bob.guest_member_label().await?]).await?;
        alice.session.find(Locator::Id("input")).await?.send_keys(payload).await?;
        bob.wait_text("typing", &format!("{payload} is typing…")).await?;
        alice.say("").await?;
        bob.wait_from(payload, payload).await?;
        for page in [&alice, &bob] {
            page.assert_no_markup_ran().await?;
        }
        bob.screenshot("room-markup-as-text").await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_goes_back_into_its_room_after_a_restart_and_after_logging_in() -> Result<()> {
    with_browser(|browser| async move {
        let database = TempDatabase::new()?;
        let database = database.path();
        let port = free_port()?;
        let server = finished_server(database, port, &[]).await?;
        let alice = browser.open(&server.http_url()).await?;
        alice.sign_up("ada").await?;
        alice.create_room("rust", "all things crab").await?;
        alice.say("before the restart").await?;
        let own_delete = "document.querySelectorAll('#messages li.own button.delete:not([hidden])').length === 1";
        alice.wait_for(own_delete, Value::Null, "Delete on ada's message").await?;
        terminate(server).await?;
        alice.wait_system("disconnected").await?;

        // Said in the room while the page cannot reach the server.
        let meanwhile = finished_server(database, 0, &[]).await?;
        let (mut guest, _) = Connection::join(&meanwhile.ws_url()).await?;
        guest.send_json(&json!({"channel": "room", "room": "rust"})).await?;
        while guest.recv_json().await?["status"] != "joined" {}
        guest.send_json(&json!({"type": "text", "data": {"text": "said while away"}, "ack": true})).await?;
        while guest.recv_json().await?.get("sent").is_none() {}
        guest.close().await?;
        terminate(meanwhile).await?;

        // Back on the same port: the page is in the room again, with what it missed, once,
        // and its own message still has its number (and Delete).
        let server = finished_server(database, port, &[]).await?;
        alice.wait_system("reconnected").await?;
        alice.wait_text("channel", "#rust").await?;
        alice.wait_text("room-topic-shown", "all things crab").await?;
        alice.wait_message("other", "said while away").await?;
        assert_eq!(alice.chat_texts().await?, ["before the restart", "said while away"]);
        alice.wait_for(own_delete, Value::Null, "Delete on ada's message after the restart").await?;

        // A guest in the room who logs in is back in it as the account.
        let bob = browser.open(&server.http_url()).await?;
        bob.join_room("rust").await?;
        alice.wait_for("window.chatterbox.room.members.size === 2", Value::Null, "the guest").await?;
        bob.sign_up("bob").await?;
        bob.wait_text("room-title", "#rust").await?;
        bob.wait_texts(MEMBERS, &["ada", "bob (you)"]).await?;
        alice.wait_texts(MEMBERS, &["ada (you)", "bob"]).await?;
        Ok(())
    })
    .await
}
