//! A WebSocket connection to a chatterbox server, with a timeout on every wait.
//!
//! Tests must fail, not hang, when a server misbehaves: every method that waits for the
//! network gives up after [`Connection::timeout`] (10 s unless changed) with an error that
//! says what it was waiting for.
//!
//! The `expect_*` methods are for tests an attendee reads: their errors say, in one line, who
//! sent what last, what was expected and what came instead (or that nothing came). A
//! [`Conversation`] names its connections and lets them share the record of the last frame sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::COOKIE;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The socket type under a [`Connection`], for callers that need to split it.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a wait lasts before it counts as a failure.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One frame from the server, with pings and pongs already answered and skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    /// The server closed the connection: the close code, if it sent one, and the reason.
    Close(Option<u16>, String),
}

pub struct Connection {
    socket: Socket,
    timeout: Duration,
    /// Who this is in failure messages: "alice", or "the client".
    name: String,
    last_sent: LastSent,
}

/// "alice sent hello": the last text frame sent on any connection that shares it. A failure
/// message quotes it, since a frame that does not come is usually the answer to that one.
#[derive(Clone, Default)]
struct LastSent(Arc<Mutex<Option<String>>>);

impl LastSent {
    fn record(&self, line: String) {
        *self.0.lock().unwrap() = Some(line);
    }

    /// " after alice sent hello", or nothing before the first frame.
    fn after(&self) -> String {
        self.0.lock().unwrap().as_ref().map(|line| format!(" after {line}")).unwrap_or_default()
    }
}

/// How a wait for one frame ended.
enum Arrival {
    Frame(Frame),
    Nothing,
    Ended,
    Failed(anyhow::Error),
}

/// A frame as a failure message shows it: JSON as it is, other text in quotes (either
/// shortened past 120 characters).
fn quote(text: &str) -> String {
    let shown = match text.char_indices().nth(120) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(_) | Value::Array(_)) => shown,
        _ if text.is_empty() => "an empty frame".to_owned(),
        _ => format!("{shown:?}"),
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frame::Text(text) => write!(f, "{}", quote(text)),
            Frame::Binary(bytes) => write!(f, "a binary frame of {} bytes", bytes.len()),
            Frame::Close(code, _) => write!(f, "a close frame (code {code:?})"),
        }
    }
}

/// The connections of one test to one server, each under a name, sharing the record of the
/// last frame sent, and waiting at most [`Conversation::LESSON_WAIT`] for each frame: short, so
/// that a test of a stage that is not written yet fails in seconds instead of sitting out 10 s.
pub struct Conversation {
    url: String,
    last_sent: LastSent,
}

impl Conversation {
    /// How long a lesson test waits for a frame. Loopback answers in microseconds; the
    /// scheduled messages of the lessons are due within a second or two.
    pub const LESSON_WAIT: Duration = Duration::from_secs(2);

    pub fn new(url: &str) -> Conversation {
        Conversation { url: url.to_owned(), last_sent: LastSent::default() }
    }

    /// Opens a connection called `name` (lessons 01-02, which send no greeting).
    pub async fn connect(&self, name: &str) -> Result<Connection> {
        let mut connection = Connection::connect(&self.url).await.map_err(|error| {
            let refused = error.chain().find_map(|cause| match cause.downcast_ref() {
                Some(tungstenite::Error::Http(response)) => Some(response.status()),
                _ => None,
            });
            match refused {
                Some(status) => anyhow!(
                    "{name} asked {} for a WebSocket, but the server answered HTTP {status} \
                     instead of 101 Switching Protocols: it has no WebSocket route there",
                    self.url
                ),
                None => anyhow!("{name} could not connect: {}", one_line(&error)),
            }
        })?;
        connection.name = name.to_owned();
        connection.last_sent = self.last_sent.clone();
        connection.timeout = Self::LESSON_WAIT;
        Ok(connection)
    }

    /// Opens a connection called `name` and reads its `{"id"}` frame (lesson03 on).
    pub async fn join(&self, name: &str) -> Result<(Connection, String)> {
        let mut connection = self.connect(name).await?;
        let id = connection.recv_id().await?;
        Ok((connection, id))
    }
}

/// An error and its causes on one line, each cause once (a cause's text is often repeated
/// by the error above it).
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

impl Connection {
    /// Opens a WebSocket to `url` (for example `ws://127.0.0.1:8000/`).
    pub async fn connect(url: &str) -> Result<Connection> {
        Connection::connect_with_cookie(url, None).await
    }

