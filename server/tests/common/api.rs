//! Accounts' HTTP API and WebSockets with a session, for the tests that need them: raw HTTP
//! requests, sign-up, and sockets opened with a cookie.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use client::{Connection, RunningServer};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Every wait in this file is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// An HTTP response, as read off the socket.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {:?}", self.body))
    }

    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        self.json()
            .ok()
            .and_then(|body| body["error"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// `name=value` of the `Set-Cookie` header, without its attributes.
    pub fn cookie(&self) -> Result<String> {
        let set = self.header("set-cookie").context("no Set-Cookie")?;
        Ok(set.split(';').next().unwrap_or_default().to_owned())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to its end.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Response> {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or_default());
    exchange(port, head.as_bytes()).await
}

/// Writes `raw` (a whole request) on a fresh connection and reads the answer to its end.
pub async fn exchange(port: u16, raw: &[u8]) -> Result<Response> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(raw).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = timeout(WAIT, exchange).await.context("no answer in time")??;
    let raw = String::from_utf8(raw).context("the answer is not UTF-8")?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of head")?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|line| line.split(' ').nth(1)).context("no status")?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    Ok(Response { status: status.parse()?, headers, body: body.to_owned() })
}

pub async fn post(
    server: &RunningServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Result<Response> {
    request(server.port(), "POST", path, headers, Some(&body.to_string())).await
}

pub async fn signup(server: &RunningServer, username: &str, password: &str) -> Result<Response> {
    post(server, "/api/signup", &[], &json!({"username": username, "password": password})).await
}

pub async fn login(server: &RunningServer, username: &str, password: &str) -> Result<Response> {
    post(server, "/api/login", &[], &json!({"username": username, "password": password})).await
}

pub async fn me(server: &RunningServer, cookie: &str) -> Result<Response> {
    request(server.port(), "GET", "/api/me", &[("Cookie", cookie)], None).await
}

/// Signs `username` up and returns its session cookie (`name=value`) and profile.
pub async fn account(server: &RunningServer, username: &str) -> Result<(String, Value)> {
    let response = signup(server, username, "a fine password").await?;
    ensure!(response.status == 201, "sign-up answered {response:?}");
    Ok((response.cookie()?, response.json()?))
}

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket with extra headers (a cookie, an origin); the handshake's HTTP status
/// when it is refused.
pub async fn open_socket(
    server: &RunningServer,
    headers: &[(&'static str, &str)],
) -> Result<Result<Socket, u16>> {
    let mut request = server.ws_url().into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(*name, HeaderValue::from_str(value)?);
    }
    match timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .context("handshake timed out")?
    {
        Ok((socket, _)) => Ok(Ok(socket)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Ok(Err(response.status().as_u16()))
        }
        Err(error) => Err(error.into()),
    }
}

pub async fn next_json(socket: &mut Socket) -> Result<Value> {
    loop {
        let message = timeout(WAIT, socket.next()).await.context("no frame in time")?;
        match message.context("the socket ended")?? {
            Message::Text(text) => return Ok(serde_json::from_str(&text)?),
            Message::Close(close) => bail!("closed: {close:?}"),
            _ => continue,
        }
    }
}

/// A socket opened with `cookie`, past its `{"id"}` frame (returned).
pub async fn socket_with_cookie(server: &RunningServer, cookie: &str) -> Result<(Socket, Value)> {
    let mut socket = open_socket(server, &[("Cookie", cookie)])
        .await?
        .map_err(|status| anyhow::anyhow!("refused {status}"))?;
    let id = next_json(&mut socket).await?;
    Ok((socket, id))
}

/// A socket with the session `cookie`, past its `{"id"}` and `{"me"}` frames (both returned).
pub async fn account_socket(
    server: &RunningServer,
    cookie: &str,
) -> Result<(Socket, Value, Value)> {
    let (mut socket, id) = socket_with_cookie(server, cookie).await?;
    let me = next_json(&mut socket).await?;
    Ok((socket, id, me))
}

/// A tab of the account with `cookie`: a connection past its id and me frames.
pub async fn account_tab(server: &RunningServer, cookie: &str) -> Result<Connection> {
    let (socket, _, _) = account_socket(server, cookie).await?;
    Ok(Connection::from_socket(socket))
}

/// Enters the named room `room`; returns the next frame, its joined frame.
pub async fn enter_room(conn: &mut Connection, room: &str) -> Result<Value> {
    conn.send_json(&json!({"channel": "room", "room": room})).await?;
    conn.recv_json().await
}
