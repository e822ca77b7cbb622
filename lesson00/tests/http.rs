//! lesson00: `GET /` answers `{"hello":"world"}`; any other path is a 404.

use client::{RunningServer, http};
use serde_json::{Value, json};

async fn start() -> RunningServer {
    RunningServer::start(env!("CARGO_BIN_EXE_lesson00"), &[]).await.expect("lesson00 starts")
}

#[tokio::test]
async fn root_says_hello_world_as_json() {
    let server = start().await;
    let response = http::get(server.port(), "/", &[]).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body, json!({"hello": "world"}));
}

#[tokio::test]
async fn other_paths_are_not_found() {
    let server = start().await;
    for path in ["/nope", "/hello/world", "/index.html"] {
        let response = http::get(server.port(), path, &[]).await.unwrap();
        assert_eq!(response.status, 404, "GET {path}");
    }
}

#[tokio::test]
async fn a_taken_port_is_explained_in_one_line() -> anyhow::Result<()> {
    client::running::expect_taken_port_explained(env!("CARGO_BIN_EXE_lesson00")).await
}
