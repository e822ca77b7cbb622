//! The command line: where to listen, every limit, and how much to log.

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;

/// The finished chatterbox server.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Address to listen on: an IP address, or a host name such as `localhost`.
    #[arg(long, default_value = "0.0.0.0", value_parser = listen_address)]
    pub addr: IpAddr,

    /// Port to listen on; 0 picks a free one.
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,

    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `server=debug`); falls back to
    /// RUST_LOG, then to `warn`.
    #[arg(long, env = "RUST_LOG", default_value = "warn")]
    pub log: String,

    /// Where messages, schedules and accounts are kept: a SQLite file (created if missing), a
    /// PostgreSQL database (`postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME`, which must
    /// exist), or `memory` to keep nothing on disk.
    #[arg(long, env = "CHATTERBOX_DATABASE", default_value = "chatterbox.db")]
    pub database: String,

    /// Several servers as one chat: share live messages through this Redis
    /// (`redis://[:PASSWORD@]HOST[:PORT][/DB]`). Needs `--database postgres://...`, which then
    /// gives every seq (see docs/DEPLOY.md). Unset (the default): one process on its own.
    #[arg(long, env = "CHATTERBOX_REDIS", value_name = "URL")]
    pub redis: Option<String>,

    /// What this cluster's Redis channels start with, so that several clusters (or tests
    /// running at once) can share one Redis without seeing each other.
    #[arg(long, env = "CHATTERBOX_REDIS_PREFIX", default_value = "chatterbox")]
    pub redis_prefix: String,

    /// This server's name in `/healthz`, `/metrics` and the logs; default: a short random id.
    #[arg(long, env = "CHATTERBOX_NODE", value_parser = node_name)]
    pub node: Option<String>,

    #[command(flatten)]
    pub limits: Limits,
}

/// A node name: 1–64 of `A-Z a-z 0-9 - _ .`, so that it is safe as a metric label and in logs.
fn node_name(text: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if text.is_empty() || text.len() > 64 || !text.chars().all(allowed) {
        return Err(
            "a node name is 1 to 64 of the letters A-Z a-z, digits, '-', '_' and '.'".into()
        );
    }
    Ok(text.to_owned())
}

impl Config {
    /// Refuses flags that make no sense together: the one line the server prints before it
    /// exits. A cluster needs one place that gives seqs, and a SQLite file is one machine's.
    pub fn check(&self) -> Result<(), String> {
        if self.redis.is_some() && !crate::postgres::is_url(&self.database) {
            return Err(format!(
                "--redis needs --database postgres://... (several servers share one PostgreSQL \
                 database); {:?} is not one",
                self.database
            ));
        }
        if let Some(url) = &self.redis
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(format!("--redis: {url:?} is not a redis:// URL"));
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            return Err("--redis-prefix: must be non-empty, without spaces".into());
        }
        Ok(())
    }
}