    /// Connects with a `Cookie` header (`chatterbox_session=...`): the finished server then
    /// gives the connection to that account. No `Origin` is sent: this is not a web page.
    pub async fn connect_with_cookie(url: &str, cookie: Option<&str>) -> Result<Connection> {
        let mut request = url
            .into_client_request()
            .with_context(|| format!("{url} is not a WebSocket address"))?;
        if let Some(cookie) = cookie {
            let value = HeaderValue::from_str(cookie)
                .context("the session cookie is not a header value")?;
            request.headers_mut().insert(COOKIE, value);
        }
        let (socket, _response) =
            timeout(DEFAULT_TIMEOUT, tokio_tungstenite::connect_async(request))
                .await
                .map_err(|_| anyhow!("timed out connecting to {url}"))?
                .with_context(|| format!("WebSocket handshake with {url} failed"))?;
        let name = "the client".to_owned();
        Ok(Connection { socket, timeout: DEFAULT_TIMEOUT, name, last_sent: LastSent::default() })
    }

    /// Connects to a server from lesson03 on and reads its `{"id"}` frame. A client that has
    /// its id is registered: it receives every broadcast from then on.
    pub async fn join(url: &str) -> Result<(Connection, String)> {
        let mut connection = Connection::connect(url).await?;
        let id = connection.recv_id().await?;
        Ok((connection, id))
    }

    /// Changes how long every later wait may last.
    pub fn set_timeout(&mut self, limit: Duration) {
        self.timeout = limit;
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Who this is in failure messages ("alice", or "the client").
    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.send(Message::text(text.into())).await
    }

    pub async fn send_json(&mut self, value: &Value) -> Result<()> {
        self.send_text(value.to_string()).await
    }

    /// Sends any frame, including binary, ping and close frames that a well-behaved client
    /// would not send.
    pub async fn send(&mut self, message: Message) -> Result<()> {
        let what = match &message {
            Message::Text(text) => quote(text),
            Message::Binary(_) => "a binary frame".to_owned(),
            other => format!("a {} frame", format!("{other:?}").split('(').next().unwrap_or("")),
        };
        self.last_sent.record(format!("{} sent {what}", self.name));
        timeout(self.timeout, self.socket.send(message))
            .await
            .map_err(|_| anyhow!("timed out sending a frame"))?
            .context("sending a frame failed")
    }

