//! lesson02: every text frame goes, unchanged, to every other connection.

use std::time::Duration;

use client::{Connection, RunningServer};

async fn start() -> RunningServer {
    RunningServer::start(env!("CARGO_BIN_EXE_lesson02"), &[]).await.expect("lesson02 starts")
}

const PROBE: &str = "probe";

/// Connects a newcomer and returns once the server has registered it.
///
/// lesson02 sends no greeting, so the handshake's end does not prove that the server has put
/// the newcomer in its registry yet. A member already in the room sends probes until one
/// reaches the newcomer (a bounded loop; each probe is awaited with a short timeout). Probes
/// also reach everyone else; the tests skip them.
async fn join(url: &str, member: Option<&mut Connection>) -> Connection {
    let mut newcomer = Connection::connect(url).await.unwrap();
    let Some(member) = member else { return newcomer };
    newcomer.set_timeout(Duration::from_millis(100));
    for _ in 0..100 {
        member.send_text(PROBE).await.unwrap();
        if newcomer.recv_text().await.is_ok_and(|text| text == PROBE) {
            newcomer.set_timeout(client::connection::DEFAULT_TIMEOUT);
            return newcomer;
        }
    }
    panic!("the newcomer never received a broadcast");
}

/// A room of `size` connections, every one registered. A member that sends is registered
/// (the server registers a connection before it reads from it), so a probe from the first
/// client that reaches a newcomer proves both are in the registry.
async fn room(url: &str, size: usize) -> Vec<Connection> {
    let mut clients = vec![join(url, None).await];
    for _ in 1..size {
        let newcomer = join(url, Some(&mut clients[0])).await;
        clients.push(newcomer);
    }
    clients
}

/// The next frame that is not a probe.
async fn recv_chat(connection: &mut Connection) -> String {
    loop {
        let text = connection.recv_text().await.unwrap();
        if text != PROBE {
            return text;
        }
    }
}

#[tokio::test]
async fn twenty_clients_each_receive_every_other_clients_messages_in_order() {
    let server = start().await;
    let mut clients = room(&server.ws_url(), 20).await;
    for (sender, client) in clients.iter_mut().enumerate() {
        for sequence in 0..5 {
            client.send_text(format!("{sender}:{sequence}")).await.unwrap();
        }
    }
    for (receiver, client) in clients.iter_mut().enumerate() {
        let mut next_expected = [0usize; 20];
        for _ in 0..95 {
            let text = recv_chat(client).await;
            let (sender, sequence) = text.split_once(':').expect("a sender:sequence frame");
            let (sender, sequence): (usize, usize) =
                (sender.parse().unwrap(), sequence.parse().unwrap());
            assert_ne!(sender, receiver, "client {receiver} received its own message back");
            assert_eq!(
                sequence, next_expected[sender],
                "client {receiver}: out of order from {sender}"
            );
            next_expected[sender] += 1;
        }
        for (sender, &count) in next_expected.iter().enumerate() {
            if sender != receiver {
                assert_eq!(count, 5, "client {receiver} got {count} messages from {sender}");
            }
        }
    }
    // Exactly 95 each: a last message from client 0 (and, for client 0, from client 1) must be
    // the very next frame everyone gets. A duplicate would have been queued before it.
    clients[0].send_text("end").await.unwrap();
    clients[1].send_text("end").await.unwrap();
    for (receiver, client) in clients.iter_mut().enumerate() {
        let ends = if receiver < 2 { 1 } else { 2 };
        for _ in 0..ends {
            assert_eq!(recv_chat(client).await, "end", "client {receiver} got more than 95");
        }
    }
}

#[tokio::test]
async fn the_sender_never_gets_its_own_message() {
    let server = start().await;
    let mut clients = room(&server.ws_url(), 2).await;
    clients[0].send_text("hi bob").await.unwrap();
    assert_eq!(recv_chat(&mut clients[1]).await, "hi bob");
    clients[0].expect_silence(Duration::from_millis(300)).await.unwrap();
}

#[tokio::test]
async fn a_closed_connection_is_forgotten_and_the_rest_keep_chatting() {
    let server = start().await;
    let mut clients = room(&server.ws_url(), 3).await;
    let carol = clients.pop().unwrap();
    carol.close().await.unwrap();
    for round in 0..3 {
        clients[0].send_text(format!("round {round}")).await.unwrap();
        assert_eq!(recv_chat(&mut clients[1]).await, format!("round {round}"));
        clients[1].send_text(format!("reply {round}")).await.unwrap();
        assert_eq!(recv_chat(&mut clients[0]).await, format!("reply {round}"));
    }
}
