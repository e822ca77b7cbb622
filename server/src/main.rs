//! `cargo run -p server`: the finished chatterbox server. `--help` lists every flag.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;

use server::Deployment;
use server::broker::RedisOptions;
use server::config::Config;
use server::store::Store;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if let Err(refusal) = config.check() {
        eprintln!("server: {refusal}");
        std::process::exit(2);
    }
    let filter = EnvFilter::try_new(&config.log)
        .with_context(|| format!("--log {:?} is not a valid log filter", config.log))?;
    // Logs go to stderr: the first line of stdout is the address, for whoever started us.
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    // Each connection is a file descriptor: the usual soft limit (1,024) would cap connections
    // long before --max-connections does. Raise it as far as the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < config.limits.max_connections as u64 => tracing::warn!(
            limit,
            max_connections = config.limits.max_connections,
            "the open-file limit is below --max-connections; raise it with `ulimit -n`"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
    }

    // The store first: a file the server does not understand is refused before anything runs.
    let counters = server::metrics::Counters::default();
    let refuse = |error: &dyn std::fmt::Display| -> ! {
        eprintln!("server: {error}");
        std::process::exit(1);
    };
    let node = config.node.clone().unwrap_or_else(server::random_node_name);
    let (store, deployment): (Arc<dyn Store>, Deployment) = match &config.redis {
        None => match server::open_store(&config.database, &config.limits, &counters) {
            Ok(store) => (store, Deployment::Alone),
            Err(error) => refuse(&error),
        },
        Some(redis) => match server::open_postgres(&config.database, &config.limits, &counters) {
            Ok(store) => {
                let redis = RedisOptions {
                    url: redis.clone(),
                    prefix: config.redis_prefix.clone(),
                    node: node.clone(),
                };
                let database_url = config.database.clone();
                (store.clone(), Deployment::Cluster { store, database_url, redis })
            }
            Err(error) => refuse(&error),
        },
    };
    // Then what it kept: loaded before the address line, so that a client that connects as
    // soon as it sees the address finds the history there.
    let server = server::Server::load_as(config.limits, store, counters, node, deployment)?;
    let address = SocketAddr::new(config.addr, config.port);
    let listener =
        TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    let shutdown = shutdown_signal();
    println!("listening on http://{}", listener.local_addr()?);
    server::serve(listener, server, shutdown).await;
    Ok(())
}

/// Ctrl-C, or SIGTERM (what `kill`, systemd and container runtimes send). The handlers are
/// installed when this is called, not when the future is first polled: a signal that comes
/// right after the address line (a test, a supervisor) must already stop the server cleanly.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    // Ctrl-C's handler is installed on the first poll; poll it once now.
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let _ = futures::FutureExt::now_or_never(&mut ctrl_c);
    async move {
        #[cfg(unix)]
        if let Ok(mut terminate) = terminate {
            tokio::select! {
                _ = ctrl_c => {}
                _ = terminate.recv() => {}
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}
