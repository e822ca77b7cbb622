//! Starting a chatterbox binary the way an attendee does, and finding its address.
//!
//! Every chatterbox binary listens on the port in `PORT` (`0` picks a free one) and prints
//! `listening on http://ADDR:PORT` as its first line of stdout. [`RunningServer`] relies on
//! exactly that contract, so a test exercises the real binary, not an in-process copy.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// How long a binary may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A chatterbox binary running on a free port; it is killed when this value is dropped.
pub struct RunningServer {
    child: Child,
    port: u16,
}

impl RunningServer {
    /// Runs `program` with `PORT=0` and the given arguments, and waits for its address line.
    /// The finished server keeps nothing on disk (`CHATTERBOX_DATABASE=memory`) unless the
    /// arguments name a `--database`: tests never leave a database file behind by accident.
    pub async fn start(program: impl AsRef<Path>, args: &[&str]) -> Result<RunningServer> {
        Self::start_on_port(program, args, 0).await
    }

    /// Like [`RunningServer::start`], on a port chosen by the caller: to restart a server on
    /// the address its clients already know (`0` picks a free port, as `start` does).
    pub async fn start_on_port(
        program: impl AsRef<Path>,
        args: &[&str],
        port: u16,
    ) -> Result<RunningServer> {
        let program = program.as_ref();
        let mut child = Command::new(program)
            .args(args)
            .env("PORT", port.to_string())
            .env("CHATTERBOX_DATABASE", "memory")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {}", program.display()))?;

        let stdout = child.stdout.take().context("the child has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = timeout(START_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| {
                anyhow!("{} printed no address within {START_TIMEOUT:?}", program.display())
            })?
            .context("reading the first line of stdout failed")?
            .ok_or_else(|| anyhow!("{} exited before printing its address", program.display()))?;
        let port = parse_port(&first)?;

        // Keep reading whatever else it prints, so that a full pipe never blocks the server.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        Ok(RunningServer { child, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, to send it signals or read its `/proc` entries.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The WebSocket endpoint, on loopback.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// The HTTP root, on loopback.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Kills the server and waits until it is gone, so that its port is free again.
    pub async fn stop(mut self) -> Result<()> {
        timeout(START_TIMEOUT, self.child.kill())
            .await
            .map_err(|_| anyhow!("the server did not die within {START_TIMEOUT:?}"))?
            .context("killing the server failed")
    }

    /// Waits for the process to exit by itself (after a signal, say), up to `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        timeout(limit, self.child.wait())
            .await
            .map_err(|_| anyhow!("the server did not exit within {limit:?}"))?
            .context("waiting for the server failed")
    }
}

/// Starts `program` on a port that another copy of it already holds, as an attendee does who
/// left a server running, and checks that it exits at once with one line on stderr that names
/// the port and says what to do (stop the other server, or use `PORT=8001`).
pub async fn expect_taken_port_explained(program: impl AsRef<Path>) -> Result<()> {
    let program = program.as_ref();
    let first = RunningServer::start(program, &[]).await?;
    let second = Command::new(program)
        .env("PORT", first.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = timeout(START_TIMEOUT, second)
        .await
        .map_err(|_| anyhow!("a second server on port {} kept running", first.port()))?
        .context("could not start the second server")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let port = first.port().to_string();
    let explained = stderr.trim_end().lines().count() == 1
        && stderr.contains(&port)
        && stderr.contains("PORT=8001");
    if output.status.success() || !explained {
        bail!(
            "started on port {port}, already taken, the server should exit with one line naming \
             the port and PORT=8001; it exited with {} and printed {stderr:?}",
            output.status
        );
    }
    Ok(())
}

/// Reads the port from a line such as `listening on http://0.0.0.0:8000`.
fn parse_port(line: &str) -> Result<u16> {
    let address = line
        .strip_prefix("listening on http://")
        .ok_or_else(|| anyhow!("expected `listening on http://ADDR:PORT`, got {line:?}"))?;
    let port = address.rsplit(':').next().unwrap_or_default();
    port.trim_end_matches('/').parse().with_context(|| format!("no port in {line:?}"))
}

/// The path of another binary of this workspace (`lesson03`, `server`), for tests that run a
/// binary of a different package. Cargo builds every workspace binary before `cargo test
/// --workspace` runs a test; when one runs a single package's tests, this builds the binary.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    // A test executable lives in target/<profile>/deps/; binaries live in target/<profile>/.
    let test_exe = std::env::current_exe().context("cannot locate the running test")?;
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test location {}", test_exe.display()))?;
    let binary = profile_dir.join(name);
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "-p", name, "--bin", name])
            .status()
            .with_context(|| format!("could not run cargo to build {name}"))?;
        if !status.success() || !binary.exists() {
            bail!("building {name} failed, and {} does not exist", binary.display());
        }
    }
    Ok(binary)
}

#[cfg(test)]
mod tests {
    use super::parse_port;

    #[test]
    fn reads_the_port_from_the_address_line() {
        assert_eq!(parse_port("listening on http://0.0.0.0:8000").unwrap(), 8000);
        assert_eq!(parse_port("listening on http://[::]:41234").unwrap(), 41234);
        assert!(parse_port("hello").is_err());
        assert!(parse_port("listening on http://0.0.0.0").is_err());
    }
}
