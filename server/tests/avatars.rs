//! Profile pictures over real HTTP, against the server binary: `POST /api/me/avatar` re-encodes
//! a picture to a 256×256 PNG served at `GET /avatars/{id}` with its headers; the picture drawn
//! for an account without one; the limits (413 while reading, 400 for a declared size that is
//! too large, before decoding, and for garbage); the session and the origin; and a picture
//! kept across a restart.

mod common;

use std::io::Cursor;

use anyhow::{Context, Result, ensure};
use common::api::{WAIT, account, account_socket, next_json};
use common::{database_in, start, start_with, terminate};
use image::{ImageFormat, Rgb, RgbImage};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// An HTTP response with its body as bytes.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection (`Connection: close`), with a binary body, read to its end.
async fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Answer> {
    let mut raw =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body.unwrap_or_default());
    exchange(port, &raw).await
}

async fn exchange(port: u16, raw: &[u8]) -> Result<Answer> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(raw).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = timeout(WAIT, exchange).await.context("no answer in time")??;
    let end = raw.windows(4).position(|window| window == b"\r\n\r\n").context("no end of head")?;
    let head = std::str::from_utf8(&raw[..end])?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|line| line.split(' ').nth(1)).context("no status")?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    Ok(Answer { status: status.parse()?, headers, body: raw[end + 4..].to_vec() })
}

/// A `width`×`height` PNG of one colour.
fn png(width: u32, height: u32, colour: [u8; 3]) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    RgbImage::from_pixel(width, height, Rgb(colour)).write_to(&mut out, ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// A valid 1×1 PNG whose header (IHDR) declares `width`×`height`, with its CRC fixed.
fn png_declaring(width: u32, height: u32) -> Result<Vec<u8>> {
    let mut bytes = png(1, 1, [0, 0, 0])?;
    ensure!(&bytes[12..16] == b"IHDR", "IHDR is the first chunk");
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    Ok(bytes)
}

/// A served picture: `200`, PNG, not to be sniffed, revalidated; 256×256. Returns it decoded.
fn served(answer: &Answer) -> Result<RgbImage> {
    ensure!(answer.status == 200, "{} {:?}: {}", answer.status, answer.headers, answer.text());
    assert_eq!(answer.header("content-type"), Some("image/png"));
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(answer.header("cache-control"), Some("no-cache"));
    assert!(answer.header("etag").is_some_and(|tag| tag.starts_with('"')), "{:?}", answer.headers);
    let image = image::load_from_memory_with_format(&answer.body, ImageFormat::Png)?;
    assert_eq!((image.width(), image.height()), (256, 256));
    Ok(image.into_rgb8())
}

fn id_of(profile: &serde_json::Value) -> Result<String> {
    Ok(profile["id"].as_str().context("no id")?.to_owned())
}

#[tokio::test]
async fn a_picture_is_uploaded_resized_and_served_and_a_default_drawn_without_one() -> Result<()> {
    let server = start(&[]).await?;
    let port = server.port();
    let (cookie, profile) = account(&server, "painter").await?;
    let id = id_of(&profile)?;
    let path = format!("/avatars/{id}");
    assert_eq!(profile["avatar"], path.as_str());

    // No picture yet: one drawn from the id, the same each time.
    let drawn = send(port, "GET", &path, &[], None).await?;
    let default = served(&drawn)?;
    assert_eq!(send(port, "GET", &path, &[], None).await?.body, drawn.body);
    let (other_cookie, other) = account(&server, "sculptor").await?;
    let other_drawn = send(port, "GET", &format!("/avatars/{}", id_of(&other)?), &[], None).await?;
    served(&other_drawn)?;
    assert_ne!(other_drawn.body, drawn.body, "another id, another picture");
    drop(other_cookie);

    // A tiny wide red PNG: cropped and resized to 256×256, red all over.
    let uploaded = send(
        port,
        "POST",
        "/api/me/avatar",
        &[("Cookie", &cookie), ("Content-Type", "image/png")],
        Some(&png(6, 3, [220, 20, 20])?),
    )
    .await?;
    assert_eq!(uploaded.status, 204, "{}", uploaded.text());
    let answer = send(port, "GET", &path, &[], None).await?;
    let picture = served(&answer)?;
    assert_ne!(picture, default);
    for pixel in [picture.get_pixel(0, 0), picture.get_pixel(128, 128), picture.get_pixel(255, 255)]
    {
        let close = pixel.0.iter().zip([220u8, 20, 20]).all(|(got, want)| got.abs_diff(want) <= 2);
        assert!(close, "{pixel:?}");
    }

    // HEAD: the headers without the body; the ETag answered with 304.
    let head = send(port, "HEAD", &path, &[], None).await?;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("image/png"));
    assert!(head.body.is_empty());
    let etag = answer.header("etag").context("no ETag")?;
    let revalidated = send(port, "GET", &path, &[("If-None-Match", etag)], None).await?;
    assert_eq!(revalidated.status, 304);
    assert!(revalidated.body.is_empty());

    // Unknown and malformed ids.
    for unknown in ["/avatars/0123456789abcdef0123456789abcdef", "/avatars/nobody", "/avatars/"] {
        assert_eq!(send(port, "GET", unknown, &[], None).await?.status, 404, "{unknown}");
    }
    Ok(())
}