    /// The next frame, or `None` once the connection has ended. Waits as long as it takes:
    /// for interactive use (the terminal client), where waiting is the point.
    pub async fn next_frame(&mut self) -> Option<Result<Frame>> {
        loop {
            let message = match self.socket.next().await? {
                Ok(message) => message,
                Err(error) => return Some(Err(anyhow!(error).context("reading a frame failed"))),
            };
            let frame = match message {
                Message::Text(text) => Frame::Text(text.to_string()),
                Message::Binary(bytes) => Frame::Binary(bytes.to_vec()),
                Message::Close(close) => match close {
                    Some(frame) => Frame::Close(Some(frame.code.into()), frame.reason.to_string()),
                    None => Frame::Close(None, String::new()),
                },
                // tungstenite answers pings by itself; neither is news to the caller.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return Some(Ok(frame));
        }
    }

    /// The next frame, failing after the timeout or if the connection ended without one.
    pub async fn recv(&mut self) -> Result<Frame> {
        match self.arrival(self.timeout).await {
            Arrival::Frame(frame) => Ok(frame),
            Arrival::Nothing => bail!(
                "no frame arrived within {:?}: {} waited for one{}",
                self.timeout,
                self.name,
                self.last_sent.after()
            ),
            Arrival::Ended => bail!("the connection ended while waiting for a frame"),
            Arrival::Failed(error) => Err(error),
        }
    }

    async fn arrival(&mut self, window: Duration) -> Arrival {
        match timeout(window, self.next_frame()).await {
            Err(_) => Arrival::Nothing,
            Ok(None) => Arrival::Ended,
            Ok(Some(Ok(frame))) => Arrival::Frame(frame),
            Ok(Some(Err(error))) => Arrival::Failed(error),
        }
    }

    /// What `expect_*` says when `expected` did not come: one line an attendee can act on.
    fn missed(&self, expected: &str, arrival: Arrival) -> anyhow::Error {
        let (name, after, instead) = (&self.name, self.last_sent.after(), self.instead(arrival));
        anyhow!("{name} expected {expected}{after}, but {instead}")
    }

    fn instead(&self, arrival: Arrival) -> String {
        match arrival {
            Arrival::Frame(Frame::Close(..)) => "the server closed the connection".to_owned(),
            Arrival::Frame(frame) => format!("got {frame}"),
            Arrival::Nothing => format!("nothing came within {:?}", self.timeout),
            Arrival::Ended => "the connection ended".to_owned(),
            Arrival::Failed(error) => format!("the connection failed: {}", one_line(&error)),
        }
    }

    /// The next frame must be the text `expected`.
    pub async fn expect_text(&mut self, expected: &str) -> Result<()> {
        match self.arrival(self.timeout).await {
            Arrival::Frame(Frame::Text(text)) if text == expected => Ok(()),
            other => Err(self.missed(&quote(expected), other)),
        }
    }

    /// The next frame must be this JSON value (key order does not matter).
    pub async fn expect_json(&mut self, expected: &Value) -> Result<()> {
        let arrival = self.arrival(self.timeout).await;
        if let Arrival::Frame(Frame::Text(text)) = &arrival
            && serde_json::from_str::<Value>(text).is_ok_and(|value| value == *expected)
        {
            return Ok(());
        }
        Err(self.missed(&expected.to_string(), arrival))
    }

    /// The next frame must be `{"error": "<a reason>"}` and nothing else; returns the reason.
    pub async fn expect_error(&mut self) -> Result<String> {
        let arrival = self.arrival(self.timeout).await;
        if let Arrival::Frame(Frame::Text(text)) = &arrival
            && let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text)
            && let (Some(Value::String(reason)), 1) = (frame.get("error"), frame.len())
            && !reason.is_empty()
        {
            return Ok(reason.clone());
        }
        Err(self.missed(r#"{"error": "<a reason>"} back"#, arrival))
    }

    /// The next frame, which must be a text frame.
    pub async fn recv_text(&mut self) -> Result<String> {
        match self.recv().await? {
            Frame::Text(text) => Ok(text),
            other => bail!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame, which must be a text frame holding JSON.
    pub async fn recv_json(&mut self) -> Result<Value> {
        let text = self.recv_text().await?;
        serde_json::from_str(&text).with_context(|| format!("expected JSON, got {text:?}"))
    }

    /// Reads the `{"id": "..."}` frame a server sends first (lesson03 on) and returns the id.
    pub async fn recv_id(&mut self) -> Result<String> {
        let arrival = self.arrival(self.timeout).await;
        if let Arrival::Frame(Frame::Text(text)) = &arrival
            && let Ok(frame) = serde_json::from_str::<Value>(text)
            && let Some(id) = frame["id"].as_str()
        {
            return Ok(id.to_owned());
        }
        let (name, instead) = (&self.name, self.instead(arrival));
        bail!(
            r#"{name} connected and expected its id first, {{"id": "<32 hex digits>"}}, but {instead}"#
        )
    }

    /// Succeeds only if nothing arrives for `window`: the way to check that a message was
    /// *not* delivered. (Here the timeout is the expected outcome, not a synchronisation.)
    pub async fn expect_silence(&mut self, window: Duration) -> Result<()> {
        match self.arrival(window).await {
            Arrival::Nothing => Ok(()),
            other => Err(self.missed("nothing more", other)),
        }
    }

    /// Waits for the server to close the connection and returns its close code.
    /// A connection that simply ends without a close frame gives `None`.
    pub async fn recv_close(&mut self) -> Result<Option<u16>> {
        loop {
            match timeout(self.timeout, self.next_frame()).await {
                Err(_) => bail!("the server did not close within {:?}", self.timeout),
                Ok(None) | Ok(Some(Err(_))) => return Ok(None),
                Ok(Some(Ok(Frame::Close(code, _)))) => return Ok(code),
                // Frames that were already on their way before the close are skipped.
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Closes the connection politely (close code 1000) and waits for the server's answer.
    pub async fn close(mut self) -> Result<()> {
        let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
        timeout(self.timeout, self.socket.close(Some(frame)))
            .await
            .map_err(|_| anyhow!("timed out closing the connection"))?
            .context("closing the connection failed")
    }

    /// A connection over a socket whose handshake the caller made (from a chosen local
    /// address, with extra headers).
    pub fn from_socket(socket: Socket) -> Connection {
        Connection {
            socket,
            timeout: DEFAULT_TIMEOUT,
            name: "the client".to_owned(),
            last_sent: LastSent::default(),
        }
    }

    /// The underlying socket, for callers that read and write at the same time (the benchmark).
    pub fn into_socket(self) -> Socket {
        self.socket
    }
}
