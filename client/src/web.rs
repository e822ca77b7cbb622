//! The browser chat page, embedded in the binary so nothing is fetched at run time.
//!
//! `cargo run -p client` serves it on its own port and the page talks to a lesson on port
//! 8000; the finished server serves the same page at its own `/` and the page talks back to
//! its own origin. Which one is written into the page as a `<meta>` tag when the filter is made.

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::header::CONTENT_TYPE;
use warp::reply::{Reply, Response};

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// The placeholder in `index.html` that says where the page connects by default.
const DEFAULT_SERVER_MARK: &str = "{{DEFAULT_SERVER}}";

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

/// `GET /`, `GET /app.js` and `GET /style.css`: the whole page.
pub fn page(default_server: DefaultServer) -> BoxedFilter<(Response,)> {
    let index = INDEX_HTML.replace(DEFAULT_SERVER_MARK, &default_server.meta_value());
    let index = warp::path::end().map(move || asset(index.clone(), "text/html; charset=utf-8"));
    let app = warp::path!("app.js").map(|| asset(APP_JS, "text/javascript; charset=utf-8"));
    let style = warp::path!("style.css").map(|| asset(STYLE_CSS, "text/css; charset=utf-8"));
    warp::get().and(index.or(app).unify().or(style).unify()).boxed()
}

fn asset(body: impl Into<String>, content_type: &'static str) -> Response {
    let mut response = warp::reply::html(body.into()).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, content_type.parse().expect("a valid header value"));
    response
}
