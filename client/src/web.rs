//! The browser chat page, embedded in the binary so nothing is fetched at run time.
//!
//! `cargo run -p client` serves it on its own port and the page talks to a lesson on port
//! 8000; the finished server serves the same page at its own `/` and the page talks back to
//! its own origin. Which one is written into the page as a `<meta>` tag when the filter is made.
//!
//! Each file is served as a browser expects from a real site: `GET` and `HEAD`, an `ETag` (a
//! reload costs a `304`), gzip when the browser accepts it (compressed once, when the filter is
//! made), and headers that keep the page's text from ever running as code: a
//! `Content-Security-Policy` that allows scripts and styles from the server only and no
//! framing, `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::{Response, StatusCode};
use warp::reply::Reply;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// The placeholder in `index.html` that says where the page connects by default.
const DEFAULT_SERVER_MARK: &str = "{{DEFAULT_SERVER}}";

/// Scripts, styles and images from the server only; no plugins, no framing, no form posts
/// elsewhere. The page may connect to any WebSocket server: choosing one (⚙) is a feature.
/// Images may also be `blob:`: the preview of a picture chosen for upload is the file itself,
/// shown through an object URL before it leaves the browser.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; connect-src 'self' ws: wss:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Where the page connects unless the user says otherwise (`?server=` or the settings field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultServer {
    /// `ws://<the page's host>:PORT/`: the page is served apart from the chat server.
    Port(u16),
    /// The origin that served the page: the page is served by the chat server itself.
    SameOrigin,
}

impl DefaultServer {
    fn meta_value(self) -> String {
        match self {
            DefaultServer::Port(port) => format!("port:{port}"),
            DefaultServer::SameOrigin => "same-origin".into(),
        }
    }
}

/// `GET` or `HEAD` of `/`, `/app.js` and `/style.css`: the whole page.
pub fn page(default_server: DefaultServer) -> BoxedFilter<(warp::reply::Response,)> {
    let index = INDEX_HTML.replace(DEFAULT_SERVER_MARK, &default_server.meta_value());
    let index = Asset::new(index.into_bytes(), "text/html; charset=utf-8");
    let app = Asset::new(APP_JS.as_bytes().to_vec(), "text/javascript; charset=utf-8");
    let style = Asset::new(STYLE_CSS.as_bytes().to_vec(), "text/css; charset=utf-8");
    let serve = |asset: Asset| move |headers: HeaderMap| asset.reply(&headers);
    let index = warp::path::end().and(warp::header::headers_cloned()).map(serve(index));
    let app = warp::path!("app.js").and(warp::header::headers_cloned()).map(serve(app));
    let style = warp::path!("style.css").and(warp::header::headers_cloned()).map(serve(style));
    warp::get().or(warp::head()).unify().and(index.or(app).unify().or(style).unify()).boxed()
}

/// One file of the page, in both encodings.
#[derive(Clone)]
struct Asset {
    plain: bytes::Bytes,
    gzipped: bytes::Bytes,
    content_type: &'static str,
    /// The strong validator of the plain body; the gzipped one's is this with `-gz`.
    etag: String,
}

impl Asset {
    fn new(body: Vec<u8>, content_type: &'static str) -> Asset {
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        let etag = format!("\"{:016x}\"", hasher.finish());
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&body).expect("writing to a Vec cannot fail");
        let gzipped = encoder.finish().expect("writing to a Vec cannot fail");
        Asset { plain: body.into(), gzipped: gzipped.into(), content_type, etag }
    }

    fn reply(&self, request: &HeaderMap) -> warp::reply::Response {
        let gzip = accepts_gzip(request);
        let etag = if gzip {
            format!("{}-gz\"", self.etag.trim_end_matches('"'))
        } else {
            self.etag.clone()
        };
        let not_modified = request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|list| list.split(','))
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == etag || tag == "*");
        let (status, body) = match (not_modified, gzip) {
            (true, _) => (StatusCode::NOT_MODIFIED, bytes::Bytes::new()),
            (false, true) => (StatusCode::OK, self.gzipped.clone()),
            (false, false) => (StatusCode::OK, self.plain.clone()),
        };
        let mut response = Response::new(body).into_response();
        *response.status_mut() = status;
        let headers = response.headers_mut();
        let mut set = |name: header::HeaderName, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        set(header::CONTENT_TYPE, self.content_type);
        set(header::ETAG, &etag);
        // Always ask: the ETag makes asking cheap, and a new page is seen at once.
        set(header::CACHE_CONTROL, "no-cache");
        set(header::VARY, "Accept-Encoding");
        if gzip && !not_modified {
            set(header::CONTENT_ENCODING, "gzip");
        }
        set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
        set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        set(header::REFERRER_POLICY, "no-referrer");
        response
    }
}

/// Whether `Accept-Encoding` lists gzip with a quality above zero.
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|param| {
                param.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (name.parse().unwrap(), value.parse().unwrap())).collect()
    }

    #[test]
    fn gzip_only_when_accepted() {
        assert!(accepts_gzip(&headers(&[("accept-encoding", "gzip, deflate, br")])));
        assert!(accepts_gzip(&headers(&[("accept-encoding", "br;q=1.0, gzip;q=0.5")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "gzip;q=0")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "identity")])));
        assert!(!accepts_gzip(&headers(&[])));
    }

    #[test]
    fn a_matching_etag_is_not_modified() {
        let asset = Asset::new(b"body".to_vec(), "text/plain");
        let first = asset.reply(&headers(&[]));
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag.parse().unwrap());
        assert_eq!(asset.reply(&again).status(), StatusCode::NOT_MODIFIED);
        // The gzipped body is another representation, with another tag.
        again.insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        assert_eq!(asset.reply(&again).status(), StatusCode::OK);
    }
}
