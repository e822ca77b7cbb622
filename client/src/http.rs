//! A minimal HTTP/1.1 client: `GET` for tests that check the plain HTTP side of a server
//! (`{"hello":"world"}`, 404s, `/healthz`, a refused upgrade), and JSON requests for the
//! finished server's account API (the terminal client logs in with it). One request per
//! connection, `Connection: close`, the whole exchange under one timeout.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A response: status code, headers (names lowercased) and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header called `name` (lowercase), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// `GET path` from `127.0.0.1:port`, with any extra request headers.
pub async fn get(port: u16, path: &str, extra_headers: &[(&str, &str)]) -> Result<Response> {
    request(&format!("127.0.0.1:{port}"), "GET", path, extra_headers, None).await
}

/// One request to `authority` (`HOST:PORT`, also sent as `Host`), with any extra headers and a
/// JSON `body` (sent with its `Content-Type` and `Content-Length`). The whole exchange is under
/// one timeout.
pub async fn request(
    authority: &str,
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    json_body: Option<&str>,
) -> Result<Response> {
    let exchange = async {
        let mut stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
        for (name, value) in extra_headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = json_body {
            request.push_str("Content-Type: application/json\r\n");
            request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        } else {
            request.push_str("\r\n");
        }
        stream.write_all(request.as_bytes()).await.context("sending the request")?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.context("reading the response")?;
        parse(&String::from_utf8_lossy(&raw))
    };
    timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("{method} {path} timed out after {HTTP_TIMEOUT:?}"))?
}

fn parse(raw: &str) -> Result<Response> {
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked =
        headers.iter().any(|(name, value)| name == "transfer-encoding" && value == "chunked");
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Ok(Response { status, headers, body })
}

/// Joins a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("bad chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("short chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = parse("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}").unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (200, "{}"));
        assert_eq!(plain.header("content-type"), Some("application/json"));
        let chunked =
            parse("HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((chunked.status, chunked.body.as_str()), (404, "abcde"));
    }
}
