//! What one client with no account must not be able to do to everyone else: each attack that
//! was tried against the server, replayed on loopback with small limits set by flag, so that
//! each test takes a few seconds. Every network wait has a timeout.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use client::message::text;
use client::{Connection, Frame};
use common::{connect, health, recv_error, rss_kib, start, wait_closed, wait_health};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame as WsFrame, FrameHeader};
use tokio_tungstenite::tungstenite::{Bytes, Message};

const WAIT: Duration = Duration::from_secs(10);

/// A TCP connection to the server from the loopback address `from` (127.0.0.2 and the rest of
/// 127/8 work on Linux without any setup).
async fn tcp_from(from: &str, port: u16) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse::<IpAddr>()?, 0))?;
    let stream = timeout(WAIT, socket.connect(([127, 0, 0, 1], port).into())).await??;
    Ok(stream)
}

/// Sends `request` as it is and reads until the server closes: the raw response.
async fn exchange(stream: &mut TcpStream, request: &str) -> Result<String> {
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut response)).await.context("no answer in time")??;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

async fn raw_request(port: u16, request: &str) -> Result<String> {
    let mut stream = tcp_from("127.0.0.1", port).await?;
    exchange(&mut stream, request).await
}

/// Waits until the server closes `stream` (end of file or reset), reading whatever it sends.
async fn closed_by_server(stream: &mut TcpStream) -> Result<()> {
    let mut sink = [0; 1024];
    timeout(WAIT, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .context("the server never closed the connection")
}

/// A WebSocket from the loopback address `from`, with extra request headers.
async fn websocket_from(
    from: &str,
    url: &str,
    headers: &[(&'static str, &str)],
) -> Result<Connection, tokio_tungstenite::tungstenite::Error> {
    let port = url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap();
    let stream = tcp_from(from, port).await.expect("connecting");
    let mut request = url.into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(Connection::from_socket(socket))
}

fn refused_with(error: tokio_tungstenite::tungstenite::Error, status: u16) -> Result<String> {
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            ensure!(response.status() == status, "expected {status}, got {}", response.status());
            let body = response.body().clone().unwrap_or_default();
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        other => bail!("expected HTTP {status}, got {other}"),
    }
}

#[tokio::test]
async fn partial_headers_are_cut_off_by_the_timeout_and_memory_stays_bounded() -> Result<()> {
    let server = start(&[
        "--header-timeout-secs",
        "1",
        "--max-header-bytes",
        "8192",
        "--max-connections-per-address",
        "1000",
    ])
    .await?;
    let pid = server.pid().context("no pid")?;
    let before = rss_kib(pid)?;
    // 300 clients each send most of a maximal head and never the blank line that ends it.
    let mut sockets = Vec::new();
    let partial = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Padding: {}", "a".repeat(7000));
    for _ in 0..300 {
        let mut stream = tcp_from("127.0.0.1", server.port()).await?;
        stream.write_all(partial.as_bytes()).await?;
        sockets.push(stream);
    }
    let during = rss_kib(pid)?;
    // A head over the limit is answered 431 at once.
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n", "a".repeat(20_000));
    let answer = raw_request(server.port(), &huge).await?;
    ensure!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    for stream in &mut sockets {
        closed_by_server(stream).await?;
    }
    // Only the /healthz request itself stays open.
    wait_health(&server, |h| h["refused"]["header_timeouts"] == 300 && h["sockets"] == 1).await?;
    let growth = during.saturating_sub(before);
    ensure!(growth < 32 * 1024, "300 partial heads grew the server by {growth} KiB");
    Ok(())
}

#[tokio::test]
async fn idle_sockets_over_the_cap_are_answered_and_do_not_lock_out_a_real_user() -> Result<()> {
    let server = start(&["--max-connections", "20", "--header-timeout-secs", "1"]).await?;
    // Twenty sockets that never send a byte fill the server, from many addresses.
    let mut idle = Vec::new();
    for n in 0..20 {
        idle.push(tcp_from(&format!("127.0.1.{}", n + 1), server.port()).await?);
    }
    // The next one is answered (not reset) with a reason...
    let mut refused = tcp_from("127.0.0.9", server.port()).await?;
    let answer = exchange(&mut refused, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    ensure!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    ensure!(answer.ends_with("too many connections, try again later\n"), "{answer}");
    // ...and once the idle ones have been timed out, a real user gets in.
    for stream in &mut idle {
        closed_by_server(stream).await?;
    }
    let mut user = connect(&server).await?;
    user.conn.send_json(&json!({"channel": "random"})).await?;
    assert_eq!(user.conn.recv_json().await?["status"], "waiting");
    let health = health(&server).await?;
    assert!(health["refused"]["server_full"].as_u64() >= Some(1), "{health}");
    Ok(())
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() -> Result<()> {
    let server = start(&["--header-timeout-secs", "1"]).await?;
    let mut stream = tcp_from("127.0.0.1", server.port()).await?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut first = [0; 12];
    timeout(WAIT, stream.read_exact(&mut first)).await??;
    assert_eq!(&first, b"HTTP/1.1 200");
    // Kept alive after the response, then idle: closed by the same timeout.
    closed_by_server(&mut stream).await
}

#[tokio::test]
async fn http2_prior_knowledge_is_not_served() -> Result<()> {
    let server = start(&["--header-timeout-secs", "1"]).await?;
    let mut stream = tcp_from("127.0.0.1", server.port()).await?;
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    closed_by_server(&mut stream).await
}

#[tokio::test]
async fn one_address_is_capped_while_another_still_connects() -> Result<()> {
    let server = start(&["--max-connections-per-address", "3"]).await?;
    let url = server.ws_url();
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(websocket_from("127.0.0.1", &url, &[]).await?);
    }
    let error = websocket_from("127.0.0.1", &url, &[]).await.err().context("a 4th got in")?;
    let reason = refused_with(error, 429)?;
    assert_eq!(reason, "too many connections from your address\n");
    // Another address is not affected.
    let mut other = websocket_from("127.0.0.2", &url, &[]).await?;
    other.recv_id().await?;
    // Plain HTTP from the full address is refused as well: every connection counts.
    let answer = raw_request(server.port(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    ensure!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_counted() -> Result<()> {
    let server =
        start(&["--max-connections-per-address", "2", "--trusted-proxy", "127.0.0.1"]).await?;
    let url = server.ws_url();
    let via_proxy = |client: &'static str| [("x-forwarded-for", client)];
    // Through the proxy (127.0.0.1), many connections: each client has its own count.
    let _a1 = websocket_from("127.0.0.1", &url, &via_proxy("10.0.0.1")).await?;
    let _a2 = websocket_from("127.0.0.1", &url, &via_proxy("10.0.0.1")).await?;
    let error = websocket_from("127.0.0.1", &url, &via_proxy("10.0.0.1")).await.err();
    refused_with(error.context("a third from 10.0.0.1 got in")?, 429)?;
    let _b = websocket_from("127.0.0.1", &url, &via_proxy("10.0.0.2")).await?;
    // A peer that is not the proxy cannot pick its address: its header is ignored.
    let _c1 = websocket_from("127.0.0.3", &url, &via_proxy("10.0.0.9")).await?;
    let _c2 = websocket_from("127.0.0.3", &url, &via_proxy("10.0.0.8")).await?;
    let error = websocket_from("127.0.0.3", &url, &via_proxy("10.0.0.7")).await.err();
    refused_with(error.context("a third from 127.0.0.3 got in")?, 429)?;
    Ok(())
}

#[tokio::test]
async fn one_address_cannot_fill_the_server_wide_schedule_cap() -> Result<()> {
    let server = start(&[
        "--max-scheduled",
        "3",
        "--max-scheduled-per-address",
        "5",
        "--max-scheduled-total",
        "8",
    ])
    .await?;
    let url = server.ws_url();
    let mut first = websocket_from("127.0.0.1", &url, &[]).await?;
    let mut second = websocket_from("127.0.0.1", &url, &[]).await?;
    first.recv_id().await?;
    second.recv_id().await?;
    for _ in 0..3 {
        first.send_json(&text("/schedule minutes 5 message from one address")).await?;
    }
    wait_health(&server, |h| h["scheduled"] == 3).await?;
    for _ in 0..2 {
        second.send_json(&text("/schedule minutes 5 message from one address")).await?;
    }
    wait_health(&server, |h| h["scheduled"] == 5).await?;
    second.send_json(&text("/schedule minutes 5 message one too many")).await?;
    let error = recv_error(&mut second).await?;
    assert!(error.contains("your address already has 5 scheduled messages"), "{error}");
    // Someone else can still schedule: the address's share is below the server's.
    let mut other = websocket_from("127.0.0.2", &url, &[]).await?;
    other.recv_id().await?;
    for _ in 0..3 {
        other.send_json(&text("/schedule minutes 5 message mine")).await?;
    }
    wait_health(&server, |h| h["scheduled"] == 8).await?;
    other.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn a_burst_of_due_schedules_is_paced_and_does_not_evict_a_reader_that_keeps_up() -> Result<()>
{
    // A queue of 16 frames: 200 schedules delivered at once would overflow it many times over.
    let server = start(&[
        "--queue-frames",
        "16",
        "--max-scheduled",
        "200",
        "--max-scheduled-per-address",
        "200",
        "--schedule-delivery-rate",
        "100",
        "--message-rate",
        "0",
    ])
    .await?;
    let mut sender = connect(&server).await?;
    let mut reader = connect(&server).await?;
    let filler = "x".repeat(1900);
    for n in 0..200 {
        sender.conn.send_json(&text(&format!("/schedule seconds 1 message {n} {filler}"))).await?;
    }
    wait_health(&server, |h| h["scheduled"] == 200).await?;
    let mut first = None;
    for n in 0..200 {
        let frame = reader.conn.recv_json().await.with_context(|| format!("message {n}"))?;
        assert_eq!(frame["data"]["text"], format!("{n} {filler}"));
        first.get_or_insert_with(tokio::time::Instant::now);
    }
    // 100 a second: the 199 after the first take about two seconds, not a moment.
    let spread = first.context("nothing arrived")?.elapsed();
    ensure!(spread >= Duration::from_millis(1700), "200 deliveries in {spread:?}");
    assert_eq!(health(&server).await?["connections"], 2);
    Ok(())
}

/// A raw client frame (tungstenite masks it on the way out).
fn raw_frame(is_final: bool, opcode: OpCode, payload: &'static [u8]) -> Message {
    let header = FrameHeader { is_final, opcode, ..FrameHeader::default() };
    Message::Frame(WsFrame::from_payload(header, Bytes::from_static(payload)))
}

#[tokio::test]
async fn an_unfinished_fragmented_message_is_closed_whatever_pongs_arrive() -> Result<()> {
    let server = start(&["--fragment-timeout-secs", "1"]).await?;
    let mut client = connect(&server).await?;
    client.conn.send(raw_frame(false, OpCode::Data(Data::Text), b"{\"type\":")).await?;
    // Pongs keep the connection alive, not the message: one every 100 ms until the close.
    let started = tokio::time::Instant::now();
    let close = loop {
        ensure!(started.elapsed() < WAIT, "no close while pongs kept coming");
        if client.conn.send(Message::Pong(Bytes::new())).await.is_err() {
            break wait_closed(&mut client.conn).await?;
        }
        match timeout(Duration::from_millis(100), client.conn.next_frame()).await {
            Err(_) => continue,
            Ok(Some(Ok(Frame::Close(code, reason)))) => {
                assert_eq!(reason, "fragmented message not completed in time");
                break code;
            }
            Ok(other) => bail!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(close, Some(1008));
    ensure!(started.elapsed() >= Duration::from_millis(900), "closed too early");
    Ok(())
}

#[tokio::test]
async fn a_flood_of_pongs_or_empty_fragments_is_closed() -> Result<()> {
    let server = start(&["--frame-rate", "100", "--frame-burst", "1000"]).await?;
    let pong = raw_frame(true, OpCode::Control(Control::Pong), b"");
    let empty_fragment = raw_frame(false, OpCode::Data(Data::Continue), b"");
    for (flood, opening) in [(pong, None), (empty_fragment, Some(b"{" as &'static [u8]))] {
        let mut client = connect(&server).await?;
        if let Some(first) = opening {
            client.conn.send(raw_frame(false, OpCode::Data(Data::Text), first)).await?;
        }
        let mut sent = 0;
        while sent < 100_000 && client.conn.send(flood.clone()).await.is_ok() {
            sent += 1;
        }
        assert_eq!(wait_closed(&mut client.conn).await?, Some(1008), "after {sent} frames");
    }
    // A well-behaved client is not affected.
    let mut a = connect(&server).await?;
    let mut b = connect(&server).await?;
    a.conn.send_json(&text("still here")).await?;
    assert_eq!(b.conn.recv_json().await?["data"]["text"], "still here");
    Ok(())
}

#[tokio::test]
async fn arrays_and_other_non_objects_get_error_frames_and_nothing_is_relayed() -> Result<()> {
    let server = start(&[]).await?;
    let mut sender = connect(&server).await?;
    let mut other = connect(&server).await?;
    for frame in [
        r#"[null,"text",{"text":"hi"}]"#,
        r#"["random"]"#,
        r#"["feed"]"#,
        r#"{"type":"text","data":["x"]}"#,
        r#"{"type":"text","data":{"text":"x","schedule":[1]}}"#,
        r#""text""#,
        "42",
    ] {
        sender.conn.send_text(frame).await?;
        let error = recv_error(&mut sender.conn).await.with_context(|| frame.to_owned())?;
        assert!(!error.is_empty(), "{frame}");
    }
    other.conn.expect_silence(Duration::from_millis(200)).await?;
    // Still in the feed, not in a random room.
    assert_eq!(health(&server).await?["feed"], 2);
    Ok(())
}

#[tokio::test]
async fn bad_handshakes_get_400_with_a_reason() -> Result<()> {
    let server = start(&[]).await?;
    let upgrade = |version: &str, key: &str| {
        format!(
            "GET / HTTP/{version}\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        )
    };
    for (version, key, reason) in [
        ("1.1", "", "Sec-WebSocket-Key must be 16 bytes in base64"),
        ("1.1", "not base64 at all!", "Sec-WebSocket-Key must be 16 bytes in base64"),
        ("1.1", "AAAAAAAAAAAAAAAAAAAA", "Sec-WebSocket-Key must be 16 bytes in base64"),
        ("1.0", "dGhlIHNhbXBsZSBub25jZQ==", "a WebSocket upgrade needs HTTP/1.1"),
    ] {
        let answer = raw_request(server.port(), &upgrade(version, key)).await?;
        ensure!(answer.starts_with(&format!("HTTP/{version} 400")), "{key:?}: {answer}");
        ensure!(answer.ends_with(&format!("{reason}\n")), "{key:?}: {answer}");
    }
    // The RFC's own sample key is fine.
    let mut stream = tcp_from("127.0.0.1", server.port()).await?;
    stream.write_all(upgrade("1.1", "dGhlIHNhbXBsZSBub25jZQ==").as_bytes()).await?;
    let mut status = [0; 12];
    timeout(WAIT, stream.read_exact(&mut status)).await??;
    assert_eq!(&status, b"HTTP/1.1 101");
    Ok(())
}

#[tokio::test]
async fn a_close_reason_that_is_not_utf8_is_named_as_such() -> Result<()> {
    let server = start(&[]).await?;
    let mut client = connect(&server).await?;
    let payload: &'static [u8] = &[0x03, 0xE8, 0xC3, 0x28];
    let header = FrameHeader { opcode: OpCode::Control(Control::Close), ..FrameHeader::default() };
    client
        .conn
        .send(Message::Frame(WsFrame::from_payload(header, Bytes::from_static(payload))))
        .await?;
    loop {
        match client.conn.recv().await? {
            Frame::Close(code, reason) => {
                assert_eq!(code, Some(1007));
                assert_eq!(reason, "close reason is not valid UTF-8");
                return Ok(());
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn head_works_and_the_page_carries_its_security_and_cache_headers() -> Result<()> {
    let server = start(&[]).await?;
    for path in ["/", "/app.js", "/style.css", "/healthz", "/metrics"] {
        let answer = raw_request(
            server.port(),
            &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await?;
        ensure!(answer.starts_with("HTTP/1.1 200"), "HEAD {path}: {answer}");
        ensure!(answer.ends_with("\r\n\r\n"), "HEAD {path} has a body: {answer}");
    }
    let page = client::http::get(server.port(), "/", &[]).await?;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").context("no CSP")?;
    for directive in [
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "connect-src 'self' ws: wss:",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let etag = page.header("etag").context("no ETag")?.to_owned();
    let again = client::http::get(server.port(), "/", &[("If-None-Match", &etag)]).await?;
    assert_eq!(again.status, 304);
    let gzipped = raw_request(
        server.port(),
        "GET /app.js HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    )
    .await?;
    ensure!(gzipped.to_ascii_lowercase().contains("content-encoding: gzip"), "{gzipped:.300}");
    let health = client::http::get(server.port(), "/healthz", &[]).await?;
    assert_eq!(health.header("x-content-type-options"), Some("nosniff"));
    Ok(())
}

// ---- Checks that held when the server was attacked, kept so that they keep holding ----

#[tokio::test]
async fn a_ping_flood_ends_in_1008_after_about_a_burst_of_pongs() -> Result<()> {
    let server = start(&["--message-rate", "10", "--message-burst", "20"]).await?;
    let (conn, _) = Connection::join(&server.ws_url()).await?;
    let mut socket = conn.into_socket();
    use futures::{SinkExt, StreamExt};
    let mut sent = 0;
    while sent < 10_000 && socket.send(Message::Ping(Bytes::from_static(b"p"))).await.is_ok() {
        sent += 1;
    }
    let mut pongs = 0;
    let close = timeout(WAIT, async {
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Pong(_) => pongs += 1,
                Message::Close(frame) => return frame.map(|frame| u16::from(frame.code)),
                _ => {}
            }
        }
        None
    })
    .await?;
    assert_eq!(close, Some(1008));
    // The burst (20), the refusals while in debt (20), no more.
    ensure!((20..=41).contains(&pongs), "{pongs} pongs for {sent} pings");
    Ok(())
}

#[tokio::test]
async fn permessage_deflate_is_not_negotiated_and_rsv1_gets_1002() -> Result<()> {
    let server = start(&[]).await?;
    let mut stream = tcp_from("127.0.0.1", server.port()).await?;
    let request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        timeout(WAIT, stream.read_exact(&mut byte)).await??;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    ensure!(head.starts_with("http/1.1 101"), "{head}");
    ensure!(!head.contains("sec-websocket-extensions"), "an extension was accepted: {head}");

    let mut client = connect(&server).await?;
    let header =
        FrameHeader { rsv1: true, opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
    client
        .conn
        .send(Message::Frame(WsFrame::from_payload(header, Bytes::from_static(b"x"))))
        .await?;
    assert_eq!(wait_closed(&mut client.conn).await?, Some(1002));
    Ok(())
}

/// `text` cut into `pieces` fragments of about the same size.
fn fragments(text: &str, pieces: usize) -> Vec<Message> {
    let bytes = text.as_bytes();
    let size = bytes.len().div_ceil(pieces);
    let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
    assert!(chunks.len() <= pieces);
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(n, chunk)| {
            let opcode =
                if n == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
            let header = FrameHeader { is_final: n == last, opcode, ..FrameHeader::default() };
            Message::Frame(WsFrame::from_payload(header, Bytes::copy_from_slice(chunk)))
        })
        .collect()
}

#[tokio::test]
async fn a_maximal_message_in_10001_fragments_is_read_and_one_byte_more_is_1009() -> Result<()> {
    let server = start(&[]).await?;
    let limit = 64 * 1024;
    let message = |length: usize| {
        let prefix = r#"{"type":"text","data":{"text":""#;
        let suffix = r#""}}"#;
        format!("{prefix}{}{suffix}", "x".repeat(length - prefix.len() - suffix.len()))
    };
    let mut client = connect(&server).await?;
    for fragment in fragments(&message(limit), 10_001) {
        client.conn.send(fragment).await?;
    }
    // Read whole, then refused for its text length (2,000 characters), not for its size.
    let error = recv_error(&mut client.conn).await?;
    assert!(error.starts_with("text is longer than"), "{error}");
    // (Another connection: two such messages at once would be over the frame budget.)
    let mut client = connect(&server).await?;
    for fragment in fragments(&message(limit + 1), 10_001) {
        if client.conn.send(fragment).await.is_err() {
            break;
        }
    }
    assert_eq!(wait_closed(&mut client.conn).await?, Some(1009));
    Ok(())
}

#[tokio::test]
async fn invalid_close_codes_get_1002() -> Result<()> {
    let server = start(&[]).await?;
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
        let mut client = connect(&server).await?;
        let header =
            FrameHeader { opcode: OpCode::Control(Control::Close), ..FrameHeader::default() };
        let payload = Bytes::copy_from_slice(&code.to_be_bytes());
        client.conn.send(Message::Frame(WsFrame::from_payload(header, payload))).await?;
        assert_eq!(wait_closed(&mut client.conn).await?, Some(1002), "close code {code}");
    }
    Ok(())
}
