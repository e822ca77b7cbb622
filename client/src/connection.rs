//! A WebSocket connection to a chatterbox server, with a timeout on every wait.
//!
//! Tests must fail, not hang, when a server misbehaves: every method that waits for the
//! network gives up after [`Connection::timeout`] (10 s unless changed) with an error that
//! says what it was waiting for.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
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
}

impl Connection {
    /// Opens a WebSocket to `url` (for example `ws://127.0.0.1:8000/`).
    pub async fn connect(url: &str) -> Result<Connection> {
        let (socket, _response) = timeout(DEFAULT_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| anyhow!("timed out connecting to {url}"))?
            .with_context(|| format!("WebSocket handshake with {url} failed"))?;
        Ok(Connection { socket, timeout: DEFAULT_TIMEOUT })
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

    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.send(Message::text(text.into())).await
    }

    pub async fn send_json(&mut self, value: &Value) -> Result<()> {
        self.send_text(value.to_string()).await
    }

    /// Sends any frame, including binary, ping and close frames that a well-behaved client
    /// would not send.
    pub async fn send(&mut self, message: Message) -> Result<()> {
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
        match timeout(self.timeout, self.next_frame()).await {
            Err(_) => bail!("no frame arrived within {:?}", self.timeout),
            Ok(None) => bail!("the connection ended while waiting for a frame"),
            Ok(Some(frame)) => frame,
        }
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
        let frame = self.recv_json().await?;
        frame["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("expected an {{\"id\": ...}} frame, got {frame}"))
    }

    /// Succeeds only if nothing arrives for `window`: the way to check that a message was
    /// *not* delivered. (Here the timeout is the expected outcome, not a synchronisation.)
    pub async fn expect_silence(&mut self, window: Duration) -> Result<()> {
        match timeout(window, self.next_frame()).await {
            Err(_) => Ok(()),
            Ok(None) => bail!("the connection ended while it should have stayed quiet"),
            Ok(Some(frame)) => bail!("expected silence, got {:?}", frame?),
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
        Connection { socket, timeout: DEFAULT_TIMEOUT }
    }

    /// The underlying socket, for callers that read and write at the same time (the benchmark).
    pub fn into_socket(self) -> Socket {
        self.socket
    }
}