/// Everything the server bounds, each with its own flag.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest WebSocket frame or message a client may send, in bytes; larger → close 1009.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Longest chat text, in characters.
    #[arg(long, default_value_t = 2000)]
    pub max_text_chars: usize,

    /// Longest emoji, in characters (one emoji may be several code points).
    #[arg(long, default_value_t = 32)]
    pub max_emoji_chars: usize,

    /// Longest schedule delay, in seconds.
    #[arg(long, default_value_t = 24 * 60 * 60)]
    pub max_delay_secs: u64,

    /// Pending scheduled messages per connection.
    #[arg(long, default_value_t = 20)]
    pub max_scheduled: usize,

    /// Pending scheduled messages from one client address (all its connections together), so
    /// that one address can never take the server-wide capacity from everyone.
    #[arg(long, default_value_t = 100)]
    pub max_scheduled_per_address: usize,

    /// Pending scheduled messages in the whole server.
    #[arg(long, default_value_t = 10_000)]
    pub max_scheduled_total: usize,

    /// Scheduled messages delivered per second at most, whatever came due at once: a pile of
    /// them is spread out instead of filling every reader's queue in one go.
    #[arg(long, default_value_t = 20.0)]
    pub schedule_delivery_rate: f64,

    /// Messages per second each connection may send, sustained; 0 turns the limit off.
    #[arg(long, default_value_t = 10.0)]
    pub message_rate: f64,

    /// Messages a connection may send at once before the rate applies.
    #[arg(long, default_value_t = 20)]
    pub message_burst: u32,

    /// WebSocket frames per second a connection may send, sustained, whatever their kind
    /// (pongs, pings, fragments included); a connection over its budget is closed (1008).
    #[arg(long, default_value_t = 200.0)]
    pub frame_rate: f64,

    /// Frames a connection may send at once before `--frame-rate` applies (a large message
    /// may come in many fragments).
    #[arg(long, default_value_t = 16_384)]
    pub frame_burst: u32,

    /// Seconds a fragmented message may take to be completed; longer: close 1008.
    #[arg(long, default_value_t = 10)]
    pub fragment_timeout_secs: u64,

    /// Open TCP connections, counted from `accept` (plain HTTP and WebSocket alike); one more
    /// is answered HTTP 503 and closed.
    #[arg(long, default_value_t = 20_000)]
    pub max_connections: usize,

    /// Open TCP connections from one client address (an IPv6 client: its /64); one more is
    /// answered HTTP 429 and closed. Behind a `--trusted-proxy`, WebSocket connections count
    /// against the address the proxy forwards.
    #[arg(long, default_value_t = 256)]
    pub max_connections_per_address: usize,

    /// A reverse proxy whose `X-Forwarded-For` says who the client is (repeatable). Requests
    /// from any other peer are taken to come from the peer itself.
    #[arg(long = "trusted-proxy", value_name = "ADDR")]
    pub trusted_proxies: Vec<IpAddr>,

    /// Seconds an HTTP connection may take to send a request's headers, and may stay idle
    /// between requests (keep-alive) before it is closed.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Largest request head (request line and headers), in bytes; larger: HTTP 431.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Frames waiting to be written to one connection; a client that lets this fill up is
    /// disconnected (close 1008).
    #[arg(long, default_value_t = 1024)]
    pub queue_frames: usize,

    /// Seconds between pings to each client.
    #[arg(long, default_value_t = 30)]
    pub ping_interval_secs: u64,

    /// Seconds without hearing anything from a client (not even a pong) before it is dropped.
    #[arg(long, default_value_t = 60)]
    pub ping_timeout_secs: u64,

    /// Feed messages a new connection receives right after its id (0: none).
    #[arg(long, default_value_t = 50)]
    pub history: usize,

    /// Messages a reconnecting client (`?after=SEQ`) receives at most; if it missed more, it
    /// gets the newest this many, after a frame that says how many were skipped.
    #[arg(long, default_value_t = 1000)]
    pub resume_max: usize,

    /// Messages in one page of `{"history": {"before": SEQ}}` at most.
    #[arg(long, default_value_t = 200)]
    pub page_max: usize,

    /// Named rooms in the server at most (`POST /api/rooms`).
    #[arg(long, default_value_t = 10_000)]
    pub max_rooms: usize,

    /// Named rooms one account may create at most.
    #[arg(long, default_value_t = 10)]
    pub max_rooms_per_account: usize,

    /// Messages kept per channel in the store; older ones are deleted in the background.
    #[arg(long, default_value_t = 10_000)]
    pub history_keep: usize,

    /// Changes the store holds in memory while it cannot write (disk full, read-only); past
    /// this, new messages are still delivered but not kept.
    #[arg(long, default_value_t = 100_000)]
    pub store_backlog: usize,

    /// Connections to a PostgreSQL `--database` for reads (accounts, sessions, pages of
    /// history), besides the writer's own.
    #[arg(long, default_value_t = 4)]
    pub database_pool: u32,

    /// Seconds to wait for clients to take their close frames at shutdown.
    #[arg(long, default_value_t = 2)]
    pub shutdown_secs: u64,

    #[command(flatten)]
    pub accounts: AccountOptions,
}

