//! lesson02: every text frame goes, unchanged, to every other connection.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use client::{Connection, Conversation, RunningServer};

async fn start() -> RunningServer {
    RunningServer::start(env!("CARGO_BIN_EXE_lesson02"), &[]).await.expect("lesson02 starts")
}

const PROBE: &str = "probe";

/// Connects a newcomer and returns once the server has registered it.
///
/// lesson02 sends no greeting, so the handshake's end does not prove that the server has put
/// the newcomer in its registry yet. A member already in the room sends probes until one
/// reaches the newcomer (20 probes, each awaited for 100 ms). Probes also reach everyone
/// else; the tests skip them.
async fn join(
    conversation: &Conversation,
    name: &str,
    member: &mut Connection,
) -> Result<Connection> {
    let mut newcomer = conversation.connect(name).await?;
    newcomer.set_timeout(Duration::from_millis(100));
    for _ in 0..20 {
        member.send_text(PROBE).await?;
        if newcomer.recv_text().await.is_ok_and(|text| text == PROBE) {
            newcomer.set_timeout(Conversation::LESSON_WAIT);
            return Ok(newcomer);
        }
    }
    bail!("client 0 sent {PROBE:?} 20 times, but {name}, connected, received none of them in 2 s")
}

/// A room of `size` connections ("client 0", "client 1", ...), every one registered. A member
/// that sends is registered (the server registers a connection before it reads from it), so a
/// probe from client 0 that reaches a newcomer proves both are in the registry.
async fn room(url: &str, size: usize) -> Result<Vec<Connection>> {
    let conversation = Conversation::new(url);
    let mut clients = vec![conversation.connect("client 0").await?];
    for number in 1..size {
        let newcomer = join(&conversation, &format!("client {number}"), &mut clients[0]).await?;
        clients.push(newcomer);
    }
    Ok(clients)
}

/// The next frame that is not a probe.
async fn recv_chat(connection: &mut Connection) -> Result<String> {
    loop {
        let text = connection.recv_text().await?;
        if text != PROBE {
            return Ok(text);
        }
    }
}

/// The next frame that is not a probe must be `expected`.
async fn expect_chat(connection: &mut Connection, expected: &str) -> Result<()> {
    let text = recv_chat(connection).await?;
    ensure!(text == expected, "{} expected {expected:?}, but got {text:?}", connection.name());
    Ok(())
}

#[tokio::test]
async fn twenty_clients_each_receive_every_other_clients_messages_in_order() -> Result<()> {
    let server = start().await;
    let mut clients = room(&server.ws_url(), 20).await?;
    for (sender, client) in clients.iter_mut().enumerate() {
        for sequence in 0..5 {
            client.send_text(format!("{sender}:{sequence}")).await?;
        }
    }
    for (receiver, client) in clients.iter_mut().enumerate() {
        let mut next_expected = [0usize; 20];
        for _ in 0..95 {
            let text = recv_chat(client).await?;
            let (sender, sequence) = text
                .split_once(':')
                .and_then(|(sender, sequence)| Some((sender.parse().ok()?, sequence.parse().ok()?)))
                .with_context(|| {
                    format!("client {receiver} got {text:?}, not a sender:sequence frame")
                })?;
            let (sender, sequence): (usize, usize) = (sender, sequence);
            ensure!(sender != receiver, "client {receiver} received its own message {text:?} back");
            ensure!(
                sequence == next_expected[sender],
                "client {receiver} expected {sender}:{} next from client {sender}, but got {text:?}",
                next_expected[sender]
            );
            next_expected[sender] += 1;
        }
    }
    // Exactly 95 each: a last message from client 0 (and, for client 0, from client 1) must be
    // the very next frame everyone gets. A duplicate would have been queued before it.
    clients[0].send_text("end").await?;
    clients[1].send_text("end").await?;
    for (receiver, client) in clients.iter_mut().enumerate() {
        let ends = if receiver < 2 { 1 } else { 2 };
        for _ in 0..ends {
            expect_chat(client, "end").await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_sender_never_gets_its_own_message() -> Result<()> {
    let server = start().await;
    let mut clients = room(&server.ws_url(), 2).await?;
    clients[0].send_text("hi bob").await?;
    expect_chat(&mut clients[1], "hi bob").await?;
    clients[0].expect_silence(Duration::from_millis(300)).await
}

#[tokio::test]
async fn a_closed_connection_is_forgotten_and_the_rest_keep_chatting() -> Result<()> {
    let server = start().await;
    let mut clients = room(&server.ws_url(), 3).await?;
    let last = clients.pop().context("a room of 3")?;
    last.close().await?;
    for round in 0..3 {
        clients[0].send_text(format!("round {round}")).await?;
        expect_chat(&mut clients[1], &format!("round {round}")).await?;
        clients[1].send_text(format!("reply {round}")).await?;
        expect_chat(&mut clients[0], &format!("reply {round}")).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_taken_port_is_explained_in_one_line() -> anyhow::Result<()> {
    client::running::expect_taken_port_explained(env!("CARGO_BIN_EXE_lesson02")).await
}
