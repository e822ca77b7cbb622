//! `cargo run -p server`: the finished chatterbox server. `--help` lists every flag.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use server::config::Config;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
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

    let address = SocketAddr::new(config.addr, config.port);
    let listener =
        TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    server::serve(listener, config.limits, shutdown_signal()).await;
    Ok(())
}

/// Ctrl-C, or SIGTERM (what `kill`, systemd and container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