/// Accounts and their sessions: the limits of the `/api` endpoints, and the cookie's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AccountOptions {
    /// Largest JSON body an `/api` request may send, in bytes; larger: HTTP 413.
    #[arg(long, default_value_t = 8 * 1024)]
    pub max_json_bytes: usize,

    /// Largest picture `POST /api/me/avatar` may send, in bytes; larger: HTTP 413 (refused
    /// while it arrives).
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub max_avatar_bytes: usize,

    /// Widest and tallest picture, in pixels, that is decoded; a larger declared size is
    /// refused (HTTP 400) before any pixel is decoded.
    #[arg(long, default_value_t = 8_000)]
    pub max_avatar_pixels: u32,

    /// Password hashes (Argon2id) computed at once at most; more wait. Default: half the CPU
    /// cores, at least 1, so that a flood of logins cannot take every core from the chat.
    #[arg(long)]
    pub max_hashing: Option<usize>,

    /// Login attempts for one username at once (password changes, renames and new pictures
    /// count too) before `--login-per-minute-per-username` applies; over it: HTTP 429.
    #[arg(long, default_value_t = 10)]
    pub login_burst_per_username: u32,

    /// Login attempts per minute for one username, sustained.
    #[arg(long, default_value_t = 5.0)]
    pub login_per_minute_per_username: f64,

    /// Logins and sign-ups from one client address at once before
    /// `--login-per-minute-per-address` applies; over it: HTTP 429.
    #[arg(long, default_value_t = 30)]
    pub login_burst_per_address: u32,

    /// Logins and sign-ups per minute from one client address, sustained.
    #[arg(long, default_value_t = 30.0)]
    pub login_per_minute_per_address: f64,

    /// Days a session lasts unused; every use starts them again.
    #[arg(long, default_value_t = 30)]
    pub session_idle_days: u64,

    /// Mark the session cookie `Secure` (the server is behind HTTPS).
    #[arg(long)]
    pub secure_cookies: bool,

    /// An origin besides the server's own (e.g. `https://chat.example.org`) whose pages may
    /// use the session cookie: the API and WebSocket upgrades carrying it (repeatable).
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
}

impl AccountOptions {
    pub fn hashes_at_once(&self) -> usize {
        self.max_hashing.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |cores| cores.get() / 2).max(1)
        })
    }

    pub fn login_rate(&self) -> crate::accounts::LoginRate {
        crate::accounts::LoginRate {
            per_username_burst: self.login_burst_per_username,
            per_username_per_minute: self.login_per_minute_per_username,
            per_address_burst: self.login_burst_per_address,
            per_address_per_minute: self.login_per_minute_per_address,
        }
    }

    /// How long a session may go unused, in milliseconds.
    pub fn session_idle_ms(&self) -> i64 {
        (self.session_idle_days.min(100 * 365) * 24 * 3600 * 1000) as i64
    }
}

/// `--addr`: an IP address as it is, or a host name resolved to its first address (IPv4 first).
fn listen_address(addr: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = addr.parse() {
        return Ok(ip);
    }
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(&(addr, 0))
        .map_err(|error| format!("not an IP address, and no host of that name: {error}"))?;
    let ips: Vec<IpAddr> = resolved.map(|address| address.ip()).collect();
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or(ips.first())
        .copied()
        .ok_or(format!("{addr} has no address"))
}

impl Limits {
    pub fn max_delay(&self) -> Duration {
        Duration::from_secs(self.max_delay_secs)
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs.max(1))
    }

    pub fn ping_timeout(&self) -> Duration {
        Duration::from_secs(self.ping_timeout_secs.max(1))
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs.max(1))
    }

    pub fn fragment_timeout(&self) -> Duration {
        Duration::from_secs(self.fragment_timeout_secs.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_secs)
    }
}

impl Default for Limits {
    /// The documented defaults, as the command line gives them.
    fn default() -> Self {
        #[derive(Parser)]
        struct LimitsOnly {
            #[command(flatten)]
            limits: Limits,
        }
        LimitsOnly::parse_from(["server"]).limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_takes_an_ip_address_or_a_host_name() {
        let addr = |value| Config::parse_from(["server", "--addr", value]).addr;
        assert_eq!(addr("127.0.0.1"), IpAddr::from([127, 0, 0, 1]));
        assert!(addr("localhost").is_loopback());
    }
}