#[tokio::test]
async fn jpeg_and_webp_are_taken_too() -> Result<()> {
    let server = start(&[]).await?;
    let port = server.port();
    let (cookie, profile) = account(&server, "formats").await?;
    let path = format!("/avatars/{}", id_of(&profile)?);
    for (format, colour) in [(ImageFormat::Jpeg, [30, 30, 220]), (ImageFormat::WebP, [30, 220, 30])]
    {
        let mut file = Cursor::new(Vec::new());
        RgbImage::from_pixel(16, 16, Rgb(colour)).write_to(&mut file, format)?;
        let headers = [("Cookie", cookie.as_str())];
        let uploaded =
            send(port, "POST", "/api/me/avatar", &headers, Some(&file.into_inner())).await?;
        assert_eq!(uploaded.status, 204, "{format:?}: {}", uploaded.text());
        let picture = served(&send(port, "GET", &path, &[], None).await?)?;
        let pixel = picture.get_pixel(128, 128);
        let close = pixel.0.iter().zip(colour).all(|(got, want)| got.abs_diff(want) <= 8);
        assert!(close, "{format:?}: {pixel:?}");
    }
    Ok(())
}

#[tokio::test]
async fn bad_pictures_and_requests_are_refused() -> Result<()> {
    let server = start(&[]).await?;
    let port = server.port();
    let (cookie, profile) = account(&server, "forger").await?;
    let path = format!("/avatars/{}", id_of(&profile)?);
    let before = send(port, "GET", &path, &[], None).await?.body;
    let upload = |headers: Vec<(&'static str, String)>, body: Vec<u8>| async move {
        let headers: Vec<(&str, &str)> =
            headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        send(port, "POST", "/api/me/avatar", &headers, Some(&body)).await
    };
    let with_cookie = || vec![("Cookie", cookie.clone())];
    let tiny = png(2, 2, [0, 200, 0])?;

    // No session: 401; another site's page: 403.
    assert_eq!(upload(vec![], tiny.clone()).await?.status, 401);
    let foreign = vec![("Cookie", cookie.clone()), ("Origin", "http://evil.example".to_owned())];
    assert_eq!(upload(foreign, tiny.clone()).await?.status, 403);

    // A 20,000 × 20,000 PNG header: refused with a reason, before decoding.
    let absurd = upload(with_cookie(), png_declaring(20_000, 20_000)?).await?;
    assert_eq!(absurd.status, 400, "{}", absurd.text());
    assert!(absurd.text().contains("larger than 8000"), "{}", absurd.text());

    // Garbage, a text file, a GIF header, nothing: 400 with a reason.
    for garbage in [b"\x89PNG\r\n\x1a\nnot really".to_vec(), b"hello".to_vec(), b"GIF89a".to_vec()]
    {
        let refused = upload(with_cookie(), garbage).await?;
        assert_eq!(refused.status, 400, "{}", refused.text());
        assert!(refused.text().contains("\"error\""), "{}", refused.text());
    }
    assert_eq!(upload(with_cookie(), Vec::new()).await?.status, 400);

    // Over 2 MiB by its declared length: 413 before any of it is read.
    let declared = format!(
        "POST /api/me/avatar HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Cookie: {cookie}\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024 + 1
    );
    assert_eq!(exchange(port, declared.as_bytes()).await?.status, 413);

    // Nothing refused changed the picture; the right one still works.
    assert_eq!(send(port, "GET", &path, &[], None).await?.body, before);
    assert_eq!(upload(with_cookie(), tiny).await?.status, 204);
    Ok(())
}

#[tokio::test]
async fn the_size_limit_holds_while_the_body_is_read() -> Result<()> {
    let server = start(&["--max-avatar-bytes", "1024"]).await?;
    let (cookie, _) = account(&server, "streamer").await?;
    let chunk = vec![b'x'; 1500];
    let mut raw = format!(
        "POST /api/me/avatar HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Cookie: {cookie}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    raw.extend_from_slice(&chunk);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(exchange(server.port(), &raw).await?.status, 413);
    Ok(())
}

#[tokio::test]
async fn a_picture_is_kept_across_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = database_in(&dir);
    let mut server = start_with(&path, 0, &[]).await?;
    let (cookie, profile) = account(&server, "keeper").await?;
    let avatar = format!("/avatars/{}", id_of(&profile)?);
    let headers = [("Cookie", cookie.as_str())];
    let body = png(4, 4, [10, 20, 200])?;
    let uploaded = send(server.port(), "POST", "/api/me/avatar", &headers, Some(&body)).await?;
    assert_eq!(uploaded.status, 204, "{}", uploaded.text());
    let before = send(server.port(), "GET", &avatar, &[], None).await?;
    served(&before)?;
    terminate(&mut server).await?;

    let server = start_with(&path, 0, &[]).await?;
    let after = send(server.port(), "GET", &avatar, &[], None).await?;
    served(&after)?;
    assert_eq!(after.body, before.body);
    Ok(())
}

#[tokio::test]
async fn a_new_picture_is_announced_to_the_accounts_channel() -> Result<()> {
    let server = start(&[]).await?;
    let (cookie, profile) = account(&server, "painter").await?;
    let id = id_of(&profile)?;
    let mut guest = common::connect(&server).await?;
    let (mut tab, _, _) = account_socket(&server, &cookie).await?;
    let headers = [("Cookie", cookie.as_str())];
    let body = png(8, 8, [200, 20, 10])?;
    let uploaded = send(server.port(), "POST", "/api/me/avatar", &headers, Some(&body)).await?;
    assert_eq!(uploaded.status, 204, "{}", uploaded.text());
    // The same address: the frame is the sign to fetch the picture again.
    let avatar = format!("/avatars/{id}");
    let changed = json!({"profile": {"id": id, "name": "painter", "avatar": avatar}});
    assert_eq!(common::recv_json(&mut guest.conn).await?, changed);
    assert_eq!(next_json(&mut tab).await?, changed);
    Ok(())
}
